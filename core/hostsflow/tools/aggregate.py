"""Traffic by service from an sFlow stream: the numbers behind ``hostsflow view`` and ``top``.

A collector-side aggregator on the same decoder as ``hostsflow decode``.  It works with any
agent that sends ``extended_entities`` (0:2210) with its flow samples (hostsflow's
``systemd { markTraffic = on }``, hsflowd's mod_systemd):

* **Service names** come from counter samples: the ``host_descr`` (0:2000) hostname of every
  ``3:dsIndex`` data source, kept per agent (agent address and sub-agent id).
* **Flow samples** become estimates: each sample stands for ``sampling_rate`` packets and
  ``frame_length * sampling_rate`` bytes.  A sample whose extended_entities names a service as
  destination counts for that service's **in** direction, as source for its **out** direction
  (service-to-service traffic counts for both).  A sample naming no service is **other**.
* The estimates are added into one bucket per wall-clock second, per service and direction,
  per (protocol, service-side port) and per remote address; :meth:`Aggregator.snapshot` turns
  the last ``window`` complete seconds into rates (bits/s, packets/s).
* TCP connections: a flow sample that carries ``extended_tcp_info`` (0:2209) updates the
  connection's latest RTT, retransmissions and so on; its bytes are windowed like the rest.
* Every flow sample also goes into a :class:`~hostsflow.tools.flows.FlowHistory` by the keys
  sFlow carries (agent, services, protocol, addresses, ports), for the view's breakdown.

The senders are not trusted (sFlow has no authentication): every table a sender can grow is
bounded and expires (services, in all and per agent, and agents by
:class:`~hostsflow.tools.keytable.KeyTable`, the per-second tables by a cap on their keys); a key that does not fit is counted in ``stats``
(``services_refused``, ``agents_refused``, ``keys_refused``; a datagram from an agent that does
not fit is skipped) and a snapshot costs O(keys).  ``--allow`` (:class:`.allow.SourceFilter`)
takes datagrams only from listed networks.  Malformed datagrams are counted
(``stats.malformed``) and skipped; nothing here raises on bad input.  Not thread-safe: feed and
read from one thread (the view and top use one asyncio loop).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import socket
import time
from collections.abc import Callable
from typing import Any

import attrs

from ..packet import IPPROTO_TCP
from ..sflow.datagram import Datagram, DecodedCounterSample, SflowDecodeError
from ..sflow.records import TCP_DIR_RECEIVED, TCP_DIR_SENT, ExtendedTcpInfo, HostDescr
from .allow import SourceFilter
from .flow_rows import SERVICE_CLASS, AgentKey, CollectorDatagram, FlowRow, read_datagram, rows_of
from .flows import PACKETS_BITS, FlowHistory, unpack
from .keytable import KeyTable
IN, OUT = "in", "out"
DEFAULT_WINDOW = 5.0
DEFAULT_HISTORY = 300  # seconds of per-second points kept for the chart
CONNECTION_TTL = 30.0  # seconds a TCP connection stays listed after its last sample
MAX_CONNECTIONS = 4096
MAX_KEYS_PER_BUCKET = 4096  # (service, protocol, port) and (service, remote) keys in one second
MAX_SERVICES = 4096  # services (all agents together) known at once
#: services of one agent known at once (a host runs tens to a few hundred services), so one
#: sender flooding names leaves room for the services of the others
MAX_SERVICES_PER_AGENT = 512
MAX_AGENTS = 1024
#: seconds a service or agent stays known after its last counter or flow sample (hsflowd polls
#: every 30 s by default; a service is listed at zero for a while after its traffic stops)
SERVICE_TTL = 600.0
SNAPSHOT_SERVICES = 100  # services listed in a snapshot (the rest summed in ``more``)
CHART_SERVICES = 12  # services drawn in a chart point (the rest summed in ``more``)

PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite"}

#: (agent key, dsIndex) of a service data source
ServiceId = tuple[AgentKey, int]


def protocol_name(proto: int) -> str:
    """``tcp`` for 6, ``udp`` for 17, ...; the number as text for the rest."""
    return PROTOCOL_NAMES.get(proto, str(proto))


@attrs.define(slots=True)
class AggregatorStats:
    """What the aggregator was fed: datagrams (and malformed ones), flow samples, flow samples
    that named a service, flow samples without a usable sampled_header, counter samples."""

    datagrams: int = 0
    malformed: int = 0
    flow_samples: int = 0
    marked_samples: int = 0
    headerless_samples: int = 0
    counter_samples: int = 0
    #: datagrams from a sender outside ``--allow`` (not decoded)
    sources_refused: int = 0
    #: new service names / agents turned away because their table was full (a flood of keys)
    services_refused: int = 0
    agents_refused: int = 0
    #: per-second protocol, remote, connection and flow keys turned away (table full)
    keys_refused: int = 0


class _Bucket:
    """The estimates of one wall-clock second per key, each ``bytes << PACKETS_BITS |
    packets`` in one int (as the flow history keeps them: ints are not walked by Python's
    garbage collector, lists are); ``other`` and ``total`` are [bytes, packets]."""

    __slots__ = ("conn", "other", "proto", "remote", "second", "service", "total")

    def __init__(self, second: int) -> None:
        self.second = second
        self.service: dict[tuple[ServiceId, str], int] = {}
        self.proto: dict[tuple[ServiceId, str, str, int], int] = {}
        self.remote: dict[tuple[ServiceId, str, str], int] = {}
        self.conn: dict[tuple[Any, ...], int] = {}
        self.other = [0, 0]
        self.total = [0, 0]


class _WindowSums:
    """Running totals over the complete seconds of the window: a second is added once, when a
    newer one exists (no sample can reach it then), and taken off when it leaves the window, so
    a snapshot does not sum every second again.  The newest second is added on top at each
    snapshot (the one second that may still change)."""

    def __init__(self) -> None:
        self.sums = _Bucket(0)
        self.held: list[_Bucket] = []

    @staticmethod
    def _tables(b: _Bucket) -> tuple[dict[Any, int], ...]:
        return (b.service, b.proto, b.remote, b.conn)

    def _apply(self, b: _Bucket, sign: int) -> None:
        for table, into in zip(self._tables(b), self._tables(self.sums)):
            for k, packed in table.items():
                cell = into.get(k, 0) + sign * packed  # packed sums add up as their parts
                if cell:
                    into[k] = cell
                else:
                    del into[k]
        for mine, theirs in ((self.sums.other, b.other), (self.sums.total, b.total)):
            mine[0] += sign * theirs[0]
            mine[1] += sign * theirs[1]

    def over(self, chosen: list[_Bucket], newest: _Bucket | None) -> _Bucket:
        """The sums of ``chosen`` (the seconds of the window); ``newest`` is the bucket that
        may still change.  The result is only read."""
        settled = [b for b in chosen if b is not newest]
        want = {id(b) for b in settled}
        kept = []
        for b in self.held:
            if id(b) in want:
                kept.append(b)
            else:
                self._apply(b, -1)
        have = {id(b) for b in kept}
        for b in settled:
            if id(b) not in have:
                self._apply(b, +1)
                kept.append(b)
        self.held = kept
        if newest is None or all(b is not newest for b in chosen):
            return self.sums
        out = _Bucket(0)
        for table, base, into in zip(self._tables(newest), self._tables(self.sums),
                                     self._tables(out)):
            into.update(base)
            for k, packed in table.items():
                into[k] = into.get(k, 0) + packed
        out.other = [self.sums.other[0] + newest.other[0], self.sums.other[1] + newest.other[1]]
        out.total = [self.sums.total[0] + newest.total[0], self.sums.total[1] + newest.total[1]]
        return out


@attrs.define(slots=True)
class Connection:
    """The latest state of one TCP connection, as its extended_tcp_info samples tell it.

    ``local``/``remote`` are ``ip:port`` text from the sampled socket's point of view (the
    receiving end for ``dir`` = received, the sending end for ``dir`` = sent)."""

    agent: AgentKey
    service: ServiceId | None
    local: str
    remote: str
    rtt_us: int = 0
    rttvar_us: int = 0
    min_rtt_us: int = 0
    retrans: int = 0
    lost: int = 0
    unacked: int = 0
    snd_cwnd: int = 0
    snd_mss: int = 0
    last_seen: float = 0.0
    samples: int = 0


@attrs.define(slots=True)
class Rate:
    """Bits and packets per second."""

    bps: float = 0.0
    pps: float = 0.0


@attrs.define(slots=True)
class ServiceRates:
    """One service's rates over the window: ``label`` is the unit name (prefixed with the agent
    when more than one agent is heard); ``index`` its dsIndex."""

    label: str
    agent: str
    index: int
    inbound: Rate
    outbound: Rate

    @property
    def bps(self) -> float:
        return self.inbound.bps + self.outbound.bps

    @property
    def pps(self) -> float:
        return self.inbound.pps + self.outbound.pps


@attrs.define(slots=True)
class KeyedRate:
    """A rate for one service, direction and key (``tcp/8080`` or a remote address)."""

    service: str
    direction: str
    key: str
    bps: float
    pps: float


@attrs.define(slots=True)
class ConnectionRates:
    """A TCP connection with its rate over the window and its latest TCP state."""

    service: str
    local: str
    remote: str
    bps: float
    pps: float
    rtt_ms: float
    rttvar_ms: float
    min_rtt_ms: float
    retrans: int
    lost: int
    snd_cwnd: int
    age: float


@attrs.define(slots=True)
class Snapshot:
    """Everything the view and top show at one moment.  ``time`` is wall-clock seconds;
    ``span`` the seconds the rates were averaged over (less than ``window`` just after start);
    lists are sorted by rate, highest first."""

    time: float
    window: float
    span: float
    services: list[ServiceRates]
    other: Rate
    total: Rate
    protocols: list[KeyedRate]
    remotes: list[KeyedRate]
    connections: list[ConnectionRates]
    agents: dict[str, str]
    stats: AggregatorStats
    #: services known (``services`` lists at most SNAPSHOT_SERVICES of them, highest first)
    services_total: int = 0
    #: the traffic of the known services not in ``services``
    more: Rate = attrs.Factory(Rate)

    def service(self, label: str) -> ServiceRates | None:
        """The rates of the service called ``label``, or None."""
        return next((s for s in self.services if s.label == label), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (rates rounded; services with ``in``/``out`` and totals)."""
        def rate(r: Rate) -> dict[str, float]:
            return {"bps": round(r.bps, 1), "pps": round(r.pps, 2)}

        return {
            "time": self.time, "window": self.window, "span": self.span,
            "services": [
                {"label": s.label, "agent": s.agent, "index": s.index, "in": rate(s.inbound),
                 "out": rate(s.outbound), "bps": round(s.bps, 1), "pps": round(s.pps, 2)}
                for s in self.services],
            "other": rate(self.other), "total": rate(self.total),
            "protocols": [attrs.asdict(p) for p in self.protocols],
            "remotes": [attrs.asdict(p) for p in self.remotes],
            "connections": [attrs.asdict(c) for c in self.connections],
            "agents": dict(self.agents),
            "stats": attrs.asdict(self.stats),
            "services_total": self.services_total, "more": rate(self.more),
        }


