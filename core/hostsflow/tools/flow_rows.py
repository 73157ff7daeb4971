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

from ..packet import PacketInfo, decode_header_bytes, parse_ethernet
from ..sflow.datagram import (
    SAMPLE_COUNTERS,
    SAMPLE_COUNTERS_EXPANDED,
    SAMPLE_FLOW,
    SAMPLE_FLOW_EXPANDED,
    Datagram,
    DecodedCounterSample,
    DecodedFlowSample,
    SflowDecodeError,
    decode_sample,
    iter_samples,
    read_frame,
    read_record,
)
from ..sflow.records import (
    FLOW, HEADER_ETHERNET, ExtendedEntities, ExtendedTcpInfo, SampledHeader,
)

SERVICE_CLASS = 3  # data source class of a service (hsflowd: DS_TYPE "3" = logical entity)

_HEADER_TAG = SampledHeader.tag()
_ENTITIES_TAG = ExtendedEntities.tag()
_TCP_INFO_TAG = ExtendedTcpInfo.tag()
_FOUR = struct.Struct(">4I")  # sampled_header's fixed part and opaque length; extended_entities
_TWO = struct.Struct(">II")  # a record's data_format and length
#: sampling rate and record count of a flow sample, expanded (0:3) and compact (0:1)
_EXPANDED_HEAD = struct.Struct(">12xI24xI")
_COMPACT_HEAD = struct.Struct(">8xI16xI")
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
    :func:`~hostsflow.sflow.datagram.decode_datagram` refuses.

    The records of a flow sample are walked here with the checks of
    :func:`~hostsflow.sflow.datagram.iter_records` written out in the loop (this runs for
    every sample of every agent: a generator and a tuple per record cost a third of the
    reading); tests/test_flow_rows.py holds the two to the same answers on mutated bytes."""
    frame = read_frame(data)
    buf = data if isinstance(data, bytes) else bytes(frame.view)
    counters: list[DecodedCounterSample] = []
    rows: list[FlowRow] = []
    append = rows.append
    unpack4, unpack2 = _FOUR.unpack_from, _TWO.unpack_from
    for tag, start, end, where in iter_samples(frame):
        if tag == SAMPLE_FLOW_EXPANDED:
            if end - start < _EXPANDED_HEAD.size:
                raise SflowDecodeError(f"{where}: truncated flow sample")
            rate, count = _EXPANDED_HEAD.unpack_from(buf, start)
            pos = start + _EXPANDED_HEAD.size
        elif tag == SAMPLE_FLOW:
            if end - start < _COMPACT_HEAD.size:
                raise SflowDecodeError(f"{where}: truncated flow sample")
            rate, count = _COMPACT_HEAD.unpack_from(buf, start)
            pos = start + _COMPACT_HEAD.size
        else:
            if tag in _COUNTER_TAGS:
                counters.append(decode_sample(frame.view, start, end, tag, where))  # type: ignore[arg-type]
            continue
        frame_length = -1
        protocol = 0
        header = b""
        src = dst = 0
        entities = False
        tcp: ExtendedTcpInfo | None = None
        for i in range(count):
            if pos + 8 > end:
                raise SflowDecodeError(f"{where} record {i}: truncated")
            rtag, length = unpack2(buf, pos)
            pos += 8
            if length > end - pos:
                raise SflowDecodeError(f"{where} record {i}: length {length} runs past its sample")
            if rtag == _HEADER_TAG and length >= 16 and \
                    16 + unpack4(buf, pos)[3] <= length:
                if frame_length < 0:
                    protocol, frame_length, _stripped, n = unpack4(buf, pos)
                    header = buf[pos + 16:pos + 16 + n]
            elif rtag == _ENTITIES_TAG and length >= 16:
                if not entities:
                    entities = True
                    src_class, src_index, dst_class, dst_index = unpack4(buf, pos)
                    if src_class == SERVICE_CLASS:
                        src = src_index
                    if dst_class == SERVICE_CLASS:
                        dst = dst_index
            else:  # any other record (and a malformed one of the two above, which raises here)
                rec = read_record(FLOW, rtag, buf[pos:pos + length], where, i)
                if rtag == _TCP_INFO_TAG and tcp is None:
                    tcp = rec  # type: ignore[assignment]
            pos += length + (-length & 3)
            if pos > end:
                raise SflowDecodeError(f"{where} record {i}: padding runs past its sample")
        if pos != end:
            raise SflowDecodeError(f"{where}: {end - pos} bytes left after its {count} records")
        if frame_length < 0 or rate == 0:
            append(FlowRow(False, 0, 0, src, dst, None, tcp))
        else:
            packet = parse_ethernet(header) if protocol == HEADER_ETHERNET else \
                decode_header_bytes(protocol, header)
            append(FlowRow(True, frame_length * rate, rate, src, dst, packet, tcp))
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
