"""Declarative XDR codec for sFlow records.

A record is an attrs class whose fields carry an XDR type in their metadata (see the field
helpers :func:`u32`, :func:`u64`, :func:`f32`, :func:`string`, :func:`opaque`,
:func:`fixed_opaque`).  :func:`compile_codec` turns the field list into an encoder and a
decoder once per class: runs of fixed-size fields become one precompiled ``struct.Struct``,
variable-length fields (strings, opaques) are handled between them.  Records whose layout is
not a flat list of fields (host_adapters) write their own ``encode_body``/``decode_body``.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

import attrs

XDR = "hostsflow.xdr"
HELP = "hostsflow.help"


class XdrError(ValueError):
    """Raised when bytes cannot be decoded as the XDR layout they claim to be."""


def pad4(n: int) -> int:
    """Bytes of zero padding after ``n`` bytes of data."""
    return -n & 3


# ---------------------------------------------------------------- field helpers

def _field(kind: Any, default: Any, help: str) -> Any:
    return attrs.field(default=default, metadata={XDR: kind, HELP: help})


def u32(default: int = 0, help: str = "") -> Any:
    """An XDR ``unsigned int`` (4 bytes)."""
    return _field("I", default, help)


def i32(default: int = 0, help: str = "") -> Any:
    """An XDR ``int`` (4 bytes, signed)."""
    return _field("i", default, help)


def u64(default: int = 0, help: str = "") -> Any:
    """An XDR ``unsigned hyper`` (8 bytes)."""
    return _field("Q", default, help)


def f32(default: float = 0.0, help: str = "") -> Any:
    """An XDR ``float`` (4 bytes IEEE-754)."""
    return _field("f", default, help)


def fixed_opaque(size: int, padded_to: int | None = None, help: str = "") -> Any:
    """``opaque[size]``: raw bytes with no length word, zero-padded to ``padded_to``."""
    total = padded_to if padded_to is not None else size + pad4(size)
    code = f"{size}s" + (f"{total - size}x" if total > size else "")
    return attrs.field(default=bytes(size), metadata={XDR: code, HELP: help})


class _Var:
    """Marker for a variable-length field: ``string<max>`` or ``opaque<max>``."""

    def __init__(self, max_len: int, text: bool) -> None:
        self.max_len = max_len
        self.text = text


def string(max_len: int = 0xFFFFFFFF, help: str = "") -> Any:
    """An XDR ``string<max_len>``: length word, UTF-8 bytes, padding. Longer text is cut."""
    return attrs.field(default="", metadata={XDR: _Var(max_len, True), HELP: help})


def opaque(max_len: int = 0xFFFFFFFF, help: str = "") -> Any:
    """An XDR ``opaque<max_len>``: length word, bytes, padding."""
    return attrs.field(default=b"", metadata={XDR: _Var(max_len, False), HELP: help})


# ---------------------------------------------------------------- compiled codec

Encoder = Callable[[Any], bytes]
#: the field values in the class's field order (its attrs ``__init__`` takes them positionally)
Decoder = Callable[[bytes], tuple[Any, ...]]


def _split_segments(cls: type) -> list[tuple[str, Any]]:
    """Group the class's fields into ('fixed', (Struct, names)) and ('var', (name, _Var))."""
    segments: list[tuple[str, Any]] = []
    codes: list[str] = []
    names: list[str] = []

    def close_fixed() -> None:
        if codes:
            segments.append(("fixed", (struct.Struct(">" + "".join(codes)), tuple(names))))
            codes.clear()
            names.clear()

    for f in attrs.fields(cls):
        kind = f.metadata.get(XDR)
        if kind is None:
            continue
        if isinstance(kind, _Var):
            close_fixed()
            segments.append(("var", (f.name, kind)))
        else:
            codes.append(kind)
            names.append(f.name)
    close_fixed()
    return segments


def compile_codec(cls: type) -> tuple[Encoder, Decoder, int | None]:
    """Build (encode(obj) -> bytes, decode(bytes) -> field values in order, fixed size or None).

    The decoder's values go to the class positionally (``cls(*decode(data))``): every field of a
    record class is an XDR field, in wire order.  Bytes after the last field are ignored."""
    segments = _split_segments(cls)

    if len(segments) == 1 and segments[0][0] == "fixed":
        st, names = segments[0][1]
        getter = attrs_getter(names)
        unpack, size = st.unpack_from, st.size

        def encode_flat(obj: Any) -> bytes:
            return st.pack(*getter(obj))

        def decode_flat(data: bytes) -> tuple[Any, ...]:
            if len(data) < size:
                raise XdrError(f"{cls.__name__}: {len(data)} bytes, need {size}")
            return unpack(data)

        return encode_flat, decode_flat, st.size

    def encode(obj: Any) -> bytes:
        out: list[bytes] = []
        for kind, spec in segments:
            if kind == "fixed":
                st, names = spec
                out.append(st.pack(*(getattr(obj, n) for n in names)))
            else:
                name, var = spec
                value = getattr(obj, name)
                raw = value.encode("utf-8", "replace") if var.text else bytes(value)
                raw = raw[: var.max_len]
                out.append(struct.pack(">I", len(raw)) + raw + bytes(pad4(len(raw))))
        return b"".join(out)

    # each segment: (Struct, None) for a run of fixed fields, (None, _Var) for a variable one
    steps = [(spec[0], None) if kind == "fixed" else (None, spec[1]) for kind, spec in segments]
    name = cls.__name__

    def decode(data: bytes) -> tuple[Any, ...]:
        values: list[Any] = []
        pos = 0
        n = len(data)
        for st, var in steps:
            if st is not None:
                if pos + st.size > n:
                    raise XdrError(f"{name}: truncated at byte {pos}")
                values.extend(st.unpack_from(data, pos))
                pos += st.size
            else:
                raw, pos = read_opaque(data, pos, var.max_len, name)
                values.append(raw.decode("utf-8", "replace") if var.text else raw)
        return tuple(values)

    return encode, decode, None


def compile_whole(cls: type, tag: int) -> Encoder | None:
    """For a record class whose fields are all fixed size: ``encode(obj) -> bytes`` of the
    whole record (tag, body length, body) in one precompiled pack, the same bytes as the
    generic ``tag + length + encode_body()``.  None for classes with variable-length fields.

    Called once per class when it is registered; the result runs on the packet path."""
    segments = _split_segments(cls)
    if len(segments) != 1 or segments[0][0] != "fixed":
        return None
    st, names = segments[0][1]
    pack = struct.Struct(">II" + st.format.lstrip(">")).pack
    getter = attrs_getter(names)
    size = st.size

    def encode_whole(obj: Any) -> bytes:
        return pack(tag, size, *getter(obj))

    return encode_whole


def attrs_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A fast getter returning the named attributes as a tuple."""
    from operator import attrgetter

    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return attrgetter(*names)


def read_opaque(data: bytes, pos: int, max_len: int, what: str) -> tuple[bytes, int]:
    """Read a length-prefixed, padded opaque at ``pos``; return (bytes, next position)."""
    if pos + 4 > len(data):
        raise XdrError(f"{what}: no length word at byte {pos}")
    (n,) = struct.unpack_from(">I", data, pos)
    pos += 4
    if n > max_len or pos + n > len(data):
        raise XdrError(f"{what}: length {n} runs past the data ({len(data) - pos} left)")
    raw = bytes(data[pos : pos + n])
    return raw, pos + n + pad4(n)
