"""The sampled-header parser, on headers built by hand field by field."""

from __future__ import annotations

import signal
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostsflow.packet import PacketInfo, decode_sampled_header, parse_ethernet, parse_ip
from hostsflow.samples import DataSource, FlowSample
from hostsflow.sflow.records import SampledHeader

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def eth(payload: bytes, ethertype: int, vlans: tuple[int, ...] = (), tpid: int = 0x8100) -> bytes:
    tags = b"".join(struct.pack("!HH", tpid if i == 0 else 0x8100, (5 << 13) | v)
                    for i, v in enumerate(vlans))
    return MAC_B + MAC_A + tags + struct.pack("!H", ethertype) + payload


def ipv4(proto: int, l4: bytes, src="10.0.0.1", dst="10.0.0.2", tos=0x28, ttl=61, ident=0x1234,
         frag=0x4000, options: bytes = b"") -> bytes:
    ihl = (20 + len(options)) // 4
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, 20 + len(options) + len(l4), ident,
                       frag, ttl, proto, 0, socket.inet_aton(src),
                       socket.inet_aton(dst)) + options + l4


def ipv6(nxt: int, payload: bytes, src="2001:db8::1", dst="2001:db8::2", tclass=0xB8,
         hlim=63) -> bytes:
    first = (6 << 28) | (tclass << 20) | 0x12345
    return struct.pack("!IHBB16s16s", first, len(payload), nxt, hlim,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 2, 5 << 4, flags, 1000, 0, 0)


def udp(sport: int, dport: int, payload: bytes = b"hello") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def test_ethernet_ipv4_tcp():
    frame = eth(ipv4(6, tcp(43210, 443, 0x12)), 0x0800)
    info = parse_ethernet(frame)
    assert info == PacketInfo(
        ethertype=0x0800, ip_version=4, src_ip="10.0.0.1", dst_ip="10.0.0.2", protocol=6,
        src_port=43210, dst_port=443, tcp_flags=0x12, ip_total_length=40, tos=0x28, ttl=61,
        ip_id=0x1234, vlan=None, src_mac=MAC_A, dst_mac=MAC_B, l3_offset=14)


def test_ethernet_ipv4_udp_with_ip_options():
    frame = eth(ipv4(17, udp(5353, 53), options=b"\x01\x01\x01\x00"), 0x0800)
    info = parse_ethernet(frame)
    assert info is not None
    assert (info.protocol, info.src_port, info.dst_port, info.tcp_flags) == (17, 5353, 53, 0)
    assert info.ip_total_length == 24 + 13


def test_vlan_and_qinq():
    info = parse_ethernet(eth(ipv4(17, udp(1, 2)), 0x0800, vlans=(100,)))
    assert info is not None and info.vlan == 100 and info.l3_offset == 18
    assert (info.src_port, info.dst_port) == (1, 2)
    info = parse_ethernet(eth(ipv6(6, tcp(80, 8080, 0x10)), 0x86DD, vlans=(300, 7), tpid=0x88A8))
    assert info is not None and info.vlan == 300 and info.l3_offset == 22
    assert (info.ip_version, info.protocol, info.src_port, info.dst_port) == (6, 6, 80, 8080)


def test_ipv6_tcp_and_udp():
    info = parse_ethernet(eth(ipv6(6, tcp(1234, 22, 0x02)), 0x86DD))
    assert info == PacketInfo(
        ethertype=0x86DD, ip_version=6, src_ip="2001:db8::1", dst_ip="2001:db8::2", protocol=6,
        src_port=1234, dst_port=22, tcp_flags=0x02, ip_total_length=40 + 20, tos=0xB8, ttl=63,
        ip_id=0, vlan=None, src_mac=MAC_A, dst_mac=MAC_B, l3_offset=14)
    info = parse_ip(ipv6(17, udp(546, 547)))
    assert info is not None and info.src_mac is None
    assert (info.protocol, info.src_port, info.dst_port) == (17, 546, 547)


def test_ipv6_extension_headers_reach_the_transport():
    # hop-by-hop (8 bytes) -> destination options (16 bytes) -> fragment (offset 0) -> UDP
    frag = struct.pack("!BBHI", 17, 0, 0x0001, 0xABCD)  # offset 0, M flag set
    dest = struct.pack("!BB", 44, 1) + bytes(14)
    hbh = struct.pack("!BB", 60, 0) + bytes(6)
    info = parse_ip(ipv6(0, hbh + dest + frag + udp(4000, 4001)))
    assert info is not None
    assert (info.protocol, info.src_port, info.dst_port) == (17, 4000, 4001)
    # routing header then TCP
    rh = struct.pack("!BBBB", 6, 2, 0, 0) + bytes(20)
    info = parse_ip(ipv6(43, rh + tcp(5, 6, 0x18)))
    assert info is not None and (info.protocol, info.src_port, info.tcp_flags) == (6, 5, 0x18)
    # AH (length in 4-byte units minus 2) then TCP
    ah = struct.pack("!BBH", 6, 4, 0) + bytes(20)
    info = parse_ip(ipv6(51, ah + tcp(7, 8, 0x01)))
    assert info is not None and (info.protocol, info.src_port, info.dst_port) == (6, 7, 8)


