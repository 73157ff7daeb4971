"""PacketBatch, the compact form the pcap tap hands the core: encoded in one pass when no
module has a per-sample hook, to the same bytes as FlowSamples through the general path;
turned into FlowSamples when a module does; a bad packet loses only itself; and
``Exporter.add_all`` cuts datagrams exactly where one ``add`` per sample would."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hostsflow import hookimpl
from hostsflow.samples import (
    DIRECTION_RECEIVED,
    DIRECTION_SENT,
    DataSource,
    FlowSample,
    PacketBatch,
)
from hostsflow.sflow.datagram import encode_flow_sample, encode_packet_batch
from hostsflow.sflow.exporter import Exporter, RecordingSink
from hostsflow.sflow.records import (
    HEADER_ETHERNET,
    INTERNAL_IFINDEX,
    ExtendedTcpInfo,
    SampledHeader,
)
from hostsflow.testing import AgentHarness, ethernet_frame

CONF = "sflow { collector { ip = 127.0.0.1 } }"
SRC = DataSource(0, 7, "eth7")


class Enricher:
    """A module with a per-sample hook: batches must become FlowSamples for it."""

    def __init__(self) -> None:
        self.seen = 0

    @hookimpl
    def sflow_flow_sample(self, agent: Any, sample: Any) -> None:
        self.seen += 1


def frame(i: int) -> bytes:
    return ethernet_frame(udp=("10.0.0.1", 1000 + i, "10.0.0.2", 53), payload=bytes(i % 40))


def batch(n: int, first_pool: int = 100, source: DataSource = SRC) -> PacketBatch:
    packets = []
    for i in range(n):
        f = frame(i)
        sent = i % 2 == 0
        packets.append((
            first_pool + 10 * i,
            INTERNAL_IFINDEX if sent else source.ds_index,
            source.ds_index if sent else INTERNAL_IFINDEX,
            DIRECTION_SENT if sent else DIRECTION_RECEIVED,
            HEADER_ETHERNET, len(f) + 4, f, 1700000000.0 + i))
    return PacketBatch(source, 10, 3, 4, packets)


u32s = st.integers(0, 2**32 - 1)
packet = st.tuples(
    st.integers(0, 2**40), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 2]), st.sampled_from([1, 11, 12]), u32s, st.binary(max_size=300),
    st.floats(0, 2e9))


@settings(max_examples=200, deadline=None)
@given(st.lists(packet, max_size=8), u32s, st.integers(0, 2**40), u32s, u32s)
def test_batch_encoding_equals_one_flow_sample_at_a_time(
        packets: list[Any], rate: int, drops: int, stripped: int, seq: int) -> None:
    b = PacketBatch(DataSource(0, 5), rate, drops, stripped, packets)
    one_by_one = [encode_flow_sample(seq + i, s) for i, s in enumerate(b.flow_samples())]
    assert encode_packet_batch(seq, b) == one_by_one


@settings(max_examples=200, deadline=None)
@given(u32s, u32s, u32s, st.binary(max_size=300), st.booleans(), st.booleans())
def test_the_sampled_header_encoder_writes_what_the_record_codec_writes(
        protocol: int, frame_length: int, stripped: int, header: bytes, first: bool,
        more: bool) -> None:
    """The sampled_header of the sample encoder (first record, packed with the sample's head)
    and the generic record codec (any other place) give the same record bytes."""
    sh = SampledHeader(protocol, frame_length, stripped, header)
    others = [ExtendedTcpInfo(dir=1, rtt=7)] if more else []
    records = [sh, *others] if first else [*others, sh]
    encoded = encode_flow_sample(1, FlowSample(DataSource(0, 3), 10, records))
    body = b"".join(r.encode() for r in records)
    assert encoded[-len(body):] == body
    assert len(encoded) == 52 + len(body)  # tag, length and the 44 fixed bytes of the head


def test_flow_samples_carry_every_field() -> None:
    b = batch(2)
    s0, s1 = b.flow_samples()
    assert (s0.source, s0.sampling_rate, s0.drops, s0.sample_pool) == (SRC, 10, 3, 100)
    assert (s0.input, s0.output, s0.direction) == (INTERNAL_IFINDEX, 7, DIRECTION_SENT)
    assert (s1.input, s1.output, s1.direction) == (7, INTERNAL_IFINDEX, DIRECTION_RECEIVED)
    assert s1.timestamp == 1700000001.0 and s1.sample_pool == 110
    hdr = s1.header
    assert hdr is not None and (hdr.protocol, hdr.stripped, hdr.header) == (1, 4, frame(1))


def test_fast_path_and_hook_path_send_the_same_samples() -> None:
    enricher = Enricher()
    fast, general = AgentHarness(CONF), AgentHarness(CONF, modules={"e": enricher})
    for h in (fast, general):
        with h:
            h.agent.take_batch(batch(20))
            h.agent.take_batch(batch(5, first_pool=400))
            h.flush()
    assert enricher.seen == 25 and not fast.agent.pipeline.phase1
    got = [s for d in fast.datagrams for s in d.samples]
    assert got == [s for d in general.datagrams for s in d.samples]
    assert [s.sequence for s in got] == list(range(1, 26))
    assert fast.agent.health.snapshot()["flow_samples_taken"] == 25


def test_batches_and_single_samples_share_one_sequence_per_source() -> None:
    with AgentHarness(CONF) as h:
        h.agent.take_batch(batch(3))
        h.feed(h.make_sample(udp=("10.0.0.1", 1, "10.0.0.2", 2), ifindex=7))
        h.agent.take_batch(batch(2))
        h.agent.take_batch(batch(2, source=DataSource(0, 8)))
        h.flush()
        got = [(s.source.ds_index, s.sequence) for s in h.flow_samples()]
    assert got == [(7, 1), (7, 2), (7, 3), (7, 4), (7, 5), (7, 6), (8, 1), (8, 2)]


def test_a_bad_packet_loses_only_itself() -> None:
    b = batch(4)
    pool, inp, out, direction, proto, _flen, hdr, ts = b.packets[2]
    b.packets[2] = (pool, inp, out, direction, proto, -1, hdr, ts)  # no u32 can hold it
    with AgentHarness(CONF) as h:
        h.agent.take_batch(b)
        h.flush()
        got = h.flow_samples()
        assert [s.sample_pool for s in got] == [100, 110, 130]
        assert [s.sequence for s in got] == [1, 2, 3]
        assert h.agent.health.snapshot()["dropped.unencodable"] == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 700), max_size=200), st.integers(200, 1500))
def test_add_all_cuts_datagrams_where_add_does(sizes: list[int], max_bytes: int) -> None:
    samples = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    sinks = RecordingSink(), RecordingSink()
    one, many = (Exporter(sink, "10.0.0.1", 0, max_bytes, lambda: 0.0) for sink in sinks)
    for s in samples:
        one.add(s)
    many.add_all(samples[:7])
    many.add_all(samples[7:])
    one.flush()
    many.flush()
    assert sinks[0].datagrams == sinks[1].datagrams
    assert one.samples == many.samples == len(samples)
