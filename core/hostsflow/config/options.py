"""Typed config values: converters (text -> value, with hsflowd's syntax and ranges) and the
``option`` family that turns them into attrs fields carrying the conf spelling and help.

A converter is called with the text from the file *or* an already-typed value (attrs runs it on
defaults and on values given in code), returns the typed value, and raises ``ValueError`` with
a short message (no key name: the caller adds file, line and key).
"""

from __future__ import annotations

import ipaddress
import re
import uuid as _uuid
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import attrs

# ---------------------------------------------------------------- value types


@attrs.frozen
class SpeedRange:
    """A link speed range in bits per second (pcap ``speed``): ``high`` None = no upper bound;
    ``high == low`` = exactly ``low``."""

    low: int
    high: int | None

    def contains(self, bps: int) -> bool:
        return bps >= self.low and (self.high is None or bps <= self.high)

    def __str__(self) -> str:
        if self.high == self.low:
            return format_si(self.low)
        return f"{format_si(self.low)}-{'' if self.high is None else format_si(self.high)}"


@attrs.frozen
class AgentCIDR:
    """An ``agent.cidr`` entry: a network, and ``negate`` for ``!CIDR`` (addresses inside it are
    never elected)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    negate: bool = False

    def __contains__(self, address: Any) -> bool:
        addr = ipaddress.ip_address(address) if isinstance(address, str) else address
        return addr.version == self.network.version and addr in self.network

    def __str__(self) -> str:
        return ("!" if self.negate else "") + str(self.network)


# ---------------------------------------------------------------- converters


@attrs.frozen
class Converter:
    """``parse`` text-or-value -> value (raises ValueError); ``describe`` says what is accepted
    (used in help and in messages); ``render`` writes a value back in conf syntax."""

    parse: Callable[[Any], Any]
    describe: str
    render: Callable[[Any], str] = str

    def __call__(self, value: Any) -> Any:
        return self.parse(value)


_SI = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_NUM_RE = re.compile(r"(\d{1,24})([KMGTP]?)\Z", re.IGNORECASE)


def format_si(n: int) -> str:
    """Write ``n`` with the largest K/M/G/T/P suffix that divides it exactly (1000000000 -> 1G)."""
    for suffix in "PTGMK":
        if n and n % _SI[suffix] == 0:
            return f"{n // _SI[suffix]}{suffix}"
    return str(n)


def _number(text: str, suffixes: str) -> int:
    m = _NUM_RE.match(text)
    if m is None or m.group(2).upper() not in suffixes:
        extra = f" (suffix {'/'.join(suffixes)} allowed)" if suffixes else ""
        raise ValueError(f"expected an integer{extra}, got '{text}'")
    return int(m.group(1)) * _SI[m.group(2).upper()]


def integer(lo: int = 0, hi: int = 2**32 - 1, suffixes: str = "KMG") -> Converter:
    """An unsigned integer in ``lo..hi``; text may end in K/M/G (x1e3/1e6/1e9) like hsflowd."""

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"expected an integer, got {value!r}")
        n = value if isinstance(value, int) else _number(value, suffixes)
        if not lo <= n <= hi:
            raise ValueError(f"{value} is out of range {lo}..{hi}")
        return n

    return Converter(parse, f"integer {lo}..{hi}")


def u32(lo: int = 0, hi: int = 2**32 - 1) -> Converter:
    """A 32-bit setting in ``lo..hi`` (K/M/G suffixes allowed)."""
    return integer(lo, min(hi, 2**32 - 1))


def _parse_on_off(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "off"):
        return value.lower() == "on"
    raise ValueError(f"expected 'on' or 'off', got '{value}'")


on_off = Converter(_parse_on_off, "on/off", lambda v: "on" if v else "off")


def real(lo: float, hi: float) -> Converter:
    """A decimal number in ``lo..hi``; text must start with a digit (``0.0025``), as in hsflowd."""

    def parse(value: Any) -> float:
        if isinstance(value, str):
            if not re.fullmatch(r"\d+(\.\d*)?([eE][-+]?\d+)?", value):
                raise ValueError(f"expected a number like 0.25, got '{value}'")
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range {lo}..{hi}")
        return float(value)

    return Converter(parse, f"number {lo}..{hi}")


def _quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if not text or re.search(r'[\s=;{}#]', text) else text


def string(pattern: str | None = None, what: str = "text", max_len: int = 255) -> Converter:
    """A non-empty string of at most ``max_len`` characters, optionally matching ``pattern``."""
    rx = re.compile(pattern) if pattern else None

    def parse(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected {what}, got {value!r}")
        if len(value) > max_len or (rx is not None and not rx.fullmatch(value)):
            raise ValueError(f"'{value}' is not a valid {what}")
        return value

    return Converter(parse, what, _quote)


def choice(*words: str) -> Converter:
    """One of ``words`` (case-insensitive); returns the lower-case word."""

    def parse(value: Any) -> str:
        if isinstance(value, str) and value.lower() in words:
            return value.lower()
        raise ValueError(f"expected one of {', '.join(words)}, got '{value}'")

    return Converter(parse, "/".join(words))


#: a Linux interface name (IFNAMSIZ-1 = 15 characters, no '/', ':' allowed for aliases)
device = string(r"(?!\.\.?\Z)[^/\s]{1,15}", "device name")
#: a device name or an interface alias (``agent = ...`` may name either)
device_or_alias = string(r"[^\s]{1,255}", "device name or alias")


_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def _parse_host(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected an IP address or hostname, got {value!r}")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if (len(value) > 253 or not all(_LABEL_RE.match(label) for label in labels)
            or labels[-1].isdigit()):
        raise ValueError(f"'{value}' is neither an IP address nor a hostname")
    return value


#: an IPv4/IPv6 literal or a hostname (kept as written; resolved later by its user)
host = Converter(_parse_host, "IP address or hostname")


def _parse_cidr(value: Any) -> AgentCIDR:
    if isinstance(value, AgentCIDR):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR, got {value!r}")
    text = value.removeprefix("!")
    try:
        return AgentCIDR(ipaddress.ip_network(text, strict=False), value.startswith("!"))
    except ValueError:
        raise ValueError(f"expected a CIDR like 10.0.0.0/8 or !fe80::/10, got '{value}'") from None


cidr = Converter(_parse_cidr, "CIDR, '!' prefix excludes")


def _parse_speed(value: Any) -> SpeedRange:
    if isinstance(value, SpeedRange):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a speed range like 1G-10G, got {value!r}")
    low_text, dash, high_text = value.partition("-")
    try:
        low = _number(low_text, "KMGTP")
        high = _number(high_text, "KMGTP") if high_text else (None if dash else low)
    except ValueError:
        raise ValueError(f"expected a speed like 100M, 1G-10G or 1G-, got '{value}'") from None
    for n in (low, high):
        if n is not None and n >= 2**64:
            raise ValueError(f"speed {n} does not fit in 64 bits")
    if high is not None and high < low:
        raise ValueError(f"speed range '{value}' ends below its start")
    return SpeedRange(low, high)


#: a 64-bit bits-per-second range: ``100M`` (exactly), ``1G-1T``, ``1G-`` (no upper bound)
speed_range = Converter(_parse_speed, "speed range like 1G-1T, 1G- or 100M")


def _parse_uuid(value: Any) -> _uuid.UUID:
    if isinstance(value, _uuid.UUID):
        return value
    try:
        return _uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"expected a UUID, got '{value}'") from None


uuid = Converter(_parse_uuid, "UUID")


def _parse_regex(value: Any) -> re.Pattern[str]:
    if isinstance(value, re.Pattern):
        return value
    try:
        with warnings.catch_warnings():  # FutureWarning on odd sets: the error path is enough
            warnings.simplefilter("ignore")
            return re.compile(str(value))
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"bad regular expression '{value}': {exc}") from None


regex = Converter(_parse_regex, "regular expression", lambda p: _quote(p.pattern))


# ---------------------------------------------------------------- attrs fields

NOTHING = attrs.NOTHING
_TEXT = string()


def option(default: Any = NOTHING, *, help: str, key: str | None = None,
           converter: Converter = _TEXT, validator: Any = None,
           aliases: Iterable[str] = (), repeat: bool = False, example: str | None = None) -> Any:
    """An attrs field for one ``key = value`` setting.

    :param default: the value when the key is absent (typed, or text the converter accepts);
        leave it out for a required key.  With ``repeat=True`` the default is an empty list.
    :param help: one line for people (``hostsflow config``, error listings).
    :param key: the spelling in the file (default: the attribute name); matched
        case-insensitively, as are ``aliases`` (older spellings).
    :param converter: a :class:`Converter` (text -> typed value, checks the range).
    :param validator: an extra attrs validator; it is called with ``inst=None`` per file entry.
    :param repeat: the key may repeat; the field is the list of values in file order.
    :param example: a value to show in a sample config for a required key.
    """
    meta = {"help": help, "key": key, "kind": "list" if repeat else "value", "conv": converter,
            "aliases": tuple(aliases), "example": example}
    if repeat:
        return attrs.field(factory=list, metadata=meta, validator=validator,
                           converter=lambda xs: [converter(x) for x in xs])
    conv = attrs.converters.optional(converter) if default is None else converter
    return attrs.field(default=default, metadata=meta, validator=validator, converter=conv)


def option_map(prefix: str, *, help: str, converter: Converter,
               name: Callable[[str], str] = str.lower) -> Any:
    """An attrs field (a dict) for a family of keys ``<prefix>.<name> = value``
    (``sampling.10G = 10000``); ``name`` normalizes the part after the dot."""
    meta = {"help": help, "key": prefix, "kind": "map", "conv": converter, "name": name,
            "aliases": ()}
    return attrs.field(factory=dict, metadata=meta,
                       converter=lambda d: {name(k): converter(v) for k, v in d.items()})


def sub_block(cls: type, *, help: str, key: str, repeat: bool = False) -> Any:
    """An attrs field for a nested ``key { ... }`` block of attrs class ``cls`` (a list of
    instances when ``repeat``, else the instance, or None when the block is absent)."""
    meta = {"help": help, "key": key, "kind": "block", "cls": cls, "repeat": repeat,
            "aliases": ()}
    return attrs.field(factory=list, metadata=meta) if repeat else attrs.field(
        default=None, metadata=meta)


def conf_key(field: attrs.Attribute[Any]) -> str | None:
    """The conf spelling of a field made by :func:`option` & co, or None for other fields."""
    if "kind" not in field.metadata:
        return None
    return field.metadata.get("key") or field.name
