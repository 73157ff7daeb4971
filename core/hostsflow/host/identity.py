"""Who the host is: hostname, machine-id and the 16-byte host UUID (as hsflowd chooses it).

hsflowd's order: ``-u UUID``, else ``uuid=`` in the config
(both are the caller's override here), else the system UUID (dmidecode; we read the same value
from /sys/class/dmi/id/product_uuid), else a UUID derived from the machine-id.  The derivation is
reproduced bit for bit (``chooseUUID`` in hsflowd.c) so a host keeps the same UUID when it moves
from hsflowd to hostsflow:

* ``h1 = fnv1a32(machine_id[0:8])``, ``h2 = fnv1a32(machine_id[8:16])`` over the 16 machine-id
  bytes.  hsflowd hashes ``char`` values, which are *signed* on x86 and MIPS (bytes >= 0x80 are
  sign-extended before the XOR) and unsigned on ARM, POWER and s390; we do the same per
  ``platform.machine()``;
* the UUID is ``h1 h2 h1 h2`` as native-endian u32s (little-endian on x86);
* then ``uuid[6] = uuid[6] & 0x0F | 0x50`` (version 5) and ``uuid[8] = uuid[8] & 0x3F | 0x80``
  (RFC 4122 variant).

Read at start-up (the agent may drop root afterwards; product_uuid is readable by root only).
"""

from __future__ import annotations

import os
import platform
import struct
import sys

from . import procfs

MACHINE_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id")
SYSTEM_UUID_PATH = "/sys/class/dmi/id/product_uuid"

FNV_OFFSET_32 = 2166136261
FNV_PRIME_32 = 16777619

_SIGNED_CHAR_MACHINES = ("x86_64", "amd64", "i386", "i486", "i586", "i686", "x86", "mips")


def hostname() -> str:
    """The host name as uname() reports it (what hsflowd puts in host_descr)."""
    return os.uname().nodename


def parse_hex_id(text: str, length: int = 16) -> bytes | None:
    """Parse a UUID or machine-id text (hex digits, optionally separated by ``-``, ``:`` or
    ``.``) into ``length`` bytes, as hsflowd's ``parseUUID``; None unless exactly ``length``
    bytes of hex digits are found."""
    digits = "".join(c for c in text.strip() if c not in "-:.")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return raw if len(raw) == length else None


def read_machine_id() -> bytes | None:
    """The 16-byte machine-id from /etc/machine-id (or the D-Bus copy), or None."""
    for path in MACHINE_ID_PATHS:
        try:
            mid = parse_hex_id(procfs.read_first_line(path))
        except OSError:
            continue
        if mid is not None:
            return mid
    return None


#: the name the host package exports
machine_id = read_machine_id


def system_uuid() -> bytes | None:
    """The SMBIOS system UUID (same text as ``dmidecode -s system-uuid``), or None when it is
    missing, unreadable, or all zeros / all ones (placeholders some firmware ships)."""
    try:
        u = parse_hex_id(procfs.read_first_line(SYSTEM_UUID_PATH))
    except OSError:
        return None
    if u is None or u in (b"\0" * 16, b"\xff" * 16):
        return None
    return u


def fnv1a32(data: bytes, signed_char: bool) -> int:
    """32-bit FNV-1a as hsflowd's ``hash_fnv1a`` (``char`` signedness per platform)."""
    h = FNV_OFFSET_32
    for b in data:
        if signed_char and b >= 0x80:
            b |= 0xFFFFFF00  # sign extension of a negative char to 32 bits
        h = ((h ^ b) * FNV_PRIME_32) & 0xFFFFFFFF
    return h


def char_is_signed(machine: str | None = None) -> bool:
    """True on the architectures where C ``char`` is signed (x86, MIPS)."""
    m = (machine or platform.machine()).lower()
    return m in _SIGNED_CHAR_MACHINES or m.startswith("mips")


def uuid_from_machine_id(
    mid: bytes, byteorder: str = sys.byteorder, signed_char: bool | None = None
) -> bytes:
    """hsflowd's machine-id -> UUID derivation (see the module docstring)."""
    if len(mid) != 16:
        raise ValueError("machine-id must be 16 bytes")
    if signed_char is None:
        signed_char = char_is_signed()
    h1, h2 = fnv1a32(mid[:8], signed_char), fnv1a32(mid[8:], signed_char)
    u = bytearray(struct.pack("<IIII" if byteorder == "little" else ">IIII", h1, h2, h1, h2))
    u[6] = (u[6] & 0x0F) | 0x50
    u[8] = (u[8] & 0x3F) | 0x80
    return bytes(u)


def host_uuid(override: str | bytes | None = None, machine_id: bytes | None = None) -> bytes:
    """The host UUID: ``override`` (config ``uuid=`` or ``-u``), else the system UUID, else
    derived from the machine-id (``machine_id``, hsflowd's ``-m``, else the host's), else 16
    zero bytes (hsflowd then sends zeros too)."""
    if isinstance(override, bytes) and len(override) == 16:
        return override
    if isinstance(override, str):
        parsed = parse_hex_id(override)
        if parsed is None:
            raise ValueError(f"not a UUID: {override!r}")
        return parsed
    u = system_uuid()
    if u is not None:
        return u
    mid = machine_id or read_machine_id()
    return uuid_from_machine_id(mid) if mid is not None else b"\0" * 16


def format_uuid(u: bytes) -> str:
    """16 bytes as the usual ``8-4-4-4-12`` lower-case text."""
    h = u.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
