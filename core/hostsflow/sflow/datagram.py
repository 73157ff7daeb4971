"""sFlow v5 samples and datagrams: the encoder the agent sends with, and a strict decoder.

Encoding (the per-sample path, kept cheap with precompiled structs):

* :func:`encode_flow_sample` -> one whole ``flow_sample_expanded`` (0:3) sample record,
* :func:`encode_counter_sample` -> one whole ``counters_sample_expanded`` (0:4) sample record,
* :func:`encode_datagram` -> the datagram header (:class:`DatagramHeader`) plus encoded samples.

Decoding (``hostsflow decode``, the testing kit, tests): :func:`decode_datagram` reads a datagram
into a :class:`Datagram` of :class:`DecodedFlowSample` / :class:`DecodedCounterSample` (expanded
and compact forms), with records decoded through the registry of :mod:`.records`
(:class:`~.records.UnknownRecord` for the ones it has no class for).  Anything malformed raises
:class:`SflowDecodeError`, and only that.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Sequence

import attrs

from ..samples import DataSource
from .records import COUNTER, FLOW, Record, SampledHeader, UnknownRecord, decode_record

if TYPE_CHECKING:
    from ..samples import FlowSample, PacketBatch

SFLOW_VERSION = 5

#: sample_type tags (enterprise 0)
SAMPLE_FLOW = 1
SAMPLE_COUNTERS = 2
SAMPLE_FLOW_EXPANDED = 3
SAMPLE_COUNTERS_EXPANDED = 4

#: agent address types
ADDRESS_UNKNOWN, ADDRESS_IPV4, ADDRESS_IPV6 = 0, 1, 2

U32 = 0xFFFFFFFF
IFINDEX_MASK = 0x3FFFFFFF

#: flow_sample_expanded up to and including the record count, with tag and length in front
_FLOW_HEAD = struct.Struct(">13I")
#: the same followed by a sampled_header record's tag, length and fixed part (the fast path)
_FLOW_HEAD_SH = struct.Struct(">19I")
_FLOW_FIXED = 44  # body bytes before the records (record count included)
_SH_TAG = SampledHeader.tag()
_COUNTER_HEAD = struct.Struct(">6I")
_COUNTER_FIXED = 16
_DGRAM_PREFIX = struct.Struct(">II")  # version, agent address type (the address follows)
_DGRAM_TAIL = struct.Struct(">III")  # after the sub-agent id: sequence, uptime, sample count
_U32 = struct.Struct(">I")
_ZERO_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


class SflowDecodeError(ValueError):
    """Bytes that are not a well-formed sFlow v5 datagram; the message says where and why."""


# ================================================================ encoding


def encode_flow_sample(seq: int, sample: "FlowSample") -> bytes:
    """One whole ``flow_sample_expanded`` sample record (data_format 0:3, length, body).

    Called on: the packet path, once per sampled packet, by the core after enrichment.
    ``seq`` is the per-data-source sample sequence number; the sequence number, sample pool
    and drops wrap at 2**32.  Records go out in ``sample.records`` order."""
    src = sample.source
    records = sample.records
    inp = sample.input
    out = sample.output
    if records and type(records[0]) is SampledHeader:
        # the usual sample: sampled_header first, then any other records (tcp_info,
        # entities...), precompiled packs for the fixed-size ones
        rec = records[0]
        rest = b"".join([_encode_flow_record(r) for r in records[1:]])
        return _sampled_header_sample(
            seq, src.ds_class, src.ds_index, sample.sampling_rate, sample.sample_pool,
            sample.drops, inp, out, len(records), len(rest),
            rec.protocol, rec.frame_length, rec.stripped, rec.header) + rest
    encoded = [_encode_flow_record(rec) for rec in records]
    body_len = _FLOW_FIXED + sum(map(len, encoded))
    head = _FLOW_HEAD.pack(
        SAMPLE_FLOW_EXPANDED, body_len, seq & U32, src.ds_class, src.ds_index,
        sample.sampling_rate, sample.sample_pool & U32, sample.drops & U32,
        inp >> 30 & 3, inp & IFINDEX_MASK, out >> 30 & 3, out & IFINDEX_MASK, len(encoded))
    encoded.insert(0, head)
    return b"".join(encoded)


def encode_packet_batch(first_seq: int, batch: "PacketBatch") -> list[bytes]:
    """One whole ``flow_sample_expanded`` per packet of ``batch``, numbered from ``first_seq``.

    Called on: the packet path when no module implements a per-sample hook, once per capture
    read.  Each is what :func:`encode_flow_sample` makes for a FlowSample holding the same
    single sampled_header (the same encoder; a test checks both agree); the fields common to
    the batch are looked up once.  Raises ``struct.error`` for a value out of range (the
    caller then takes the samples one by one, so a bad packet loses only itself)."""
    src = batch.source
    ds_class, ds_index, rate = src.ds_class, src.ds_index, batch.sampling_rate
    drops, stripped = batch.drops, batch.stripped
    encode = _sampled_header_sample
    return [encode(seq, ds_class, ds_index, rate, pool, drops, inp, outp, 1, 0,
                   proto, flen, stripped, hdr)
            for seq, (pool, inp, outp, _direction, proto, flen, hdr, _ts)
            in enumerate(batch.packets, first_seq)]


def _sampled_header_sample(
    seq: int, ds_class: int, ds_index: int, rate: int, pool: int, drops: int, inp: int,
    out: int, nrecords: int, rest_len: int, protocol: int, frame_length: int, stripped: int,
    header: bytes,
) -> bytes:
    """The one sampled_header encoder: a ``flow_sample_expanded`` whose first record is a
    sampled_header, up to the end of that record, in one pack (the sample's head and the
    record's fixed part) plus the header bytes and their padding.  ``rest_len`` bytes of
    ``nrecords - 1`` further records follow it (the caller appends them)."""
    n = len(header)
    sh_len = 16 + n + (-n & 3)
    return _FLOW_HEAD_SH.pack(
        SAMPLE_FLOW_EXPANDED, _FLOW_FIXED + 8 + sh_len + rest_len, seq & U32,
        ds_class, ds_index, rate, pool & U32, drops & U32, inp >> 30 & 3, inp & IFINDEX_MASK,
        out >> 30 & 3, out & IFINDEX_MASK, nrecords,
        _SH_TAG, sh_len, protocol, frame_length, stripped, n) + header + _ZERO_PAD[n & 3]


def _encode_flow_record(rec: Record) -> bytes:
    """A whole flow record: all-fixed-size records with one precompiled pack
    (``Record._encode_whole``), the others (a sampled_header that is not first among them)
    through the generic record codec."""
    whole = getattr(type(rec), "_encode_whole", None)
    return rec.encode() if whole is None else whole(rec)  # type: ignore[no-any-return]


def encode_counter_sample(seq: int, source: DataSource, records: Sequence[Record]) -> bytes:
    """One whole ``counters_sample_expanded`` sample record (data_format 0:4, length, body).

    Called on: counter polling, once per data source that is due.  Records go out in order."""
    encoded = [rec.encode() for rec in records]
    body_len = _COUNTER_FIXED + sum(map(len, encoded))
    encoded.insert(0, _COUNTER_HEAD.pack(
        SAMPLE_COUNTERS_EXPANDED, body_len, seq & U32, source.ds_class, source.ds_index,
        len(encoded)))
    return b"".join(encoded)


@functools.lru_cache(maxsize=64)
def _stream_prefix(agent_address: str, sub_agent_id: int) -> bytes:
    """The header fields that stay the same over a stream: version, address type, agent
    address and sub-agent id (worked out once per address, not per datagram)."""
    ip = ipaddress.ip_address(agent_address)
    kind = ADDRESS_IPV4 if ip.version == 4 else ADDRESS_IPV6
    return _DGRAM_PREFIX.pack(SFLOW_VERSION, kind) + ip.packed + _U32.pack(sub_agent_id & U32)


def encode_datagram_header(agent_address: str, sub_agent_id: int, sequence: int,
                           uptime_ms: int, nsamples: int) -> bytes:
    """The datagram header bytes (the sample count included).

    Called on: each datagram flush by the exporter.  Raises ValueError for an agent address
    that is not IPv4 or IPv6 text."""
    return _stream_prefix(agent_address, sub_agent_id) + _DGRAM_TAIL.pack(
        sequence & U32, uptime_ms & U32, nsamples)


@attrs.frozen(slots=True)
class DatagramHeader:
    """What goes in front of the samples: agent address (IPv4 or IPv6 text), sub-agent id,
    datagram sequence number (wraps at 2**32) and agent uptime in ms (wraps likewise)."""

    agent_address: str
    sub_agent_id: int = 0
    sequence: int = 0
    uptime_ms: int = 0

    def encode(self, nsamples: int) -> bytes:
        """The datagram header bytes, the sample count included."""
        return encode_datagram_header(self.agent_address, self.sub_agent_id, self.sequence,
                                      self.uptime_ms, nsamples)


def encode_datagram(header: DatagramHeader, encoded_samples: Sequence[bytes]) -> bytes:
    """A whole sFlow v5 datagram from its header and already encoded sample records.

    Raises ValueError for an agent address that is not IPv4 or IPv6 text."""
    return header.encode(len(encoded_samples)) + b"".join(encoded_samples)


# ================================================================ decoded forms


@attrs.define(slots=True)
class DecodedFlowSample:
    """A flow sample read back (expanded 0:3 or compact 0:1, see ``expanded``).

    ``input`` and ``output`` are ``(format, value)``: format 0 = ifIndex (0 unknown,
    0x3FFFFFFF internal), 1 = discarded (value = reason), 2 = multiple (value = count)."""

    sequence: int
    source: DataSource
    sampling_rate: int
    sample_pool: int
    drops: int
    input: tuple[int, int]
    output: tuple[int, int]
    records: list[Record | UnknownRecord]
    expanded: bool = True

    @property
    def tag(self) -> str:
        return f"0:{SAMPLE_FLOW_EXPANDED if self.expanded else SAMPLE_FLOW}"

    def record(self, cls: type) -> Record | None:
        """The first record of class ``cls``, or None."""
        for r in self.records:  # a plain loop: the collectors call this for every sample
            if isinstance(r, cls):
                return r
        return None


@attrs.define(slots=True)
class DecodedCounterSample:
    """A counter sample read back (expanded 0:4 or compact 0:2, see ``expanded``)."""

    sequence: int
    source: DataSource
    records: list[Record | UnknownRecord]
    expanded: bool = True

    @property
    def tag(self) -> str:
        return f"0:{SAMPLE_COUNTERS_EXPANDED if self.expanded else SAMPLE_COUNTERS}"

    def record(self, cls: type) -> Record | None:
        """The first record of class ``cls``, or None."""
        for r in self.records:  # a plain loop: the collectors call this for every sample
            if isinstance(r, cls):
                return r
        return None


@attrs.define(slots=True)
class UnknownSample:
    """A sample type the decoder does not read (e.g. 0:5 discarded packets); kept whole."""

    enterprise: int
    format: int
    data: bytes

    @property
    def tag(self) -> str:
        return f"{self.enterprise}:{self.format}"


Sample = DecodedFlowSample | DecodedCounterSample | UnknownSample


@attrs.define(slots=True)
class Datagram:
    """A decoded sFlow datagram.  ``agent_address`` is text ("" when its type is unknown);
    ``uptime`` is in milliseconds; ``size`` is the datagram's length in bytes."""

    version: int
    agent_address: str
    sub_agent_id: int
    sequence: int
    uptime: int
    samples: list[Sample]
    size: int = 0

    @property
    def flow_samples(self) -> list[DecodedFlowSample]:
        return [s for s in self.samples if isinstance(s, DecodedFlowSample)]

    @property
    def counter_samples(self) -> list[DecodedCounterSample]:
        return [s for s in self.samples if isinstance(s, DecodedCounterSample)]


# ================================================================ decoding

_U32 = struct.Struct(">I")
_U32x2 = struct.Struct(">II")
_EXP_FLOW = struct.Struct(">11I")  # seq, type, index, rate, pool, drops, in f/v, out f/v, n
_CMP_FLOW = struct.Struct(">7I")  # seq, source_id, rate, pool, drops, input, output
_EXP_COUNTER = struct.Struct(">4I")  # seq, type, index, n
_CMP_COUNTER = struct.Struct(">3I")  # seq, source_id, n
_DGRAM_HEAD = struct.Struct(">4I")  # sub_agent, sequence, uptime, sample count


def _need(data: bytes | memoryview, pos: int, n: int, end: int, what: str) -> None:
    if pos + n > end:
        raise SflowDecodeError(f"{what}: truncated at byte {pos} (need {n}, {end - pos} left)")


def iter_records(
    data: memoryview, pos: int, end: int, count: int, where: str
) -> Iterator[tuple[int, int, int, int]]:
    """The ``count`` records (data_format, length, body) between ``pos`` and ``end``, as
    ``(index, tag, body start, body length)``; raises :class:`SflowDecodeError` when one runs past its
    sample, or when the records leave bytes of the sample unread (after the last one)."""
    unpack = _U32x2.unpack_from
    for i in range(count):  # the messages are made only on errors: this runs for every record
        if pos + 8 > end:
            _need(data, pos, 8, end, f"{where} record {i}")
        tag, length = unpack(data, pos)
        pos += 8
        if length > end - pos:
            raise SflowDecodeError(
                f"{where} record {i} ({tag >> 12}:{tag & 0xFFF}): length {length} runs past "
                f"its sample ({end - pos} bytes left)")
        yield i, tag, pos, length
        pos += length + (-length & 3)
        if pos > end:
            raise SflowDecodeError(f"{where} record {i}: padding runs past its sample")
    if pos != end:
        raise SflowDecodeError(f"{where}: {end - pos} bytes left after its {count} records")


def read_record(kind: str, tag: int, body: bytes, where: str, index: int
                ) -> Record | UnknownRecord:
    """One record body by its registered class; raises :class:`SflowDecodeError` when the
    class cannot read it."""
    try:
        return decode_record(kind, tag, body)
    except Exception as exc:  # noqa: BLE001 - any record class may fail on bad bytes
        raise SflowDecodeError(
            f"{where} record {index} ({tag >> 12}:{tag & 0xFFF}, {len(body)} bytes): "
            f"{type(exc).__name__}: {exc}") from exc


def _read_records(
    data: memoryview, pos: int, end: int, count: int, kind: str, where: str
) -> list[Record | UnknownRecord]:
    """Read ``count`` records (data_format, length, body) between ``pos`` and ``end``."""
    return [read_record(kind, tag, bytes(data[start:start + length]), where, i)
            for i, tag, start, length in iter_records(data, pos, end, count, where)]


def _source(ds_class: int, ds_index: int) -> DataSource:
    return DataSource(ds_class, ds_index)


def flow_sample_head(data: memoryview, pos: int, end: int, expanded: bool, where: str
                     ) -> tuple[int, int, int, int, int, int, int, int, int, int, int, int]:
    """The fixed part of a flow sample (expanded 0:3 or compact 0:1) at ``pos``: ``(sequence,
    ds_class, ds_index, sampling_rate, sample_pool, drops, input format, input value, output
    format, output value, record count, position of the first record)``."""
    if expanded:
        _need(data, pos, _EXP_FLOW.size, end, where)
        return (*_EXP_FLOW.unpack_from(data, pos), pos + _EXP_FLOW.size)  # type: ignore[return-value]
    _need(data, pos, _CMP_FLOW.size + 4, end, where)
    seq, source_id, rate, pool, drops, inp, out = _CMP_FLOW.unpack_from(data, pos)
    (n,) = _U32.unpack_from(data, pos + _CMP_FLOW.size)
    return (seq, source_id >> 24, source_id & 0xFFFFFF, rate, pool, drops, inp >> 30,
            inp & IFINDEX_MASK, out >> 30, out & IFINDEX_MASK, n, pos + _CMP_FLOW.size + 4)


def decode_sample(data: memoryview, pos: int, end: int, tag: int, where: str) -> Sample:
    """One sample record's body (``pos`` to ``end``) by its ``tag``."""
    enterprise, fmt = tag >> 12, tag & 0xFFF
    if enterprise != 0 or fmt not in (1, 2, 3, 4):
        return UnknownSample(enterprise, fmt, bytes(data[pos:end]))
    if fmt == SAMPLE_FLOW_EXPANDED or fmt == SAMPLE_FLOW:
        expanded = fmt == SAMPLE_FLOW_EXPANDED
        (seq, ds_type, ds_index, rate, pool, drops, in_f, in_v, out_f, out_v, n,
         first) = flow_sample_head(data, pos, end, expanded, where)
        records = _read_records(data, first, end, n, FLOW, where)
        return DecodedFlowSample(seq, _source(ds_type, ds_index), rate, pool, drops,
                                 (in_f, in_v), (out_f, out_v), records, expanded)
    if fmt == SAMPLE_COUNTERS_EXPANDED:
        _need(data, pos, _EXP_COUNTER.size, end, where)
        seq, ds_type, ds_index, n = _EXP_COUNTER.unpack_from(data, pos)
        records = _read_records(data, pos + _EXP_COUNTER.size, end, n, COUNTER, where)
        return DecodedCounterSample(seq, _source(ds_type, ds_index), records, True)
    _need(data, pos, _CMP_COUNTER.size, end, where)
    seq, source_id, n = _CMP_COUNTER.unpack_from(data, pos)
    records = _read_records(data, pos + _CMP_COUNTER.size, end, n, COUNTER, where)
    return DecodedCounterSample(seq, _source(source_id >> 24, source_id & 0xFFFFFF), records,
                                False)


@attrs.define(slots=True)
class DatagramFrame:
    """A datagram's header, read by :func:`read_frame`: the samples are walked by
    :func:`iter_samples` from ``first``."""

    view: memoryview
    agent_address: str
    sub_agent_id: int
    sequence: int
    uptime: int
    nsamples: int
    first: int


def read_frame(data: bytes | bytearray | memoryview) -> DatagramFrame:
    """The header of one sFlow v5 datagram; raises :class:`SflowDecodeError` if malformed."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    end = len(view)
    _need(view, 0, 8, end, "datagram header")
    version, addr_type = _U32x2.unpack_from(view, 0)
    if version != SFLOW_VERSION:
        raise SflowDecodeError(f"datagram version {version}, only sFlow version 5 is read")
    pos = 8
    if addr_type == ADDRESS_IPV4:
        _need(view, pos, 4, end, "agent address")
        agent = socket.inet_ntop(socket.AF_INET, view[pos:pos + 4])
        pos += 4
    elif addr_type == ADDRESS_IPV6:
        _need(view, pos, 16, end, "agent address")
        agent = socket.inet_ntop(socket.AF_INET6, view[pos:pos + 16])
        pos += 16
    elif addr_type == ADDRESS_UNKNOWN:
        agent = ""
    else:
        raise SflowDecodeError(f"agent address type {addr_type} (1 = IPv4, 2 = IPv6)")
    _need(view, pos, 16, end, "datagram header")
    sub_agent, seq, uptime, nsamples = _DGRAM_HEAD.unpack_from(view, pos)
    return DatagramFrame(view, agent, sub_agent, seq, uptime, nsamples, pos + 16)


def iter_samples(frame: DatagramFrame) -> Iterator[tuple[int, int, int, str]]:
    """The datagram's samples as ``(tag, body start, body end, where)``; raises
    :class:`SflowDecodeError` when one runs past the datagram, or (after the last) when the
    samples leave bytes of the datagram unread."""
    view, pos = frame.view, frame.first
    end = len(view)
    unpack = _U32x2.unpack_from
    for i in range(frame.nsamples):
        where = f"sample {i}"
        _need(view, pos, 8, end, where)
        tag, length = unpack(view, pos)
        pos += 8
        if length > end - pos:
            raise SflowDecodeError(
                f"{where} ({tag >> 12}:{tag & 0xFFF}): length {length} runs past the datagram "
                f"({end - pos} bytes left)")
        if length & 3:
            raise SflowDecodeError(f"{where}: length {length} is not a multiple of 4")
        yield tag, pos, pos + length, where
        pos += length
    if pos != end:
        raise SflowDecodeError(f"{end - pos} bytes left after the {frame.nsamples} samples")


def decode_datagram(data: bytes | bytearray | memoryview) -> Datagram:
    """Read one sFlow v5 datagram.

    Strict about framing: every sample and record length must fit its container, the records
    must fill their sample exactly and the samples the datagram.  Record bodies are read by
    their registered class (trailing bytes inside a record are tolerated, as newer, longer
    forms of a record keep the old fields first).  Raises :class:`SflowDecodeError` for any
    malformed input; work is bounded by the input length."""
    frame = read_frame(data)
    view = frame.view
    samples: list[Sample] = [decode_sample(view, start, end, tag, where)
                             for tag, start, end, where in iter_samples(frame)]
    return Datagram(SFLOW_VERSION, frame.agent_address, frame.sub_agent_id, frame.sequence,
                    frame.uptime, samples, len(view))
