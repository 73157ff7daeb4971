"""The systemd module: running services as sFlow data sources (3:dsIndex) with their own
counters, and (``markTraffic = on``) sampled packets marked with the services at each end.

Hooks: configure (cgroup mounts; with markTraffic the core's owner log for the slices),
start (the D-Bus task on the agent loop), data_sources / poll_counters (poll path),
flow_sample_released (packet path, phase 2), tick (cache expiry, counters), final.
"""

from __future__ import annotations

from typing import Any

from hostsflow import AgentAPI, hookimpl
from hostsflow.samples import HOST_SOURCE, DataSource, FlowSample
from hostsflow.sflow.records import Record

from .cgroups import CgroupMounts
from .config import SystemdConfig
from .dbus import UnitWatcher
from .marking import Marker
from .services import ServiceTable

NAME = "systemd"


class SystemdModule:
    """``systemd { }``: see README.md."""

    def __init__(self) -> None:
        self.cfg: SystemdConfig | None = None
        self.table: ServiceTable | None = None
        self.marker: Marker | None = None
        self.watcher: UnitWatcher | None = None
        self.log: Any = None
        self.agent: AgentAPI | None = None
        self._reported_sources: dict[str, str] = {}
        self._down_logged = False
        self._covered: frozenset[str] = frozenset()

    # ------------------------------------------------------------ lifecycle

    @hookimpl
    def sflow_declare_config(self, registry: Any) -> None:
        registry.block(NAME, SystemdConfig, help="systemd services as data sources (jeepney)")

    @hookimpl
    def sflow_configure(self, agent: AgentAPI) -> None:
        self.agent = agent
        self.log = agent.logger(NAME)
        cfg = agent.module_config(NAME)
        self.cfg = cfg
        mounts = CgroupMounts.read()
        self.log.info("cgroup_mounts", mode=mounts.mode, v2=str(mounts.v2) if mounts.v2 else None,
                      v1=sorted(mounts.v1))
        self.table = ServiceTable(mounts, self.cfg.slices(), lambda: agent.uuid,
                                  lambda: agent.address, allow_proc_io=not self.cfg.dropPriv,
                                  now=agent.now)
        if not self.cfg.dropPriv:
            # /proc/PID/io of another user's process: mode 0400 (CAP_DAC_READ_SEARCH) and a
            # ptrace read check (CAP_SYS_PTRACE); root itself is not needed
            agent.retain_capabilities("CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH",
                                      reason="systemd: read /proc/PID/io of services' processes")
        if self.cfg.markTraffic:
            self.marker = Marker(self.table, agent.sockets, agent.now)
            if mounts.v2 is None:
                self.log.warning("no_cgroup2", detail="marking falls back to /proc/PID/fd, "
                                 "and only while a connection's socket lives")
            else:
                # the kernel logs the owner of each connection the slices' services send on
                # (the core's owner log): loaded now, as root; slices found later are covered
                # as their first service appears (root, or CAP_BPF and CAP_NET_ADMIN)
                self._cover(mounts.find_dirs(self.cfg.slices()))
                if agent.sockets.recording:  # the owner log counts each service's traffic
                    self.table.traffic = agent.sockets.cgroup_traffic
                agent.retain_capabilities("CAP_BPF", "CAP_NET_ADMIN",
                                          reason="systemd: trace connections of new slices")

    def _cover(self, directories: Any) -> None:
        """Have the owner log cover these cgroup2 directories (the slices' own)."""
        dirs = set(directories)
        # a directory below another is covered by it already (the program would run twice)
        wanted = frozenset(d for d in dirs
                           if not any(d.startswith(o.rstrip("/") + "/") for o in dirs))
        if wanted != self._covered:
            self._covered = wanted
            self.agent.sockets.record_owners(sorted(wanted),
                                             capacity=self.cfg.markTrafficHistory)

    @hookimpl
    def sflow_start(self, agent: AgentAPI) -> None:
        assert self.cfg is not None
        self.watcher = UnitWatcher(self.cfg.bus, float(self.cfg.refreshVMs), self._on_units,
                                   self._on_state, self._on_malformed)
        agent.call_later(0, self.watcher.start)

    @hookimpl
    def sflow_final(self, agent: AgentAPI) -> None:
        if self.marker is not None:
            self.marker.outcomes.push(agent.count)
        if self.watcher is not None:
            self.watcher.cancel()

    # ------------------------------------------------------------ D-Bus callbacks

    def _on_units(self, units: dict[str, str]) -> None:
        assert self.table is not None
        added, removed = self.table.sync(units)
        if added or removed:
            self.log.info("services_changed", added=_few(added), removed=_few(removed),
                          n_added=len(added), n_removed=len(removed), total=len(self.table))
            if self.marker is not None and self.agent.sockets.recording:
                self._cover(self._covered | self.table.slice_dirs())

    def _on_state(self, state: str, detail: str) -> None:
        if state == "up":
            self.log.info("systemd_connected", bus=detail)
            self.agent.clear_warning("systemd:dbus")
            self._down_logged = False
        else:
            # one message per outage; the other modules run on
            self.agent.warn_once("systemd:dbus", "systemd_unreachable", detail=detail)
            if self.table is not None and len(self.table):
                self.table.sync({})  # no systemd, no services

    def _on_malformed(self, what: str) -> None:
        self.agent.count("systemd.malformed_dbus")
        self.agent.warn_once("systemd:malformed", "systemd_malformed_reply", detail=what)

    # ------------------------------------------------------------ counters

    @hookimpl
    def sflow_tick(self, agent: AgentAPI, now: float) -> None:
        if self.marker is not None:
            if int(now) % 5 == 0:
                self.marker.expire(now)
            self.marker.outcomes.push(agent.count)  # once a second, not per sample

    @hookimpl
    def sflow_data_sources(self, agent: AgentAPI) -> list[DataSource] | None:
        return self.table.data_sources() if self.table is not None else None

    @hookimpl
    def sflow_poll_counters(self, agent: AgentAPI, source: DataSource) -> list[Record] | None:
        if self.table is None:
            return None
        if source == HOST_SOURCE:
            return [self.table.virt_node()]
        if source.ds_class != 3:
            return None
        svc = self.table.by_source(source)
        if svc is None:
            return None
        records = self.table.poll(svc)
        if records is None:
            self.log.info("service_gone", service=svc.name)
            if self.watcher is not None:
                self.watcher.resync()
            return None
        if self.table.sources_used != self._reported_sources:
            self._reported_sources = dict(self.table.sources_used)
            self.log.info("service_counters_from", **self._reported_sources)
        return records

    # ------------------------------------------------------------ marking

    @hookimpl
    def sflow_flow_sample_released(self, agent: AgentAPI, sample: FlowSample) -> None:
        if self.marker is None:
            return
        if not len(self.table or ()):
            self.marker.outcomes["unmarked.not_service"] += 1  # no service known (yet)
            return
        rec = self.marker.entities(sample)
        if rec is not None:
            sample.add(rec)


def _few(names: list[str], limit: int = 20) -> list[str]:
    """At most ``limit`` names for a log line (a host with 500 services starts with all of them)."""
    return names if len(names) <= limit else [*names[:limit], f"... {len(names) - limit} more"]
