"""The agent's config: attrs classes for the ``sflow { }`` block, and the one generic walker
that validates a parsed tree against them (and against the module blocks in the registry).

The schema is data: every setting is an attrs field made by :func:`~.options.option` (conf
spelling, help, converter with range); :func:`build` walks any such class.  Entry points:
:func:`load_config` (a file) and :func:`parse_config_text` (a string).

Rules (hsflowd's, plus a few stricter ones said here so nobody is surprised):

* exactly one ``sflow { }`` block and nothing outside it;
* at least one ``collector { }`` unless DNS-SD is on (``dns-sd { }`` or ``DNSSD = on``: the
  collectors come from DNS) or the caller passes ``require_collector=False``; each collector
  needs ``ip``;
* an unknown key or block is an error naming the file, the line and the valid keys;
* a missing final ``}`` is an error (hsflowd only logs it);
* a key repeated where one value is expected: the last one counts (as in hsflowd), with a
  warning note; a non-repeatable module block given twice is an error;
* legacy keys hsflowd still accepts (``loopback``, ``samplingDirection``, ``modules`` ...) are
  checked and ignored with a note in :attr:`AgentConfig.notes` for the caller to log;
* :attr:`AgentConfig.lines` keeps the line each setting was read from (``sampling``,
  ``sampling.10G``, ``collector``...), so that ``hostsflow status`` can say where it came from.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import stat
from typing import Any

import attrs

from .options import (
    AgentCIDR,
    Converter,
    choice,
    cidr,
    conf_key,
    device,
    device_or_alias,
    host,
    on_off,
    option,
    option_map,
    real,
    string,
    sub_block,
    u32,
)
from .options import uuid as uuid_value
from .parser import Block, ConfigError, Entry, parse
from .registry import ConfigRegistry

# ---------------------------------------------------------------- notes


@attrs.frozen
class ConfigNote:
    """Something worth logging about an accepted config (ignored legacy key, repeated key)."""

    file: str
    line: int
    level: str  # "debug" or "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


# ---------------------------------------------------------------- sampling names


def sampling_name(name: str) -> str:
    """Normalize the ``<name>`` of ``sampling.<name>`` / ``polling.<name>``: a speed keeps its
    digits and gets an upper-case suffix (``10g`` -> ``10G``, matching :func:`speed_name`);
    anything else (``bps_ratio``, ``http``, ``app.myapp``) is lower-cased."""
    m = re.fullmatch(r"(\d+)([kmgtp]?)", name, re.IGNORECASE)
    return m.group(1) + m.group(2).upper() if m else name.lower()


def speed_name(bps: int) -> str:
    """hsflowd's speed key for ``sampling.<speed>`` lookups (``lookupPacketSamplingRate``):
    integer division by
    the unit chosen from the digit count (1000000000 -> ``1G``, 100000000 -> ``100M``)."""
    digits = len(str(bps))
    for over, suffix, unit in ((12, "T", 10**12), (9, "G", 10**9), (6, "M", 10**6),
                               (3, "K", 10**3)):
        if digits > over:
            return f"{bps // unit}{suffix}"
    return str(bps)


# ---------------------------------------------------------------- the schema

_RATE = u32(0, 10_000_000)
_DOMAIN = string(r"\.?[A-Za-z0-9_.-]{1,250}", "domain")
_INTERVAL = u32(0, 300)


@attrs.frozen
class CollectorConfig:
    """One ``collector { }``: every datagram is sent to every collector."""

    ip: str = option(help="collector address (IPv4, IPv6 or hostname, resolved by the exporter)",
                     converter=host, example="127.0.0.1")
    udpport: int = option(6343, help="collector UDP port", converter=u32(1, 65535),
                          aliases=("UDPPort",))
    dev: str | None = option(None, help="send through this device (VRF), IP_UNICAST_IF",
                             converter=device)
    namespace: str | None = option(None, help="open the socket in /var/run/netns/<namespace>",
                                   converter=string(r"[^/\s]+", "namespace name"))


@attrs.frozen
class DnsSdConfig:
    """``dns-sd { }``: the collectors and settings come from DNS (SRV and TXT records of
    ``_sflow._udp.<domain>``), as hsflowd's mod_dnssd."""

    domain: str | None = option(
        None, help="domain of the _sflow._udp records, e.g. .example.com (default: the "
        "resolver's search list)", converter=_DOMAIN,
        aliases=("DNSSD_domain",))
    start_delay: int = option(
        30, key="startDelay", converter=u32(0, 300),
        help="first query after a random 1..N seconds, so a fleet restarted at once does not "
        "ask all together (0: at once; hostsflow only, hsflowd always waits 1..30)")

    @property
    def name(self) -> str:
        """The name queried: ``_sflow._udp`` plus the domain (a leading dot optional)."""
        return "_sflow._udp" + (f".{self.domain.lstrip('.')}" if self.domain else "")


