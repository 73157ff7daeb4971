"""The systemd plugin: running services as sFlow data sources (3:dsIndex) with their own
counters, and (``markTraffic = on``) sampled packets marked with the services at each end.

Hooks: configure (cgroup mounts, sock_diag socket), start (the D-Bus task on the agent loop),
data_sources / poll_counters (poll path), flow_sample_released (packet path, phase 2),
tick (cache expiry), final.
"""

from __future__ import annotations

from typing import Any

from hostsflow import hookimpl
from hostsflow.samples import HOST_SOURCE, DataSource, FlowSample
from hostsflow.sflow.records import Record
from hostsflow_tcp import companion
from hostsflow_tcp.lookup import DiagChannel

from .cgroups import CgroupMounts
from .config import SystemdConfig
from .dbus import UnitWatcher
from .marking import Marker
from .services import ServiceTable

NAME = "systemd"


class SystemdPlugin:
    """``systemd { }``: see README.md."""

    def __init__(self) -> None:
        self.cfg: SystemdConfig | None = None
        self.table: ServiceTable | None = None
        self.marker: Marker | None = None
        self.watcher: UnitWatcher | None = None
        self.diag: DiagChannel | None = None
        self.log: Any = None
        self.agent: Any = None
        self._reported_sources: dict[str, str] = {}
        self._down_logged = False
        self._reported_marking: dict[str, int] = {}

    # ------------------------------------------------------------ lifecycle

    @hookimpl
    def sflow_declare_config(self, registry: Any) -> None:
        registry.block(NAME, SystemdConfig, help="systemd services as data sources (jeepney)")

    @hookimpl
    def sflow_configure(self, agent: Any) -> None:
        self.agent = agent
        self.log = agent.logger(NAME)
        cfg = agent.module_config(NAME)
        self.cfg = cfg if isinstance(cfg, SystemdConfig) else SystemdConfig()
        mounts = CgroupMounts.read()
        self.log.info("cgroup_mounts", mode=mounts.mode, v2=str(mounts.v2) if mounts.v2 else None,
                      v1=sorted(mounts.v1))
        self.table = ServiceTable(mounts, self.cfg.slices(), lambda: agent.uuid,
                                  lambda: agent.address, allow_proc_io=not self.cfg.dropPriv,
                                  now=agent.now)
        if not self.cfg.dropPriv:
            agent.retain_root("systemd: read /proc/PID/io of services' processes")
        if self.cfg.markTraffic:
            try:
                self.diag = DiagChannel()
            except OSError as exc:
                agent.warn_once("systemd:sockdiag", "systemd_marking_without_sock_diag",
                                error=str(exc))
            self.marker = Marker(self.table, agent.now, self.diag)
            companion.register(agent, self.marker)  # the tcp module's lookups carry ours
            if mounts.v2 is None:
                self.log.warning("no_cgroup2", detail="marking falls back to /proc/PID/fd")

    @hookimpl
    def sflow_start(self, agent: Any) -> None:
        assert self.cfg is not None
        if self.diag is not None and self.marker is not None:
            agent.add_reader(self.diag.fileno(), self.marker.on_readable)
        self.watcher = UnitWatcher(self.cfg.bus, float(self.cfg.refreshVMs), self._on_units,
                                   self._on_state, self._on_malformed)
        agent.loop.call_soon(self.watcher.start)

    @hookimpl
    def sflow_final(self, agent: Any) -> None:
        if self.marker is not None:
            companion.register(agent, None)
        if self.watcher is not None:
            loop = agent.loop
            if loop is not None and not loop.is_running() and not loop.is_closed():
                loop.run_until_complete(self.watcher.stop())  # testing kit: loop is idle
            else:
                self.watcher.cancel()
        if self.diag is not None:
            agent.remove_reader(self.diag.fileno())
            self.diag.close()
            self.diag = None

    # ------------------------------------------------------------ D-Bus callbacks

    def _on_units(self, units: dict[str, str]) -> None:
        assert self.table is not None
        added, removed = self.table.sync(units)
        if added or removed:
            self.log.info("services_changed", added=_few(added), removed=_few(removed),
                          n_added=len(added), n_removed=len(removed), total=len(self.table))

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
    def sflow_tick(self, agent: Any, now: float) -> None:
        if self.marker is not None:
            self.marker.local.update(agent.interfaces, agent.interfaces_version)
            if int(now) % 5 == 0:
                self.marker.expire(now)
            self._report_marking(agent)

    def _report_marking(self, agent: Any) -> None:
        """Push the marker's sock_diag trouble counters (once a second, not per sample)."""
        assert self.marker is not None
        for k in ("malformed", "errors"):
            d = self.marker.stats[k] - self._reported_marking.get(k, 0)
            if d:
                agent.count(f"systemd.sock_diag_{k}", d)
                agent.warn_once(f"systemd:sock_diag_{k}", f"systemd_sock_diag_{k}", count=d)
                self._reported_marking[k] = self.marker.stats[k]

    @hookimpl
    def sflow_data_sources(self, agent: Any) -> list[DataSource] | None:
        return self.table.data_sources() if self.table is not None else None

    @hookimpl
    def sflow_poll_counters(self, agent: Any, source: DataSource) -> list[Record] | None:
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
    def sflow_flow_sample_released(self, agent: Any, sample: FlowSample) -> None:
        # phase 2: the tcp module's lookup (phase 1) is in the stash by now
        if self.marker is None or not len(self.table or ()):
            return
        rec = self.marker.entities(sample)
        if rec is not None:
            sample.add(rec)


def _few(names: list[str], limit: int = 20) -> list[str]:
    """At most ``limit`` names for a log line (a host with 500 services starts with all of them)."""
    return names if len(names) <= limit else [*names[:limit], f"... {len(names) - limit} more"]
