"""The core's own counter poller, registered through the same hooks as any plugin.

It names the host (``2:1``) and every non-loopback interface (``0:ifIndex``) as data sources,
and returns their records when they are due."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..samples import DS_IFINDEX, HOST_SOURCE, DataSource
from . import counters


class HostPoller:
    """Host counters 2000-2010 for ``2:1``; generic interface counters and name for ``0:ifIndex``."""

    @hookimpl
    def sflow_data_sources(self, agent: Any) -> list[DataSource]:
        sources = [HOST_SOURCE]
        sources.extend(
            DataSource(DS_IFINDEX, i.ifindex, i.name) for i in agent.interfaces if not i.loopback
        )
        return sources

    @hookimpl
    def sflow_poll_counters(self, agent: Any, source: DataSource) -> list[Any] | None:
        if source == HOST_SOURCE:
            return counters.host_records(
                agent.interfaces, agent.uuid, agent.hostname, on_error=self._read_failed(agent)
            )
        if source.ds_class == DS_IFINDEX:
            iface = agent.interfaces.by_index(source.ds_index)
            if iface is not None:
                try:
                    return counters.interface_counters(iface)
                except counters.CounterReadError as exc:
                    self._read_failed(agent)(exc)
        return None

    @staticmethod
    def _read_failed(agent: Any) -> Any:
        def report(exc: Exception) -> None:
            agent.warn_once(f"counter_read:{exc}", "counter_read_failed", error=str(exc))

        return report
