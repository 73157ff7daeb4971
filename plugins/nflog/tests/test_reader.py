"""NflogReader: kernel-format buffers in, flow samples out (sequence gaps, pools, headers)."""

from __future__ import annotations

import random
import struct

from hostsflow.samples import DIRECTION_RECEIVED, DIRECTION_SENT
from hostsflow.sflow.records import INTERNAL_IFINDEX
from hostsflow.testing import ethernet_frame
from hostsflow_nflog import protocol as p
from hostsflow.firewall_log import reconcile_rate
from hostsflow_nflog.reader import NflogReader, ReadStats
from hypothesis import given, settings
from hypothesis import strategies as st

FRAME = ethernet_frame(udp=("10.9.0.1", 5000, "10.9.0.2", 6000), payload=b"q" * 400)


def msg(hook: int, seq: int | None, indev: int = 0, outdev: int = 0, hw: bool = True,
        payload: bytes = FRAME[14:142]) -> bytes:
    a = [(p.NFULA_PACKET_HDR, struct.pack("!HBx", 0x0800, hook))]
    if indev:
        a.append((p.NFULA_IFINDEX_INDEV, struct.pack("!I", indev)))
    if outdev:
        a.append((p.NFULA_IFINDEX_OUTDEV, struct.pack("!I", outdev)))
    if hw:
        a += [(p.NFULA_HWTYPE, b"\0\1"), (p.NFULA_HWLEN, b"\0\x0e"),
              (p.NFULA_HWHEADER, FRAME[:14])]
    if seq is not None:
        a.append((p.NFULA_SEQ, struct.pack("!I", seq)))
    a.append((p.NFULA_PAYLOAD, payload))
    return p.packet_message(a, group=5)


def reader(sampling: int = 100, probability: float = 0.01) -> NflogReader:
    return NflogReader(reconcile_rate(sampling, probability), 128, rng=random.Random(1))


def test_received_sample_with_ethernet_header() -> None:
    (s,) = reader().process(msg(1, 0, indev=4))
    assert (s.source.ds_index, s.input, s.output) == (4, 4, INTERNAL_IFINDEX)
    assert s.direction == DIRECTION_RECEIVED
    assert (s.sampling_rate, s.sample_pool, s.drops) == (100, 100, 0)
    h = s.header
    assert h is not None and h.protocol == 1
    assert h.frame_length == len(FRAME) + 4 and h.header == FRAME[:128]


def test_sent_sample_is_ip_only() -> None:
    (s,) = reader().process(msg(3, 0, outdev=5, hw=False))
    assert (s.source.ds_index, s.input, s.output) == (5, INTERNAL_IFINDEX, 5)
    assert s.direction == DIRECTION_SENT
    assert s.header is not None and s.header.protocol == 11
    assert s.header.frame_length == len(FRAME) - 14


def test_sequence_gaps_are_drops() -> None:
    r = reader()
    st_ = ReadStats()
    out = r.process(msg(1, 10, indev=2) + msg(1, 11, indev=2) + msg(1, 15, indev=2), st_)
    assert st_.lost == 3 and [s.drops for s in out] == [0, 0, 3]
    out = r.process(msg(1, 17, indev=2), st_)  # across buffers
    assert out[0].drops == 4 and st_.lost == 4
    r.reset_sequence()  # re-bound: the kernel restarts at 0, that is no loss
    out = r.process(msg(1, 0, indev=2))
    assert out[0].drops == 4


def test_sequence_wraps() -> None:
    r = reader()
    out = r.process(msg(1, 2**32 - 2, indev=2) + msg(1, 1, indev=2))
    assert out[1].drops == 2  # 2**32-1 and 0 lost


def test_sub_sampling_pool_counts_every_message() -> None:
    r = reader(sampling=1000, probability=0.01)  # K=100, sub=10, actual=1000
    buf = b"".join(msg(1, i, indev=2) for i in range(5000))
    out = r.process(buf)
    assert all(s.sampling_rate == 1000 for s in out)
    assert 500 - 5 * 500 ** 0.5 < len(out) < 500 + 5 * 500 ** 0.5
    assert r.samplers.pools[2] == 5000 * 100
    assert out[-1].sample_pool <= 5000 * 100


def test_no_interface_and_non_ip_are_counted() -> None:
    st_ = ReadStats()
    out = reader().process(msg(1, 0) + msg(1, 1, indev=2, hw=False, payload=b"\0" * 40), st_)
    assert out == [] and (st_.no_source, st_.not_ip, st_.messages) == (1, 1, 2)


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2**32 - 1),
                          st.integers(0, 8), st.integers(0, 8), st.booleans(),
                          st.binary(max_size=80)), max_size=10),
       st.binary(max_size=40))
@settings(max_examples=300)
def test_reader_never_raises(specs, junk: bytes) -> None:  # type: ignore[no-untyped-def]
    buf = b"".join(msg(h, s, i, o, hw, pl) for h, s, i, o, hw, pl in specs) + junk
    st_ = ReadStats()
    out = reader().process(buf, st_)
    assert len(out) <= len(specs)
    for s in out:
        assert s.source.ds_index > 0 and s.header is not None