class Aggregator:
    """Per-service traffic estimates over a sliding window of ``window`` seconds.

    ``feed(data)`` takes one raw datagram (``feed_datagram`` a decoded one); ``snapshot()``
    gives the rates; ``tick()`` (once a second) records a point of per-service rates into
    ``history`` for the chart; ``flows`` keeps the last ``history`` seconds by flow key.
    ``clock`` gives wall-clock seconds (tests pass their own).  ``max_services``,
    ``max_services_per_agent`` and ``max_agents`` bound what senders can make it remember
    (refusals are counted)."""

    def __init__(self, window: float = DEFAULT_WINDOW, history: int = DEFAULT_HISTORY,
                 clock: Callable[[], float] = time.time, max_services: int = MAX_SERVICES,
                 max_agents: int = MAX_AGENTS, allow: SourceFilter | None = None,
                 max_services_per_agent: int = MAX_SERVICES_PER_AGENT) -> None:
        if window < 1:
            raise ValueError("window must be at least 1 second")
        self.window = float(window)
        self.clock = clock
        self.stats = AggregatorStats()
        #: service -> its unit name (None until its counter samples arrive)
        self.services: KeyTable[ServiceId, str | None] = KeyTable(
            max_services, SERVICE_TTL, per_group=min(max_services_per_agent, max_services),
            group=_agent_of)
        #: agent -> hostname (from its 2:1 host_descr; "" until then)
        self.agent_names: KeyTable[AgentKey, str] = KeyTable(max_agents, SERVICE_TTL)
        self.connections: dict[tuple[Any, ...], Connection] = {}
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self.flows = FlowHistory(history)
        self.allow = allow
        self._buckets: collections.deque[_Bucket] = collections.deque()
        self._sums = _WindowSums()
        self._keep = int(window) + 2
        self._first: float | None = None

    @property
    def names(self) -> dict[ServiceId, str]:
        """Service -> unit name, for the services whose counter samples arrived."""
        return {k: v for k, v in self.services.items() if v is not None}

    @property
    def agents(self) -> dict[AgentKey, str]:
        """Agent -> hostname, for the agents whose host counters arrived."""
        return {k: v for k, v in self.agent_names.items() if v}

    # ------------------------------------------------------------ input

    def accepts(self, source: str) -> bool:
        """Whether datagrams from the sender address ``source`` are taken (``--allow``);
        a refusal is counted in ``stats.sources_refused``."""
        if self.allow is None or self.allow.allows(source):
            return True
        self.stats.sources_refused += 1
        return False

    def feed(self, data: bytes, now: float | None = None) -> bool:
        """Read one datagram and add it; False (and counted) if it is malformed."""
        try:
            read = read_datagram(data)
        except SflowDecodeError:
            self.stats.datagrams += 1
            self.stats.malformed += 1
            return False
        self.feed_read(read, now)
        return True

    def feed_datagram(self, dgram: Datagram, now: float | None = None) -> None:
        """Add an already decoded datagram (the same as :meth:`feed` of its bytes)."""
        self.feed_read(rows_of(dgram), now)

    def feed_read(self, read: CollectorDatagram, now: float | None = None) -> None:
        """Add a datagram as :mod:`.flow_rows` reads it: learn service names from its counter
        samples, then add its flow samples to the bucket of the current second."""
        now = self.clock() if now is None else now
        if self._first is None:
            self._first = now
        self.stats.datagrams += 1
        agent = read.agent
        if not self._touch_agent(agent, "", now):
            return
        for sample in read.counters:
            self.stats.counter_samples += 1
            self._learn(agent, sample, now)
        if read.rows:
            bucket = self._bucket(now)
            for row in read.rows:
                self._add_flow(agent, row, bucket, now)

    def seconds(self) -> collections.deque[_Bucket]:
        """The kept per-second buckets, oldest first (``second``; ``service``:
        ``{(service, direction): bytes << PACKETS_BITS | packets}``); only the newest may still
        change."""
        return self._buckets

    def _touch_agent(self, agent: AgentKey, hostname: str, now: float) -> bool:
        table = self.agent_names
        if agent in table:
            table.put(agent, hostname or table.values[agent], now)
            return True
        if table.put(agent, hostname, now):
            return True
        self.stats.agents_refused += 1
        return False

    def _learn(self, agent: AgentKey, sample: DecodedCounterSample, now: float) -> None:
        descr = sample.record(HostDescr)
        if descr is None:
            return
        src = sample.source
        if src.ds_class == SERVICE_CLASS:
            if not self.services.put((agent, src.ds_index), descr.hostname, now):  # type: ignore[attr-defined]
                self.stats.services_refused += 1
        elif src.ds_class == 2 and src.ds_index == 1:
            self._touch_agent(agent, descr.hostname, now)  # type: ignore[attr-defined]

    def _known(self, svc: ServiceId, now: float) -> bool:
        """Mark a service heard from a flow sample (added unnamed if new and there is room)."""
        if self.services.touch(svc, None, now):
            return True
        self.stats.services_refused += 1
        return False

    def _bucket(self, now: float) -> _Bucket:
        second = int(now)
        buckets = self._buckets
        if buckets and buckets[-1].second == second:
            return buckets[-1]
        if buckets and buckets[-1].second > second:  # clock stepped back: add to the newest
            return buckets[-1]
        bucket = _Bucket(second)
        buckets.append(bucket)
        while buckets and buckets[0].second < second - self._keep:
            buckets.popleft()
        return bucket

    def _add_keyed(self, table: dict[Any, int], key: Any, packed: int) -> None:
        """Add ``bytes << PACKETS_BITS | packets`` to a per-second table unless it is full of
        other keys (then counted)."""
        cell = table.get(key)
        if cell is not None:
            table[key] = cell + packed
        elif len(table) < MAX_KEYS_PER_BUCKET:
            table[key] = packed
        else:
            self.stats.keys_refused += 1

    def _add_flow(self, agent: AgentKey, row: FlowRow, bucket: _Bucket, now: float) -> None:
        stats = self.stats
        stats.flow_samples += 1
        if not row.usable:
            stats.headerless_samples += 1
            return
        nbytes, rate = row.bytes, row.packets
        total = bucket.total
        total[0] += nbytes
        total[1] += rate
        src_svc = (agent, row.src_service) if row.src_service else None
        dst_svc = (agent, row.dst_service) if row.dst_service else None
        info = row.packet
        flow_key: tuple[Any, ...]
        if info is None:
            flow_key = (agent[0], src_svc, dst_svc, "non-ip", "", 0, "", 0)
            proto = ""
        else:
            proto = PROTOCOL_NAMES.get(info.protocol) or str(info.protocol)
            flow_key = (agent[0], src_svc, dst_svc, proto,
                        info.src_ip, info.src_port, info.dst_ip, info.dst_port)
        self.flows.add(bucket.second, flow_key, nbytes, rate)
        ends: list[tuple[ServiceId, str]] = []
        if src_svc is None and dst_svc is None:
            other = bucket.other
            other[0] += nbytes
            other[1] += rate
        else:
            stats.marked_samples += 1
            if dst_svc is not None and self._known(dst_svc, now):
                ends.append((dst_svc, IN))
            if src_svc is not None and self._known(src_svc, now):
                ends.append((src_svc, OUT))
        service = bucket.service
        packed = nbytes << PACKETS_BITS | rate
        for svc, direction in ends:
            key = (svc, direction)  # bounded by self.services
            service[key] = service.get(key, 0) + packed
            if info is None:
                continue
            if direction == IN:
                port, remote = info.dst_port, info.src_ip
            else:
                port, remote = info.src_port, info.dst_ip
            self._add_keyed(bucket.proto, (svc, direction, proto, port), packed)
            self._add_keyed(bucket.remote, (svc, direction, remote), packed)
        tcp = row.tcp
        if tcp is not None and info is not None and info.protocol == IPPROTO_TCP:
            self._add_connection(agent, tcp, info, ends, bucket, packed, now)

    def _add_connection(self, agent: AgentKey, tcp: ExtendedTcpInfo, info: Any,
                        ends: list[tuple[ServiceId, str]], bucket: _Bucket, packed: int,
                        now: float) -> None:
        src, dst = _endpoint(info.src_ip, info.src_port), _endpoint(info.dst_ip, info.dst_port)
        if tcp.dir == TCP_DIR_RECEIVED:
            local, remote, want = dst, src, IN
        elif tcp.dir == TCP_DIR_SENT:
            local, remote, want = src, dst, OUT
        else:
            return
        service = next((s for s, d in ends if d == want), None)
        key = (agent, local, remote)
        conn = self.connections.get(key)
        if conn is None:
            if len(self.connections) >= MAX_CONNECTIONS:
                self._expire_connections(now, force=True)
            conn = self.connections[key] = Connection(agent, service, local, remote)
        if service is not None:
            conn.service = service
        conn.rtt_us, conn.rttvar_us, conn.min_rtt_us = tcp.rtt, tcp.rttvar, tcp.min_rtt
        conn.retrans, conn.lost, conn.unacked = tcp.retrans, tcp.lost, tcp.unacked
        conn.snd_cwnd, conn.snd_mss = tcp.snd_cwnd, tcp.snd_mss
        conn.last_seen = now
        conn.samples += 1
        self._add_keyed(bucket.conn, key, packed)

    def _expire_connections(self, now: float, force: bool = False) -> None:
        stale = [k for k, c in self.connections.items() if now - c.last_seen > CONNECTION_TTL]
        for k in stale:
            del self.connections[k]
        if force and len(self.connections) >= MAX_CONNECTIONS:
            oldest = sorted(self.connections, key=lambda k: self.connections[k].last_seen)
            for k in oldest[: len(oldest) // 4 or 1]:
                del self.connections[k]
            self.stats.keys_refused += 1

    # ------------------------------------------------------------ output

    def _labeller(self) -> Callable[[ServiceId], str]:
        """A function naming services for one snapshot: the unit name (``3:INDEX`` until its
        counters arrive), prefixed with the agent's address when more than one agent is
        heard.  Costs O(services + agents) once, then O(1) a name."""
        agents = {a for a, _ in self.services.values} | set(self.agent_names.values)
        multi = len(agents) > 1
        values = self.services.values

        def label(svc: ServiceId) -> str:
            name = values.get(svc) or f"3:{svc[1]}"
            return f"{svc[0][0]}/{name}" if multi else name

        return label

    def label(self, svc: ServiceId) -> str:
        """The label of one service (as in a snapshot)."""
        return self._labeller()(svc)

    def _window(self, now: float) -> tuple[list[_Bucket], float]:
        """The complete seconds in the window and the span they cover."""
        current = int(now)
        start = current - int(self.window)
        chosen = [b for b in self._buckets if start <= b.second < current]
        first = int(self._first) if self._first is not None else current
        span = float(min(self.window, max(1, current - max(first, start))))
        return chosen, span

    def expire(self, now: float) -> None:
        """Forget services, agents and connections not heard from for their time to live."""
        self.services.expire(now)
        self.agent_names.expire(now)
        self._expire_connections(now)

    def snapshot(self, now: float | None = None, top: int = 20,
                 services_top: int = SNAPSHOT_SERVICES) -> Snapshot:
        """Rates over the last ``window`` complete seconds: the ``services_top`` busiest
        services known (those at zero too, while there is room; the rest summed in ``more``),
        the ``top`` highest protocols, remotes and connections.  O(keys)."""
        now = self.clock() if now is None else now
        self.expire(now)
        buckets, span = self._window(now)
        sums = self._sums.over(buckets, self._buckets[-1] if self._buckets else None)
        service, proto, remote, conn = sums.service, sums.proto, sums.remote, sums.conn
        other, total = sums.other, sums.total

        def to_rate(cell: list[int] | None) -> Rate:
            if not cell:
                return Rate()
            return Rate(cell[0] * 8 / span, cell[1] / span)

        def packed_rate(cell: int | None) -> Rate:
            if not cell:
                return Rate()
            nbytes, npkts = unpack(cell)
            return Rate(nbytes * 8 / span, npkts / span)

        label = self._labeller()
        ids = set(self.services) | {s for s, _ in service}
        rated = [(s, packed_rate(service.get((s, IN))), packed_rate(service.get((s, OUT))))
                 for s in ids]
        listed = heapq.nsmallest(services_top, rated,
                                 key=lambda r: (-(r[1].bps + r[2].bps), label(r[0]), r[0][1]))
        more = Rate()
        if len(rated) > len(listed):
            chosen = {r[0] for r in listed}
            for s, i, o in rated:
                if s not in chosen:
                    more.bps += i.bps + o.bps
                    more.pps += i.pps + o.pps
        services = _unique_labels([ServiceRates(label(s), s[0][0], s[1], i, o)
                                   for s, i, o in listed])
        def by_bytes(kv: tuple[Any, int]) -> int:
            return kv[1] >> PACKETS_BITS

        protocols = []
        for (s, d, p, port), packed in heapq.nlargest(top, proto.items(), key=by_bytes):
            r = packed_rate(packed)
            protocols.append(KeyedRate(label(s), d, f"{p}/{port}" if port else p, r.bps, r.pps))
        remotes = []
        for (s, d, addr), packed in heapq.nlargest(top, remote.items(), key=by_bytes):
            r = packed_rate(packed)
            remotes.append(KeyedRate(label(s), d, addr, r.bps, r.pps))
        busiest = heapq.nsmallest(
            top, self.connections.items(),
            key=lambda kv: (-(conn.get(kv[0], 0) >> PACKETS_BITS), now - kv[1].last_seen))
        conns = []
        for key, c in busiest:
            r = packed_rate(conn.get(key))
            conns.append(ConnectionRates(
                label(c.service) if c.service else "", c.local, c.remote,
                r.bps, r.pps, c.rtt_us / 1000, c.rttvar_us / 1000,
                c.min_rtt_us / 1000, c.retrans, c.lost, c.snd_cwnd, now - c.last_seen))
        agents = {a[0]: h for a, h in self.agent_names.items() if h}
        return Snapshot(now, self.window, span, services, to_rate(other), to_rate(total),
                        protocols, remotes, conns, agents, attrs.evolve(self.stats),
                        services_total=len(ids), more=more)

    def tick(self, now: float | None = None) -> tuple[Snapshot, dict[str, Any]]:
        """Take a snapshot and record one chart point in ``history``:
        ``{"t": seconds, "bps": {label: bits/s}, "ids": {label: service key}, "more": bits/s,
        "other": bits/s}`` with the
        CHART_SERVICES busiest services that have traffic (``more``: the rest of the services,
        ``other``: traffic marked with no service)."""
        snap = self.snapshot(now)
        drawn = [s for s in snap.services[:CHART_SERVICES] if s.bps > 0]
        rest = sum(s.bps for s in snap.services[CHART_SERVICES:]) + snap.more.bps
        point = {"t": round(snap.time, 3), "bps": {s.label: round(s.bps, 1) for s in drawn},
                 "ids": {s.label: service_key(s) for s in drawn},
                 "more": round(rest, 1), "other": round(snap.other.bps, 1)}
        self.history.append(point)
        return snap, point

    def flow_query(self, keys: tuple[str, ...], conditions: list[tuple[str, bool, str]],
                   start: float | None = None, end: float | None = None, top: int = 10,
                   now: float | None = None) -> dict[str, Any]:
        """The breakdown of the kept seconds in [start, end) (default: the last ``window``
        complete seconds) by ``keys`` after ``conditions`` (see :mod:`.flows`)."""
        now = self.clock() if now is None else now
        end = int(now) if end is None else min(end, int(now))
        start = end - int(self.window) if start is None else start
        start = max(start, end - self.history.maxlen if self.history.maxlen else start)
        return self.flows.query(keys, conditions, start, end, self._labeller(), top)


def service_key(s: ServiceRates) -> str:
    """``ADDRESS#INDEX``: what stays the same of a service while its label changes (``3:7``
    until its counters name it, then its unit name); the page colours a service by it."""
    return f"{s.agent}#{s.index}"


def _agent_of(svc: ServiceId) -> AgentKey:
    return svc[0]


def _unique_labels(services: list[ServiceRates]) -> list[ServiceRates]:
    """Two services with one label (one agent naming two data sources alike) get their
    dsIndex appended, so no chart or legend row merges them."""
    seen: collections.Counter[str] = collections.Counter(s.label for s in services)
    for s in services:
        if seen[s.label] > 1:
            s.label = f"{s.label}#{s.index}"
    return services


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# ================================================================ listening


#: datagrams read at one wake-up of the loop before it serves anything else (pages, the ticker)
RECEIVE_BURST = 64


class SflowReceiver:
    """The collector's sFlow socket on the running loop: at each wake-up it reads what the
    socket holds (at most :data:`RECEIVE_BURST` datagrams, so a flood cannot starve the pages)
    and feeds it to the aggregator.  One wake-up for a burst of datagrams instead of one pass
    of the loop for each (asyncio's datagram transport reads one datagram a pass).
    ``sockname`` is the bound address; :meth:`close` stops it."""

    def __init__(self, aggregator: Aggregator, sock: socket.socket,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.aggregator = aggregator
        self.sock = sock
        self.sockname = sock.getsockname()
        self._loop = loop
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        recv = self.sock.recvfrom
        agg = self.aggregator
        for _ in range(RECEIVE_BURST):
            try:
                data, addr = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. an ICMP error queued on the socket: nothing to read
                return
            if agg.accepts(addr[0]):
                agg.feed(data)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


async def listen(aggregator: Aggregator, listen_addr: str) -> SflowReceiver:
    """Receive sFlow on ``listen_addr`` (``HOST:PORT``, ``[V6]:PORT`` or ``PORT``) into
    ``aggregator`` on the running loop; close the returned receiver to stop."""
    from .decode import open_socket

    return SflowReceiver(aggregator, open_socket(listen_addr), asyncio.get_running_loop())


def format_rate(bps: float) -> str:
    """``12.3 Mb/s`` style text for a bits-per-second figure."""
    for unit, scale in (("Gb/s", 1e9), ("Mb/s", 1e6), ("kb/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}" if bps < 100 * scale else f"{bps / scale:.0f} {unit}"
    return f"{bps:.0f} b/s"
