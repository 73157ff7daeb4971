"""Which config blocks exist: the registry that modules fill from ``sflow_declare_config``, and
the sample-config renderer used by ``hostsflow config``.

The core creates one :class:`ConfigRegistry` per config load, tells it which modules are
installed (entry-point name -> distribution), lets every loaded module declare its block, then
validates the file against it (:func:`hostsflow.config.schema.parse_config_text`).  A block
name that nobody declared is then either an installed module that did not load, or unknown.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import attrs

from .options import (  # noqa: F401  (re-exported: modules import them from here too)
    AgentCIDR,
    Converter,
    SpeedRange,
    choice,
    cidr,
    conf_key,
    device,
    device_or_alias,
    host,
    integer,
    on_off,
    option,
    option_map,
    real,
    regex,
    speed_range,
    string,
    sub_block,
    u32,
    uuid,
)

#: block names the core itself owns; a module cannot declare them
RESERVED = frozenset({"sflow", "collector"})
#: the modules that come with hostsflow (plugins/NAME): module name -> distribution
KNOWN_MODULES = {name: f"hostsflow-{name}" for name in ("pcap", "nflog", "ulog", "systemd", "tcp")}


@attrs.frozen
class BlockSpec:
    """A declared module block: ``name { ... }`` is validated into ``cls`` instances."""

    name: str
    cls: type
    repeatable: bool = False
    help: str = ""


class ConfigRegistry:
    """The config blocks that modules declared, plus the names of the installed modules.

    :param installed: module (entry-point) name -> distribution name, for every installed
        module whether or not it is loaded, e.g. ``{"pcap": "hostsflow-pcap"}``.
    """

    def __init__(self, installed: Mapping[str, str] | None = None) -> None:
        self.installed: dict[str, str] = {k.lower(): v for k, v in (installed or {}).items()}
        self.specs: dict[str, BlockSpec] = {}
        self.load_errors: dict[str, str] = {}

    def block(self, name: str, cls: type, repeatable: bool = False, help: str = "") -> None:
        """Declare block ``name`` (the module's entry-point name) read into attrs class ``cls``.

        Called by modules from ``sflow_declare_config``.  Declaring the same block twice with the
        same class is harmless; a different class, a reserved name or a class that is not an
        attrs class raises ``ValueError`` (a module bug, not a config mistake)."""
        key = name.lower()
        if key in RESERVED or not key:
            raise ValueError(f"block name '{name}' is reserved by the core")
        if not attrs.has(cls):
            raise ValueError(f"block '{name}': {cls!r} is not an attrs class")
        spec = BlockSpec(key, cls, repeatable, help)
        old = self.specs.get(key)
        if old is not None and old != spec:
            raise ValueError(f"block '{name}' declared twice ({old.cls.__qualname__} and "
                             f"{cls.__qualname__})")
        self.specs[key] = spec

    def not_loaded(self, name: str, reason: str) -> None:
        """Record why an installed module could not be loaded (shown if its block appears)."""
        self.load_errors[name.lower()] = reason

    def spec(self, name: str) -> BlockSpec | None:
        return self.specs.get(name.lower())

    def status(self, name: str) -> str:
        """``"declared"`` (loaded, block known), ``"installed"`` (installed, not loaded) or
        ``"unknown"``."""
        key = name.lower()
        if key in self.specs:
            return "declared"
        return "installed" if key in self.installed else "unknown"

    def problem(self, name: str) -> str:
        """The message for a block ``name`` that was not declared: the installed module it
        resembles, else the in-repo module it resembles (never a made-up distribution name)."""
        key = name.lower()
        if key in self.installed:
            why = self.load_errors.get(key)
            return (f"module '{name}' is installed ({self.installed[key]}) but not loaded"
                    + (f": {why}" if why else ""))
        present = sorted(set(self.installed) | set(self.specs))
        names = ", ".join(present) or "none"
        close = difflib.get_close_matches(key, sorted(set(present) | set(KNOWN_MODULES)), n=1,
                                          cutoff=0.6)
        if close and close[0] in present:
            return f"unknown module '{name}'; did you mean '{close[0]}'? (installed: {names})"
        if close:
            return (f"unknown module '{name}'; did you mean '{close[0]}'? It is not installed: "
                    f"it comes with hostsflow as {KNOWN_MODULES[close[0]]} (plugins/{close[0]}; "
                    f"installed: {names})")
        return f"unknown module '{name}' (installed: {names})"


# ---------------------------------------------------------------- sample config


def _render_value(field: attrs.Attribute[Any], value: Any) -> str:
    conv: Converter = field.metadata["conv"]
    return conv.render(value)


def render_block(name: str, cls: type, help: str = "", indent: int = 0,
                 repeatable: bool = False) -> str:
    """An annotated sample ``name { ... }`` block for attrs class ``cls``: each setting with its
    help, accepted values and default as comments; required settings are written out (with
    their ``example``) so the sample is valid as it stands.  Nested blocks are rendered too."""
    pad = "  " * indent
    lines = []
    if help:
        lines.append(f"{pad}# {help}" + (" (repeatable)" if repeatable else ""))
    lines.append(f"{pad}{name} {{")
    inner = pad + "  "
    for field in attrs.fields(cls):
        key = conf_key(field)
        if key is None:
            continue
        meta = field.metadata
        kind = meta["kind"]
        if kind == "block":
            sub = render_block(key, meta["cls"], meta["help"], indent + 1, meta["repeat"])
            if not meta["repeat"] and field.default is None:  # optional: shown, not enabled
                sub = "\n".join(f"{inner}# {line.strip()}" if not line.strip().startswith("#")
                                 else line for line in sub.splitlines())
            lines.append(sub)
            continue
        conv: Converter = meta["conv"]
        lines.append(f"{inner}# {meta['help']} [{conv.describe}]")
        if kind == "map":
            lines.append(f"{inner}# {key}.<name> = ...")
        elif kind == "list":
            lines.append(f"{inner}# {key} = ...  (repeatable)")
        elif field.default is attrs.NOTHING:
            lines.append(f"{inner}{key} = {meta.get('example') or '...'}")
        elif field.default is None:
            lines.append(f"{inner}# {key} = ...  (not set by default)")
        else:
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            lines.append(f"{inner}# {key} = {_render_value(field, conv(default))}")
    lines.append(f"{pad}}}")
    return "\n".join(lines)