@attrs.frozen
class AgentConfig:
    """The validated ``sflow { }`` block.  ``modules`` maps each module block present in the
    file to its validated instance, or to the list of its instances in file order when the
    module declared the block repeatable; ``agent_cidr`` is in file order (earlier entries win
    the bigger boost)."""

    collectors: list[CollectorConfig] = sub_block(
        CollectorConfig, key="collector", repeat=True, help="where to send sFlow datagrams")
    sampling: int = option(400, help="default 1-in-N packet sampling rate (speed unknown; nflog)",
                           converter=_RATE, aliases=("packetSamplingRate",))
    sampling_by: dict[str, int] = option_map(
        "sampling", converter=_RATE, name=sampling_name,
        help="1-in-N by link speed (sampling.10G), sampling.bps_ratio, or by application")
    polling: int = option(30, help="counter polling interval in seconds (0 = off)",
                          converter=_INTERVAL, aliases=("counterPollingInterval",))
    polling_by: dict[str, int] = option_map(
        "polling", converter=_INTERVAL, name=sampling_name,
        help="counter polling interval per application")
    header_bytes: int = option(128, key="headerBytes", help="bytes of each sampled header",
                               converter=u32(0, 256))
    datagram_bytes: int = option(1400, key="datagramBytes", help="largest sFlow datagram",
                                 converter=u32(200, 8192))
    agent_ip: str | None = option(None, key="agentIP", converter=host,
                                  help="agent address written in datagrams (overrides election)")
    agent: str | None = option(None, converter=device_or_alias,
                               help="prefer the addresses of this device in the election")
    agent_cidr: list[AgentCIDR] = option(key="agent.cidr", repeat=True, converter=cidr,
                                         help="prefer (or with '!' veto) agent addresses inside")
    sub_agent_id: int = option(100000, key="subAgentId", converter=u32(0, 199_999),
                               help="sub-agent id of the datagrams")
    uuid: Any = option(None, converter=uuid_value,
                       help="host UUID (default: from DMI or machine-id)")
    refresh_adaptors: int = option(180, key="refreshAdaptors", converter=u32(60, 3600),
                                   help="seconds between full interface re-reads")
    check_adaptors: int = option(10, key="checkAdaptors", converter=u32(1, 3600),
                                 help="seconds between cheap interface change checks")
    refresh_vms: int = option(60, key="refreshVMs", converter=u32(60, 3600),
                              help="seconds between VM/container/service list refreshes")
    forget_vms: int = option(180, key="forgetVMs", converter=u32(60),
                             help="seconds before an idle VM/container is forgotten")
    drop_priv: bool = option(True, key="dropPriv", converter=on_off,
                             help="drop root after start-up (a module may ask to keep it)")
    dns_sd_block: DnsSdConfig | None = sub_block(
        DnsSdConfig, key="dns-sd", help="take collectors and settings from DNS SRV/TXT records")
    dnssd: bool = option(False, key="DNSSD", converter=on_off,
                         help="DNS-SD on (older spelling of dns-sd { })")
    dnssd_domain: str | None = option(None, key="DNSSD_domain", converter=_DOMAIN,
                                      help="DNS-SD domain (older spelling of dns-sd { domain })")

    modules: dict[str, Any] = attrs.field(factory=dict)
    notes: list[ConfigNote] = attrs.field(factory=list, eq=False, repr=False)
    source: str = attrs.field(default="", eq=False)
    lines: dict[str, int] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def dns_sd(self) -> DnsSdConfig | None:
        """The DNS-SD settings when DNS-SD is on (``dns-sd { }``, or ``DNSSD = on`` with
        ``DNSSD_domain``), else None."""
        if self.dns_sd_block is not None:
            if self.dns_sd_block.domain is None and self.dnssd_domain:
                return attrs.evolve(self.dns_sd_block, domain=self.dnssd_domain)
            return self.dns_sd_block
        if self.dnssd:
            return DnsSdConfig(domain=self.dnssd_domain)
        return None


