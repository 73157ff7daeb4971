"""Packing encoded samples into datagrams, and sending them to every collector.

Behaviour as hsflowd (``sflow_receiver.c``): a datagram is sent when the next sample
would take it to ``datagramBytes`` or more (a single larger sample goes out alone), at most 64
samples per datagram, and whatever is pending is flushed once a second (on tock).  Datagram
sequence numbers start at 1; uptime is milliseconds since the exporter started.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import socket
from concurrent.futures import Executor, Future
from typing import Callable, Iterable, Protocol, Sequence

import attrs
import structlog

from ..background import LOOKUPS
from ..logsetup import OnceLog
from .datagram import encode_datagram_header

MAX_SAMPLES = 64
HEADER_ROOM = 40  # an IPv6 datagram header; IPv4 needs 28
SNDBUF = 2_000_000

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
    """One collector from the config, with its socket and where it stands.

    ``sock`` is open while the collector is sendable; ``lookup`` is the name lookup in
    progress (in a background thread); ``refusing`` means its last sends were refused (ICMP
    port or host unreachable), so it gets one probe every :data:`PROBE_SECONDS` instead of
    every datagram until a probe shows it is back."""

    host: str
    port: int = 6343
    dev: str | None = None
    sock: socket.socket | None = None
    addr: tuple | None = None  # type: ignore[type-arg]
    retry_at: float = 0.0  #: no new lookup before this time
    lookup: Future | None = None  # type: ignore[type-arg]
    unresolved: bool = False  #: the last lookup failed
    refusing: bool = False
    probe_at: float = 0.0
    probed: bool = False  #: a probe went out in this refusal: the next send's result tells
    clean_probes: int = 0  #: probes in a row not refused since then

    @property
    def key(self) -> str:
        return f"collector {self.host}:{self.port}"


PROBE_SECONDS = 0.25  # one datagram per this while a collector refuses
CLEAN_PROBES = 2  # probes in a row not refused before a refusing collector gets full rate
LOOKUP_RETRY_SECONDS = 5.0  # a name that did not resolve is looked up again after this
REOPEN_SECONDS = 1.0  # a socket closed after an unexpected error is re-opened after this
#: errors that say the collector (or the way to it) refuses now: keep the socket and probe
REFUSED = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                     errno.EHOSTDOWN, errno.ENETDOWN, errno.EPERM, errno.EACCES})
#: errors that only say this datagram did not fit (socket buffer full): drop it, carry on
FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int) -> tuple[int, tuple]:  # type: ignore[type-arg]
    """(family, address) of ``host`` (first getaddrinfo answer).  Blocking: names are resolved
    in a background thread, numeric addresses inline (no lookup happens for them)."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    return family, addr


