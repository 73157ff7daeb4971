"""Original frame length of cut frames, rebuilt from the IP header."""

from __future__ import annotations

import struct

from hostsflow.packet import ip_length
from hostsflow_pcap.frames import ethernet_length, raw_ip_length

MACS = bytes(range(12))


def ipv4(total: int, proto: int = 17) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, proto, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))


def ipv6(payload: int) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, payload, 17, 64, b"\x20" * 16, b"\x21" * 16)


def frame(ethertype: int, l3: bytes, size: int, vlans: int = 0) -> bytes:
    tags = b"".join(struct.pack("!HH", 0x8100, 100 + i) for i in range(vlans))
    f = MACS + tags + struct.pack("!H", ethertype) + l3
    return (f + b"x" * size)[:size]


def test_whole_frame_is_its_captured_length() -> None:
    f = frame(0x0800, ipv4(100), 114)
    assert ethernet_length(f, len(f), 128) == 114


def test_cut_ipv4_frame_gets_ip_total_length_plus_ethernet() -> None:
    f = frame(0x0800, ipv4(1500), 128)
    assert ethernet_length(f, 128, 128) == 1514


def test_cut_ipv6_frame_gets_payload_plus_40_plus_ethernet() -> None:
    f = frame(0x86DD, ipv6(1000), 128)
    assert ethernet_length(f, 128, 128) == 14 + 40 + 1000


def test_vlan_tags_count_in_the_link_header() -> None:
    f = frame(0x0800, ipv4(1500), 128, vlans=2)
    assert ethernet_length(f, 128, 128) == 14 + 8 + 1500


def test_non_ip_and_unreadable_lengths_fall_back_to_captured_length() -> None:
    arp = frame(0x0806, b"\x00" * 28, 64)
    assert ethernet_length(arp, 64, 64) == 64
    jumbo = frame(0x86DD, ipv6(0), 128)  # jumbogram / big GSO: no length in the header
    assert ethernet_length(jumbo, 128, 128) == 128
    short = frame(0x0800, ipv4(1500)[:2], 16)
    assert ethernet_length(short, 16, 16) == 16


def test_ip_length_never_shrinks_the_frame() -> None:
    # padding after a short IP packet: the captured length is larger than the IP says
    f = frame(0x0800, ipv4(28), 64)
    assert ethernet_length(f, 64, 64) == 64


def test_raw_ip_links() -> None:
    p = ipv4(900) + b"y" * 100
    assert raw_ip_length(p[:96], 96, 96) == 900
    assert raw_ip_length(p[:50], 50, 96) == 50
    assert ip_length(b"\x00\x00") == 0
