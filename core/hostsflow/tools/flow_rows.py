"""The collector's reading of a datagram: each flow sample as one :class:`FlowRow`.

The collector tables (the aggregator, the edge joiner, the metrics) read the same few things of
every flow sample: the sampling rate, the sampled header's frame length and packet (addresses,
ports, TCP flags), the services extended_entities names, and extended_tcp_info.
:func:`read_datagram` gets them straight from the datagram's bytes, once per sample, for all
three: it walks the datagram with the decoder's own framing (:func:`~hostsflow.sflow.datagram.
read_frame`, :func:`~hostsflow.sflow.datagram.iter_samples`, :func:`~hostsflow.sflow.datagram.
iter_records`), so it takes and refuses exactly the datagrams :func:`~hostsflow.sflow.datagram.
decode_datagram` does, and reads sampled_header and extended_entities with one struct unpack
each instead of building their record objects.  Every other record goes through the record
registry as in the decoder (its errors are the decoder's); counter samples are decoded whole
(they are few: one per data source per polling interval).

:func:`rows_of` gives the same rows from an already decoded :class:`~hostsflow.sflow.datagram.
Datagram` (a test checks that both readings agree on any input).
"""

from __future__ import annotations

import struct

import attrs

from ..packet import PacketInfo, decode_header_bytes
from ..sflow.datagram import (
    SAMPLE_COUNTERS,
    SAMPLE_COUNTERS_EXPANDED,
    SAMPLE_FLOW,
    SAMPLE_FLOW_EXPANDED,
    Datagram,
    DecodedCounterSample,
    DecodedFlowSample,
    decode_sample,
    flow_sample_head,
    iter_records,
    iter_samples,
    read_frame,
    read_record,
)
from ..sflow.records import FLOW, ExtendedEntities, ExtendedTcpInfo, SampledHeader

SERVICE_CLASS = 3  # data source class of a service (hsflowd: DS_TYPE "3" = logical entity)

_HEADER_TAG = SampledHeader.tag()
_ENTITIES_TAG = ExtendedEntities.tag()
_TCP_INFO_TAG = ExtendedTcpInfo.tag()
_FOUR = struct.Struct(">4I")  # sampled_header's fixed part and opaque length; extended_entities
_FLOW_TAGS = frozenset((SAMPLE_FLOW, SAMPLE_FLOW_EXPANDED))
_COUNTER_TAGS = frozenset((SAMPLE_COUNTERS, SAMPLE_COUNTERS_EXPANDED))

#: (agent address, sub-agent id)
AgentKey = tuple[str, int]


@attrs.define(slots=True)
class FlowRow:
    """What the collector reads of one flow sample.

    ``usable`` is False for a sample without a sampled_header or with a sampling rate of 0 (it
    stands for no packets); ``bytes`` and ``packets`` are its estimates (frame length x rate,
    rate); ``src_service`` / ``dst_service`` the dsIndex of the service extended_entities names
    as the packet's source / destination (0: none); ``packet`` the sampled header's packet
    (None: not IP, or cut short); ``tcp`` the first extended_tcp_info record, if any."""

    usable: bool
    bytes: int
    packets: int
    src_service: int
    dst_service: int
    packet: PacketInfo | None
    tcp: ExtendedTcpInfo | None


@attrs.define(slots=True)
class CollectorDatagram:
    """A datagram as the collector reads it: its agent, its counter samples (decoded whole)
    and a :class:`FlowRow` for each flow sample, in order."""

    agent: AgentKey
    counters: list[DecodedCounterSample]
    rows: list[FlowRow]


def _row(rate: int, frame_length: int | None, protocol: int, header: bytes,
         entities: tuple[int, int, int, int] | None, tcp: ExtendedTcpInfo | None) -> FlowRow:
    src = dst = 0
    if entities is not None:
        src_class, src_index, dst_class, dst_index = entities
        if src_class == SERVICE_CLASS:
            src = src_index
        if dst_class == SERVICE_CLASS:
            dst = dst_index
    if frame_length is None or rate == 0:
        return FlowRow(False, 0, 0, src, dst, None, tcp)
    return FlowRow(True, frame_length * rate, rate, src, dst,
                   decode_header_bytes(protocol, header), tcp)


def read_datagram(data: bytes | bytearray | memoryview) -> CollectorDatagram:
    """Read one datagram for the collector; raises
    :class:`~hostsflow.sflow.datagram.SflowDecodeError` for exactly the datagrams
    :func:`~hostsflow.sflow.datagram.decode_datagram` refuses."""
    frame = read_frame(data)
    view = frame.view
    counters: list[DecodedCounterSample] = []
    rows: list[FlowRow] = []
    unpack4 = _FOUR.unpack_from
    for tag, start, end, where in iter_samples(frame):
        if tag in _FLOW_TAGS:
            head = flow_sample_head(view, start, end, tag == SAMPLE_FLOW_EXPANDED, where)
            rate, count, first = head[3], head[10], head[11]
            frame_length: int | None = None
            protocol = 0
            header = b""
            entities: tuple[int, int, int, int] | None = None
            tcp: ExtendedTcpInfo | None = None
            for i, rtag, pos, length in iter_records(view, first, end, count, where):
                if rtag == _HEADER_TAG and length >= 16:
                    proto, flen, _stripped, n = unpack4(view, pos)
                    if 16 + n <= length:
                        if frame_length is None:
                            frame_length, protocol = flen, proto
                            header = bytes(view[pos + 16:pos + 16 + n])
                        continue
                elif rtag == _ENTITIES_TAG and length >= 16:
                    if entities is None:
                        entities = unpack4(view, pos)
                    continue
                # any other record (and a malformed one of the two above, which raises here)
                rec = read_record(FLOW, rtag, bytes(view[pos:pos + length]), where, i)
                if rtag == _TCP_INFO_TAG and tcp is None:
                    tcp = rec  # type: ignore[assignment]
            rows.append(_row(rate, frame_length, protocol, header, entities, tcp))
        elif tag in _COUNTER_TAGS:
            sample = decode_sample(view, start, end, tag, where)
            counters.append(sample)  # type: ignore[arg-type]
    return CollectorDatagram((frame.agent_address, frame.sub_agent_id), counters, rows)


def rows_of(dgram: Datagram) -> CollectorDatagram:
    """The same reading of an already decoded datagram."""
    counters: list[DecodedCounterSample] = []
    rows: list[FlowRow] = []
    for sample in dgram.samples:
        if isinstance(sample, DecodedCounterSample):
            counters.append(sample)
        elif isinstance(sample, DecodedFlowSample):
            header = sample.record(SampledHeader)
            ent = sample.record(ExtendedEntities)
            rows.append(_row(
                sample.sampling_rate, None if header is None else header.frame_length,  # type: ignore[attr-defined]
                0 if header is None else header.protocol,  # type: ignore[attr-defined]
                b"" if header is None else header.header,  # type: ignore[attr-defined]
                None if ent is None else (ent.src_class, ent.src_index,  # type: ignore[attr-defined]
                                          ent.dst_class, ent.dst_index),  # type: ignore[attr-defined]
                sample.record(ExtendedTcpInfo)))  # type: ignore[arg-type]
    return CollectorDatagram((dgram.agent_address, dgram.sub_agent_id), counters, rows)
