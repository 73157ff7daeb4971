"""The objects that travel through the hooks: data sources and flow samples (one at a time, or a
batch of one read).

A capture module builds a :class:`FlowSample` per sampled packet and hands a batch to
``agent.take_samples``.  Enrichment modules add records to it in ``sflow_flow_sample`` (and may
hold it for an asynchronous lookup), then in ``sflow_flow_sample_released``.  The core numbers
and encodes it; modules never write bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import attrs

from .sflow.records import Record, SampledHeader

if TYPE_CHECKING:
    from .packet import PacketInfo

DIRECTION_UNKNOWN, DIRECTION_RECEIVED, DIRECTION_SENT = 0, 1, 2

#: data source classes (sFlow source_id_type)
DS_IFINDEX, DS_VLAN, DS_PHYSICAL, DS_LOGICAL = 0, 1, 2, 3


@attrs.frozen(slots=True)
class DataSource:
    """An sFlow data source ``ds_class:ds_index`` (e.g. ``0:2`` an interface, ``2:1`` the host,
    ``3:123456`` a service).  ``name`` is for people and logs; it is not part of identity."""

    ds_class: int
    ds_index: int
    name: str = attrs.field(default="", eq=False, hash=False)

    def __str__(self) -> str:
        return f"{self.ds_class}:{self.ds_index}"


HOST_SOURCE = DataSource(DS_PHYSICAL, 1, "host")


class Hold:
    """A module's claim on a flow sample while it looks something up.

    Call :meth:`release` exactly once when done (more calls are ignored).  If it is not
    released before the agent's hold timeout, the core releases it anyway."""

    __slots__ = ("sample", "owner", "done")

    def __init__(self, sample: "FlowSample", owner: str) -> None:
        self.sample = sample
        self.owner = owner
        self.done = False

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.sample._release_one()


@attrs.define(slots=True, eq=False)
class FlowSample:
    """One sampled packet on its way to the collectors.

    Fields a capture module sets: ``source`` (normally ``0:ifIndex`` of the tapped
    interface), ``sampling_rate``, ``sample_pool``, ``drops``, ``input``/``output`` (ifIndex, 0
    unknown, 0x3FFFFFFF internal), ``direction``, and ``records`` starting with the
    :class:`SampledHeader`.  Enrichment modules append records and use ``stash``.
    """

    source: DataSource
    sampling_rate: int
    records: list[Record]
    sample_pool: int = 0
    drops: int = 0
    input: int = 0
    output: int = 0
    direction: int = DIRECTION_UNKNOWN
    timestamp: float = 0.0
    #: the network namespace the packet was seen in (a path such as /var/run/netns/x), if known
    netns: str | None = None
    stash: dict[str, Any] = attrs.Factory(dict)
    _packet: Any = None
    _holds: int = 0
    _on_released: Callable[["FlowSample"], None] | None = None
    _holders: list[Hold] = attrs.Factory(list)

    @property
    def header(self) -> SampledHeader | None:
        """The sampled_header record, if the sample has one."""
        for rec in self.records:
            if isinstance(rec, SampledHeader):
                return rec
        return None

    @property
    def packet(self) -> "PacketInfo | None":
        """Addresses, ports and protocol decoded from the sampled header (decoded once,
        on first use); None if the header is not IPv4/IPv6 or is malformed."""
        if self._packet is None:
            from .packet import decode_sampled_header

            self._packet = decode_sampled_header(self.header) or False
        return self._packet or None

    def add(self, record: Record) -> None:
        """Attach a record. Records go out in the order they were added."""
        self.records.append(record)

    def hold(self, owner: str) -> Hold:
        """Keep the sample from being sent until the returned hold is released (or times out).

        Only valid inside ``sflow_flow_sample``."""
        h = Hold(self, owner)
        self._holds += 1
        self._holders.append(h)
        return h

    @property
    def held(self) -> bool:
        return self._holds > 0

    def _release_one(self) -> None:
        self._holds -= 1
        if self._holds == 0 and self._on_released is not None:
            cb, self._on_released = self._on_released, None
            cb(self)

    def _force_release(self) -> list[str]:
        """Release every outstanding hold (deadline passed); return the owners that were late."""
        late = [h.owner for h in self._holders if not h.done]
        for h in self._holders:
            h.release()
        return late


@attrs.define(slots=True, eq=False)
class PacketBatch:
    """The packets one capture read sampled on one data source, in compact form.

    A capture module that reads many packets per wakeup (the pcap tap: up to thousands) hands
    the core one of these with ``agent.take_batch`` instead of a list of :class:`FlowSample`.
    Each packet is a plain tuple, cheap to build per packet, laid out as :data:`PACKET_FIELDS`::

        (sample_pool, input, output, direction, protocol, frame_length, header, timestamp)

    ``protocol``, ``frame_length`` and ``header`` are the packet's sampled_header record;
    ``stripped`` is the same for every packet of a batch.  When no module implements a
    per-sample hook the core encodes the tuples straight into datagrams; otherwise it turns
    them into FlowSamples (:meth:`flow_samples`) and runs the hooks as for ``take_samples``.
    """

    source: DataSource
    sampling_rate: int
    drops: int
    stripped: int
    packets: list[tuple[int, int, int, int, int, int, bytes, float]]
    netns: str | None = None

    def __len__(self) -> int:
        return len(self.packets)

    def flow_samples(self) -> list[FlowSample]:
        """One :class:`FlowSample` per packet, its records a single :class:`SampledHeader`."""
        src, rate, drops, stripped, netns = (
            self.source, self.sampling_rate, self.drops, self.stripped, self.netns)
        return [
            FlowSample(src, rate, [SampledHeader(proto, flen, stripped, hdr)], pool, drops,
                       inp, out, direction, ts, netns)
            for pool, inp, out, direction, proto, flen, hdr, ts in self.packets
        ]


#: the order of the fields of one packet tuple in :attr:`PacketBatch.packets`
PACKET_FIELDS = ("sample_pool", "input", "output", "direction", "protocol", "frame_length",
                 "header", "timestamp")
