"""Turn a decoded :class:`~hostsflow.sflow.datagram.Datagram` into text or a JSON-able dict.

Called on: each datagram that ``hostsflow decode`` (or a test) wants to show.  Field names are
the attrs field names of the record classes; record names are the class names in snake_case
(``SampledHeader`` -> ``sampled_header``).  Byte fields print as hex, except a 16-byte ``uuid``
(8-4-4-4-12 text) and 6-byte MACs (``aa:bb:cc:dd:ee:ff``); a float that is not finite (a
datagram may carry any bit pattern) as the text ``NaN``, ``Infinity`` or ``-Infinity``, so the
dict is always valid JSON.  A sampled_header also gets a
``packet`` entry: what :mod:`hostsflow.packet` reads from it.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

import attrs

from ..packet import PacketInfo, decode_sampled_header
from ..sflow.datagram import Datagram, DecodedCounterSample, DecodedFlowSample, UnknownSample
from ..sflow.records import SampledHeader, UnknownRecord

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_INTERFACE_FORMATS = {0: "", 1: "discard:", 2: "multiple:"}


def record_name(rec: object) -> str:
    """``extended_tcp_info`` for ExtendedTcpInfo; ``unknown_flow`` etc. for UnknownRecord."""
    if isinstance(rec, UnknownRecord):
        return f"unknown_{rec.kind}"
    return _CAMEL.sub("_", type(rec).__name__).lower()


def _value(name: str, value: Any) -> Any:
    """A JSON-able form of one field value."""
    if isinstance(value, bytes):
        if name == "uuid" and len(value) == 16:
            return str(uuid.UUID(bytes=value))
        if len(value) == 6 and "mac" in name:
            return value.hex(":")
        return value.hex()
    if isinstance(value, float):
        if not math.isfinite(value):  # JSON has no NaN or Infinity: the protobuf JSON words
            return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
        return float(f"{value:.7g}")
    if isinstance(value, list):
        return [_value(name, v) for v in value]
    if attrs.has(type(value)):
        return {f.name: _value(f.name, getattr(value, f.name)) for f in attrs.fields(type(value))}
    return value


def packet_dict(info: PacketInfo) -> dict[str, Any]:
    """The fields of a PacketInfo that are set (MACs as text)."""
    out: dict[str, Any] = {}
    for f in attrs.fields(PacketInfo):
        value = getattr(info, f.name)
        if value is None:
            continue
        out[f.name] = value.hex(":") if isinstance(value, bytes) else value
    return out


def record_dict(rec: object) -> dict[str, Any]:
    """``{"record": name, "tag": "E:F", <fields>...}`` (plus ``packet`` for sampled_header)."""
    out: dict[str, Any] = {"record": record_name(rec), "tag": f"{rec.enterprise}:{rec.format}"}  # type: ignore[attr-defined]
    if isinstance(rec, UnknownRecord):
        out["data"] = rec.data.hex()
        return out
    for f in attrs.fields(type(rec)):
        out[f.name] = _value(f.name, getattr(rec, f.name))
    if isinstance(rec, SampledHeader):
        info = decode_sampled_header(rec)
        if info is not None:
            out["packet"] = packet_dict(info)
    return out


def _interface(fmt_value: tuple[int, int]) -> str:
    fmt, value = fmt_value
    return f"{_INTERFACE_FORMATS.get(fmt, f'format{fmt}:')}{value}"


def sample_dict(sample: DecodedFlowSample | DecodedCounterSample | UnknownSample) -> dict[str, Any]:
    """One sample as a dict: type, tag, its header fields and ``records``."""
    if isinstance(sample, DecodedFlowSample):
        return {
            "type": "flow", "tag": sample.tag, "sequence": sample.sequence,
            "source": str(sample.source), "sampling_rate": sample.sampling_rate,
            "sample_pool": sample.sample_pool, "drops": sample.drops,
            "input": _interface(sample.input), "output": _interface(sample.output),
            "records": [record_dict(r) for r in sample.records],
        }
    if isinstance(sample, DecodedCounterSample):
        return {
            "type": "counters", "tag": sample.tag, "sequence": sample.sequence,
            "source": str(sample.source), "records": [record_dict(r) for r in sample.records],
        }
    return {"type": "unknown", "tag": sample.tag, "data": sample.data.hex()}


def datagram_dict(dgram: Datagram, source: str | None = None) -> dict[str, Any]:
    """The whole datagram as a JSON-able dict (``source`` = the UDP sender, if known)."""
    out: dict[str, Any] = {}
    if source is not None:
        out["source"] = source
    out.update(
        version=dgram.version, agent_address=dgram.agent_address,
        sub_agent_id=dgram.sub_agent_id, sequence=dgram.sequence, uptime=dgram.uptime,
        size=dgram.size, samples=[sample_dict(s) for s in dgram.samples],
    )
    return out


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + " ".join(f"{k}={_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value and value.isprintable() and " " not in value else repr(value)
    return str(value)


def _record_text(rec: dict[str, Any]) -> str:
    fields = " ".join(f"{k}={_text(v)}" for k, v in rec.items() if k not in ("record", "tag"))
    return f"{rec['record']}({rec['tag']}){{{fields}}}"


def datagram_lines(dgram: Datagram, source: str | None = None) -> list[str]:
    """Readable text: a DATAGRAM line, then one FLOW/COUNTERS/SAMPLE line per sample holding
    the sample's header fields and every record's fields."""
    head = (f"DATAGRAM agent={dgram.agent_address or '-'} sub_agent={dgram.sub_agent_id} "
            f"seq={dgram.sequence} uptime={dgram.uptime} samples={len(dgram.samples)} "
            f"size={dgram.size}")
    if source is not None:
        head += f" from={source}"
    lines = [head]
    for sample in dgram.samples:
        d = sample_dict(sample)
        kind = {"flow": "FLOW", "counters": "COUNTERS"}.get(d["type"], "SAMPLE")
        parts = [kind] + [f"{k}={_text(v)}" for k, v in d.items()
                          if k not in ("type", "records")]
        parts += [_record_text(r) for r in d.get("records", [])]
        lines.append(" ".join(parts))
    return lines


def datagram_text(dgram: Datagram, source: str | None = None) -> str:
    """:func:`datagram_lines` joined with newlines."""
    return "\n".join(datagram_lines(dgram, source))

#: the name the CLI uses
datagram_json = datagram_dict
