"""The collector's Prometheus metrics: traffic by service and direction, the map's edges, the
per-service counters the agents send, and what the collector was fed.

:class:`FleetMetrics` is fed each decoded datagram with the :class:`~hostsflow.tools.edges.
Observation` list the edge joiner made of it, and keeps counters since the collector started
(Prometheus takes rates).  Series and their labels:

* ``hostsflow_service_bytes_total`` / ``_packets_total`` ``{agent, host, service, direction}``:
  estimates (frame length x sampling rate) of the samples a service's mark names, ``in`` for
  its destination end, ``out`` for its source end (as the view counts them);
* ``hostsflow_edge_bytes_total`` / ``_packets_total`` / ``_samples_total`` ``{observer, side,
  proto, src_addr, dst_addr, dst_port, src, dst}``: each flow sample by the agent that sampled
  it (``observer``), the side of the flow it sits on, the flow's addresses and its ends as this
  collector names them (``service@host``, or the address).  A flow between two monitored hosts
  is sampled on both: the fleet's rate of an edge is the ``side="server"`` series where the
  server end is a service (``side="client"`` otherwise);
* ``hostsflow_client_info{proto, src_addr, dst_addr, dst_port, src} 1``: which service a client
  end is, as its own agent marks it.  With one Prometheus scraping several collectors, a
  server-side series whose client end was named by another collector's agents gets its name by
  joining on ``proto, src_addr, dst_addr, dst_port``;
* ``hostsflow_service_cpu_seconds_total``, ``_memory_bytes``, ``_disk_read_bytes_total``,
  ``_disk_write_bytes_total``, ``_network_receive_bytes_total``,
  ``_network_transmit_bytes_total`` ``{agent, host, service}``: virt_cpu, virt_memory,
  virt_disk_io and virt_net_io of each service's counter samples (agent counters become
  increments here, so an agent restart does not step a series back);
* ``hostsflow_datagrams_total``, ``hostsflow_malformed_datagrams_total``,
  ``hostsflow_flow_samples_total``, ``hostsflow_counter_samples_total``.

Every family holds at most ``max_series`` series (see :mod:`hostsflow.tools.exposition`).
The flow samples' estimates are not handled one by one here: each whole second the aggregator
and the edge joiner summed (their per-second tables) is folded in once, when a later second
has begun or at a scrape (so a scrape counts up to the last whole second), and the sums are
named when added to the families: at each scrape (or when :data:`MAX_PENDING` keys are
waiting).
"""

from __future__ import annotations

from ..sflow.datagram import DecodedCounterSample
from ..sflow.records import (
    VirtCpu,
    VirtDiskIo,
    VirtMemory,
    VirtNetIo,
)
from collections.abc import Callable

from .aggregate import SERVICE_CLASS, AgentKey, Aggregator, protocol_name
from .edges import EdgeJoiner, EdgeSecond, Flow, remember
from .exposition import Registry
from .flows import unpack

DEFAULT_MAX_SERIES = 10_000
MAX_PENDING = 50_000  # keys of estimates kept between flushes (a scrape flushes them too)
MAX_CLIENT_NAMES = 65_536  # client ends whose name is remembered (the oldest forgotten first)
SERVICE_LABELS = ("agent", "host", "service")
EDGE_LABELS = ("observer", "side", "proto", "src_addr", "dst_addr", "dst_port", "src", "dst")

#: (record class, field, family suffix, scale): the per-service counters
_COUNTERS = (
    (VirtCpu, "cpuTime", "cpu_seconds_total", 0.001),
    (VirtDiskIo, "rd_bytes", "disk_read_bytes_total", 1),
    (VirtDiskIo, "wr_bytes", "disk_write_bytes_total", 1),
    (VirtNetIo, "bytes_in", "network_receive_bytes_total", 1),
    (VirtNetIo, "bytes_out", "network_transmit_bytes_total", 1),
)
_COUNTER_HELP = {
    "cpu_seconds_total": "CPU time of the service (virt_cpu), seconds.",
    "disk_read_bytes_total": "Bytes the service read from block devices (virt_disk_io).",
    "disk_write_bytes_total": "Bytes the service wrote to block devices (virt_disk_io).",
    "network_receive_bytes_total": "Bytes the service received (virt_net_io).",
    "network_transmit_bytes_total": "Bytes the service sent (virt_net_io).",
}


