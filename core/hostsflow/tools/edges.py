"""The service dependency map: flow samples of many agents joined into ``service@host`` edges.

Fed the same decoded datagrams as :class:`~hostsflow.tools.aggregate.Aggregator` (it reads the
service names and hostnames that the aggregator learns from counter samples), an
:class:`EdgeJoiner` turns every flow sample of a TCP, UDP or SCTP packet into an observation of
one *flow*: ``(protocol, client address, server address, server port)``.

* **Which end serves.**  A sampled SYN says it (the end receiving a bare SYN listens); an end
  once seen serving is remembered; otherwise a port below the kernel's ephemeral range (32768)
  facing one inside it serves, and between two ports on the same side of that line the lower.
* **Who the ends are.**  The observing agent marks the ends that belong to its services
  (extended_entities).  A marked server end teaches ``(protocol, address, port) -> service``; a
  marked client end teaches ``flow -> service``.  Each end is named from what *any* agent taught,
  so a sample on host A that names only A's end is completed by what host B's agent says about
  B's end.  An end nobody names stays an address (``ip`` for a client, ``ip:port`` for a server).
* **Counted once.**  A packet between two monitored hosts is sampled by both agents.  A flow is
  counted from its server's side when the server end is a service some agent marks, otherwise
  from the client's side; the other side's samples only name the ends.  ``side`` says which.
* Per wall-clock second the estimates (``frame_length * sampling_rate`` bytes, ``sampling_rate``
  packets) are added per ``(flow, side, observer)``, with the sampled client ports (the
  connections seen) and, where extended_tcp_info is present, RTT and retransmissions;
  :meth:`EdgeJoiner.snapshot` sums the last ``window`` complete seconds into edges.

Every table is bounded: flows per second (the rest counted in ``stats.flows_dropped``), server
and client names (the oldest forgotten first), client ports per second (the rest counted in
``stats.ports_dropped``) and per edge.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..packet import IPPROTO_TCP
from ..sflow.datagram import Datagram
from .aggregate import AgentKey, ServiceId, protocol_name
from .flow_rows import FlowRow, rows_of
from .flows import PACKETS_BITS, PACKETS_MASK

SERVER, CLIENT = "server", "client"
EPHEMERAL_LOW = 32768  # Linux's default ip_local_port_range starts here
PORT_PROTOCOLS = frozenset((6, 17, 132, 136))  # tcp, udp, sctp, udplite
TCP_SYN, TCP_ACK = 0x02, 0x10
MAX_FLOWS_PER_SECOND = 20_000
MAX_NAMES = 65_536  # server ends and client flows remembered
MAX_PORTS_PER_CELL = 256  # client ports a flow's edge counts in a snapshot
MAX_PORTS_PER_SECOND = 65_536  # (cell, client port) pairs kept a second
#: a cell's bytes, packets and samples in one int: bytes << 128 | packets << 64 | samples
_PACKETS_AT, _LOW = PACKETS_BITS, PACKETS_MASK  # the flow history's packing, one field more
_BYTES_AT = 2 * PACKETS_BITS

#: (protocol, client address, server address, server port)
Flow = tuple[int, str, str, int]
#: (protocol, address, port) of a server end
ServerEnd = tuple[int, str, int]


@attrs.define(slots=True)
class EdgeStats:
    """Flow samples seen, placed on a flow, skipped (no IP header with ports), or observed by an
    agent on neither end and unmarked; flow cells and client ports refused by the per-second
    bounds."""

    samples: int = 0
    placed: int = 0
    portless: int = 0
    unplaced: int = 0
    flows_dropped: int = 0
    ports_dropped: int = 0


#: a cell's key: (flow, side, observing agent)
CellKey = tuple[Flow, str, AgentKey]


class EdgeSecond:
    """One wall-clock second of the joiner's cells, kept as plain ints and tuples: a second
    held 20,000 cell objects with a set of ports each, 8 seconds kept, and Python's garbage
    collector walked them all at each full collection (pauses of ~0.1 s at 50,000 samples/s,
    and the churn made them frequent).  Ints and tuples of ints and strings are not walked.

    ``cells``: key -> ``bytes << 128 | packets << 64 | samples`` (see :meth:`figures`);
    ``tcp``: key -> (RTT sum in us, RTT samples, most retransmissions), for the cells whose
    samples carried extended_tcp_info; ``named``: the keys whose observer marked the client end
    with a service; ``ports``: (key, client port) pairs sampled (at most
    MAX_PORTS_PER_SECOND)."""

    __slots__ = ("cells", "named", "ports", "second", "tcp")

    def __init__(self, second: int) -> None:
        self.second = second
        self.cells: dict[CellKey, int] = {}
        self.tcp: dict[CellKey, tuple[int, int, int]] = {}
        self.named: set[CellKey] = set()
        self.ports: set[tuple[CellKey, int]] = set()

    @staticmethod
    def figures(packed: int) -> tuple[int, int, int]:
        """(bytes, packets, samples) of a packed cell."""
        return packed >> _BYTES_AT, packed >> _PACKETS_AT & _LOW, packed & _LOW


class _Sum:
    """A snapshot's running sum for one flow or edge (built at snapshot time only)."""

    __slots__ = ("bytes", "packets", "ports", "retrans", "rtt_n", "rtt_sum", "samples")

    def __init__(self) -> None:
        self.bytes = self.packets = self.samples = 0
        self.ports: set[int] = set()
        self.rtt_sum = self.rtt_n = self.retrans = 0

    def add(self, packed: int, tcp: tuple[int, int, int] | None) -> None:
        nbytes, npkts, nsamples = EdgeSecond.figures(packed)
        self.bytes += nbytes
        self.packets += npkts
        self.samples += nsamples
        if tcp is not None:
            self.rtt_sum += tcp[0]
            self.rtt_n += tcp[1]
            self.retrans = max(self.retrans, tcp[2])

    def merge(self, other: _Sum) -> None:
        self.bytes += other.bytes
        self.packets += other.packets
        self.samples += other.samples
        if len(self.ports) < MAX_PORTS_PER_CELL:
            self.ports |= other.ports
        self.rtt_sum += other.rtt_sum
        self.rtt_n += other.rtt_n
        self.retrans = max(self.retrans, other.retrans)


