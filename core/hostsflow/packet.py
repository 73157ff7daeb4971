"""Decode the first bytes of a sampled packet into addresses, ports and protocol.

Called on: the packet path, at most once per flow sample and only when an enrichment module
asks (``FlowSample.packet``).  :func:`decode_sampled_header` picks the parser from the
sampled_header's protocol (1 Ethernet, 11 IPv4, 12 IPv6); :func:`parse_ethernet` handles
802.1Q/802.1ad tags, :func:`parse_ip` IPv4 and IPv6 (with enough of the IPv6 extension headers
to reach TCP/UDP).  The capture modules use two pieces of it on their own:
:func:`ethernet_payload` (where the payload of a frame starts, past its VLAN tags) and
:func:`ip_length` (the IP packet's length as its header says, for frames cut short).  A header that is not IP, or is cut before the end of its IP header,
gives None; a transport header cut short gives zero ports/flags.  Never raises.
"""

from __future__ import annotations

import socket
import struct

import attrs

from .sflow.records import HEADER_ETHERNET, HEADER_IPV4, HEADER_IPV6, SampledHeader

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_QINQ = 0x9100  # old pre-standard QinQ tag, still seen
_VLAN_TAGS = frozenset((ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ))
#: VLAN tags read in front of the payload (802.1ad QinQ: two)
MAX_VLAN_TAGS = 2
ETH_HLEN = 14

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
#: IPv6 extension headers we walk over: hop-by-hop, routing, destination options, mobility,
#: HIP, shim6 (length in 8-byte units, not counting the first 8); fragment (44) and AH (51)
#: are handled on their own.
_IPV6_EXT = frozenset((0, 43, 60, 135, 139, 140))
_IPV6_FRAGMENT = 44
_IPV6_AH = 51
_MAX_EXT_HEADERS = 10
#: transports whose first 4 bytes are source and destination port
_PORT_PROTOCOLS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_UDPLITE))

_unpack_u16 = struct.Struct("!H").unpack_from
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_PORTS = struct.Struct("!HH")
#: an untagged Ethernet frame with an IPv4 header without options and the transport's ports:
#: dst MAC, src MAC, ethertype, the IPv4 header's fields, source and destination port
_ETH_IPV4_PORTS = struct.Struct("!6s6sHBBHHHBBH4s4sHH")
_ETH_IPV4_PORTS_LEN = _ETH_IPV4_PORTS.size  # 38
_TCP_FLAGS_AT = _ETH_IPV4_PORTS_LEN + 9  # byte 13 of the TCP header
_inet_ntoa = socket.inet_ntoa
_inet_ntop = socket.inet_ntop
_AF_INET6 = socket.AF_INET6

#: packed address -> text; flows repeat addresses, and formatting costs more than a lookup
_ADDR_TEXT: dict[bytes, str] = {}
_ADDR_TEXT_MAX = 8192


def _addr_text(packed: bytes) -> str:
    text = _inet_ntoa(packed) if len(packed) == 4 else _inet_ntop(_AF_INET6, packed)
    if len(_ADDR_TEXT) >= _ADDR_TEXT_MAX:
        _ADDR_TEXT.clear()
    _ADDR_TEXT[packed] = text
    return text


@attrs.define(slots=True)
class PacketInfo:
    """What a sampled header says about its packet.

    MACs are 6 raw bytes (None for a raw IP header); ``vlan`` the outer 802.1Q VLAN id (None
    if untagged); ``ethertype`` the type after any VLAN tags (0x0800 or 0x86DD, also for raw
    IP headers); addresses are text; ``protocol`` the transport protocol after IPv6
    extension headers; ports and ``tcp_flags`` are 0 when the transport has none (ICMP, a
    later fragment, a header cut short).  ``ip_total_length`` is the IP packet's length
    (IPv6: payload length + 40); ``tos`` the IPv4 TOS / IPv6 traffic class; ``ttl`` the TTL or
    hop limit; ``ip_id`` the IPv4 identification (0 for IPv6).  For ICMP, ``src_port`` and
    ``dst_port`` are 0 and ``icmp_type``/``icmp_code`` are set."""

    ethertype: int
    ip_version: int
    src_ip: str
    dst_ip: str
    protocol: int
    src_port: int = 0
    dst_port: int = 0
    tcp_flags: int = 0
    ip_total_length: int = 0
    tos: int = 0
    ttl: int = 0
    ip_id: int = 0
    vlan: int | None = None
    src_mac: bytes | None = None
    dst_mac: bytes | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    #: offset of the IP header in the sampled header (the L2 header's length)
    l3_offset: int = 0


