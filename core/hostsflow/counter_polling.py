"""The poll path's counters: which data sources are polled when, and their counter samples.

Once a second the modules name their data sources (``sflow_data_sources``); each source gets
a poller with a random phase in ``[1, polling]`` (as hsflowd does) and, when its countdown
reaches zero, every module's records for it (``sflow_poll_counters``) become one
``counters_sample_expanded`` in the pending datagram.  A source nobody names any more is
forgotten.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from .health import Health
from .logsetup import OnceLog
from .modules import ModuleHost
from .samples import DS_IFINDEX, HOST_SOURCE, DataSource
from .sflow.datagram import encode_counter_sample
from .sflow.exporter import Exporter


@attrs.define
class Poller:
    """Counter polling state of one data source."""

    source: DataSource
    countdown: int
    sequence: int = 0


class CounterPolling:
    """The pollers of the data sources the modules name, and the polling itself.

    :param agent: what the hooks get as ``agent``.
    """

    def __init__(self, host: ModuleHost, agent: Any, exporter: Exporter, health: Health,
                 once: OnceLog, rng: random.Random) -> None:
        self.host = host
        self.agent = agent
        self.exporter = exporter
        self.health = health
        self.once = once
        self.rng = rng
        self.pollers: dict[DataSource, Poller] = {}
        self._sources_key: tuple[tuple[DataSource, ...], ...] | None = None
        self._poll_list: list[Poller] = []  # self.pollers in polling order

    def poll(self, interval: int, force: bool = False) -> None:
        """Poll every data source whose countdown reached zero (all of them if ``force``);
        ``interval`` is the config's ``polling`` (0: off, unless forced)."""
        if interval <= 0 and not force:
            return
        results = self.host.hook.sflow_data_sources(agent=self.agent)
        key = tuple(tuple(r) if r else () for r in results)
        if key != self._sources_key:
            self._sources_key = key
            self._update_pollers(key, interval)
        for poller in self._poll_list:
            poller.countdown -= 1
            if poller.countdown <= 0 or force:
                poller.countdown = max(1, interval)
                self.poll_source(poller)

    def new_interval(self, interval: int) -> None:
        """The polling interval changed (reload): new random phases.  The sequence numbers run
        on (a reset would look like a restarted agent to the collectors)."""
        for poller in self.pollers.values():
            poller.countdown = self.rng.randint(1, max(1, interval))

    def _update_pollers(self, results: tuple[tuple[DataSource, ...], ...], interval: int) -> None:
        """Reconcile the pollers with the data sources the modules name (only when the
        answer changed): new sources get a random phase, gone ones are dropped, and the
        polling order is worked out once."""
        wanted: dict[DataSource, None] = {}
        for result in results:
            for ds in result:
                wanted.setdefault(ds)
        for ds in [d for d in self.pollers if d not in wanted]:
            del self.pollers[ds]
        for ds in wanted:
            if ds not in self.pollers:
                phase = self.rng.randint(1, max(1, interval))
                self.pollers[ds] = Poller(ds, phase)
        self._poll_list = [self.pollers[ds] for ds in sorted(self.pollers, key=_poll_order)]

    def poll_source(self, poller: Poller) -> None:
        """Every module's records for one source, as one counter sample; when two modules
        return the same record format, the first is kept and the clash logged once."""
        records: list[Any] = []
        seen: dict[int, Any] = {}
        results = self.host.hook.sflow_poll_counters(agent=self.agent, source=poller.source)
        for result in reversed(results):
            for rec in result or ():
                tag = rec.tag()
                if tag in seen:
                    self.agent.warn_once(
                        f"duplicate_record:{poller.source}:{tag}", "duplicate_counter_record",
                        source=str(poller.source), format=tag,
                    )
                    continue
                seen[tag] = rec
                records.append(rec)
        if not records:
            return
        try:
            encoded = encode_counter_sample(poller.sequence + 1, poller.source, records)
        except Exception as exc:  # noqa: BLE001 - a module's bad record loses one sample only
            self.health.count("dropped.unencodable")
            self.once.warn("encode_counters", "counter_sample_unencodable", error=repr(exc),
                           source=str(poller.source))
            return
        poller.sequence += 1
        self.exporter.add(encoded)
        self.health.count("counter_samples")


def _poll_order(ds: DataSource) -> tuple[int, int, int]:
    """Interfaces first (decoders that stop at host records, such as tshark, still read them),
    then the host, then virtual sources: gmond must see the host before its services."""
    rank = 0 if ds.ds_class == DS_IFINDEX else 1 if ds == HOST_SOURCE else 2
    return rank, ds.ds_class, ds.ds_index
