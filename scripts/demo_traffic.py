#!/usr/bin/env python3
"""Demo traffic for the quick start: services on this host talking to a made-up remote network.

    sudo python3 scripts/demo_traffic.py start [--duration S]   # set up, start, return
    sudo python3 scripts/demo_traffic.py stop                   # remove everything it made
    sudo python3 scripts/demo_traffic.py run [--duration S]     # start, wait for Ctrl-C, stop

``start`` makes a network namespace (``hostsflow-demo``) joined to this host by a veth pair
(``hfdemo0`` here, ``hfdemo1`` inside) on a private /29 (10.213.77.0/29: this host .1, the
namespace .2 and .3), so one end of every connection on ``hfdemo0`` is remote, as the tcp
module needs.  On this host it runs two services; under systemd (PID 1) each is a transient
unit (``systemd-run``), so ``systemd { markTraffic = on }`` names them:

* ``hostsflow-demo-web``: an HTTP server on 10.213.77.1:8080 with a few small pages and a
  16 MiB file, and a UDP responder on 10.213.77.1:8053;
* ``hostsflow-demo-poller``: a service acting as a client of an HTTP server inside the
  namespace (.2:8081): a small status page every second on a keep-alive connection it renews
  every 30 s, and a 512 KiB report on a new connection every 10 s.

Inside the namespace a client, from .2: about four short GETs a second (a new connection each,
half of them HTTP/1.0, where the server closes first), browsing sessions (20 pages on one
keep-alive connection, 0.5 s apart) and a UDP query from a fresh socket every half second; from
.3: a 16 MiB download every 5 s (read at about 8 MB/s, so each lasts 2 s).

Without systemd the two services run as plain background processes and are not named.
Everything runs until ``stop`` (or ``--duration`` seconds, after which every loop ends by
itself); ``stop`` removes every unit, process, device and namespace ``start`` made, from the
record it keeps in /run/NAME/state.json (and, should that be gone, what it finds by name).
Only python3's standard library and iproute2.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

SCRIPT = os.path.abspath(__file__)
DEFAULT_NAME = "hostsflow-demo"
DEFAULT_DEV = "hfdemo0"
DEFAULT_SUBNET = "10.213.77.0/29"
WEB_PORT = 8080
UDP_PORT = 8053
NS_PORT = 8081
BIG_FILE = 16 << 20
DOWNLOAD_RATE = 8 << 20  # bytes a second the downloader reads
CHUNK = random.Random(15).randbytes(64 << 10)  # the big file: this, repeated


# ------------------------------------------------------------------ the traffic (roles)

def _pages(names: dict[str, int]) -> dict[str, bytes]:
    out = {}
    for path, size in names.items():
        body = f"<html><head><title>{path}</title></head><body><h1>{path}</h1>"
        body += "<p>hostsflow demo page.</p>" * max(1, size // 26)
        out[path] = (body + "</body></html>\n").encode()
    return out


WEB_PAGES = _pages({"/": 1200, "/about": 3000, "/news": 9000, "/shop": 20000, "/help": 600})
NS_PAGES = _pages({"/status": 300, "/report": 512 << 10})


def _handler(pages: dict[str, bytes], big: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive unless the request is HTTP/1.0
        timeout = 10
        server_version = "hostsflow-demo"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if big is not None and self.path == big:
                self._send_big()
                return
            body = pages.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_big(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(BIG_FILE))
            self.end_headers()
            for _ in range(BIG_FILE // len(CHUNK)):
                self.wfile.write(CHUNK)

        def log_message(self, *args: object) -> None:
            pass  # no line per request

    return Handler


def _serve_http(bind: str, port: int, pages: dict[str, bytes], big: str | None) -> None:
    server = ThreadingHTTPServer((bind, port), _handler(pages, big))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()


def _udp_responder(bind: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, port))

    def answer() -> None:
        while True:
            data, peer = sock.recvfrom(2048)
            sock.sendto(b"answer " + data[:64] + b" " + str(time.time()).encode(), peer)

    threading.Thread(target=answer, daemon=True).start()


def _until(duration: float) -> float:
    return time.time() + duration if duration > 0 else float("inf")


def _wait(until: float) -> None:
    while time.time() < until:
        time.sleep(min(1.0, until - time.time()) if until != float("inf") else 1.0)


def role_web(a: argparse.Namespace) -> None:
    """The host's web service: pages, the big file, the UDP responder."""
    _serve_http(a.bind, WEB_PORT, WEB_PAGES, "/files/demo.bin")
    _udp_responder(a.bind, UDP_PORT)
    _wait(_until(a.duration))


