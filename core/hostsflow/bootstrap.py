"""From a config file to a module host: find the module blocks the file names, load only those
entry points, let them declare their blocks, then validate the whole file.

Installed is not enabled: a module that is installed but has no block is never imported."""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import structlog

from .config.parser import ConfigError
from .config.registry import ConfigRegistry
from .config.schema import module_blocks, parse_config_text, read_config_text
from .host.poller import HostPoller
from .modules import ModuleInfo, ModuleHost, ModuleLoadError, installed_modules

log = structlog.get_logger("hostsflow.bootstrap")

CORE_MODULE = "core"


@attrs.define
class Loaded:
    """The result of reading a config: the validated config, the host with its modules, the
    registry (for ``hostsflow config``) and the modules that failed to load."""

    config: Any
    host: ModuleHost
    registry: ConfigRegistry
    failed: dict[str, str] = attrs.Factory(dict)


def declare(host: ModuleHost, registry: ConfigRegistry) -> None:
    host.hook.sflow_declare_config(registry=registry)


def load(
    text: str,
    filename: str,
    *,
    installed: Mapping[str, ModuleInfo] | None = None,
    modules: Mapping[str, Any] | None = None,
    host_poller: bool = True,
    require_collector: bool = True,
) -> Loaded:
    """Validate ``text`` and build a module host for it.

    :param installed: the installed modules (default: the entry-point group).
    :param modules: explicit module objects by module name, instead of entry points (testing kit).
    :raises ConfigError: ``FILE:LINE: message`` for any mistake, including a module that is named
        but not installed, or that is installed and fails to import.
    """
    host = ModuleHost()
    if host_poller:
        host.register(CORE_MODULE, HostPoller())
    if modules is not None:
        registry = ConfigRegistry({name: "(test)" for name in modules})
        for name, obj in modules.items():
            host.register(name, obj, "(test)")
        failed: dict[str, str] = {}
    else:
        installed = installed_modules() if installed is None else installed
        registry = ConfigRegistry({n: i.distribution for n, i in installed.items()})
        failed = {}
        for name, line in module_blocks(text, filename).items():
            info = installed.get(name)
            if info is None or name in host.states or name in failed:
                continue
            try:
                host.load(info)
            except ModuleLoadError as exc:
                failed[name] = exc.reason
                registry.not_loaded(name, exc.reason)
                raise ConfigError(filename, line, str(exc)) from None
    declare(host, registry)
    config = parse_config_text(text, filename, registry, require_collector=require_collector)
    return Loaded(config, host, registry, failed)


def load_file(path: str, **kw: Any) -> Loaded:
    """:func:`load` on the text of config file ``path`` (refused unless a regular file of
    sane size: :func:`~hostsflow.config.schema.read_config_text`)."""
    return load(read_config_text(path), path, **kw)
