"""Where each setting DNS-SD may set comes from: the DNS answer (record and TTL), the config
file (file and line) or the default; for ``hostsflow status`` and ``hostsflowd --test``."""

from __future__ import annotations

from typing import Any

from ..config.schema import AgentConfig
from .records import DnsSettings

#: conf key -> AgentConfig field, for the settings the records may set
SETTABLE = {"collector": "collectors", "sampling": "sampling", "polling": "polling",
            "headerBytes": "header_bytes", "agentIP": "agent_ip", "agent": "agent",
            "agent.cidr": "agent_cidr"}
MAPS = {"sampling": "sampling_by", "polling": "polling_by"}


def _shown(value: Any) -> Any:
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if hasattr(value, "udpport"):
        return f"{value.ip}:{value.udpport}" + (f"%{value.dev}" if value.dev else "")
    if isinstance(value, (int, str)) or value is None:
        return value
    return str(value)


def origins(config: AgentConfig, file_config: AgentConfig,
            dns: DnsSettings | None) -> dict[str, dict[str, Any]]:
    """conf key -> {"value", "from": "dns"|"file"|"default", and "record", "ttl" or "line"}
    for the settings in force (``config``)."""
    out: dict[str, dict[str, Any]] = {}
    keys = list(SETTABLE)
    for prefix, field in MAPS.items():
        keys += [f"{prefix}.{n}" for n in getattr(config, field)]
    sources = dns.sources if dns is not None else {}
    for key in keys:
        prefix, dot, name = key.partition(".")
        if dot and prefix in MAPS:
            value = getattr(config, MAPS[prefix]).get(name)
        else:
            value = getattr(config, SETTABLE[key])
        entry: dict[str, Any] = {"value": _shown(value)}
        src = sources.get(key)
        if src is not None:
            entry.update({"from": "dns", "record": f"{src.record} {src.name}", "ttl": src.ttl})
        elif key == "collector" and file_config.dns_sd is not None:
            entry.update({"from": "dns", "record": f"SRV {file_config.dns_sd.name}",
                          "ttl": None})  # no answer yet: no collector
        elif key in file_config.lines:
            entry.update({"from": "file", "line": f"{file_config.source}:{file_config.lines[key]}"})
        else:
            entry["from"] = "default"
        out[key] = entry
    return out


def render(table: dict[str, dict[str, Any]]) -> list[str]:
    """One line per setting: ``key = value  (from DNS TXT _sflow._udp.x, TTL 60)``."""
    lines = []
    for key, e in table.items():
        value = e["value"]
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        if e["from"] == "dns":
            ttl = "no answer yet" if e["ttl"] is None else f"TTL {e['ttl']}"
            where = f"DNS {e['record']}, {ttl}"
        elif e["from"] == "file":
            where = e["line"]
        else:
            where = "default"
        lines.append(f"{key} = {'(none)' if shown in (None, '') else shown}  ({where})")
    return lines
