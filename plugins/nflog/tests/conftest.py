"""Real network namespaces for the NFLOG tests: two namespaces joined by a veth pair.

Every name carries the pid and a random suffix; everything is deleted in ``finally``.  Traffic
only flows between the two namespaces (10.231.0.0/24) and on their loopbacks.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest


def _need_root_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and nfnetlink_log")
    missing = [t for t in ("ip", *tools) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (apt-get install iproute2 nftables "
                    "iptables ethtool)")


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


@attrs.define
class NetPair:
    """Namespace ``a`` (10.231.0.1 on ``va``) and ``b`` (10.231.0.2 on ``vb``)."""

    a: str
    b: str
    ip_a: str = "10.231.0.1"
    ip_b: str = "10.231.0.2"
    ifindex_a: int = 0
    ifindex_b: int = 0
    mac_a: bytes = b""
    mac_b: bytes = b""

    def udp_socket(self, ns: str) -> socket.socket:
        """A UDP socket living in namespace ``ns`` (made there with setns, used from here)."""
        from pyroute2 import netns

        netns.pushns(ns)  # raises if ns does not exist; moves this thread only
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            netns.popns()

    def send(self, ns: str, dst: str, port: int | list[int], count: int, size: int = 64,
             dev: str | None = None) -> int:
        """Send ``count`` UDP datagrams of ``size`` payload bytes from ``ns`` (cycling over
        ``port`` if it is a list); returns how many the kernel accepted.  The socket is bound
        to ``dev`` (default: this namespace's veth end) with SO_BINDTODEVICE, so a socket that
        somehow was not made in ``ns`` fails instead of sending anywhere else."""
        dev = dev or ("va" if ns == self.a else "vb")
        s = self.udp_socket(ns)
        ports = port if isinstance(port, list) else [port]
        payload = b"s" * size
        sent = 0
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
            for i in range(count):
                try:
                    s.sendto(payload, (dst, ports[i % len(ports)]))
                    sent += 1
                except OSError:  # ECONNREFUSED from an earlier ICMP port unreachable
                    pass
        finally:
            s.close()
        return sent


def _link(ns: str, dev: str) -> dict[str, Any]:
    return json.loads(sh("ip", "-n", ns, "-j", "link", "show", dev))[0]  # type: ignore[no-any-return]


@pytest.fixture
def netpair() -> Iterator[NetPair]:
    _need_root_tools()
    tag = f"{os.getpid()}{secrets.token_hex(2)}"
    pair = NetPair(f"hsfnflA{tag}", f"hsfnflB{tag}")
    made: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", pair.a, "link", "add", "va", "type", "veth", "peer", "name", "vb",
           "netns", pair.b)
        sh("ip", "-n", pair.a, "addr", "add", f"{pair.ip_a}/24", "dev", "va")
        sh("ip", "-n", pair.b, "addr", "add", f"{pair.ip_b}/24", "dev", "vb")
        sh("ip", "-n", pair.a, "link", "set", "va", "up")
        sh("ip", "-n", pair.b, "link", "set", "vb", "up")
        if shutil.which("ethtool"):
            for ns, dev in ((pair.a, "va"), (pair.b, "vb")):
                sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off",
                   check=False)
        la, lb = _link(pair.a, "va"), _link(pair.b, "vb")
        pair.ifindex_a, pair.ifindex_b = la["ifindex"], lb["ifindex"]
        pair.mac_a = bytes.fromhex(la["address"].replace(":", ""))
        pair.mac_b = bytes.fromhex(lb["address"].replace(":", ""))
        # neighbours resolved up front, so no sampled packet is held behind ARP
        sh("ip", "netns", "exec", pair.a, "ping", "-c", "1", "-W", "2", pair.ip_b, check=False)
        yield pair
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture
def need_tools() -> Callable[..., None]:
    return _need_root_tools
