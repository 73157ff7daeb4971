"""Real parts for the fault, reload and soak runs (tests/test_faults_*.py, bench/soak.py).

* :class:`NetPair`: two uniquely named network namespaces joined by a veth pair, which can be
  deleted and re-created (a new ifIndex), removed in ``close()``;
* :class:`NsCollector`: a UDP collector socket inside a namespace (the agent runs there);
* :class:`UdpStream` / :class:`TcpStream`: paced traffic from one namespace to the other;
* :func:`user_manager_class`: the systemd module's real ``systemd --user`` fixture class.

Traffic only flows between the two namespaces; nothing is sent anywhere else.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from hostsflow.sflow.datagram import decode_datagram  # noqa: F401 - tests use kit.decode_datagram
from hostsflow.testing import UdpCollector, load_file_module

REPO = Path(__file__).resolve().parent.parent
AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                Path(__file__).with_name("agent_process.py")).AgentProcess
_netpair = load_file_module("hostsflow_tests_netpair", Path(__file__).with_name("netpair.py"))
sh = _netpair.sh


def NetPair() -> Any:  # noqa: N802 - reads like the class it makes
    """Namespaces ``ns_a`` and ``ns_b`` joined by veth ``dev_a`` (ip_a) <-> ``dev_b`` (ip_b)
    (tests/netpair.py)."""
    return _netpair.NetPair.make("hsff")


def why_not(*tools: str) -> str | None:
    """A reason these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, packet sockets)"
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def pcap_pair(*tools: str) -> Iterator[Any]:
    """For a fixture (``yield from kit.pcap_pair()``): a :func:`NetPair`, closed afterwards;
    the test is skipped without root, one of ``tools`` or the hostsflow-pcap module."""
    import importlib.util

    import pytest

    why = why_not(*tools)
    if why:
        pytest.skip(why)
    if importlib.util.find_spec("hostsflow_pcap") is None:
        pytest.skip("needs the hostsflow-pcap module installed")
    p = NetPair()
    try:
        yield p
    finally:
        p.close()


