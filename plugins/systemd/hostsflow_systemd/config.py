"""The ``systemd { }`` config block (hsflowd's mod_systemd keys, plus ``slice`` and ``bus``)."""

from __future__ import annotations

import attrs
from hostsflow.config.options import integer, on_off, option, string


@attrs.define
class SystemdConfig:
    """``systemd { markTraffic = on  refreshVMs = 60  slice = system.slice  bus = ...  dropPriv = off }``"""

    markTraffic: bool = option(
        False, converter=on_off,
        help="mark sampled packets with the services that sent/received them (extended_entities)")
    refreshVMs: int = option(
        60, converter=integer(1, 3600),
        help="seconds between full unit lists (unit signals also trigger one at once)")
    slice: list[str] = option(
        repeat=True, converter=string(r"[^\s/]+\.slice", "slice name like system.slice"),
        help="monitor services under this slice (repeatable; default system.slice)")
    bus: str | None = option(
        None, converter=string(r"\S+", "D-Bus address"),
        help="D-Bus address of systemd (default: the system bus, DBUS_SYSTEM_BUS_ADDRESS honoured)")
    markTrafficHistory: int = option(
        65536, converter=integer(1024, 1 << 24),
        help="connections the kernel's owner log keeps for markTraffic (the oldest go first): "
             "keep it above two seconds' worth of new connections")
    dropPriv: bool = option(
        False, converter=on_off,
        help="off: keep CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH after the drop, for the "
             "per-process /proc/PID/io fallback; on: skip that fallback and keep neither")

    def slices(self) -> list[str]:
        return list(self.slice) or ["system.slice"]
