"""Recover what the capture buffer does not say: the original length of a cut frame.

``next_batch`` reports only the captured length.  When a frame was cut at the snap length, its
original length is rebuilt from the IP header (IPv4 total length, IPv6 payload length + 40)
plus the link header in front of it; the link header and the IP length are read by the core's
:mod:`hostsflow.packet`.  Everything here runs once per
sampled packet that was cut, with no allocation beyond slicing.
"""

from __future__ import annotations

from hostsflow.packet import ETH_P_IP, ETH_P_IPV6, ethernet_payload, ip_length


def ethernet_length(pkt: bytes, caplen: int, snaplen: int) -> int:
    """Original length of an Ethernet frame (no FCS) captured as ``pkt`` (``caplen`` bytes).

    A frame shorter than the snap length was captured whole.  A frame cut at the snap length
    gets the link header (with any VLAN tags) plus the IP length; if that cannot be read the
    captured length is the best answer left."""
    if caplen < snaplen:
        return caplen
    l2 = ethernet_payload(pkt)
    if l2 is None or (l2[0] != ETH_P_IP and l2[0] != ETH_P_IPV6):
        return caplen
    off = l2[1]
    return max(caplen, off + ip_length(pkt, off))


def raw_ip_length(pkt: bytes, caplen: int, snaplen: int) -> int:
    """Original length of a packet on a raw-IP link (DLT_RAW: no link header)."""
    if caplen < snaplen:
        return caplen
    return max(caplen, ip_length(pkt))
