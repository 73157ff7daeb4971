"""Typed converters: text -> value, ranges and messages."""

from __future__ import annotations

import ipaddress
import re
import uuid as _uuid
from typing import Any

import pytest
from hostsflow.config import options as o

GOOD: list[tuple[str, o.Converter, Any, Any]] = [
    ("on", o.on_off, "on", True),
    ("OFF", o.on_off, "OFF", False),
    ("bool passes", o.on_off, True, True),
    ("plain int", o.u32(), "400", 400),
    ("K suffix", o.u32(), "1K", 1000),
    ("m suffix", o.u32(), "10m", 10_000_000),
    ("G suffix", o.u32(), "4G", 4_000_000_000),
    ("typed int passes", o.u32(0, 10), 7, 7),
    ("range edge", o.u32(200, 8192), "8192", 8192),
    ("float", o.real(0.0, 1.0), "0.0025", 0.0025),
    ("float one", o.real(0.0, 1.0), "1", 1.0),
    ("float exp", o.real(0.0, 1.0), "25e-4", 0.0025),
    ("ipv4", o.host, "10.0.0.1", "10.0.0.1"),
    ("ipv6", o.host, "2001:db8::1", "2001:db8::1"),
    ("ipv6 scoped", o.host, "fe80::1%eth0", "fe80::1%eth0"),
    ("hostname", o.host, "collector.example.com", "collector.example.com"),
    ("hostname fqdn dot", o.host, "collector.example.com.", "collector.example.com."),
    ("short hostname", o.host, "localhost", "localhost"),
    ("cidr", o.cidr, "10.0.0.0/8", o.AgentCIDR(ipaddress.ip_network("10.0.0.0/8"), False)),
    ("cidr negated v6", o.cidr, "!fe80::/10",
     o.AgentCIDR(ipaddress.ip_network("fe80::/10"), True)),
    ("cidr host bits dropped", o.cidr, "10.1.2.3/8",
     o.AgentCIDR(ipaddress.ip_network("10.0.0.0/8"), False)),
    ("cidr bare address", o.cidr, "10.1.2.3",
     o.AgentCIDR(ipaddress.ip_network("10.1.2.3/32"), False)),
    ("speed exact", o.speed_range, "100M", o.SpeedRange(10**8, 10**8)),
    ("speed range", o.speed_range, "1G-1T", o.SpeedRange(10**9, 10**12)),
    ("speed open", o.speed_range, "1G-", o.SpeedRange(10**9, None)),
    ("speed P", o.speed_range, "1-1P", o.SpeedRange(1, 10**15)),
    ("device", o.device, "eth0", "eth0"),
    ("device 15 chars", o.device, "a" * 15, "a" * 15),
    ("device vlan", o.device, "eth0.100", "eth0.100"),
    ("uuid", o.uuid, "12345678-1234-1234-1234-123456789ABC",
     _uuid.UUID("12345678-1234-1234-1234-123456789abc")),
    ("choice", o.choice("in", "out", "both"), "Both", "both"),
    ("string", o.string(), "/etc/x", "/etc/x"),
]


