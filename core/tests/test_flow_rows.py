"""The collector's reading of datagrams (:mod:`hostsflow.tools.flow_rows`) against the full
decoder: on valid datagrams, on the independently crafted vectors and on mutated bytes, it
refuses exactly what :func:`decode_datagram` refuses and reads the same rows from the rest."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostsflow.samples import DataSource
from hostsflow.sflow.datagram import DatagramHeader, SflowDecodeError, decode_datagram, \
    encode_datagram
from hostsflow.sflow.records import ExtendedEntities, ExtendedTcpInfo, SampledHeader
from hostsflow.testing import encoded_flow_sample, encoded_names_sample, ethernet_frame
from hostsflow.tools.flow_rows import read_datagram, rows_of

VECTORS = Path(__file__).parent / "data" / "vectors"
TCP = ExtendedTcpInfo(dir=1, snd_mss=1460, rtt=2500, retrans=1, min_rtt=900)


def _valid() -> list[bytes]:
    v4 = ethernet_frame(tcp=("198.51.100.7", 40000, "192.0.2.1", 443), payload=bytes(300))
    v6 = ethernet_frame(udp=("2001:db8::7", 53, "2001:db8::1", 5353), payload=bytes(80))
    header = DatagramHeader("192.0.2.1", 0, 1, 1000)
    flow = encoded_flow_sample
    return [
        encode_datagram(header, [encoded_names_sample(DataSource(3, 1), "web.service"),
                                 flow(v4, 10, ExtendedEntities(0, 0, 3, 1), TCP),
                                 flow(v6, 1, ExtendedEntities(3, 2, 3, 0)), flow(v4, 0),
                                 flow(v4, 400, ExtendedEntities(2, 1, 3, 7))]),
        encode_datagram(DatagramHeader("2001:db8::1", 7, 9, 5),
                        [flow(v6, 3, TCP, ExtendedEntities(3, 4, 0, 0))]),
    ]


VALID = _valid()


def _same_reading(data: bytes) -> None:
    try:
        full = decode_datagram(data)
    except SflowDecodeError:
        with pytest.raises(SflowDecodeError):
            read_datagram(data)
        return
    assert read_datagram(data) == rows_of(full)


def test_valid_datagrams_give_the_decoders_rows():
    read = read_datagram(VALID[0])
    assert read.agent == ("192.0.2.1", 0)
    assert [c.source for c in read.counters] == [DataSource(3, 1)]
    first, v6, unsampled, marked = read.rows
    assert (first.usable, first.packets, first.dst_service, first.src_service) == \
        (True, 10, 1, 0)
    assert first.bytes == 10 * first.packet.ip_total_length + 10 * 14 + 10 * 4  # + FCS
    assert first.packet.dst_port == 443 and first.tcp == TCP
    assert (v6.src_service, v6.dst_service, v6.packet.protocol) == (2, 0, 17)
    assert not unsampled.usable  # sampling rate 0 stands for no packets
    assert (marked.src_service, marked.dst_service) == (0, 7)  # class 2 is not a service
    for data in VALID:
        _same_reading(data)


def test_vectors_read_the_same():
    vectors = sorted(VECTORS.glob("*.bin"))
    assert vectors
    for path in vectors:
        _same_reading(path.read_bytes())


def test_a_malformed_known_record_is_refused_by_both():
    """sampled_header whose opaque length runs past its record, extended_entities cut to 8
    bytes: the full decoder refuses both, and so does the collector's reading."""
    frame = ethernet_frame(tcp=("10.0.0.1", 1, "10.0.0.2", 2))
    good = encode_datagram(DatagramHeader("10.0.0.9", 0, 1, 1),
                           [encoded_flow_sample(frame, 1, ExtendedEntities(3, 1, 0, 0))])
    sh = good.index(struct.pack(">II", SampledHeader.tag(), 16 + len(frame) + (-len(frame) & 3)))
    bad_header = bytearray(good)
    bad_header[sh + 20:sh + 24] = struct.pack(">I", len(frame) + 8)
    ent = good.index(struct.pack(">II", ExtendedEntities.tag(), 16))
    bad_ent = bytearray(good)
    bad_ent[ent + 4:ent + 8] = struct.pack(">I", 8)
    # (the entities' last 8 bytes are then left over after the records: also refused)
    for data in (bytes(bad_header), bytes(bad_ent)):
        with pytest.raises(SflowDecodeError):
            decode_datagram(data)
        with pytest.raises(SflowDecodeError):
            read_datagram(data)


@settings(max_examples=1500, deadline=2000)
@given(st.sampled_from(range(len(VALID))), st.lists(
    st.tuples(st.integers(0, 4000), st.sampled_from(["flip", "word", "cut", "dup"]),
              st.one_of(st.integers(0, 8), st.sampled_from([1, 3, 2209, 2210, 0x7FFFFFFF,
                                                             0xFFFFFFFF]),
                        st.integers(0, 0xFFFFFFFF))), min_size=1, max_size=4))
def test_mutated_datagrams_read_the_same(which, edits):
    """Bytes flipped, 32-bit words set (small counts and lengths, tags, edge values), cut short
    or parts repeated."""
    data = bytearray(VALID[which])
    for at, kind, value in edits:
        if not data:
            break
        at %= len(data)
        if kind == "flip":
            data[at] ^= 1 << (value % 8)
        elif kind == "word":
            data[at & ~3:(at & ~3) + 4] = struct.pack(">I", value % (1 << 32))
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at] = data[at:at + (value % 64)]
    _same_reading(bytes(data))