def role_ns_server(a: argparse.Namespace) -> None:
    """The server inside the namespace that the poller fetches from."""
    _serve_http(a.bind, NS_PORT, NS_PAGES, None)
    _wait(_until(a.duration))


class _Quiet:
    """Prints the first error of each kind, then only a count once a minute."""

    def __init__(self, role: str) -> None:
        self.role, self.seen, self.count, self.last = role, set(), 0, time.monotonic()

    def error(self, what: str, exc: Exception) -> None:
        self.count += 1
        kind = f"{what}: {type(exc).__name__}"
        if kind not in self.seen:
            self.seen.add(kind)
            print(f"{self.role}: {kind}: {exc}", file=sys.stderr, flush=True)
        elif time.monotonic() - self.last > 60:
            self.last = time.monotonic()
            print(f"{self.role}: {self.count} errors so far", file=sys.stderr, flush=True)


def _read_response(s: socket.socket, rate: int = 0) -> int:
    """One response's headers and Content-Length bytes (to the close without a length); the
    body's length.  ``rate`` caps the bytes read a second."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed before the headers")
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    length = -1
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    got, t0 = len(body), time.monotonic()
    while length < 0 or got < length:
        data = s.recv(min(65536, length - got) if length >= 0 else 65536)
        if not data:
            break
        got += len(data)
        if rate:
            ahead = got / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    return got


def http_session(server: tuple[str, int], paths: list[str], source: str | None = None,
                 version: str = "1.1", pause: float = 0, rate: int = 0,
                 until: float = float("inf")) -> int:
    """GETs of ``paths`` on one new connection, ``pause`` seconds apart; the bytes read.
    HTTP/1.0 (one path): the server closes first; HTTP/1.1: this end closes after the last."""
    total = 0
    with socket.create_connection(server, timeout=10,
                                  source_address=(source, 0) if source else None) as s:
        for n, path in enumerate(paths):
            if n and pause:
                time.sleep(pause)
            if time.time() >= until:
                break
            s.sendall(f"GET {path} HTTP/{version}\r\nHost: {server[0]}\r\n\r\n".encode())
            total += _read_response(s, rate)
    return total


def _loop(until: float, quiet: _Quiet, what: str, pause: float, step: Callable[[int], object],
          ) -> None:
    """``step(0)``, ``step(1)``... ``pause`` seconds apart until ``until``; errors counted."""
    i = 0
    while time.time() < until:
        try:
            step(i)
        except OSError as exc:
            quiet.error(what, exc)
            time.sleep(1)
        i += 1
        time.sleep(pause)


def _in_thread(*args: object) -> None:
    threading.Thread(target=_loop, args=args, daemon=True).start()


def role_client(a: argparse.Namespace) -> None:
    """Inside the namespace: short GETs and browsing sessions from .2, downloads from .3, UDP
    queries from .2."""
    until = _until(a.duration)
    server = (a.server, WEB_PORT)
    quiet = _Quiet("client")
    pages = sorted(WEB_PAGES)

    def short_get(i: int) -> None:
        http_session(server, [pages[i % len(pages)]], a.pages_from,
                     version="1.0" if i % 2 else "1.1")

    def browse(i: int) -> None:  # one keep-alive session: 20 pages 0.5 s apart
        http_session(server, [pages[(i + n) % len(pages)] for n in range(20)], a.pages_from,
                     pause=0.5, until=until)

    def download(_i: int) -> None:
        http_session(server, ["/files/demo.bin"], a.files_from, rate=DOWNLOAD_RATE)

    def udp_query(i: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((a.pages_from, 0))
            u.settimeout(2)
            u.sendto(f"query {i}".encode(), (a.server, UDP_PORT))
            u.recvfrom(2048)

    _in_thread(until, quiet, "browsing session", 1, browse)
    _in_thread(until, quiet, "download", 5, download)
    _in_thread(until, quiet, "UDP query", 0.5, udp_query)
    _loop(until, quiet, "GET", 0.25, short_get)


def role_poller(a: argparse.Namespace) -> None:
    """On this host, a service acting as a client of the namespace's server: a status GET each
    second on a keep-alive connection it renews every 30, and a report on a new one every 10."""
    until = _until(a.duration)
    quiet = _Quiet("poller")
    server = (a.server, NS_PORT)
    _in_thread(until, quiet, "report", 10, lambda _i: http_session(server, ["/report"]))
    _loop(until, quiet, "status", 0,
          lambda _i: http_session(server, ["/status"] * 30, pause=1, until=until))


ROLES = {"web": role_web, "ns-server": role_ns_server, "client": role_client,
         "poller": role_poller}


# ------------------------------------------------------------------ set-up and tear-down

class DemoError(Exception):
    """Something that keeps the demo from starting (the message says what)."""


def sh(*args: str, check: bool = True) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise DemoError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def has_systemd() -> bool:
    """PID 1 is systemd and answers (``systemd-run`` can start units)."""
    return os.path.isdir("/run/systemd/system") and shutil.which("systemd-run") is not None


class Demo:
    """The namespace, veth pair and processes of one demo, named after ``name``."""

    def __init__(self, name: str = DEFAULT_NAME, dev: str = DEFAULT_DEV,
                 subnet: str = DEFAULT_SUBNET) -> None:
        self.name, self.dev, self.peer = name, dev, dev[:-1] + ("1" if dev[-1] != "1" else "2")
        net = ipaddress.ip_network(subnet)
        if net.version != 4 or net.num_addresses < 8:
            raise DemoError(f"--subnet {subnet}: need an IPv4 network of at least 8 addresses")
        hosts = list(net.hosts())
        self.subnet = net
        self.host_ip, self.pages_ip, self.files_ip = (str(h) for h in hosts[:3])
        self.state_dir = Path("/run") / name
        self.state_file = self.state_dir / "state.json"
        self.state: dict[str, list] = {"pids": [], "units": []}

    # ---- the record of what was made (so that stop removes exactly that)

    def _save(self) -> None:
        self.state.update(name=self.name, dev=self.dev, subnet=str(self.subnet))
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_file)

    @classmethod
    def recorded(cls, name: str) -> "Demo | None":
        path = Path("/run") / name / "state.json"
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        demo = cls(state["name"], state["dev"], state["subnet"])
        demo.state = state
        return demo

    @classmethod
    def unrecorded(cls, name: str) -> "Demo":
        """What a demo called ``name`` may have left without its record (its namespace and
        units by name; for the default name also its device and processes)."""
        demo = cls(name)
        demo.state.update(netns=[name], devs=[DEFAULT_DEV] if name == DEFAULT_NAME else [],
                          strays=name == DEFAULT_NAME)
        return demo

    def _units_left(self) -> list[str]:
        """This demo's units that systemd still has, recorded or not."""
        if not has_systemd():
            return []
        listed = sh("systemctl", "list-units", "--all", "--plain", "--no-legend",
                    f"{self.name}-*.service", check=False).split()
        return [u for u in (f"{self.name}-web.service", f"{self.name}-poller.service")
                if u in listed]

    def _strays(self) -> list[int]:
        """Processes of this script's roles bound to or talking to this demo's addresses."""
        out = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if SCRIPT in args and "role" in args and \
                    {self.host_ip, self.pages_ip, self.files_ip} & set(args):
                out.append(int(proc.name))
        return out

    # ---- start

    def check_free(self) -> None:
        if self.name in sh("ip", "netns", "list").split():
            raise DemoError(f"namespace {self.name} exists: already running? "
                            f"(stop it with: {SCRIPT} stop --name {self.name})")
        if Path(f"/sys/class/net/{self.dev}").exists():
            raise DemoError(f"device {self.dev} exists: already running? "
                            f"(stop it with: {SCRIPT} stop --name {self.name})")
        for line in sh("ip", "-o", "-4", "addr", "show").splitlines():
            addr = ipaddress.ip_interface(line.split()[3])
            if addr.network.overlaps(self.subnet):
                raise DemoError(f"{self.subnet} overlaps {addr} on {line.split()[1]}: "
                                "pick another with --subnet")
        for line in sh("ip", "-4", "route", "show", "table", "all").splitlines():
            try:  # "default", "local ...", "broadcast ..." are not destinations of their own
                dest = ipaddress.ip_network(line.split()[0], strict=False)
            except (ValueError, IndexError):
                continue
            if dest.overlaps(self.subnet):
                raise DemoError(f"{self.subnet} overlaps the route {line.strip()}: "
                                "pick another with --subnet")

    def start(self, duration: float = 0) -> None:
        self.check_free()
        self.state_dir.mkdir(mode=0o755, exist_ok=True)
        self._save()
        try:
            self._network()
            self._processes(duration)
        except BaseException:
            self.stop()
            raise

    def _network(self) -> None:
        prefix = self.subnet.prefixlen
        sh("ip", "netns", "add", self.name)
        self.state["netns"] = [self.name]
        self._save()
        sh("ip", "link", "add", self.dev, "type", "veth", "peer", "name", self.peer,
           "netns", self.name)
        self.state["devs"] = [self.dev]
        self._save()
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.dev}.disable_ipv6=1", check=False)
        sh("ip", "addr", "add", f"{self.host_ip}/{prefix}", "dev", self.dev)
        sh("ip", "link", "set", self.dev, "up")
        sh("ip", "-n", self.name, "link", "set", "lo", "up")
        for ip in (self.pages_ip, self.files_ip):
            sh("ip", "-n", self.name, "addr", "add", f"{ip}/{prefix}", "dev", self.peer)
        sh("ip", "-n", self.name, "link", "set", self.peer, "up")

    def _role(self, role: str, *args: str, duration: float) -> list[str]:
        return [sys.executable, SCRIPT, "role", role, "--duration", str(duration), *args]

    def _service(self, unit: str, cmd: list[str], description: str) -> None:
        """A host service: a transient unit under systemd, else a background process."""
        if has_systemd():
            sh("systemd-run", "--quiet", "--collect", f"--unit={unit}",
               f"--description={description}", "-p", "KillMode=control-group", *cmd)
            self.state["units"].append(f"{unit}.service")
            self._save()
        else:
            self._spawn(unit, cmd)

    def _spawn(self, label: str, cmd: list[str]) -> None:
        log = open(self.state_dir / f"{label}.log", "ab")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True)
        log.close()
        self.state["pids"].append(proc.pid)
        self._save()

    def _processes(self, duration: float) -> None:
        in_ns = ["ip", "netns", "exec", self.name]
        self._service(f"{self.name}-web",
                      self._role("web", "--bind", self.host_ip, duration=duration),
                      "hostsflow demo: web server")
        self._spawn("ns-server", in_ns + self._role("ns-server", "--bind", self.pages_ip,
                                                    duration=duration))
        wait_listening(self.host_ip, WEB_PORT)
        wait_listening(self.pages_ip, NS_PORT, netns=self.name)
        self._service(f"{self.name}-poller",
                      self._role("poller", "--server", self.pages_ip, duration=duration),
                      "hostsflow demo: a service polling a remote server")
        self._spawn("client", in_ns + self._role(
            "client", "--server", self.host_ip, "--pages-from", self.pages_ip,
            "--files-from", self.files_ip, duration=duration))

    # ---- stop

    def stop(self) -> list[str]:
        """Remove every unit, process, device and namespace recorded; what was removed."""
        removed = []
        units = sorted(set(self.state.get("units", [])) | set(self._units_left()))
        if units:
            sh("systemctl", "stop", *units, check=False)
            sh("systemctl", "reset-failed", *units, check=False)
            removed += units
        pids = self.state.get("pids", [])
        if self.state.get("strays", True):
            pids = [*pids, *(p for p in self._strays() if p not in pids)]
        for pid in pids:
            if end_pid(pid):
                removed.append(f"pid {pid}")
        for ns in self.state.get("netns", []):
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                if end_pid(int(pid), check_script=False):
                    removed.append(f"pid {pid} (in {ns})")
        for dev in self.state.get("devs", []):
            if Path(f"/sys/class/net/{dev}").exists():
                sh("ip", "link", "del", dev, check=False)
                removed.append(f"device {dev}")
        for ns in self.state.get("netns", []):
            if ns in sh("ip", "netns", "list", check=False).split():
                sh("ip", "netns", "del", ns, check=False)
                removed.append(f"namespace {ns}")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return removed


