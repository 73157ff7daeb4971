"""Fixtures for the tcp module's tests: two network namespaces joined by a veth pair (offloads
off), sockets and raw capture sockets made inside them, ``ss`` and ``nft``/``tc`` helpers.

Everything is created with unique names and removed in ``finally``; traffic stays inside the
namespaces."""

from __future__ import annotations

import os
import random
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hostsflow.samples import DIRECTION_RECEIVED, DIRECTION_SENT, DataSource, FlowSample
from hostsflow.sflow.records import SampledHeader

PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (ip)")


def sh(*cmd: str, check: bool = True) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def in_netns(path: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a helper thread that entered the namespace at ``path``; sockets it makes
    stay in that namespace."""
    from hostsflow.sockets.channel import CLONE_NEWNET, setns

    out: list[Any] = []
    fd = os.open(path, os.O_RDONLY)

    def run() -> None:
        try:
            setns(fd, CLONE_NEWNET)
            out.append(("ok", fn()))
        except BaseException as exc:  # handed back to the caller
            out.append(("err", exc))

    try:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    finally:
        os.close(fd)
    kind, val = out[0]
    if kind == "err":
        raise val
    return val


@attrs.define
class Pair:
    """Namespaces ``a`` (the "host" whose sockets are looked up) and ``b`` (the peer)."""

    a: str
    b: str
    va: str
    vb: str
    a4: str
    b4: str
    a6: str
    b6: str

    @property
    def pa(self) -> str:
        return f"/var/run/netns/{self.a}"

    @property
    def pb(self) -> str:
        return f"/var/run/netns/{self.b}"

    def ns(self, side: str) -> str:
        return self.a if side == "a" else self.b

    def path(self, side: str) -> str:
        return self.pa if side == "a" else self.pb

    def run(self, side: str, fn: Callable[[], Any]) -> Any:
        return in_netns(self.path(side), fn)

    def exec(self, side: str, *cmd: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.ns(side), *cmd, check=check)

    def va_index(self) -> int:
        return int(self.exec("a", "cat", f"/sys/class/net/{self.va}/ifindex").strip())

    def connect(self, family: int = socket.AF_INET, cc: str | None = None,
                mapped: bool = False) -> tuple[socket.socket, socket.socket, socket.socket]:
        """A TCP connection from a client in ``a`` to a server in ``b``: (client, server,
        listener).  ``mapped``: the client is an AF_INET6 socket talking IPv4 (v4-mapped)."""
        v6 = family == socket.AF_INET6

        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
            s.bind((self.b6 if v6 else self.b4, 0))
            s.listen(16)
            return s

        lst = self.run("b", listen)
        port = lst.getsockname()[1]

        def dial() -> socket.socket:
            if mapped:
                c = socket.socket(socket.AF_INET6)
                c.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                if cc:
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
                c.connect(("::ffff:" + self.b4, port))
                return c
            c = socket.socket(family)
            if cc:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
            c.connect((self.b6 if v6 else self.b4, port))
            return c

        cli = self.run("a", dial)
        srv, _ = lst.accept()
        return cli, srv, lst


@pytest.fixture(scope="session")
def pair():
    _need_root()
    tag = f"{os.getpid() % 100000}{random.randint(10, 99)}"
    net = random.randint(1, 250)
    p = Pair(a=f"sfT-tcp-{tag}-a", b=f"sfT-tcp-{tag}-b", va=f"vt{tag}a", vb=f"vt{tag}b",
             a4=f"10.213.{net}.1", b4=f"10.213.{net}.2",
             a6=f"fd13:{net:x}::1", b6=f"fd13:{net:x}::2")
    try:
        sh("ip", "netns", "add", p.a)
        sh("ip", "netns", "add", p.b)
        sh("ip", "link", "add", p.va, "netns", p.a, "type", "veth", "peer", "name", p.vb,
           "netns", p.b)
        for side, dev, a4, a6 in (("a", p.va, p.a4, p.a6), ("b", p.vb, p.b4, p.b6)):
            p.exec(side, "ip", "link", "set", "lo", "up")
            p.exec(side, "ip", "addr", "add", f"{a4}/24", "dev", dev)
            p.exec(side, "ip", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            p.exec(side, "ip", "link", "set", dev, "up")
            if shutil.which("ethtool"):
                p.exec(side, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
                       check=False)
        yield p
    finally:
        sh("ip", "netns", "del", p.a, check=False)
        sh("ip", "netns", "del", p.b, check=False)


# ---------------------------------------------------------------- traffic and capture


class Pump:
    """Send bulk data ``src -> dst`` in a thread (and drain it at ``dst``) until stopped."""

    def __init__(self, src: socket.socket, dst: socket.socket, chunk: int = 16384,
                 total: int | None = None) -> None:
        self.src, self.dst, self.chunk, self.total = src, dst, chunk, total
        self.sent = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._recv, daemon=True)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        buf = b"\x5a" * self.chunk
        self.src.settimeout(0.2)
        while not self.stop.is_set() and (self.total is None or self.sent < self.total):
            try:
                self.sent += self.src.send(buf)
            except TimeoutError:
                continue
            except OSError:
                break

    def _recv(self) -> None:
        self.dst.settimeout(0.2)
        while not self.stop.is_set():
            try:
                if not self.dst.recv(1 << 20):
                    break
            except TimeoutError:
                continue
            except OSError:
                break

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


class Capture:
    """A raw AF_PACKET socket on ``a``'s veth: real frames, with their direction."""

    def __init__(self, pair: Pair) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((pair.va, 0))
            return s

        self.sock = pair.run("a", make)
        self.sock.setblocking(False)
        self.ifindex = pair.va_index()

    def frames(self, want: Callable[[bytes], bool], n: int, timeout: float = 5.0
               ) -> list[tuple[bytes, int]]:
        """Up to ``n`` frames that satisfy ``want``: (frame, pkttype)."""
        out: list[tuple[bytes, int]] = []
        end = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < end:
            if not select.select([self.sock], [], [], 0.1)[0]:
                continue
            while len(out) < n:
                try:
                    data, addr = self.sock.recvfrom(65536)
                except BlockingIOError:
                    break
                if want(data):
                    out.append((data, addr[2]))
        return out

    def close(self) -> None:
        self.sock.close()


def tcp_ports(frame: bytes) -> tuple[int, int] | None:
    """(sport, dport) of an Ethernet/IPv4-or-IPv6 TCP frame, else None."""
    et = int.from_bytes(frame[12:14], "big")
    if et == 0x0800 and frame[23] == 6:
        off = 14 + (frame[14] & 0xF) * 4
    elif et == 0x86DD and frame[20] == 6:
        off = 54
    else:
        return None
    return int.from_bytes(frame[off:off + 2], "big"), int.from_bytes(frame[off + 2:off + 4], "big")


def udp_ports(frame: bytes) -> tuple[int, int] | None:
    et = int.from_bytes(frame[12:14], "big")
    if et == 0x0800 and frame[23] == 17:
        off = 14 + (frame[14] & 0xF) * 4
    elif et == 0x86DD and frame[20] == 17:
        off = 54
    else:
        return None
    return int.from_bytes(frame[off:off + 2], "big"), int.from_bytes(frame[off + 2:off + 4], "big")


def flow_filter(port: int, ports: Callable[[bytes], Any] = tcp_ports) -> Callable[[bytes], bool]:
    def want(frame: bytes) -> bool:
        p = ports(frame)
        return p is not None and port in p
    return want


def to_sample(frame: bytes, pkttype: int, ifindex: int, netns: str | None) -> FlowSample:
    """A flow sample of a captured frame, as a capture plugin would make it."""
    return FlowSample(
        source=DataSource(0, ifindex),
        sampling_rate=1,
        records=[SampledHeader(1, len(frame) + 4, 4, frame[:128])],
        direction=DIRECTION_SENT if pkttype == PACKET_OUTGOING else DIRECTION_RECEIVED,
        netns=netns,
    )


# ---------------------------------------------------------------- ss


def ss_info(pair: Pair, side: str, local: str, lport: int, remote: str, rport: int) -> dict[str, float]:
    """``ss -tin`` for one socket: rtt, rttvar (µs), mss, rcvmss, pmtu, cwnd, total_retrans."""
    def ep(a: str, p: int) -> str:
        return f"[{a}]:{p}" if ":" in a else f"{a}:{p}"

    out = pair.exec(side, "ss", "-tinH", "src", ep(local, lport), "dst", ep(remote, rport))
    text = " ".join(out.split())
    res: dict[str, float] = {}
    m = re.search(r"\brtt:([\d.]+)/([\d.]+)", text)
    if m:
        res["rtt"], res["rttvar"] = float(m.group(1)) * 1000, float(m.group(2)) * 1000
    for key in ("mss", "rcvmss", "pmtu", "cwnd"):
        m = re.search(rf"\b{key}:(\d+)", text)
        if m:
            res[key] = int(m.group(1))
    m = re.search(r"\bretrans:\d+/(\d+)", text)
    res["total_retrans"] = int(m.group(1)) if m else 0
    m = re.search(r"\bminrtt:([\d.]+)", text)
    if m:
        res["minrtt"] = float(m.group(1)) * 1000
    return res


@pytest.fixture
def kit():
    """The helpers above, for test modules (conftest is not importable under importlib mode)."""
    import types

    return types.SimpleNamespace(Pump=Pump, Capture=Capture, tcp_ports=tcp_ports,
                                 udp_ports=udp_ports, flow_filter=flow_filter,
                                 to_sample=to_sample, ss_info=ss_info, in_netns=in_netns, sh=sh)
