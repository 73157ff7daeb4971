"""From the DNS-SD records to agent settings, with hsflowd's formats and bounds
(``mod_dnssd.c``, ``dynamic_config_line``):

* each SRV answer of ``_sflow._udp.<domain>`` is a collector ``<target>/<port>`` (a target
  shorter than 4 characters, such as ``.``, is skipped; priority and weight are not used:
  every collector gets every datagram; the collectors are sorted, as DNS answers come in any
  order);
* each TXT string is one ``key=value``: ``sampling``, ``sampling.<name>``, ``polling``,
  ``polling.<name>``, ``headerBytes`` (above 256 is taken as 256), ``agentIP``, ``agent``,
  ``agent.cidr`` (repeatable; the records' list replaces the file's), ``collector``
  (``address/port/device``); ``txtvers`` is ignored, ``dropLimit`` and any other key are
  logged and ignored;
* the values are checked with the file's converters and ranges; one value that does not pass,
  or a string that is not ``key=value``, refuses the whole answer (the settings in force stay);
* the next query comes after the smallest TTL of the answers, 300 s when there was none (or
  the query failed), never sooner than 10 s.

What the records do not set keeps the file's value (hsflowd starts from its built-in defaults
instead); the collector blocks of the file are not used while DNS-SD is on (as in hsflowd).
"""

from __future__ import annotations

from typing import Any

import attrs

from ..config.options import cidr, device, device_or_alias, host, u32
from ..config.schema import AgentConfig, CollectorConfig, sampling_name

MIN_REFRESH = 10  #: seconds; hsflowd's HSP_DEFAULT_DNSSD_MINDELAY
DEFAULT_REFRESH = 300  #: seconds without a TTL (or after a failed query); RETRYDELAY
MIN_TARGET = 4  #: shorter SRV targets are skipped; HSP_MIN_DNAME
MAX_HEADER_BYTES = 256  #: headerBytes above are taken as this; HSP_MAX_HEADER_BYTES
MAX_LINE = 1023  #: longest key or value hsflowd takes from a record

_RATE = u32(0, 10_000_000)
_INTERVAL = u32(0, 300)
_PORT = u32(1, 65535)
_ANY_NUMBER = u32()
#: sampling / polling (and .<name>): AgentConfig field (and <field>_by) -> converter
_RATES = {"sampling": _RATE, "polling": _INTERVAL}


@attrs.frozen
class SrvRecord:
    target: str
    port: int
    ttl: int


@attrs.frozen
class TxtString:
    text: bytes
    ttl: int


@attrs.frozen
class Answer:
    """What one round of queries (SRV, then TXT) got.

    ``status``: ``ok`` (the SRV query answered), ``none`` (no such name, or no SRV record:
    hsflowd then stops exporting), ``failed`` (no usable answer: timeout, SERVFAIL, no server
    reachable; the settings in force stay)."""

    name: str
    status: str
    srv: tuple[SrvRecord, ...] = ()
    txt: tuple[TxtString, ...] = ()
    error: str = ""

    @property
    def ttl(self) -> int | None:
        """The smallest TTL of the answers (None without any)."""
        ttls = [r.ttl for r in (*self.srv, *self.txt)]
        return min(ttls) if ttls else None


@attrs.frozen
class Source:
    """Where one setting came from: ``SRV`` or ``TXT`` of ``name``, with the record's TTL."""

    record: str
    name: str
    ttl: int


@attrs.frozen
class DnsSettings:
    """The settings one DNS-SD answer gives: collectors, and AgentConfig field values
    (``sampling_by`` / ``polling_by`` hold only the names the records set)."""

    name: str
    collectors: tuple[CollectorConfig, ...] = ()
    values: dict[str, Any] = attrs.field(factory=dict)
    sources: dict[str, Source] = attrs.field(factory=dict)  #: conf key -> where from
    ignored: tuple[str, ...] = ()  #: "key=value" strings taken as hsflowd does: not used
    ttl: int | None = None

    def same_as(self, other: "DnsSettings | None") -> bool:
        """The same settings (TTLs and ignored keys aside): nothing to apply."""
        return (other is not None and self.collectors == other.collectors
                and self.values == other.values)


class Refused(ValueError):
    """An answer that is malformed or out of range; the message names the record."""


def refresh_seconds(ttl: int | None) -> int:
    """Seconds until the next query: the TTL, 300 without one, at least 10."""
    return max(MIN_REFRESH, ttl or DEFAULT_REFRESH)


