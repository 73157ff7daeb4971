"""Rate reconciliation, sub-sampling, header records and direction mapping (hostsflow.firewall_log)."""

from __future__ import annotations

import random
import struct

import pytest
from hostsflow.packet import decode_sampled_header
from hostsflow.samples import DIRECTION_RECEIVED, DIRECTION_SENT
from hostsflow.sflow.records import INTERNAL_IFINDEX
from hostsflow.testing import ethernet_frame
from hostsflow import firewall_log as fwlog
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize("sampling,probability,expected", [
    (400, 0.0025, (400, 1, 400)),     # hsflowd setSamplingRate's examples
    (1000, 0.0025, (400, 3, 1200)),
    (10, 0.0025, (400, 1, 400)),      # issue #38: cannot report finer than the rule
    (400, 1.0, (1, 400, 400)),        # no probability: the kernel logs everything
    (400, 0.1, (10, 40, 400)),        # 1/0.1 is 10, not 9.999...
    (100, 0.01, (100, 1, 100)),
    (250, 0.01, (100, 3, 300)),
    (0, 0.01, (100, 0, 0)),           # sampling 0: off
])
def test_reconcile_rate(sampling: int, probability: float, expected: tuple[int, int, int]) -> None:
    r = fwlog.reconcile_rate(sampling, probability)
    assert (r.kernel, r.sub, r.actual) == expected


@given(st.integers(1, 10**6), st.integers(1, 10**5))
def test_reconcile_invariants(sampling: int, k: int) -> None:
    r = fwlog.reconcile_rate(sampling, 1.0 / k)
    assert r.kernel == k
    assert r.actual == r.sub * r.kernel and r.actual >= sampling
    assert r.actual - sampling < max(k, 1)  # the nearest multiple of K at or above S


@pytest.mark.parametrize("sub", [2, 3, 10, 50])
def test_subsampler_mean(sub: int) -> None:
    s = fwlog.SubSampler(sub, random.Random(sub))
    n = 200_000
    taken = sum(s.take() for _ in range(n))
    expected = n / sub
    # the skip is uniform in [1, 2sub-1]: variance of the count is below binomial's
    assert abs(taken - expected) < 5 * (expected * (1 - 1 / sub)) ** 0.5


def test_subsampler_edges() -> None:
    assert all(fwlog.SubSampler(1).take() for _ in range(10))
    assert not any(fwlog.SubSampler(0).take() for _ in range(10))


def test_ethernet_header_from_hwheader() -> None:
    frame = ethernet_frame(udp=("10.0.0.1", 1234, "10.0.0.2", 80), payload=b"x" * 1000)
    mac, l3 = frame[:14], frame[14:]
    h = fwlog.build_sampled_header(l3[:128], mac, 128)
    assert h is not None
    assert (h.protocol, h.stripped) == (1, 4)
    assert h.frame_length == len(frame) + 4  # IP total length + 14 + FCS
    assert h.header == frame[:128]
    info = decode_sampled_header(h)
    assert info is not None and (info.src_ip, info.dst_port) == ("10.0.0.1", 80)


def test_ipv4_and_ipv6_without_mac() -> None:
    v4 = ethernet_frame(udp=("10.0.0.1", 1, "10.0.0.2", 2), payload=b"y" * 500)[14:]
    h = fwlog.build_sampled_header(v4[:64], None, 128)
    assert h is not None and (h.protocol, h.frame_length, h.stripped) == (11, len(v4), 0)
    assert h.header == v4[:64]
    v6 = ethernet_frame(tcp=("fd00::1", 1, "fd00::2", 443), payload=b"z" * 300)[14:]
    h = fwlog.build_sampled_header(v6, None, 100)
    assert h is not None and (h.protocol, h.frame_length) == (12, len(v6))
    assert len(h.header) == 100
    assert decode_sampled_header(h).dst_port == 443  # type: ignore[union-attr]


def test_not_ip_without_mac_is_none() -> None:
    assert fwlog.build_sampled_header(b"\x00" * 40, None, 128) is None
    assert fwlog.build_sampled_header(b"", None, 128) is None
    assert fwlog.build_sampled_header(b"\x45\0\0", None, 128) is None  # cut inside the header


def test_zero_mac_is_not_ethernet() -> None:
    assert not fwlog.is_ethernet_header(b"\0" * 12 + b"\x08\x00")  # loopback
    assert fwlog.is_ethernet_header(b"\x02" * 12 + b"\x08\x00")
    assert not fwlog.is_ethernet_header(b"\x02" * 10)