def resolver_wrapper(ns: str, resolv: Path) -> tuple[str, ...]:
    """A command prefix that runs in namespace ``ns`` with ``resolv`` bound over
    /etc/resolv.conf (in the private mount namespace ``ip netns exec`` makes; needs mount)."""
    return ("ip", "netns", "exec", ns, "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv))


def socket_in(ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket made inside namespace ``ns`` (pyroute2 forks a helper that enters it)."""
    from pyroute2 import netns

    return netns.create_socket(ns, family, kind, 0, flags=0)


def NsCollector(ns: str) -> UdpCollector:  # noqa: N802 - reads like the class it was
    """A collector on 127.0.0.1 inside namespace ``ns`` (the agent runs there)."""
    return UdpCollector(sock=socket_in(ns))


class UdpStream:
    """UDP datagrams from ``a`` to ``b`` (port ``dport``) at ``pps`` per second, in a thread,
    the socket bound to ``a``'s veth so it cannot send anywhere else.  A listener in ``b``
    swallows them (no ICMP port unreachable)."""

    def __init__(self, pair: NetPair, pps: float, dport: int = 9999, size: int = 200) -> None:
        self.pair, self.pps, self.dport, self.size = pair, pps, dport, size
        self.sink = socket_in(pair.ns_b)
        self.sink.bind((pair.ip_b, dport))
        self.sink.setblocking(False)
        self.sent = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sock(self) -> socket.socket:
        s = socket_in(self.pair.ns_a)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.pair.dev_a.encode())
        return s

    def _run(self) -> None:
        payload = b"u" * self.size
        s: socket.socket | None = None
        t0 = time.monotonic()
        batch = max(1, int(self.pps / 100))
        while not self._stop.is_set():
            if s is None:
                try:
                    s = self._sock()
                except OSError:  # the veth is being re-created
                    self._stop.wait(0.1)
                    continue
            due = (time.monotonic() - t0) * self.pps - self.sent - self.errors
            if due < batch:
                self._stop.wait(0.005)
                self._drain_sink()
                continue
            for _ in range(batch):
                try:
                    s.sendto(payload, (self.pair.ip_b, self.dport))
                    self.sent += 1
                except OSError:
                    self.errors += 1
                    s.close()
                    s = None
                    break
        if s is not None:
            s.close()

    def _drain_sink(self) -> None:
        try:
            while True:
                self.sink.recv(65536)
        except OSError:
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sink.close()


class TcpStream:
    """One TCP connection from ``a`` to a server in ``b``; the client writes ``rate`` messages
    of ``size`` bytes a second (TCP_NODELAY), the server echoes nothing and reads all."""

    def __init__(self, pair: NetPair, rate: float = 200, size: int = 1000, port: int = 8080) -> None:
        self.listener = socket_in(pair.ns_b, kind=socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((pair.ip_b, port))
        self.listener.listen(4)
        self.client = socket_in(pair.ns_a, kind=socket.SOCK_STREAM)
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, pair.dev_a.encode())
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.connect((pair.ip_b, port))
        self.server, _ = self.listener.accept()
        self.server.settimeout(0.2)
        self.rate, self.size = rate, size
        self.bytes = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, daemon=True),
                         threading.Thread(target=self._read, daemon=True)]
        for t in self._threads:
            t.start()

    def _write(self) -> None:
        msg = b"t" * self.size
        t0, n = time.monotonic(), 0
        while not self._stop.is_set():
            if n >= (time.monotonic() - t0) * self.rate:
                self._stop.wait(0.005)
                continue
            try:
                self.client.sendall(msg)
            except OSError:
                return
            n += 1

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.server.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.bytes += len(data)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for s in (self.client, self.server, self.listener):
            s.close()


def agent_cmd(conf: str, status: str, *args: str, netns: str | None = None) -> list[str]:
    """The command line of a real hostsflowd (this interpreter), optionally in a namespace."""
    cmd = [sys.executable, "-m", "hostsflow", "-f", conf, "--status-file", status, *args]
    return ["ip", "netns", "exec", netns, *cmd] if netns else cmd


def user_manager_class() -> Any:
    """``UserManager`` from the systemd module's test fixtures: a real ``systemd --user`` with
    a private dbus-daemon, and ``_why_not()`` saying why it cannot run here (or None)."""
    return load_file_module("hostsflow_systemd_tests_conftest",
                            REPO / "plugins" / "systemd" / "tests" / "conftest.py")


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def cgroup_mounts_script() -> str:
    """Shell commands that mount this host's cgroup hierarchies again under /sys/fs/cgroup
    (as listed in /proc/self/mountinfo), for a fresh /sys in a private mount namespace."""
    cmds = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mnt = fields[4]
        if not mnt.startswith("/sys/fs/cgroup"):
            continue
        fstype, super_opts = line.split(" - ", 1)[1].split()[0], line.split()[-1]
        if fstype == "tmpfs":
            cmds.append(f"mount -t tmpfs -o mode=755 tmpfs {mnt}")
        elif fstype == "cgroup2":
            cmds.append(f"mkdir -p {mnt} && mount -t cgroup2 cgroup2 {mnt}")
        elif fstype == "cgroup":
            opts = [o for o in super_opts.split(",") if o not in ("rw", "ro")]
            if all(o.startswith("name=") for o in opts):
                opts.insert(0, "none")
            cmds.append(f"mkdir -p {mnt} && mount -t cgroup -o {','.join(opts)} cgroup {mnt}")
    return "".join(f"{c} && " for c in cmds)


class NsAgent(AgentProcess):
    """A real ``hostsflowd`` in namespace ``ns`` (as :class:`hostsflow.testing.AgentProcess`),
    with the host's cgroup hierarchies visible: ``ip netns exec`` mounts a fresh /sys for the
    namespace, which hides /sys/fs/cgroup, so they are mounted again (same hierarchies) inside
    the private mount namespace ``ip netns exec`` made.  Needed by the systemd module."""

    def __init__(self, config_text: str, workdir: Path, ns: str, args: tuple[str, ...] = ()) -> None:
        wrapper = ("ip", "netns", "exec", ns, "sh", "-c",
                   f'{cgroup_mounts_script()} exec "$@"', "sh")
        super().__init__(config_text, workdir, args=args, wrapper=wrapper)