@attrs.define(slots=True, frozen=True)
class End:
    """One end of an edge: the service and host some agent named it with, or only its address
    (``ip`` for a client end, ``ip:port`` for a server end)."""

    address: str
    service: str = ""
    host: str = ""

    @property
    def label(self) -> str:
        """``service@host``, or the address when nobody named this end."""
        return f"{self.service}@{self.host}" if self.service else self.address


@attrs.define(slots=True)
class Edge:
    """Traffic from a client end to a server end (both directions of its flows) over the
    window: bits/s, packets/s, samples behind them, distinct client ports sampled
    (connections), mean RTT and the most retransmissions extended_tcp_info reported, which side
    counted it and the agents that did."""

    src: End
    dst: End
    protocol: str
    port: int
    bps: float
    pps: float
    samples: int
    connections: int
    rtt_ms: float | None
    retrans: int | None
    side: str
    observers: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src.label, "dst": self.dst.label,
                "src_end": attrs.asdict(self.src), "dst_end": attrs.asdict(self.dst),
                "protocol": self.protocol, "port": self.port, "bps": round(self.bps, 1),
                "pps": round(self.pps, 2), "samples": self.samples,
                "connections": self.connections,
                "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
                "retrans": self.retrans, "side": self.side, "observers": self.observers}


@attrs.define(slots=True)
class EdgeSnapshot:
    """The map at one moment: nodes (every end of an edge, by label) and edges, highest rate
    first; ``span`` the seconds averaged over."""

    time: float
    window: float
    span: float
    nodes: list[End]
    edges: list[Edge]
    stats: EdgeStats

    def edge(self, src: str, dst: str) -> Edge | None:
        """The edge from the end labelled ``src`` to the one labelled ``dst``, or None."""
        return next((e for e in self.edges if e.src.label == src and e.dst.label == dst), None)

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "window": self.window, "span": self.span,
                "nodes": [{"id": n.label, **attrs.asdict(n)} for n in self.nodes],
                "edges": [e.to_dict() for e in self.edges], "stats": attrs.asdict(self.stats)}


def remember(table: dict[Any, Any], key: Any, value: Any, limit: int = MAX_NAMES) -> None:
    """Set ``table[key]`` as its newest entry, forgetting the oldest beyond ``limit`` entries."""
    if table.get(key) == value:
        return
    table.pop(key, None)
    if len(table) >= limit:
        del table[next(iter(table))]
    table[key] = value