@given(st.binary(max_size=200), st.one_of(st.none(), st.binary(min_size=14, max_size=18)),
       st.integers(20, 256))
def test_header_never_raises_and_respects_size(l3: bytes, mac, header_bytes: int) -> None:  # type: ignore[no-untyped-def]
    h = fwlog.build_sampled_header(l3, mac, header_bytes)
    if h is not None:
        assert len(h.header) <= header_bytes
        assert h.frame_length >= len(h.header)


def test_ip_length_from_header_not_capture() -> None:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1500, 0, 0, 64, 17, 0, b"\1" * 4, b"\2" * 4)
    h = fwlog.build_sampled_header(ip, None, 128)
    assert h is not None and (h.protocol, h.frame_length) == (11, 1500)
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, 1000, 17, 64, b"\1" * 16, b"\2" * 16)
    h6 = fwlog.build_sampled_header(ip6, None, 128)
    assert h6 is not None and (h6.protocol, h6.frame_length) == (12, 1040)


@pytest.mark.parametrize("hook,indev,outdev,expected", [
    (1, 3, 0, (DIRECTION_RECEIVED, 3, INTERNAL_IFINDEX, 3)),   # input
    (0, 3, 0, (DIRECTION_RECEIVED, 3, 0, 3)),                  # prerouting: not routed yet
    (2, 3, 4, (DIRECTION_RECEIVED, 3, 4, 3)),                  # forward
    (3, 0, 4, (DIRECTION_SENT, INTERNAL_IFINDEX, 4, 4)),       # output
    (4, 0, 4, (DIRECTION_SENT, INTERNAL_IFINDEX, 4, 4)),       # postrouting, local
    (4, 3, 4, (DIRECTION_SENT, 3, 4, 4)),                      # postrouting, forwarded
])
def test_placement_inet(hook: int, indev: int, outdev: int, expected: tuple) -> None:  # type: ignore[type-arg]
    w = fwlog.placement(hook, indev, outdev)
    assert (w.direction, w.input, w.output, w.source) == expected


def test_placement_netdev() -> None:
    w = fwlog.placement(0, 7, 0, family=fwlog.NFPROTO_NETDEV)
    assert (w.direction, w.input, w.source) == (DIRECTION_RECEIVED, 7, 7)
    w = fwlog.placement(1, 0, 7, family=fwlog.NFPROTO_NETDEV)
    assert (w.direction, w.output, w.source) == (DIRECTION_SENT, 7, 7)


def test_samplers_pool_and_drops() -> None:
    s = fwlog.Samplers()
    w2 = fwlog.placement(1, 2, 0)
    w3 = fwlog.placement(3, 0, 3)
    h = fwlog.build_sampled_header(b"\x45" + b"\0" * 19, None, 128)
    assert h is not None
    for _ in range(5):
        s.seen(2, 100)
    s.seen(3, 100)
    s.lost(7)
    a = s.sample(w2, 300, h)
    b = s.sample(w3, 300, h)
    c = s.sample(w2, 300, h)
    assert (a.sample_pool, b.sample_pool) == (500, 100)
    assert (a.drops, b.drops, c.drops) == (7, 0, 7)  # lost messages go to the next sample
    assert (a.source.ds_index, a.input, a.output) == (2, 2, INTERNAL_IFINDEX)


def test_rule_probability_is_above_zero_and_at_most_one() -> None:
    import attrs

    from hostsflow.config import ConfigError
    from hostsflow.config.registry import ConfigRegistry
    from hostsflow.config.schema import parse_config_text

    @attrs.frozen
    class RuleConfig:
        probability: float = fwlog.rule_probability("the rule's probability")

    reg = ConfigRegistry()
    reg.block("rule", RuleConfig)

    def probability(value: str) -> float:
        text = f"sflow {{ collector {{ ip = 127.0.0.1 }} rule {{ probability = {value} }} }}"
        return parse_config_text(text, "t.conf", reg).modules["rule"].probability

    assert probability("0.25") == 0.25 and probability("1") == 1.0
    assert parse_config_text("sflow { collector { ip = 127.0.0.1 } rule { } }", "t.conf",
                             reg).modules["rule"].probability == 1.0
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(ConfigError):
            probability(bad)