class UdpSender:
    """Sends every datagram to every collector over UDP (IPv4 and IPv6).

    Nothing here waits on the network or on DNS: a collector named by a hostname is resolved
    in a background thread (:data:`~hostsflow.background.LOOKUPS`) and gets datagrams once its
    socket is open; until then, and while a lookup fails (retried every
    :data:`LOOKUP_RETRY_SECONDS`), its copies are not sent and count as undelivered.  A
    collector that refuses (ICMP port unreachable comes back as ECONNREFUSED on the next send
    of a connected socket) gets one probe every :data:`PROBE_SECONDS` and full rate again once
    :data:`CLEAN_PROBES` probes in a row went through unrefused.  Each fault is logged once
    while it lasts; the other collectors are not affected."""

    def __init__(self, collectors: Iterable[Collector], clock: Callable[[], float],
                 lookups: Executor = LOOKUPS) -> None:
        self.collectors = list(collectors)
        self.clock = clock
        self.lookups = lookups
        self.once = OnceLog(log)
        self.errors = 0
        self.sent = 0
        #: collectors with an open socket, in config order (a reload hands some over open)
        self.ready: list[Collector] = [c for c in self.collectors if c.sock is not None]
        self._arrived: collections.deque[Collector] = collections.deque()  # lookups done
        self._closed = False
        for c in self.collectors:  # a lookup handed over by a reload reports here now
            if c.lookup is not None:
                c.lookup.add_done_callback(lambda _f, c=c: self._arrived.append(c))
        self.tick()

    # ------------------------------------------------------------ opening sockets

    def tick(self) -> None:
        """Start the lookups that are due, open the sockets of the ones done (once a second,
        and when the sender is made)."""
        now = self.clock()
        self._take_lookups()
        if len(self.ready) == len(self.collectors):
            return
        for c in self.collectors:
            if c.sock is None and c.lookup is None and now >= c.retry_at:
                self._look_up(c)

    def _look_up(self, c: Collector) -> None:
        if _numeric(c.host):
            try:
                family, addr = _resolve(c.host, c.port)
            except OSError as exc:
                self._lookup_failed(c, exc)
                return
            self._open(c, family, addr)
            return
        c.lookup = self.lookups.submit(_resolve, c.host, c.port)
        c.lookup.add_done_callback(lambda _f, c=c: self._arrived.append(c))

    def _take_lookups(self) -> None:
        while self._arrived:
            c = self._arrived.popleft()
            future, c.lookup = c.lookup, None
            if future is None or future.cancelled() or self._closed:
                continue
            exc = future.exception()
            if exc is not None:
                self._lookup_failed(c, exc)
            else:
                self._open(c, *future.result())

    def _lookup_failed(self, c: Collector, exc: BaseException) -> None:
        c.unresolved, c.retry_at = True, self.clock() + LOOKUP_RETRY_SECONDS
        self.once.warn(c.key, "collector_unresolved", error=str(exc))

    def _open(self, c: Collector, family: int, addr: tuple) -> None:  # type: ignore[type-arg]
        if c.unresolved:
            c.unresolved = False
            self.once.clear(c.key)
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
            sock.connect(addr)  # connected: ICMP port unreachable comes back as ECONNREFUSED
        except OSError as exc:
            sock.close()
            c.retry_at = self.clock() + REOPEN_SECONDS
            self.once.warn(c.key, "collector_socket_failed", error=str(exc))
            return
        c.sock, c.addr, c.refusing, c.probed, c.clean_probes = sock, addr, False, False, 0
        self.ready = [x for x in self.collectors if x.sock is not None]

    # ------------------------------------------------------------ sending

    def send(self, datagram: bytes) -> None:
        """Send to every collector with an open socket.  The common case (no lookup just
        finished, no collector refusing, the send works) reads no clock and builds no log
        key: this runs once per datagram."""
        if self._arrived:
            self._take_lookups()
        for c in self.ready:
            if c.refusing:
                self._probe(c, datagram)
                continue
            try:
                c.sock.send(datagram)  # type: ignore[union-attr]
            except OSError as exc:
                self._send_failed(c, exc)
                continue
            self.sent += 1

    def _probe(self, c: Collector, datagram: bytes) -> None:
        """A refusing collector: one datagram per PROBE_SECONDS.  A refused send has not gone
        out (it only reported the ICMP error of the one before), so it is sent again at
        once.  CLEAN_PROBES probes in a row that were not refused (the first one after a
        transmitted probe) prove the collector is back: full rate from the next datagram.
        (Two, not one: a router may rate-limit its ICMP errors.)"""
        now = self.clock()
        if now < c.probe_at:
            return
        c.probe_at = now + PROBE_SECONDS
        sock = c.sock
        assert sock is not None
        try:
            sock.send(datagram)
        except OSError as exc:
            if exc.errno not in REFUSED:
                self._send_failed(c, exc)
                return
            self.errors += 1
            c.clean_probes = 0
            try:
                sock.send(datagram)
            except OSError:
                return
            c.probed = True
            self.sent += 1
            return
        self.sent += 1
        if c.probed:
            c.clean_probes += 1
            if c.clean_probes >= CLEAN_PROBES:
                c.refusing = c.probed = False
                c.clean_probes = 0
                self.once.clear(c.key)
        c.probed = True

    def _send_failed(self, c: Collector, exc: OSError) -> None:
        self.errors += 1
        if exc.errno in FULL:
            self.once.warn(f"{c.key} buffer", "collector_send_dropped", error=str(exc))
            return
        self.once.warn(c.key, "collector_send_failed", error=str(exc))
        if exc.errno in REFUSED:
            c.refusing, c.probed, c.clean_probes = True, False, 0
            c.probe_at = self.clock() + PROBE_SECONDS
            return
        # anything else: a new socket (and a new lookup: the name may have moved)
        if c.sock is not None:
            c.sock.close()
        c.sock, c.retry_at = None, self.clock() + REOPEN_SECONDS
        self.ready = [x for x in self.collectors if x.sock is not None]

    # ------------------------------------------------------------ figures, closing

    @property
    def unresolved(self) -> int:
        """Collectors whose name did not resolve at the last try."""
        return sum(1 for c in self.collectors if c.unresolved)

    @property
    def refusing(self) -> int:
        """Collectors whose sends are refused now (probed, not fed)."""
        return sum(1 for c in self.ready if c.refusing)

    def close(self, keep: Iterable[Collector] = ()) -> None:
        """Close the sockets and cancel the lookups still queued (never waits for one), except
        for the collectors in ``keep`` (handed over to a new sender)."""
        self._closed = True
        kept = {id(c) for c in keep}
        for c in self.collectors:
            if id(c) in kept:
                continue
            if c.lookup is not None:
                c.lookup.cancel()
                c.lookup = None
            if c.sock is not None:
                c.sock.close()
                c.sock = None
        self.ready = []


class RecordingSink:
    """Keeps every datagram in memory (the testing kit and ``--test`` use it)."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def send(self, datagram: bytes) -> None:
        self.datagrams.append(datagram)

    def close(self) -> None:
        pass