def test_later_fragments_have_no_ports():
    info = parse_ip(ipv4(17, udp(1, 2), frag=0x0010))
    assert info is not None and (info.protocol, info.src_port, info.dst_port) == (17, 0, 0)
    frag = struct.pack("!BBHI", 6, 0, 0x0100, 1)  # offset 32 bytes
    info = parse_ip(ipv6(44, frag + tcp(1, 2, 3)))
    assert info is not None and (info.protocol, info.src_port) == (6, 0)


def test_icmp():
    info = parse_ip(ipv4(1, bytes([8, 0, 0, 0, 0, 1, 0, 1])))
    assert info is not None and (info.icmp_type, info.icmp_code, info.src_port) == (8, 0, 0)
    info = parse_ip(ipv6(58, bytes([128, 0, 0, 0])))
    assert info is not None and (info.protocol, info.icmp_type) == (58, 128)


def test_truncated_transport_keeps_ip_fields():
    frame = eth(ipv4(6, tcp(1, 2, 0x02)), 0x0800)
    info = parse_ethernet(frame[:14 + 20 + 4])  # ports, no flags
    assert info is not None and (info.src_port, info.dst_port, info.tcp_flags) == (1, 2, 0)
    info = parse_ethernet(frame[:14 + 20 + 2])
    assert info is not None and info.src_ip == "10.0.0.1" and info.src_port == 0


@pytest.mark.parametrize("frame", [
    b"",
    MAC_B + MAC_A,  # no ethertype
    eth(b"\x00" * 40, 0x0806),  # ARP
    eth(ipv4(6, tcp(1, 2, 3))[:19], 0x0800),  # IPv4 header cut
    eth(b"\x65" + bytes(30), 0x0800),  # ethertype IPv4, version 6
    eth(b"\x44" + bytes(30), 0x0800),  # IHL 16 bytes
    eth(b"\x4f" + bytes(30), 0x0800),  # IHL 60 bytes, only 31 present
    eth(ipv6(6, b"")[:39], 0x86DD),  # IPv6 header cut
    eth(ipv4(6, b""), 0x8100),  # VLAN tag cut
    eth(ipv4(6, b""), 0x0800, vlans=(1, 2, 3)),  # three tags
])
def test_malformed_frames_give_none(frame):
    assert parse_ethernet(frame) is None


def test_decode_sampled_header_by_protocol():
    v4 = ipv4(17, udp(9, 10))
    assert decode_sampled_header(SampledHeader(11, len(v4), 0, v4)).src_port == 9
    v6 = ipv6(17, udp(11, 12))
    assert decode_sampled_header(SampledHeader(12, len(v6), 0, v6)).dst_port == 12
    frame = eth(v4, 0x0800)
    assert decode_sampled_header(SampledHeader(1, len(frame) + 4, 4, frame)).dst_mac == MAC_B
    assert decode_sampled_header(SampledHeader(2, 100, 0, frame)) is None  # Token Ring
    assert decode_sampled_header(SampledHeader(11, 100, 0, v6)) is None  # says IPv4, holds IPv6
    assert decode_sampled_header(None) is None


def test_flow_sample_packet_property_decodes_once():
    frame = eth(ipv4(6, tcp(1, 2, 3)), 0x0800)
    fs = FlowSample(DataSource(0, 1), 1, [SampledHeader(1, len(frame) + 4, 4, frame)])
    first = fs.packet
    assert first is not None and first.dst_port == 2
    assert fs.packet is first
    assert FlowSample(DataSource(0, 1), 1, []).packet is None


@settings(max_examples=500, deadline=1000)
@given(st.integers(0, 12), st.binary(max_size=200))
def test_fuzz_never_raises(protocol, data):
    def fire(signum, frame):  # noqa: ARG001
        raise TimeoutError("decode_sampled_header hung")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, 2)
    try:
        out = decode_sampled_header(SampledHeader(protocol, len(data), 0, data))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert out is None or isinstance(out, PacketInfo)


@settings(max_examples=300, deadline=1000)
@given(st.lists(st.sampled_from([0, 43, 44, 51, 60, 135]), max_size=14), st.binary(max_size=64))
def test_fuzz_ipv6_extension_chains(chain, tail):
    """Chains of extension headers (with random lengths) end in None or a PacketInfo."""
    body = b""
    for i, _ in enumerate(chain):
        nxt = chain[i + 1] if i + 1 < len(chain) else 6
        body += bytes([nxt, i % 3]) + bytes(6 + 8 * (i % 3))
    first = chain[0] if chain else 6
    info = parse_ip(ipv6(first, body + tail))
    assert info is None or isinstance(info, PacketInfo)


@settings(max_examples=500, deadline=1000)
@given(st.sampled_from([1, 6, 17, 47, 132, 136]), st.sampled_from([0, 0x4000, 0x2000, 0x0001]),
       st.binary(max_size=40), st.integers(0, 40))
def test_untagged_ipv4_one_unpack_equals_the_general_path(proto, frag, l4, cut):
    """parse_ethernet reads an untagged IPv4 frame without options in one unpack; what it
    gives is what the general path (any VLAN tags, IPv4 options, IPv6) gives, for frames cut
    anywhere, later fragments and transports without ports."""
    from hostsflow.packet import _parse_ethernet_tagged

    frame = eth(ipv4(proto, l4, frag=frag), 0x0800)
    frame = frame[:max(14, len(frame) - cut)]
    assert parse_ethernet(frame) == _parse_ethernet_tagged(frame)