def end_pid(pid: int, check_script: bool = True, timeout: float = 5) -> bool:
    """SIGTERM (SIGKILL after ``timeout``) to ``pid`` if it is still one of this script's."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if check_script and SCRIPT.encode() not in cmdline:
        return False  # the pid was reused by something else
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
    except ProcessLookupError:
        pass
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_listening(ip: str, port: int, netns: str | None = None, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    probe = [sys.executable, "-c",
             f"import socket; socket.create_connection(({ip!r}, {port}), timeout=1).close()"]
    while True:
        if netns is None:
            try:
                socket.create_connection((ip, port), timeout=1).close()
                return
            except OSError:
                pass
        elif subprocess.run(["ip", "netns", "exec", netns, *probe],
                            capture_output=True).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"nothing listens on {ip}:{port} after {timeout:.0f} s")
        time.sleep(0.1)


# ------------------------------------------------------------------ command line

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="demo traffic for hostsflow's quick start")
    sub = p.add_subparsers(dest="command", required=True)
    for cmd in ("start", "run", "stop"):
        s = sub.add_parser(cmd)
        s.add_argument("--name", default=DEFAULT_NAME,
                       help="namespace name, prefix of the unit names (default %(default)s)")
        if cmd != "stop":
            s.add_argument("--dev", default=DEFAULT_DEV,
                           help="this host's end of the veth pair (default %(default)s)")
            s.add_argument("--subnet", default=DEFAULT_SUBNET,
                           help="private IPv4 network for the pair (default %(default)s)")
            s.add_argument("--duration", type=float, default=0,
                           help="seconds the traffic runs (default: until stopped)")
    r = sub.add_parser("role", help="(internal) one of the demo's programs")
    r.add_argument("role", choices=sorted(ROLES))
    r.add_argument("--duration", type=float, default=0)
    r.add_argument("--bind")
    r.add_argument("--server")
    r.add_argument("--pages-from")
    r.add_argument("--files-from")
    a = p.parse_args(argv)
    if a.command == "role":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            ROLES[a.role](a)
        except KeyboardInterrupt:
            pass
        return 0
    if os.geteuid() != 0:
        print("demo_traffic: needs root (it makes a network namespace and a veth pair)",
              file=sys.stderr)
        return 1
    if a.command == "stop":
        demo = Demo.recorded(a.name) or Demo.unrecorded(a.name)
        removed = demo.stop()
        print("demo_traffic: removed " + (", ".join(removed) or
                                          f"nothing (no demo called {a.name} is running)"))
        return 0
    try:
        demo = Demo(a.name, a.dev, a.subnet)
        demo.start(a.duration)
    except DemoError as exc:
        print(f"demo_traffic: {exc}", file=sys.stderr)
        return 1
    named = ("as systemd units " + ", ".join(demo.state["units"]) if demo.state["units"] else
             "as plain processes (PID 1 is not systemd: the view will not name them)")
    print(f"demo_traffic: namespace {demo.name} at {demo.pages_ip} and {demo.files_ip}, "
          f"{demo.dev} here at {demo.host_ip}; host services {named}; "
          f"stop with: {SCRIPT} stop" + (f" --name {demo.name}" if demo.name != DEFAULT_NAME
                                         else ""), flush=True)
    if a.command == "run":
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait(a.duration if a.duration > 0 else None)
        print("demo_traffic: removed " + ", ".join(demo.stop()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
