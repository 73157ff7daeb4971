"""hsflowd.conf parsing and validation.

* :mod:`.parser` - the grammar, text -> :class:`Block` tree, :class:`ConfigError`;
* :mod:`.options` - typed converters and :func:`option` (attrs fields with conf spelling/help);
* :mod:`.registry` - :class:`ConfigRegistry` (module blocks) and :func:`render_block`;
* :mod:`.schema` - :class:`AgentConfig`, :class:`CollectorConfig`, :func:`load_config`.

Modules declare their block with an attrs class whose fields come from :func:`option`::

    @attrs.frozen
    class TcpConfig:
        tunnel: bool = option(False, help="look inside tunnels", converter=on_off)

    @hostsflow.hookimpl
    def sflow_declare_config(self, registry):
        registry.block("tcp", TcpConfig, help="TCP round-trip metrics")
"""

from .options import (
    AgentCIDR,
    Converter,
    SpeedRange,
    choice,
    cidr,
    device,
    device_or_alias,
    format_si,
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
from .parser import Block, ConfigError, Entry, parse
from .registry import BlockSpec, ConfigRegistry, render_block
from .schema import (
    AgentConfig,
    CollectorConfig,
    ConfigNote,
    load_config,
    module_blocks,
    parse_config_text,
    read_config_text,
    render_config,
    sampling_name,
    speed_name,
)

__all__ = [
    "AgentCIDR", "AgentConfig", "Block", "BlockSpec", "CollectorConfig", "ConfigError",
    "ConfigNote", "ConfigRegistry", "Converter", "Entry", "SpeedRange", "choice", "cidr",
    "device", "device_or_alias", "format_si", "host", "integer", "load_config", "module_blocks",
    "on_off", "option", "option_map", "parse", "parse_config_text", "read_config_text", "real",
    "regex", "render_block", "render_config", "sampling_name", "speed_name", "speed_range",
    "string", "sub_block", "u32", "uuid",
]
