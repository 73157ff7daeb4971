"""sFlow datagrams written as a classic pcap file, for the third-party decoders (tshark,
sflowtool, sfacctd) that read captures offline.  Loaded by the tests with
``hostsflow.testing.load_file_module``."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

LOOPBACK = bytes((127, 0, 0, 1))


def write_pcap(path: str | os.PathLike[str], datagrams: Iterable[bytes],
               port: int = 6343) -> None:
    """Write each datagram as an Ethernet/IPv4/UDP packet 127.0.0.1:40000 -> 127.0.0.1:``port``
    (LINKTYPE_ETHERNET, IP header checksum set)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, payload in enumerate(datagrams):
        udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), (i + 1) & 0xFFFF, 0x4000, 64,
                         17, 0, LOOPBACK, LOOPBACK)
        ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
        frame = bytes(12) + b"\x08\x00" + ip + udp
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame)
    with open(path, "wb") as f:
        f.write(b"".join(out))


def ip_checksum(data: bytes) -> int:
    """The IPv4 header checksum of ``data`` (its checksum field zero)."""
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
