"""What the quick-start demo tests share: a demo of unique names (scripts/demo_traffic.py run for
real), the quick start's config (scripts/quickstart-config.sh), and the reading of a real
``hostsflow view``'s JSON API for the demo's traffic."""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "scripts" / "demo_traffic.py"
CONFIG = REPO / "scripts" / "quickstart-config.sh"
WEB_PORT, UDP_PORT, NS_PORT = 8080, 8053, 8081


@attrs.define
class DemoNames:
    """The names and addresses one demo uses (the script's own defaults, or unique ones)."""

    name: str
    dev: str
    subnet: str

    @property
    def host_ip(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[1])

    @property
    def pages_ip(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[2])

    @property
    def files_ip(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[3])

    def args(self) -> list[str]:
        return ["--name", self.name, "--dev", self.dev, "--subnet", self.subnet]

    @classmethod
    def unique(cls) -> "DemoNames":
        tag = secrets.token_hex(3)
        return cls(f"hostsflow-demo-{tag}", f"hfd{tag}",
                   f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}.0/29")


def quickstart_config(mode: str, collector: str, demo_dev: str | None,
                      run: Any = None) -> str:
    """The config scripts/quickstart.sh writes for ``mode`` (``run`` runs the script elsewhere,
    e.g. inside a container; it gets the argument list and returns stdout)."""
    args = [str(CONFIG), mode, "--collector", collector]
    if demo_dev:
        args += ["--demo-dev", demo_dev]
    if run is not None:
        return run(args)
    return subprocess.run(["bash", *args], check=True, capture_output=True, text=True).stdout


def demo_command(command: str, names: DemoNames, *extra: str) -> subprocess.CompletedProcess:
    args = names.args() if command != "stop" else ["--name", names.name]
    return subprocess.run([sys.executable, str(DEMO), command, *args, *extra],
                          capture_output=True, text=True, timeout=60)


def leftovers(names: DemoNames) -> list[str]:
    """What of a demo is still here: its namespace, device, processes, state directory."""
    out = []
    if names.name in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True).stdout.split():
        out.append(f"namespace {names.name}")
    if Path(f"/sys/class/net/{names.dev}").exists():
        out.append(f"device {names.dev}")
    if Path(f"/run/{names.name}").exists():
        out.append(f"/run/{names.name}")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if str(DEMO) in args and {names.host_ip, names.pages_ip} & set(args):
            out.append(f"process {proc.name}: {' '.join(args)}")
    return out


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def flows(base: str, keys: str, filt: str = "", top: int = 50,
          span: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """The view's breakdown; ``span``: (start, end) seconds instead of its window."""
    params: dict[str, Any] = {"keys": keys, "filter": filt, "top": top}
    if span is not None:
        params.update(start=span[0], end=span[1])
    q = urllib.parse.urlencode(params)
    return get_json(f"{base}api/flows?{q}")["groups"]


@attrs.define
class DemoSeen:
    """What the view shows of the demo's traffic."""

    connections: list[dict[str, Any]]  #: TCP table rows with a demo address at the far end
    short_get_bps: float  #: pages: the short GETs from pages_ip to the web port
    download_bps: float  #: the downloads to files_ip from the web port
    udp_bps: float  #: the UDP queries and answers
    poller_bps: float  #: the poller's GETs to the namespace's server
    services: list[str]  #: the services of the view's chart

    def rtts_ms(self) -> list[float]:
        return sorted(c["rtt_ms"] for c in self.connections)

    def kinds(self, names: DemoNames) -> set[str]:
        """Which of the demo's connections the TCP table has with an RTT: ``download`` (the
        web port to files_ip), ``pages`` (the web port to pages_ip: browsing sessions, short
        GETs) and ``poller`` (this host to the namespace's server)."""
        out = set()
        for c in self.connections:
            if c["rtt_ms"] <= 0:
                continue
            local_port = int(c["local"].rsplit(":", 1)[1])
            remote_ip, remote_port = c["remote"].rsplit(":", 1)
            if local_port == WEB_PORT:
                out.add("download" if remote_ip == names.files_ip else "pages")
            elif int(remote_port) == NS_PORT:
                out.add("poller")
        return out


def demo_seen(base: str, names: DemoNames, span: tuple[int, int] | None = None) -> DemoSeen:
    """What the view shows of the demo; flows over ``span`` (start, end) if given, else over
    the view's window."""
    snap = get_json(base + "api/snapshot")
    demo_net = ipaddress.ip_network(names.subnet)
    conns = [c for c in snap["connections"]
             if ipaddress.ip_address(c["remote"].rsplit(":", 1)[0].strip("[]")) in demo_net]

    def bps(filt: str) -> float:
        return sum(g["bps"] for g in flows(base, "protocol", filt, span=span))

    return DemoSeen(
        connections=conns,
        short_get_bps=bps(f"address={names.pages_ip},port={WEB_PORT},protocol=tcp"),
        download_bps=bps(f"address={names.files_ip},port={WEB_PORT},protocol=tcp"),
        udp_bps=bps(f"address={names.pages_ip},port={UDP_PORT},protocol=udp"),
        poller_bps=bps(f"address={names.pages_ip},port={NS_PORT},protocol=tcp"),
        services=[s["label"] for s in snap["services"]],
    )


def wait_for(check: Any, timeout: float, what: str) -> Any:
    """Call ``check()`` until it returns something true; that, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
