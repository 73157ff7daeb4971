"""extended_user encodes to the sFlow v5 layout and decodes back through the core's registry."""

from __future__ import annotations

import struct

from hostsflow.sflow.records import FLOW, decode_record
from hostsflow_user.record import CHARSET_UTF8, ExtendedUser


def xdr_string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b + b"\0" * (-len(b) & 3)


def test_layout_is_the_spec_one() -> None:
    rec = ExtendedUser(CHARSET_UTF8, "root", CHARSET_UTF8, "nobody")
    expected_body = (struct.pack(">I", 106) + xdr_string(b"root")
                     + struct.pack(">I", 106) + xdr_string(b"nobody"))
    assert rec.encode_body() == expected_body
    assert rec.encode()[:8] == struct.pack(">II", 1004, len(expected_body))
    assert ExtendedUser.tag() == 1004  # enterprise 0


def test_round_trip_through_the_registry() -> None:
    rec = ExtendedUser(CHARSET_UTF8, "j\u00f6rg", 0, "")
    back = decode_record(FLOW, ExtendedUser.tag(), rec.encode_body())
    assert back == rec
    assert rec.encode_body()[4:8] == struct.pack(">I", len("j\u00f6rg".encode()))  # bytes, not chars


def test_long_names_are_cut_to_255_bytes() -> None:
    rec = ExtendedUser(CHARSET_UTF8, "x" * 300, 0, "")
    (n,) = struct.unpack_from(">I", rec.encode_body(), 4)
    assert n == 255