def decode_sampled_header(header: SampledHeader | None) -> PacketInfo | None:
    """The :class:`PacketInfo` of a sampled_header record, or None if there is none, it is
    not Ethernet/IPv4/IPv6, or it is malformed."""
    if header is None:
        return None
    return decode_header_bytes(header.protocol, header.header)


def decode_header_bytes(protocol: int, data: bytes) -> PacketInfo | None:
    """The :class:`PacketInfo` of a sampled header's bytes by its header_protocol (1
    Ethernet, 11 IPv4, 12 IPv6), or None (another protocol, or malformed)."""
    if protocol == HEADER_ETHERNET:
        return parse_ethernet(data)
    if protocol == HEADER_IPV4:
        return _parse_ipv4(data, 0)
    if protocol == HEADER_IPV6:
        return _parse_ipv6(data, 0)
    return None


def ethernet_payload(data: bytes) -> tuple[int, int, int | None] | None:
    """(ethertype, offset of the payload, outer VLAN id or None) of an Ethernet II frame,
    after up to :data:`MAX_VLAN_TAGS` 802.1Q/802.1ad tags; None when the header or a tag is
    cut.  With more tags than that, the ethertype returned is the next tag's."""
    n = len(data)
    if n < ETH_HLEN:
        return None
    ethertype = _unpack_u16(data, 12)[0]
    offset = ETH_HLEN
    vlan = None
    for _ in range(MAX_VLAN_TAGS):
        if ethertype not in _VLAN_TAGS:
            break
        if n < offset + 4:
            return None
        tci, ethertype = _PORTS.unpack_from(data, offset)
        if vlan is None:
            vlan = tci & 0x0FFF
        offset += 4
    return ethertype, offset, vlan


def ip_length(data: bytes, offset: int = 0) -> int:
    """The length of the IP packet at ``offset`` as its header says (IPv4 total length, IPv6
    payload length + 40), or 0 when unknown: not IP, the length field not captured, or a zero
    IPv6 payload length (jumbogram, BIG TCP/GSO)."""
    n = len(data)
    if n <= offset:
        return 0
    version = data[offset] >> 4
    if version == 4:
        return _unpack_u16(data, offset + 2)[0] if n >= offset + 4 else 0
    if version == 6 and n >= offset + 6:
        plen = _unpack_u16(data, offset + 4)[0]
        return plen + 40 if plen else 0
    return 0


def parse_ethernet(data: bytes) -> PacketInfo | None:
    """Parse an Ethernet II frame (with up to two VLAN tags) carrying IPv4 or IPv6."""
    if len(data) >= _ETH_IPV4_PORTS_LEN and data[14] == 0x45 and data[12] == 8 and \
            data[13] == 0:
        # the common case in one unpack: untagged IPv4 without options; the same PacketInfo
        # as the general path below
        (dst_mac, src_mac, _type, _vihl, tos, total, ip_id, frag, ttl, proto, _csum, src, dst,
         sport, dport) = _ETH_IPV4_PORTS.unpack_from(data)
        if proto in _PORT_PROTOCOLS and not frag & 0x1FFF:
            flags = data[_TCP_FLAGS_AT] if proto == IPPROTO_TCP and \
                len(data) > _TCP_FLAGS_AT else 0
            return PacketInfo(ETH_P_IP, 4, _ADDR_TEXT.get(src) or _addr_text(src),
                              _ADDR_TEXT.get(dst) or _addr_text(dst), proto, sport, dport,
                              flags, total, tos, ttl, ip_id, None, src_mac, dst_mac, None, None,
                              ETH_HLEN)
    return _parse_ethernet_tagged(data)