#: keys hsflowd accepts in ``sflow { }`` that we check and ignore: key -> (converter, advice)
LEGACY_KEYS: dict[str, tuple[Converter, str]] = {
    "loopback": (on_off, "loopback interfaces are always considered"),
    "samplingdirection": (choice("in", "out", "both"), "deprecated; sampling is in and out"),
    "modules": (string(), "modules are Python packages (pip install hostsflow-NAME)"),
    "uloggroup": (u32(1, 32), "use ulog { group = N }"),
    "ulogprobability": (real(0.0, 1.0), "use ulog { probability = P }"),
    "nfloggroup": (u32(1), "use nflog { group = N }"),
    "nflogprobability": (real(0.0, 1.0), "use nflog { probability = P }"),
    "jsonport": (u32(1025, 65535), "the json module is not implemented"),
    "jsonfifo": (string(), "the json module is not implemented"),
    "xen.update.dominfo": (on_off, "the xen module is not implemented"),
    "xen.dsk": (on_off, "the xen module is not implemented"),
}
#: legacy keys that change what hsflowd does: ignoring them deserves a warning, not a debug note
_LEGACY_WARN = {"ulog", "nflo", "json"}


# ---------------------------------------------------------------- the walker


@attrs.frozen
class _Keys:
    exact: dict[str, attrs.Attribute[Any]]  # lower-case spelling or alias -> field
    spelled: dict[str, str]  # lower-case spelling or alias -> conf spelling (for hints)
    maps: dict[str, attrs.Attribute[Any]]  # lower-case prefix -> field
    listing: str  # "a, b, c" for messages


@functools.cache
def _keys(cls: type) -> _Keys:
    exact, spelled, maps, names = {}, {}, {}, []
    for field in attrs.fields(cls):
        key = conf_key(field)
        if key is None:
            continue
        kind = field.metadata["kind"]
        if kind == "map":
            maps[key.lower()] = field
            names.append(f"{key}.<name>")
        else:
            for spelling in (key, *field.metadata["aliases"]):
                exact[spelling.lower()] = field
                spelled[spelling.lower()] = key
            names.append(f"{key} {{ }}" if kind == "block" else key)
    return _Keys(exact, spelled, maps, ", ".join(sorted(names, key=str.lower)))


def _field_for(keys: _Keys, norm: str) -> tuple[attrs.Attribute[Any] | None, str]:
    """The field a key names, and the map name (for ``prefix.name`` keys)."""
    if norm in keys.exact:
        return keys.exact[norm], ""
    prefix, dot, name = norm.partition(".")
    if dot and prefix in keys.maps:
        return keys.maps[prefix], name
    return None, ""


def _convert(field: attrs.Attribute[Any], value: str, file: str, line: int, key: str) -> Any:
    try:
        converted = field.metadata["conv"](value)
        if field.validator is not None and field.metadata["kind"] == "value":
            field.validator(None, field, converted)
    except (ValueError, TypeError) as exc:
        raise ConfigError(file, line, f"bad value for '{key}': {exc}") from None
    return converted