class EdgeJoiner:
    """Joins the flow samples of every agent heard into edges (see the module's description).

    ``names`` maps a service data source to its unit name and ``hosts`` an agent to its
    hostname: the aggregator's tables, which its counter samples fill."""

    def __init__(self, names: Mapping[ServiceId, str], hosts: Mapping[AgentKey, str],
                 window: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.names = names
        self.hosts = hosts
        self.window = float(window)
        self.clock = clock
        self.stats = EdgeStats()
        self.servers: dict[ServerEnd, tuple[AgentKey, int]] = {}
        self.listeners: dict[ServerEnd, bool] = {}
        self.clients: dict[Flow, tuple[AgentKey, int]] = {}
        self._buckets: collections.deque[EdgeSecond] = collections.deque()
        self._keep = int(window) + 2
        self._first: float | None = None

    # ------------------------------------------------------------ input

    def feed_datagram(self, dgram: Datagram, now: float | None = None) -> None:
        """Place every flow sample of a decoded datagram (see :meth:`feed_rows`)."""
        read = rows_of(dgram)
        self.feed_rows(read.agent, read.rows, now)

    def feed_rows(self, agent: AgentKey, rows: list[FlowRow], now: float | None = None) -> None:
        """Place the flow samples of one datagram of ``agent`` (as :mod:`.flow_rows` reads
        them) in the cells of the current second."""
        now = self.clock() if now is None else now
        if self._first is None:
            self._first = now
        if not rows:
            return
        sec = self._second(now)
        place = self._place
        for row in rows:
            place(agent, row, sec)

    def seconds(self) -> collections.deque[EdgeSecond]:
        """The kept seconds, oldest first; only the newest may still change (a clock stepped
        back adds to it)."""
        return self._buckets

    def _second(self, now: float) -> EdgeSecond:
        second = int(now)
        buckets = self._buckets
        if buckets and buckets[-1].second >= second:  # this second (or the clock stepped back)
            return buckets[-1]
        buckets.append(EdgeSecond(second))
        while buckets and buckets[0].second < second - self._keep:
            buckets.popleft()
        return buckets[-1]

    def _place(self, agent: AgentKey, row: FlowRow, sec: EdgeSecond) -> None:
        self.stats.samples += 1
        if not row.usable:
            self.stats.portless += 1
            return
        src_svc, dst_svc = row.src_service, row.dst_service
        nbytes, rate = row.bytes, row.packets
        info = row.packet
        if info is None or info.protocol not in PORT_PROTOCOLS or \
                not info.src_port or not info.dst_port:
            self.stats.portless += 1  # (a marked one is still its service's traffic)
            return
        proto = info.protocol
        if self._dst_serves(proto, info):
            cip, cport, sip, sport = info.src_ip, info.src_port, info.dst_ip, info.dst_port
            c_svc, s_svc = src_svc, dst_svc
        else:
            cip, cport, sip, sport = info.dst_ip, info.dst_port, info.src_ip, info.src_port
            c_svc, s_svc = dst_svc, src_svc
        flow: Flow = (proto, cip, sip, sport)
        if s_svc:
            remember(self.servers, (proto, sip, sport), (agent, s_svc))
            side = SERVER
        elif c_svc:
            side = CLIENT
        elif agent[0] == sip:
            side = SERVER
        elif agent[0] == cip:
            side = CLIENT
        else:
            self.stats.unplaced += 1
            return
        if c_svc:
            remember(self.clients, flow, (agent, c_svc))
        key = (flow, side, agent)
        cells = sec.cells
        packed = cells.get(key)
        add = nbytes << _BYTES_AT | rate << _PACKETS_AT | 1
        if packed is None:
            if len(cells) >= MAX_FLOWS_PER_SECOND:
                self.stats.flows_dropped += 1
                return
            cells[key] = add
        else:
            cells[key] = packed + add
        self.stats.placed += 1
        if c_svc:
            sec.named.add(key)
        ports = sec.ports
        if len(ports) < MAX_PORTS_PER_SECOND:
            ports.add((key, cport))
        else:
            self.stats.ports_dropped += 1
        tcp = row.tcp
        if tcp is not None and tcp.rtt and proto == IPPROTO_TCP:
            had = sec.tcp.get(key)
            sec.tcp[key] = (tcp.rtt, 1, tcp.retrans) if had is None else \
                (had[0] + tcp.rtt, had[1] + 1, max(had[2], tcp.retrans))

    def _dst_serves(self, proto: int, info: Any) -> bool:
        """Whether the packet's destination is the flow's server end."""
        flags = info.tcp_flags if proto == IPPROTO_TCP else 0
        if flags & TCP_SYN:
            if flags & TCP_ACK:  # SYN-ACK: the source listens
                remember(self.listeners, (proto, info.src_ip, info.src_port), True)
                return False
            remember(self.listeners, (proto, info.dst_ip, info.dst_port), True)
            return True
        dst = (proto, info.dst_ip, info.dst_port)
        src = (proto, info.src_ip, info.src_port)
        dst_known = dst in self.listeners or dst in self.servers
        src_known = src in self.listeners or src in self.servers
        if dst_known != src_known:
            return dst_known
        sport, dport = info.src_port, info.dst_port
        if (sport < EPHEMERAL_LOW) != (dport < EPHEMERAL_LOW):
            return dport < EPHEMERAL_LOW
        return dport <= sport

    # ------------------------------------------------------------ naming

    def host_name(self, agent: AgentKey) -> str:
        """The agent's hostname (its address until its host counters arrive)."""
        return self.hosts.get(agent) or agent[0]

    def service_name(self, svc: ServiceId) -> str:
        return self.names.get(svc) or f"3:{svc[1]}"

    def server_end(self, proto: int, ip: str, port: int) -> End:
        address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        owner = self.servers.get((proto, ip, port))
        if owner is None:
            return End(address)
        return End(address, self.service_name((owner[0], owner[1])), self.host_name(owner[0]))

    def client_end(self, flow: Flow) -> End:
        owner = self.clients.get(flow)
        if owner is None:
            return End(flow[1])
        return End(flow[1], self.service_name((owner[0], owner[1])), self.host_name(owner[0]))

    def counted_side(self, flow: Flow) -> str:
        """The side a flow is counted from: its server's when some agent marks the server end."""
        return SERVER if (flow[0], flow[2], flow[3]) in self.servers else CLIENT

    # ------------------------------------------------------------ output

    def snapshot(self, now: float | None = None) -> EdgeSnapshot:
        """Edges over the last ``window`` complete seconds, highest rate first."""
        now = self.clock() if now is None else now
        current = int(now)
        start = current - int(self.window)
        first = int(self._first) if self._first is not None else current
        span = float(min(self.window, max(1, current - max(first, start))))
        per_flow: dict[tuple[Flow, str], tuple[_Sum, set[AgentKey]]] = {}
        for sec in self._buckets:
            if not start <= sec.second < current:
                continue
            tcp = sec.tcp
            for key, packed in sec.cells.items():
                flow, side, agent = key
                got = per_flow.get((flow, side))
                if got is None:
                    got = per_flow[(flow, side)] = (_Sum(), set())
                got[0].add(packed, tcp.get(key))
                got[1].add(agent)
            for (flow, side, _agent), port in sec.ports:
                got = per_flow.get((flow, side))
                if got is not None and len(got[0].ports) < MAX_PORTS_PER_CELL:
                    got[0].ports.add(port)
        edges: dict[tuple[str, str, int], tuple[End, End, int, _Sum, set[AgentKey], str]] = {}
        for (flow, side), (cell, agents) in per_flow.items():
            if side != self.counted_side(flow):
                continue
            src, dst = self.client_end(flow), self.server_end(flow[0], flow[2], flow[3])
            key = (src.label, dst.label, flow[0])
            got = edges.get(key)
            if got is None:
                got = edges[key] = (src, dst, flow[3], _Sum(), set(), side)
            got[3].merge(cell)
            got[4].update(agents)
        out = []
        for (_s, _d, proto), (src, dst, port, cell, agents, side) in edges.items():
            out.append(Edge(
                src, dst, protocol_name(proto), port, cell.bytes * 8 / span, cell.packets / span,
                cell.samples, len(cell.ports),
                cell.rtt_sum / cell.rtt_n / 1000 if cell.rtt_n else None,
                cell.retrans if cell.rtt_n else None, side,
                sorted(self.host_name(a) for a in agents)))
        out.sort(key=lambda e: (-e.bps, e.src.label, e.dst.label))
        nodes: dict[str, End] = {}
        for e in out:
            nodes.setdefault(e.src.label, e.src)
            nodes.setdefault(e.dst.label, e.dst)
        return EdgeSnapshot(now, self.window, span, list(nodes.values()), out,
                            attrs.evolve(self.stats))