def _check(conv: Any, value: str, what: str) -> Any:
    try:
        return conv(value)
    except (ValueError, TypeError) as exc:
        raise Refused(f"{what}: {exc}") from None


def _collector(spec: str, what: str) -> CollectorConfig:
    """``address/port/device/namespace`` (port, device and namespace optional)."""
    parts = spec.split("/")
    if len(parts) > 4 or not parts[0]:
        raise Refused(f"{what}: expected address/port/device, got '{spec}'")
    ip = _check(host, parts[0], what)
    port = _check(_PORT, parts[1], what) if len(parts) > 1 and parts[1] else 6343
    dev = _check(device, parts[2], what) if len(parts) > 2 and parts[2] else None
    namespace = parts[3] if len(parts) > 3 and parts[3] else None
    try:
        return CollectorConfig(ip=ip, udpport=port, dev=dev, namespace=namespace)
    except (ValueError, TypeError) as exc:
        raise Refused(f"{what}: {exc}") from None


def settings_from(answer: Answer) -> DnsSettings:
    """The settings of an ``ok`` answer.  Raises :class:`Refused` (with the record, key and
    reason) when one record is malformed or out of range."""
    name = answer.name
    collectors: list[CollectorConfig] = []
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    ignored: list[str] = []
    for r in answer.srv:
        if len(r.target) < MIN_TARGET:
            continue  # "." says: no service here
        collectors.append(_collector(f"{r.target}/{r.port}", f"SRV {r.target} {r.port}"))
        sources["collector"] = Source("SRV", name, min(r.ttl, sources["collector"].ttl)
                                      if "collector" in sources else r.ttl)
    for t in answer.txt:
        try:
            text = t.text.decode("ascii")
        except UnicodeDecodeError:
            raise Refused(f"TXT {t.text[:40]!r}: not ASCII") from None
        if len(t.text) < 2:
            continue  # hsflowd reads nothing shorter than k=
        key, eq, value = text.partition("=")
        what = f"TXT '{text[:80]}'"
        if not eq or not key:
            raise Refused(f"{what}: not key=value")
        if len(key) > MAX_LINE or len(value) > MAX_LINE:
            raise Refused(f"{what}: longer than {MAX_LINE} characters")
        value = value.strip().strip('"')
        k = key.strip().lower()
        src = Source("TXT", name, t.ttl)
        if k == "collector":
            collectors.append(_collector(value, what))
            sources["collector"] = src
        elif k.partition(".")[0] in _RATES:
            prefix, dot, rest = k.partition(".")
            conv = _RATES[prefix]
            if not dot:
                values[prefix], sources[prefix] = _check(conv, value, what), src
            elif rest:
                n = sampling_name(rest)
                values.setdefault(f"{prefix}_by", {})[n] = _check(conv, value, what)
                sources[f"{prefix}.{n}"] = src
            else:
                ignored.append(text[:80])
        elif k == "headerbytes":
            values["header_bytes"] = min(_check(_ANY_NUMBER, value, what), MAX_HEADER_BYTES)
            sources["headerBytes"] = src
        elif k == "agentip":
            values["agent_ip"], sources["agentIP"] = _check(host, value, what), src
        elif k == "agent":
            values["agent"], sources["agent"] = _check(device_or_alias, value, what), src
        elif k == "agent.cidr":
            values.setdefault("agent_cidr", []).append(_check(cidr, value, what))
            sources["agent.cidr"] = src
        elif k != "txtvers":
            ignored.append(text[:80])
    # DNS gives the records in any order: sorted, the same answer is the same settings
    collectors.sort(key=lambda c: (c.ip, c.udpport, c.dev or "", c.namespace or ""))
    return DnsSettings(name, tuple(collectors), values, sources, tuple(ignored), answer.ttl)


def no_collectors(answer: Answer) -> DnsSettings:
    """A ``none`` answer: no collector (export stops, as in hsflowd); the rest from the file."""
    return DnsSettings(answer.name, sources={"collector": Source("SRV", answer.name, 0)})


def apply(file_config: AgentConfig, dns: DnsSettings | None) -> AgentConfig:
    """The config in force: the file's, with the collectors (none before the first answer)
    and the settings of the DNS answer."""
    if file_config.dns_sd is None:
        return file_config
    if dns is None:
        return attrs.evolve(file_config, collectors=[])
    values = dict(dns.values)
    for mapped in ("sampling_by", "polling_by"):
        if mapped in values:
            values[mapped] = {**getattr(file_config, mapped), **values[mapped]}
    return attrs.evolve(file_config, collectors=list(dns.collectors), **values)
