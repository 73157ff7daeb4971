"""Recover what the capture buffer does not say: the original length of a cut frame.

``next_batch`` reports only the captured length.  When a frame was cut at the snap length, its
original length is rebuilt from the IP header (IPv4 total length, IPv6 payload length + 40)
plus the link header in front of it (performance-notes.md fact 7).  Everything here runs once
per sampled packet, so it uses precompiled structs and no allocation beyond slicing.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct("!H")
_unpack_u16 = _U16.unpack_from

ETH_HLEN = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100))


def ip_length(pkt: bytes, off: int, caplen: int) -> int:
    """Length of the IP packet starting at ``off`` as its header says, or 0 if unknown
    (not IP, header not captured, or a zero length as in IPv6 jumbograms and big GSO)."""
    if caplen < off + 1:
        return 0
    version = pkt[off] >> 4
    if version == 4:
        if caplen < off + 4:
            return 0
        return _unpack_u16(pkt, off + 2)[0]
    if version == 6:
        if caplen < off + 6:
            return 0
        plen = _unpack_u16(pkt, off + 4)[0]
        return plen + 40 if plen else 0
    return 0


def ethernet_length(pkt: bytes, caplen: int, snaplen: int) -> int:
    """Original length of an Ethernet frame (no FCS) captured as ``pkt[:caplen]``.

    A frame shorter than the snap length was captured whole.  A frame cut at the snap length
    gets the link header (with any VLAN tags) plus the IP length; if that cannot be read the
    captured length is the best answer left."""
    if caplen < snaplen:
        return caplen
    off = ETH_HLEN
    if caplen < off:
        return caplen
    etype = _unpack_u16(pkt, 12)[0]
    while etype in _VLAN_TYPES and caplen >= off + 4:
        etype = _unpack_u16(pkt, off + 2)[0]
        off += 4
    if etype != ETHERTYPE_IPV4 and etype != ETHERTYPE_IPV6:
        return caplen
    iplen = ip_length(pkt, off, caplen)
    total = off + iplen
    return max(caplen, total)


def raw_ip_length(pkt: bytes, caplen: int, snaplen: int) -> int:
    """Original length of a packet on a raw-IP link (DLT_RAW: no link header)."""
    if caplen < snaplen:
        return caplen
    iplen = ip_length(pkt, 0, caplen)
    return max(caplen, iplen)
