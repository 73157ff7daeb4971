"""Packing encoded samples into datagrams, and sending them to every collector.

Behaviour as hsflowd (``sflow_receiver.c``): a datagram is sent when the next sample
would take it to ``datagramBytes`` or more (a single larger sample goes out alone), at most 64
samples per datagram, and whatever is pending is flushed once a second (on tock).  Datagram
sequence numbers start at 1; uptime is milliseconds since the exporter started.
"""

from __future__ import annotations

import socket
from typing import Callable, Iterable, Protocol, Sequence

import attrs
import structlog

from ..logsetup import OnceLog
from .datagram import encode_datagram_header

MAX_SAMPLES = 64
HEADER_ROOM = 40  # an IPv6 datagram header; IPv4 needs 28
SNDBUF = 2_000_000
RECOVERED_AFTER = 2  # good sends in a row before a collector fault counts as over

log = structlog.get_logger("hostsflow.exporter")


class Sink(Protocol):
    """Where finished datagrams go: the UDP sender, or a recorder in tests and --test."""

    def send(self, datagram: bytes) -> None: ...

    def close(self) -> None: ...


@attrs.define
class Exporter:
    """Builds datagrams from encoded samples and hands them to a sink."""

    sink: Sink
    agent_address: str
    sub_agent_id: int
    max_bytes: int
    clock: Callable[[], float]
    sequence: int = 0
    started: float = attrs.field(init=False)
    pending: list[bytes] = attrs.Factory(list)
    size: int = HEADER_ROOM
    datagrams: int = 0
    samples: int = 0

    def __attrs_post_init__(self) -> None:
        self.started = self.clock()

    def add(self, sample: bytes) -> None:
        """Queue one encoded sample; send first if it would not fit."""
        self.add_all((sample,))

    def add_all(self, samples: Sequence[bytes]) -> None:
        """Queue encoded samples in order, sending each datagram as it fills.  (Once per
        capture batch or per sample; the loop keeps the pending list and size in locals.)"""
        pending, size, limit = self.pending, self.size, self.max_bytes
        for sample in samples:
            n = len(sample)
            if pending and (size + n >= limit or len(pending) >= MAX_SAMPLES):
                self.size = size
                self.flush()
                pending, size = self.pending, self.size
            pending.append(sample)
            size += n
        self.size = size
        self.samples += len(samples)

    def flush(self) -> None:
        """Send whatever is pending as one datagram."""
        if not self.pending:
            return
        pending = self.pending
        self.sequence += 1
        uptime = int((self.clock() - self.started) * 1000)
        pending.insert(0, encode_datagram_header(
            self.agent_address, self.sub_agent_id, self.sequence, uptime, len(pending)))
        data = b"".join(pending)
        self.pending = []
        self.size = HEADER_ROOM
        self.datagrams += 1
        self.sink.send(data)

    def restart(self, agent_address: str) -> None:
        """A new agent address: flush, then start a new stream (sequence and uptime from 0)."""
        self.flush()
        self.agent_address = agent_address
        self.sequence = 0
        self.started = self.clock()


@attrs.define
class Collector:
    """One collector from the config, with its socket (opened lazily, re-opened after errors)."""

    host: str
    port: int = 6343
    dev: str | None = None
    sock: socket.socket | None = None
    addr: tuple | None = None  # type: ignore[type-arg]
    retry_at: float = 0.0
    faulty: bool = False  #: a fault was logged and has not been followed by good sends yet
    good_sends: int = 0  #: sends that went through since the last fault

    @property
    def key(self) -> str:
        return f"collector {self.host}:{self.port}"


class UdpSender:
    """Sends every datagram to every collector over UDP (IPv4 and IPv6).

    A collector whose name does not resolve, or whose socket errors (ICMP port unreachable
    comes back as ECONNREFUSED on the next send), is logged once while the fault lasts, counted,
    and retried a few seconds later; the other collectors are not affected."""

    RETRY_SECONDS = 7.0

    def __init__(self, collectors: Iterable[Collector], clock: Callable[[], float]) -> None:
        self.collectors = list(collectors)
        self.clock = clock
        self.once = OnceLog(log)
        self.errors = 0
        self.sent = 0

    def _open(self, c: Collector) -> bool:
        try:
            infos = socket.getaddrinfo(c.host, c.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            self.once.warn(c.key, "collector_unresolved", error=str(exc))
            return False
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            if c.dev:
                ifindex = socket.if_nametoindex(c.dev)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, 76, ifindex)  # IPV6_UNICAST_IF
                else:
                    sock.setsockopt(socket.IPPROTO_IP, 50, ifindex.to_bytes(4, "big"))  # IP_UNICAST_IF
        except OSError as exc:
            sock.close()
            self.once.warn(c.key, "collector_socket_failed", error=str(exc))
            return False
        try:
            sock.connect(addr)  # connected: ICMP port unreachable comes back as ECONNREFUSED
        except OSError as exc:
            sock.close()
            self.once.warn(c.key, "collector_unreachable", error=str(exc))
            return False
        c.sock, c.addr = sock, addr
        return True

    def send(self, datagram: bytes) -> None:
        """Send to every collector.  The common case (socket open, send works) reads no clock
        and builds no log key: this runs once per datagram."""
        for c in self.collectors:
            sock = c.sock
            if sock is None:
                now = self.clock()
                if now < c.retry_at:
                    continue
                if not self._open(c):  # retry from the failed attempt, not from every send
                    c.retry_at, c.faulty, c.good_sends = now + self.RETRY_SECONDS, True, 0
                    continue
                sock = c.sock
            try:
                sock.send(datagram)  # type: ignore[union-attr]
            except OSError as exc:
                self.errors += 1
                self.once.warn(c.key, "collector_send_failed", error=str(exc))
                sock.close()  # type: ignore[union-attr]
                c.sock, c.retry_at, c.faulty = None, self.clock() + self.RETRY_SECONDS, True
                c.good_sends = 0
                continue
            self.sent += 1
            if c.faulty:
                # A closed port refuses only the *next* send on a connected socket (the ICMP
                # error arrives late), so one good send proves nothing: the fault is over, and
                # the next one is logged again, once a second send went through as well.
                c.good_sends += 1
                if c.good_sends >= RECOVERED_AFTER:
                    c.faulty, c.good_sends = False, 0
                    self.once.clear(c.key)

    def close(self) -> None:
        for c in self.collectors:
            if c.sock is not None:
                c.sock.close()
                c.sock = None


class RecordingSink:
    """Keeps every datagram in memory (the testing kit and ``--test`` use it)."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def send(self, datagram: bytes) -> None:
        self.datagrams.append(datagram)

    def close(self) -> None:
        pass
