"""The core's own counter poller, registered through the same hooks as any module.

It names the host (``2:1``) and every non-loopback interface (``0:ifIndex``) as data sources,
and returns their records when they are due."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..samples import DS_IFINDEX, HOST_SOURCE, DataSource
from . import counters


#: the records host_records() may report as failed (CounterReadError.record)
HOST_RECORDS = frozenset({
    "host_descr", "host_net_io", "host_cpu", "host_memory", "host_disk_io", "mib2",
    "host_adapters",
})


class HostPoller:
    """Host counters 2000-2010 for ``2:1``; generic interface counters and name for ``0:ifIndex``."""

    def __init__(self) -> None:
        self._table: Any = None  # the interface table _sources was built from
        self._sources: list[DataSource] = []

    @hookimpl
    def sflow_data_sources(self, agent: Any) -> list[DataSource]:
        # asked every second; the answer only changes when the agent installs a new table
        if agent.interfaces is not self._table:
            self._table = agent.interfaces
            self._sources = [HOST_SOURCE]
            self._sources.extend(
                DataSource(DS_IFINDEX, i.ifindex, i.name) for i in self._table if not i.loopback
            )
        return self._sources

    @hookimpl
    def sflow_poll_counters(self, agent: Any, source: DataSource) -> list[Any] | None:
        if source == HOST_SOURCE:
            failed: set[str] = set()

            def report(exc: counters.CounterReadError) -> None:
                failed.add(exc.record)
                self._failed(agent, exc.record, exc)

            records = counters.host_records(
                agent.interfaces, agent.uuid, agent.hostname, on_error=report
            )
            for name in HOST_RECORDS - failed:
                agent.clear_warning(f"counter_read:{name}")
            return records
        if source.ds_class == DS_IFINDEX:
            iface = agent.interfaces.by_index(source.ds_index)
            if iface is not None:
                key = f"if_counters:{iface.name}"
                try:
                    records = counters.interface_counters(iface)
                except counters.CounterReadError as exc:
                    self._failed(agent, key, exc)
                    return None
                agent.clear_warning(f"counter_read:{key}")
                return records
        return None

    @staticmethod
    def _failed(agent: Any, what: str, exc: Exception) -> None:
        """Logged once while ``what`` keeps failing (a ``recovered`` line when it reads again),
        counted every poll."""
        agent.warn_once(f"counter_read:{what}", "counter_read_failed", error=str(exc))