@pytest.mark.parametrize("conv, text, expected", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good(conv: o.Converter, text: Any, expected: Any) -> None:
    assert conv(text) == expected
    # idempotent: attrs runs converters on already-typed values too
    assert conv(conv(text)) == expected


BAD: list[tuple[str, o.Converter, Any, str]] = [
    ("yes is not on", o.on_off, "yes", "expected 'on' or 'off', got 'yes'"),
    ("int for on/off", o.on_off, 1, "expected 'on' or 'off', got '1'"),
    ("negative", o.u32(), "-1", "expected an integer (suffix K/M/G allowed), got '-1'"),
    ("hex not allowed", o.u32(), "0x10", "expected an integer (suffix K/M/G allowed), got '0x10'"),
    ("trailing junk", o.u32(), "12abc", "expected an integer (suffix K/M/G allowed), got '12abc'"),
    ("T not for u32", o.u32(), "1T", "expected an integer (suffix K/M/G allowed), got '1T'"),
    ("too big", o.u32(0, 300), "301", "301 is out of range 0..300"),
    ("too small", o.u32(200, 8192), "199", "199 is out of range 200..8192"),
    ("suffix overflow", o.u32(), "5G", "5G is out of range 0..4294967295"),
    ("typed out of range", o.u32(1, 65535), 0, "0 is out of range 1..65535"),
    ("bool is not an int", o.u32(), True, "expected an integer, got True"),
    ("float must start with a digit", o.real(0.0, 1.0), ".5",
     "expected a number like 0.25, got '.5'"),
    ("float range", o.real(0.0, 1.0), "1.5", "1.5 is out of range 0.0..1.0"),
    ("float nan", o.real(0.0, 1.0), "nan", "expected a number like 0.25, got 'nan'"),
    ("bad ipv4 is not a hostname", o.host, "1.2.3.256",
     "'1.2.3.256' is neither an IP address nor a hostname"),
    ("hostname with space", o.host, "a b", "'a b' is neither an IP address nor a hostname"),
    ("hostname label dash", o.host, "-a.example", "'-a.example' is neither an IP address nor a "
     "hostname"),
    ("hostname empty label", o.host, "a..b", "'a..b' is neither an IP address nor a hostname"),
    ("empty host", o.host, "", "expected an IP address or hostname, got ''"),
    ("cidr prefix", o.cidr, "10.0.0.0/33", "expected a CIDR like 10.0.0.0/8 or !fe80::/10, got "
     "'10.0.0.0/33'"),
    ("cidr junk", o.cidr, "!!10.0.0.0/8", "expected a CIDR like 10.0.0.0/8 or !fe80::/10, got "
     "'!!10.0.0.0/8'"),
    ("speed backwards", o.speed_range, "10G-1G", "speed range '10G-1G' ends below its start"),
    ("speed junk", o.speed_range, "fast", "expected a speed like 100M, 1G-10G or 1G-, got 'fast'"),
    ("speed leading dash", o.speed_range, "-1G",
     "expected a speed like 100M, 1G-10G or 1G-, got '-1G'"),
    ("speed too big", o.speed_range, "20000P", "speed 20000000000000000000 does not fit in 64 "
     "bits"),
    ("device too long", o.device, "a" * 16, f"'{'a' * 16}' is not a valid device name"),
    ("device slash", o.device, "a/b", "'a/b' is not a valid device name"),
    ("device dotdot", o.device, "..", "'..' is not a valid device name"),
    ("uuid", o.uuid, "1234", "expected a UUID, got '1234'"),
    ("choice", o.choice("in", "out"), "both", "expected one of in, out, got 'both'"),
    ("huge digit string", o.u32(), "9" * 30,
     f"expected an integer (suffix K/M/G allowed), got '{'9' * 30}'"),
    ("regex repeat overflow", o.regex, "a{99999999999}",
     "bad regular expression 'a{99999999999}': the repetition number is too large"),
    ("float overflow", o.real(0.0, 1.0), "9" * 400, "inf is out of range 0.0..1.0"),
    ("regex", o.regex, "eth[", "bad regular expression 'eth[': unterminated character set at "
     "position 3"),
]


@pytest.mark.parametrize("conv, text, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad(conv: o.Converter, text: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        conv(text)
    assert str(info.value) == message


def test_speed_range_contains() -> None:
    assert o.speed_range("1G-").contains(10**12) and not o.speed_range("1G-").contains(10**8)
    exact = o.speed_range("1G")
    assert exact.contains(10**9) and not exact.contains(10**9 + 1)
    assert [str(o.speed_range(t)) for t in ("1G", "1G-1T", "1000M-", "1500M")] == [
        "1G", "1G-1T", "1G-", "1500M"]


def test_agent_cidr_contains_and_str() -> None:
    c = o.cidr("!10.0.0.0/8")
    assert "10.1.2.3" in c and "11.0.0.1" not in c and "::1" not in c
    assert str(c) == "!10.0.0.0/8"


def test_regex_renders_quoted() -> None:
    assert isinstance(o.regex("eth.*"), re.Pattern)
    assert o.regex.render(o.regex("e{1,2} x")) == '"e{1,2} x"'
    assert o.on_off.render(False) == "off"


def test_format_si() -> None:
    assert [o.format_si(n) for n in (0, 999, 1000, 1500, 10**9, 25 * 10**8, 10**15)] == [
        "0", "999", "1K", "1500", "1G", "2500M", "1P"]
