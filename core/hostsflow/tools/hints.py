"""What the view and top tell the user when the numbers alone do not explain themselves.

Two sources: the snapshot (what the sFlow stream says) and, when the agent runs on this host,
its status file (``hostsflow status``: the agent rewrites it every few seconds).  The status
file is read for what it has (fields may be missing: an older or newer agent writes other
ones); nothing here fails on a missing, unreadable or odd file.

:func:`notices` gives the lines to show, most important first: why no service is listed (the
systemd module missing, the bus unreachable, no service under the watched slices, or only
waiting for the first counter samples), a stale status file, and a flood of keys the tables
turned away.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import attrs

from ..daemon_args import agent_alive

MAX_STATUS_BYTES = 4 << 20
STALE_AFTER = 60.0  # seconds: the agent rewrites its status every few seconds


@attrs.define(slots=True)
class AgentStatus:
    """The parts of the agent's status file the hints use (absent ones empty)."""

    path: str
    age: float | None
    counters: dict[str, Any]
    modules: dict[str, Any]
    raw: dict[str, Any]

    def counter(self, name: str) -> int:
        value = self.counters.get(name, 0)
        return value if isinstance(value, int) else 0

    def warnings(self) -> dict[str, str]:
        """Active warnings, if the agent lists them (``warnings``: a dict or a list)."""
        got = self.raw.get("warnings")
        if isinstance(got, dict):
            return {str(k): str(v) for k, v in got.items()}
        if isinstance(got, list):
            out = {}
            for w in got:
                if isinstance(w, dict):
                    out[str(w.get("key", ""))] = str(w.get("detail", w.get("event", "")))
                else:
                    out[str(w)] = ""
            return out
        return {}


class AgentStatusReader:
    """Reads the status file at ``path`` when it changed (by mtime and size)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._key: tuple[float, int] | None = None
        self._last: AgentStatus | None = None

    def read(self) -> AgentStatus | None:
        """The status, or None if there is no readable status file."""
        try:
            st = os.stat(self.path)
        except OSError:
            self._key = self._last = None
            return None
        key = (st.st_mtime, st.st_size)
        if key != self._key:
            self._key = key
            self._last = parse_status(self.path)
        if self._last is not None:
            self._last.age = _age(self._last.raw, st.st_mtime)
        return self._last


def parse_status(path: str) -> AgentStatus | None:
    """The status file at ``path``, or None if it is not a regular, readable JSON object."""
    try:
        with open(path, "rb") as f:
            if not os.path.isfile(path):
                return None
            data = f.read(MAX_STATUS_BYTES + 1)
        if len(data) > MAX_STATUS_BYTES:
            return None
        raw = json.loads(data)
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    counters = raw.get("counters") if isinstance(raw.get("counters"), dict) else {}
    modules = raw.get("modules") if isinstance(raw.get("modules"), dict) else {}
    return AgentStatus(path, None, counters, modules, raw)


def _age(raw: dict[str, Any], mtime: float) -> float:
    written = raw.get("time")
    if not isinstance(written, (int, float)) or isinstance(written, bool):
        written = mtime
    return max(0.0, time.time() - float(written))


def no_service_hint(snap: Any, status: AgentStatus | None) -> str | None:
    """Why the snapshot lists no service, as precisely as the inputs allow; None if it does."""
    if snap.services:
        return None
    st = snap.stats
    if (status is not None and isinstance(status.raw.get("modules"), dict)
            and "systemd" not in status.modules):
        return ("No services: the agent on this host runs without the systemd module "
                "(its config has no systemd { } block). Add systemd { markTraffic = on } "
                f"inside sflow {{ }} (status: {status.path}).")
    if status is not None:
        warn = {k: v for k, v in status.warnings().items() if k.startswith("systemd")}
        bus = next((v for k, v in warn.items() if "dbus" in k), None)
        faults = status.counter("faults.systemd") - status.counter("systemd.malformed_dbus")
        marked = status.counter("systemd.marking.marked")
        if bus is not None or (faults > 0 and not marked):
            why = f": {bus}" if bus else ""
            return ("No services: the agent cannot reach systemd over D-Bus" + why +
                    f" ({faults} failed attempts so far; the agent log's systemd_unreachable "
                    "line names the bus address). Check that the bus socket exists and the "
                    "agent may use it, or set systemd { bus = ... }.")
        if status.counter("systemd.marking.unmarked.not_service") and not marked:
            return ("No services: the agent reaches systemd but finds no running service under "
                    "the slices it watches (systemd { slice = ... }, default system.slice), so "
                    "no packet is marked. Check the slice your services run in "
                    "(systemctl status UNIT shows its CGroup).")
    if st.datagrams == 0:
        return "Waiting for sFlow: no datagram received yet (is the agent sending to this port?)."
    if st.flow_samples and not st.marked_samples and status is None:
        return ("No services: the flow samples name no service. The agent needs "
                "systemd { markTraffic = on } and a reachable systemd; run the view on the "
                "agent's host (or pass --status-file) and it can say which is missing.")
    return ("No services heard yet: services come with the agent's counter samples, every "
            "polling interval.")


def notices(snap: Any, status: AgentStatus | None) -> list[str]:
    """The lines to show with this snapshot, most important first."""
    out = []
    hint = no_service_hint(snap, status)
    if hint:
        out.append(hint)
    if status is not None and status.age is not None and status.age > STALE_AFTER:
        pid = status.raw.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool):
            fate = "is gone" if not agent_alive(pid) else "runs but has stopped writing it"
            who = f" (pid {pid})"
        else:
            fate, who = "may be gone", ""
        out.append(f"The agent's status file {status.path} was last written "
                   f"{status.age:.0f} s ago: the agent{who} that wrote it {fate}.")
    st = snap.stats
    refused = [(st.services_refused, "service names"), (st.agents_refused, "agents"),
               (st.keys_refused, "per-second keys")]
    flood = ", ".join(f"{n} {what}" for n, what in refused if n)
    if flood:
        out.append(f"Tables full, turned away: {flood} (a flood of made-up keys? "
                   "--allow takes sFlow only from your agents' networks).")
    if st.sources_refused:
        out.append(f"{st.sources_refused} datagrams refused: sender not in --allow.")
    return out