def _parse_ethernet_tagged(data: bytes) -> PacketInfo | None:
    """:func:`parse_ethernet`'s general path: any VLAN tags, IPv4 or IPv6."""
    l2 = ethernet_payload(data)
    if l2 is None:
        return None
    ethertype, offset, vlan = l2
    if ethertype == ETH_P_IP:
        info = _parse_ipv4(data, offset)
    elif ethertype == ETH_P_IPV6:
        info = _parse_ipv6(data, offset)
    else:
        return None
    if info is not None:
        info.src_mac = data[6:12]
        info.dst_mac = data[:6]
        info.vlan = vlan
        info.l3_offset = offset
    return info


def parse_ip(data: bytes) -> PacketInfo | None:
    """Parse a raw IPv4 or IPv6 packet (the version nibble decides)."""
    if not data:
        return None
    version = data[0] >> 4
    if version == 4:
        return _parse_ipv4(data, 0)
    if version == 6:
        return _parse_ipv6(data, 0)
    return None


def _transport(info: PacketInfo, data: bytes, pos: int) -> PacketInfo:
    """Fill ports, TCP flags or ICMP type/code from the transport header at ``pos``."""
    proto = info.protocol
    if proto in _PORT_PROTOCOLS:
        if len(data) >= pos + 4:
            info.src_port, info.dst_port = _PORTS.unpack_from(data, pos)
            if proto == IPPROTO_TCP and len(data) >= pos + 14:
                info.tcp_flags = data[pos + 13]
    elif proto == IPPROTO_ICMP or proto == IPPROTO_ICMPV6:
        if len(data) >= pos + 2:
            info.icmp_type = data[pos]
            info.icmp_code = data[pos + 1]
    return info


def _parse_ipv4(data: bytes, pos: int) -> PacketInfo | None:
    if len(data) < pos + 20:
        return None
    vihl, tos, total, ip_id, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(data, pos)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20 or len(data) < pos + ihl:
        return None
    info = PacketInfo(ETH_P_IP, 4, _ADDR_TEXT.get(src) or _addr_text(src),
                      _ADDR_TEXT.get(dst) or _addr_text(dst), proto, 0, 0, 0, total, tos, ttl, ip_id)
    if frag & 0x1FFF:  # a later fragment: no transport header here
        return info
    return _transport(info, data, pos + ihl)


def _parse_ipv6(data: bytes, pos: int) -> PacketInfo | None:
    if len(data) < pos + 40:
        return None
    vtcfl, payload_len, nxt, hlim, src, dst = _IPV6.unpack_from(data, pos)
    if vtcfl >> 28 != 6:
        return None
    info = PacketInfo(ETH_P_IPV6, 6, _ADDR_TEXT.get(src) or _addr_text(src),
                      _ADDR_TEXT.get(dst) or _addr_text(dst), nxt, 0, 0, 0, payload_len + 40,
                      vtcfl >> 20 & 0xFF, hlim)
    pos += 40
    n = len(data)
    for _ in range(_MAX_EXT_HEADERS):
        if nxt in _IPV6_EXT:
            if n < pos + 2:
                return info  # cut inside the extension headers: no transport
            nxt, hlen = data[pos], (data[pos + 1] + 1) * 8
        elif nxt == _IPV6_FRAGMENT:
            if n < pos + 8:
                return info
            later = (data[pos + 2] << 8 | data[pos + 3]) & 0xFFF8
            nxt, hlen = data[pos], 8
            if later:
                info.protocol = nxt
                return info
        elif nxt == _IPV6_AH:
            if n < pos + 2:
                return info
            nxt, hlen = data[pos], (data[pos + 1] + 2) * 4
        else:
            break
        pos += hlen
        info.protocol = nxt
    else:
        return info  # too many extension headers: give up on the transport
    return _transport(info, data, pos)
