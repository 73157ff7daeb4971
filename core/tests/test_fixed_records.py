"""The precompiled whole-record encoder of fixed-size records (``Record._encode_whole``) and
the flow-sample fast path that uses it give the same bytes as the generic encoder."""

from __future__ import annotations

import struct

from hypothesis import given, strategies as st

from hostsflow.samples import DataSource, FlowSample
from hostsflow.sflow.datagram import decode_datagram, encode_datagram, encode_flow_sample
from hostsflow.sflow.datagram import DatagramHeader
from hostsflow.sflow.records import (
    REGISTRY, ExtendedEntities, ExtendedTcpInfo, HostDescr, Record, SampledHeader,
)

U32S = st.integers(0, 0xFFFFFFFF)


def generic(rec: Record) -> bytes:
    """The generic path: tag, length, then the compiled body codec."""
    body = rec.encode_body()
    return struct.pack(">II", rec.tag(), len(body)) + body


def generic_flow_sample(seq: int, s: FlowSample) -> bytes:
    """A flow_sample_expanded built from the generic record encoder only."""
    recs = b"".join(generic(r) for r in s.records)
    body = struct.pack(
        ">11I", seq, s.source.ds_class, s.source.ds_index, s.sampling_rate, s.sample_pool,
        s.drops, s.input >> 30, s.input & 0x3FFFFFFF, s.output >> 30, s.output & 0x3FFFFFFF,
        len(s.records)) + recs
    return struct.pack(">II", 3, len(body)) + body


def test_fixed_size_classes_have_a_whole_encoder_and_variable_ones_do_not() -> None:
    assert ExtendedTcpInfo._encode_whole is not None
    assert ExtendedEntities._encode_whole is not None
    assert SampledHeader._encode_whole is None  # opaque header: variable length
    assert HostDescr._encode_whole is None  # strings


def test_every_registered_whole_encoder_matches_the_generic_one() -> None:
    checked = 0
    for cls in REGISTRY.values():
        if cls._encode_whole is None:
            continue
        rec = cls()
        assert cls._encode_whole(rec) == generic(rec) == rec.encode(), cls.__name__
        checked += 1
    assert checked >= 10


@given(st.lists(U32S, min_size=12, max_size=12), st.lists(U32S, min_size=4, max_size=4),
       st.binary(max_size=200), st.integers(0, 3))
def test_flow_sample_fast_path_bytes_equal_generic(
    tcp: list[int], ent: list[int], header: bytes, order: int
) -> None:
    recs: list[Record] = [SampledHeader(frame_length=len(header) + 4, header=header),
                          ExtendedTcpInfo(*tcp), ExtendedEntities(*ent)]
    if order == 1:
        recs = recs[:2]
    elif order == 2:
        recs = [recs[0], recs[2], recs[1]]
    elif order == 3:
        recs = recs[1:]  # no sampled_header first: the general path
    s = FlowSample(DataSource(0, 7), 256, recs, sample_pool=9999, drops=2, input=3,
                   output=0x3FFFFFFF)
    fast = encode_flow_sample(42, s)
    assert fast == generic_flow_sample(42, s)
    back = decode_datagram(encode_datagram(DatagramHeader("192.0.2.1"), [fast]))
    assert back.samples[0].records == recs
