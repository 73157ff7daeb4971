"""Service identity as hsflowd computes it: a version-5 UUID per unit and a dsIndex in the
logical-entity range chosen by FNV-1a hash with linear probing (``assignVM_dsIndex``).

Used when a service is first seen, so that a service keeps the same dsIndex as under hsflowd
on the same host (same host UUID, unit name and agent address).
"""

from __future__ import annotations

import hashlib
import ipaddress

DSINDEX_FIRST = 100000  #: HSP_DEFAULT_LOGICAL_DSINDEX_START
DSINDEX_LAST = 149999  #: HSP_DEFAULT_APP_DSINDEX_START - 1
DSINDEX_RANGE = DSINDEX_LAST - DSINDEX_FIRST + 1

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619


def unit_uuid(host_uuid: bytes, unit_name: str, agent_address: str | None) -> bytes:
    """RFC 4122 version-5 UUID: SHA-1 over namespace (host UUID), unit name bytes and the raw
    agent IP address bytes (4 or 16; none if the address is unknown)."""
    ip = b""
    if agent_address:
        try:
            ip = ipaddress.ip_address(agent_address).packed
        except ValueError:
            ip = b""
    digest = bytearray(hashlib.sha1(bytes(host_uuid[:16]).ljust(16, b"\0") +
                                    unit_name.encode() + ip).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return bytes(digest)


def hash_uuid(uuid: bytes) -> int:
    """FNV-1a-32 over the 16 UUID bytes, XORing each byte as a *signed* char (hsflowd quirk:
    bytes >= 0x80 are sign-extended before the XOR)."""
    h = FNV_OFFSET
    for b in uuid[:16]:
        h ^= (b | 0xFFFFFF00) if b >= 0x80 else b
        h = (h * FNV_PRIME) & 0xFFFFFFFF
    return h


class DsIndexAllocator:
    """The table dsIndex -> owner key; preferred slot from the UUID hash, linear probing with
    wrap on collision, 0 when the range is full."""

    def __init__(self, first: int = DSINDEX_FIRST, last: int = DSINDEX_LAST) -> None:
        self.first, self.last = first, last
        self._owner: dict[int, str] = {}
        self._index: dict[str, int] = {}

    def assign(self, key: str, uuid: bytes) -> int:
        """Return ``key``'s dsIndex, claiming one if it has none (0 = table full)."""
        if key in self._index:
            return self._index[key]
        span = self.last - self.first + 1
        if len(self._owner) >= span:
            return 0
        idx = self.first + hash_uuid(uuid) % span
        while idx in self._owner:
            idx = idx + 1 if idx < self.last else self.first
        self._owner[idx] = key
        self._index[key] = idx
        return idx

    def release(self, key: str) -> None:
        """Free ``key``'s slot (service gone)."""
        idx = self._index.pop(key, None)
        if idx is not None:
            self._owner.pop(idx, None)

    def __len__(self) -> int:
        return len(self._owner)