class FleetMetrics:
    """The collector's metric families, from the per-second tables of ``aggregator`` (service
    traffic) and ``joiner`` (edges), the counter samples it is given, and the aggregator's
    ``stats``; ``clock`` says which seconds are whole at a scrape."""

    def __init__(self, joiner: EdgeJoiner, aggregator: Aggregator,
                 max_series: int = DEFAULT_MAX_SERIES,
                 clock: Callable[[], float] | None = None) -> None:
        self.joiner = joiner
        self.aggregator = aggregator
        self.stats = aggregator.stats
        self.clock = clock if clock is not None else aggregator.clock
        #: every second before this one is folded in
        self.folded_until: int | None = None
        self.registry = r = Registry(max_series)
        self.service_bytes = r.counter(
            "hostsflow_service_bytes_total",
            "Estimated bytes of a service's traffic (frame length x sampling rate), by direction.",
            SERVICE_LABELS + ("direction",))
        self.service_packets = r.counter(
            "hostsflow_service_packets_total", "Estimated packets of a service's traffic.",
            SERVICE_LABELS + ("direction",))
        self.edge_bytes = r.counter(
            "hostsflow_edge_bytes_total",
            "Estimated bytes of a flow between two ends, by the agent that sampled them and "
            "the side of the flow it is on (the fleet's rate: side=\"server\" where the server "
            "is a service).", EDGE_LABELS)
        self.edge_packets = r.counter("hostsflow_edge_packets_total",
                                      "Estimated packets of a flow between two ends.", EDGE_LABELS)
        self.edge_samples = r.counter("hostsflow_edge_samples_total",
                                      "Flow samples behind hostsflow_edge_bytes_total.",
                                      EDGE_LABELS)
        self.client_info = r.gauge(
            "hostsflow_client_info",
            "1 for each client end a service's agent marked: join on proto, src_addr, dst_addr "
            "and dst_port to name the client of another collector's server-side series.",
            ("proto", "src_addr", "dst_addr", "dst_port", "src"))
        self.memory = r.gauge("hostsflow_service_memory_bytes",
                              "Memory of the service (virt_memory), bytes.", SERVICE_LABELS)
        self.counters = {suffix: r.counter(f"hostsflow_service_{suffix}", _COUNTER_HELP[suffix],
                                           SERVICE_LABELS)
                         for _cls, _field, suffix, _scale in _COUNTERS}
        self.fed = {name: r.counter(f"hostsflow_{name}_total", text) for name, text in (
            ("datagrams", "sFlow datagrams received."),
            ("malformed_datagrams", "Datagrams that did not decode (skipped)."),
            ("flow_samples", "Flow samples received."),
            ("counter_samples", "Counter samples received."))}
        self._last: dict[tuple[AgentKey, int, str], int] = {}
        self._client_names: dict[tuple[str, ...], str] = {}
        #: estimates since the last flush: (agent, dsIndex, direction) -> [bytes, packets];
        #: (agent, side, flow, client named) -> [bytes, packets, samples]
        # packed as the tables they are folded from (ints: not walked by the garbage collector)
        self._traffic: dict[tuple[AgentKey, int, str], int] = {}
        self._edges: dict[tuple[AgentKey, str, Flow, bool], int] = {}

    # ------------------------------------------------------------ input

    def feed_counters(self, agent: AgentKey, samples: list[DecodedCounterSample]) -> None:
        """Take the counter samples of one datagram of ``agent`` (its services' virt_*)."""
        for sample in samples:
            if sample.source.ds_class == SERVICE_CLASS:
                self._service_counters(agent, sample)

    def fold(self, until: int) -> None:
        """Fold in the seconds before ``until`` that are not yet: the aggregator's service
        traffic and the joiner's cells of each, once."""
        start = self.folded_until
        if start is not None and until <= start:
            return
        traffic, edges = self._traffic, self._edges
        for bucket in self.aggregator.seconds():
            if bucket.second < until and (start is None or bucket.second >= start):
                for ((agent, idx), direction), packed in bucket.service.items():
                    key = (agent, idx, direction)
                    traffic[key] = traffic.get(key, 0) + packed
        for sec in self.joiner.seconds():
            if sec.second < until and (start is None or sec.second >= start):
                named = sec.named
                for ckey, packed in sec.cells.items():
                    flow, side, agent = ckey
                    key = (agent, side, flow, ckey in named)
                    edges[key] = edges.get(key, 0) + packed
        self.folded_until = until
        if len(edges) + len(traffic) > MAX_PENDING:
            self.flush()

    def _labels(self, agent: AgentKey, index: int) -> tuple[str, str, str]:
        return (agent[0], self.joiner.host_name(agent), self.joiner.service_name((agent, index)))

    def _service_counters(self, agent: AgentKey, sample: DecodedCounterSample) -> None:
        idx = sample.source.ds_index
        labels = self._labels(agent, idx)
        mem = sample.record(VirtMemory)
        if mem is not None:
            self.memory.set(labels, mem.memory)  # type: ignore[attr-defined]
        for cls, field, suffix, scale in _COUNTERS:
            rec = sample.record(cls)
            if rec is None:
                continue
            raw = getattr(rec, field)
            key = (agent, idx, suffix)
            last = self._last.get(key)
            remember(self._last, key, raw)
            step = raw - last if last is not None and raw >= last else raw  # a reset: from 0
            if step:
                self.counters[suffix].inc(labels, step * scale)

    def flush(self) -> None:
        """Add what came since the last flush to the families, its labels named as they are
        now (so a name that arrives after a service's first samples is already used)."""
        for (agent, idx, direction), packed in self._traffic.items():
            nbytes, npkts = unpack(packed)
            values = self._labels(agent, idx) + (direction,)
            self.service_bytes.inc(values, nbytes)
            self.service_packets.inc(values, npkts)
        self._traffic.clear()
        joiner = self.joiner
        figures = EdgeSecond.figures
        for (agent, side, flow, named), packed in self._edges.items():
            nbytes, npkts, n = figures(packed)
            proto, cip, sip, sport = flow
            src = joiner.client_end(flow).label
            pname, port = protocol_name(proto), str(sport)
            values = (joiner.host_name(agent), side, pname, cip, sip, port, src,
                      joiner.server_end(proto, sip, sport).label)
            self.edge_bytes.inc(values, nbytes)
            self.edge_packets.inc(values, npkts)
            self.edge_samples.inc(values, n)
            if named:
                self._name_client((pname, cip, sip, port), src)
        self._edges.clear()

    def _name_client(self, key: tuple[str, ...], label: str) -> None:
        """One client_info series per client end: a new name (the service's counters arrived
        after its first samples) replaces the old, so a PromQL join finds one match."""
        old = self._client_names.get(key)
        if old == label:
            return
        if old is not None:
            self.client_info.remove(key + (old,))
        elif len(self._client_names) >= MAX_CLIENT_NAMES:
            gone = next(iter(self._client_names))
            self.client_info.remove(gone + (self._client_names.pop(gone),))
        self._client_names[key] = label
        self.client_info.set(key + (label,), 1)

    # ------------------------------------------------------------ output

    def render(self) -> str:
        """The exposition text of every family, up to the last whole second."""
        self.fold(int(self.clock()))
        self.flush()
        st = self.stats
        for name, value in (("datagrams", st.datagrams), ("malformed_datagrams", st.malformed),
                            ("flow_samples", st.flow_samples),
                            ("counter_samples", st.counter_samples)):
            self.fed[name].series[()] = value
        return self.registry.render()