def _unknown_key(block: Block, key: str, line: int, keys: _Keys) -> ConfigError:
    close = difflib.get_close_matches(key.lower(), list(keys.exact), n=1)
    hint = f"; did you mean '{keys.spelled[close[0]]}'?" if close else ""
    valid = keys.listing or "none"
    return ConfigError(block.file, line, f"unknown key '{key}' in '{block.name}' block{hint} "
                       f"(valid keys: {valid})")


def build(block: Block, cls: type, notes: list[ConfigNote], *,
          registry: ConfigRegistry | None = None,
          legacy: dict[str, tuple[Converter, str]] | None = None,
          extra: dict[str, Any] | None = None, lines: dict[str, int] | None = None) -> Any:
    """Validate ``block`` against attrs class ``cls`` and return the instance.

    Walks entries and sub-blocks in file order, so the first mistake in the file is the one
    reported.  Unknown sub-blocks are looked up in ``registry`` (module blocks, collected in
    ``extra["modules"]``: the instance, or the list of instances for a block the registry
    says is repeatable) when one is given; ``legacy`` keys are checked and ignored with a
    note; ``lines`` (when given) gets the line of each setting by its conf spelling (the
    last one for a repeated key, the first for a list or block).  Raises :class:`ConfigError`."""
    keys = _keys(cls)
    lines = {} if lines is None else lines
    file = block.file
    values: dict[str, Any] = {}
    first_line: dict[str, int] = {}
    modules: dict[str, list[Any]] = extra.get("modules", {}) if extra else {}
    module_line: dict[str, int] = {}
    items: list[Any] = sorted([*block.entries, *block.blocks], key=lambda item: item.line)
    for item in items:
        field, name = _field_for(keys, item.norm)
        if isinstance(item, Block):
            if field is not None and field.metadata["kind"] == "block":
                sub = build(item, field.metadata["cls"], notes)
                if field.metadata["repeat"]:
                    values.setdefault(field.name, []).append(sub)
                elif field.name in values:
                    raise ConfigError(file, item.line, f"'{item.name}' block may appear only once "
                                      f"(first on line {first_line[field.name]})")
                else:
                    values[field.name] = sub
                first_line.setdefault(field.name, item.line)
                lines.setdefault(conf_key(field) or field.name, item.line)
            elif field is not None or (legacy and item.norm in legacy):
                raise ConfigError(file, item.line, f"'{item.name}' is a setting, not a block: "
                                  f"write {item.name} = VALUE")
            elif registry is None:
                raise ConfigError(file, item.line, f"unknown block '{item.name}' in "
                                  f"'{block.name}' block (valid keys: {keys.listing or 'none'})")
            else:
                spec = registry.spec(item.name)
                if spec is None:
                    raise ConfigError(file, item.line, registry.problem(item.name))
                if spec.name in modules and not spec.repeatable:
                    raise ConfigError(file, item.line, f"'{item.name}' block may appear only "
                                      f"once (first on line {module_line[spec.name]})")
                modules.setdefault(spec.name, []).append(build(item, spec.cls, notes))
                module_line.setdefault(spec.name, item.line)
            continue
        # an entry
        if field is None:
            if legacy and item.norm in legacy:
                conv, advice = legacy[item.norm]
                try:
                    conv(item.value)
                except ValueError as exc:
                    raise ConfigError(file, item.line,
                                      f"bad value for '{item.key}': {exc}") from None
                level = "warning" if item.norm[:4] in _LEGACY_WARN else "debug"
                notes.append(ConfigNote(file, item.line, level, f"'{item.key}' is accepted for "
                                        f"hsflowd compatibility and ignored: {advice}"))
                continue
            if registry is not None and registry.status(item.key) != "unknown":
                raise ConfigError(file, item.line, f"'{item.key}' is a module block: write "
                                  f"{item.key} {{ ... }}")
            raise _unknown_key(block, item.key, item.line, keys)
        kind = field.metadata["kind"]
        if kind == "block":
            raise ConfigError(file, item.line, f"'{item.key}' is a block: write "
                              f"{item.key} {{ ... }}")
        if kind == "map":
            if not name:
                raise ConfigError(file, item.line, f"missing name after '{item.key}'")
            values.setdefault(field.name, {})[field.metadata["name"](name)] = _convert(
                field, item.value, file, item.line, item.key)
            lines[f"{conf_key(field)}.{field.metadata['name'](name)}"] = item.line
        elif kind == "list":
            values.setdefault(field.name, []).append(
                _convert(field, item.value, file, item.line, item.key))
            lines.setdefault(conf_key(field) or field.name, item.line)
        else:
            if field.name in values:
                notes.append(ConfigNote(file, item.line, "warning", f"'{item.key}' set again "
                                        f"(first on line {first_line[field.name]}); this one "
                                        "counts"))
            values[field.name] = _convert(field, item.value, file, item.line, item.key)
            lines[conf_key(field) or field.name] = item.line
            if item.norm != (conf_key(field) or "").lower():
                notes.append(ConfigNote(file, item.line, "debug", f"'{item.key}' is an old "
                                        f"spelling of '{conf_key(field)}'"))
            first_line.setdefault(field.name, item.line)
    for field in attrs.fields(cls):
        if field.default is attrs.NOTHING and field.name not in values and conf_key(field):
            raise ConfigError(file, block.line, f"'{block.name}' block has no '{conf_key(field)}' "
                              "(required)")
    kwargs = {attrs.fields_dict(cls)[k].alias or k: v for k, v in values.items()}
    kwargs.update(extra or {})
    if registry is not None and modules:
        # a repeatable block stays a list, any other is its one instance
        kwargs["modules"] = {name: blocks if _repeatable(registry, name) else blocks[0]
                             for name, blocks in modules.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # a module's cross-field validator
        raise ConfigError(file, block.line, f"'{block.name}' block: {exc}") from None


def _repeatable(registry: ConfigRegistry, name: str) -> bool:
    spec = registry.spec(name)
    return spec is not None and spec.repeatable


# ---------------------------------------------------------------- entry points


def _the_sflow_block(root: Block) -> Block:
    file = root.file
    others = [b for b in root.blocks if b.norm != "sflow"]
    strays: list[Entry | Block] = sorted([*root.entries, *others], key=lambda item: item.line)
    if strays:
        item = strays[0]
        what = f"block '{item.name}'" if isinstance(item, Block) else f"setting '{item.key}'"
        raise ConfigError(file, item.line, f"{what} outside the sflow {{ }} block (everything "
                          "goes inside one sflow { } block)")
    sflows = root.sub("sflow")
    if not sflows:
        raise ConfigError(file, 1, "no 'sflow { ... }' block (the file must hold one)")
    if len(sflows) > 1:
        raise ConfigError(file, sflows[1].line, f"second 'sflow' block (the first is on line "
                          f"{sflows[0].line}); only one is allowed")
    return sflows[0]


def module_blocks(text: str, filename: str) -> dict[str, int]:
    """The module block names in the ``sflow { }`` block (lower-case -> first line), for the
    module loader to decide what to load before validating.  Raises :class:`ConfigError` on
    syntax errors."""
    core = {"collector", "dns-sd"}
    found: dict[str, int] = {}
    for b in _the_sflow_block(parse(text, filename)).blocks:
        if b.norm not in core:
            found.setdefault(b.norm, b.line)
    return found


def parse_config_text(text: str, filename: str, registry: ConfigRegistry | None = None, *,
                      require_collector: bool = True) -> AgentConfig:
    """Parse and validate config ``text`` (``filename`` is used in messages) against the core
    schema and the module blocks declared in ``registry``.  Raises :class:`ConfigError`."""
    registry = registry if registry is not None else ConfigRegistry()
    sflow = _the_sflow_block(parse(text, filename))
    notes: list[ConfigNote] = []
    lines: dict[str, int] = {}
    config: AgentConfig = build(sflow, AgentConfig, notes, registry=registry, legacy=LEGACY_KEYS,
                                extra={"modules": {}, "notes": notes, "source": filename,
                                       "lines": lines}, lines=lines)
    if config.dns_sd is not None and config.collectors:
        notes.append(ConfigNote(filename, lines.get("collector", sflow.line), "warning",
                                "DNS-SD is on: the collectors come from DNS and the collector "
                                "blocks here are not used (as in hsflowd)"))
    if require_collector and not config.collectors and config.dns_sd is None:
        raise ConfigError(filename, sflow.line, "no collector { ip = ... } in the sflow block "
                          "(at least one is required)")
    return config


#: the largest config file read (hsflowd configs are a few kB; 10,000 collectors fit)
MAX_CONFIG_BYTES = 1 << 20


def read_config_text(path: str) -> str:
    """The text of config file ``path``; :class:`ConfigError` if it is unreadable, not a
    regular file (a FIFO would block, /dev/zero never ends) or over :data:`MAX_CONFIG_BYTES`."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(path, 0, f"cannot read config file: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(path, 0, f"not a regular file ({_file_kind(st.st_mode)}): a "
                          "config file must be one")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(path, 0, f"{st.st_size} bytes is too big for a config file "
                              f"(at most {MAX_CONFIG_BYTES})")
        try:
            data = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(path, 0, f"cannot read config file: {exc.strerror or exc}") from None
        if len(data) > MAX_CONFIG_BYTES:  # it grew while being read
            raise ConfigError(path, 0, f"more than {MAX_CONFIG_BYTES} bytes is too big for a "
                              "config file")
    # hsflowd reads bytes: old files may hold Latin-1 comments.  Undecodable bytes become U+FFFD,
    # which the parser refuses outside comments.
    return data.decode("utf-8", errors="replace")


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def load_config(path: str, registry: ConfigRegistry | None = None, *,
                require_collector: bool = True) -> AgentConfig:
    """Read, parse and validate config file ``path``.  Raises :class:`ConfigError`."""
    return parse_config_text(read_config_text(path), path, registry,
                             require_collector=require_collector)


def render_config(registry: ConfigRegistry | None = None,
                  modules: list[str] | None = None,
                  enabled: list[str] | None = None, notes: list[str] = ()) -> str:
    """An annotated sample config: the sflow block with a collector, plus the ``modules``
    blocks (default: every declared one) inside it, for ``hostsflow config``.  Blocks not in
    ``enabled`` (default: all are) are commented out, so the text loads as it stands and
    enables only what was asked for; ``notes`` are comment lines added inside the block."""
    from .registry import render_block

    text = render_block("sflow", AgentConfig, "hostsflow agent settings")
    specs = registry.specs if registry is not None else {}
    names = modules if modules is not None else sorted(specs)
    unknown = [m for m in names if m.lower() not in specs]
    if unknown:
        raise ValueError(f"no declared block named {', '.join(unknown)}")
    on = {m.lower() for m in (names if enabled is None else enabled)}
    blocks = []
    for spec in (specs[m.lower()] for m in names):
        block = render_block(spec.name, spec.cls, spec.help, 1, spec.repeatable)
        if spec.name not in on:
            block = "\n".join(_commented(line) for line in block.splitlines())
        blocks.append(block)
    lines = text.splitlines()
    return "\n".join(lines[:-1] + [f"  # {n}" for n in notes] + blocks + lines[-1:]) + "\n"


def _commented(line: str) -> str:
    """``line`` as a comment, at its own indentation."""
    body = line.lstrip(" ")
    return f"{line[:len(line) - len(body)]}# {body}"
