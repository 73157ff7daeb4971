"""The packet path: from the sampled packets a capture module hands over to encoded flow
samples in the pending datagram.

For each :class:`~hostsflow.samples.FlowSample`: phase 1 (``sflow_flow_sample`` of every
module, which may hold it), the wait for its holds (released by their owners, or by the core
after ``hold_timeout``), phase 2 (``sflow_flow_sample_released``), then a per-data-source
sequence number and the encoder.  With no module implementing either hook, samples and
:class:`~hostsflow.samples.PacketBatch` batches go straight to the encoder in one loop.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from typing import Any, Callable, Iterable

from .health import Health
from .logsetup import OnceLog
from .modules import ModuleHost
from .samples import DataSource, FlowSample, PacketBatch
from .sflow.datagram import encode_flow_sample, encode_packet_batch
from .sflow.exporter import Exporter

DEFAULT_HOLD_TIMEOUT = 0.4  # seconds; hsflowd's mod_tcp waits up to 400 ms
HOLD_CHECK_SECONDS = 0.1  # how often held samples are checked against their deadline


class FlowPipeline:
    """Phase 1, holds, phase 2, numbering and encoding of flow samples, into ``exporter``.

    :param clock: the agent clock (hold deadlines).
    """

    def __init__(self, exporter: Exporter, health: Health, once: OnceLog,
                 clock: Callable[[], float]) -> None:
        self.exporter = exporter
        self.health = health
        self.once = once
        self.clock = clock
        self.hold_timeout = DEFAULT_HOLD_TIMEOUT
        #: the asyncio loop the hold timer runs on (None: holds expire only when told)
        self.loop: asyncio.AbstractEventLoop | None = None
        #: the last sequence number sent per data source
        self.sequences: dict[DataSource, int] = collections.defaultdict(int)
        #: (deadline, sample) of the samples waiting for a hold, oldest first
        self.held: collections.deque[tuple[float, FlowSample]] = collections.deque()
        self._hold_timer: Any = None
        self.phase1: tuple[Callable[..., Any], ...] = ()
        self.phase2: tuple[Callable[..., Any], ...] = ()

    def bind(self, host: ModuleHost, agent: Any) -> None:
        """Resolve the per-sample hooks of the modules registered now (called again whenever
        a module is registered, unregistered or quarantined)."""
        self.phase1 = host.bound_impls("sflow_flow_sample", agent=agent)
        self.phase2 = host.bound_impls("sflow_flow_sample_released", agent=agent)

    @property
    def samples_sent(self) -> int:
        """Flow samples numbered and encoded so far (every data source)."""
        return sum(self.sequences.values())

    # ------------------------------------------------------------ taking samples

    def take_samples(self, samples: Iterable[FlowSample]) -> None:
        """A batch of sampled packets from a capture module."""
        phase1, released = self.phase1, self._released
        if not phase1 and not self.phase2:
            n = self._encode_all(samples)
        else:
            n = 0
            for s in samples:
                n += 1
                if phase1:
                    for fn in phase1:
                        fn(s)
                    if s._holds:
                        s._on_released = released
                        self.held.append((self.clock() + self.hold_timeout, s))
                        self._arm_hold_timer()
                        continue
                released(s)
        self.health.count("flow_samples_taken", n)

    def take_batch(self, batch: PacketBatch) -> None:
        """The packets one capture read sampled on one data source: encoded in one pass when
        no module has a per-sample hook, else turned into FlowSamples for the hooks."""
        if self.phase1 or self.phase2:
            self.take_samples(batch.flow_samples())
            return
        seq = self.sequences[batch.source]
        try:
            encoded = encode_packet_batch(seq + 1, batch)
        except (struct.error, TypeError, ValueError):
            # a value out of range somewhere: one by one, so only the bad packet is lost
            self.health.count("flow_samples_taken", self._encode_all(batch.flow_samples()))
            return
        self.sequences[batch.source] = seq + len(encoded)
        self.exporter.add_all(encoded)
        self.health.count("flow_samples_taken", len(encoded))

    def _encode_all(self, samples: Iterable[FlowSample]) -> int:
        """Number, encode and queue every sample in one loop (no call per sample besides the
        encoder and the exporter, one sequence-number lookup per run of samples from one data
        source).  Returns the number of samples."""
        add, seqs = self.exporter.add, self.sequences
        n = seq = 0
        src: DataSource | None = None
        for s in samples:
            n += 1
            if s.source is not src:
                if src is not None:
                    seqs[src] = seq
                src = s.source
                seq = seqs[src]
            try:
                encoded = encode_flow_sample(seq + 1, s)
            except Exception as exc:  # noqa: BLE001 - a bad record loses one sample only
                self._unencodable(s, exc)
                continue
            seq += 1
            add(encoded)
        if src is not None:
            seqs[src] = seq
        return n

    def _released(self, s: FlowSample) -> None:
        for fn in self.phase2:
            fn(s)
        seq = self.sequences[s.source] + 1
        try:
            encoded = encode_flow_sample(seq, s)
        except Exception as exc:  # noqa: BLE001 - a module's bad record loses one sample only
            self._unencodable(s, exc)
            return
        self.sequences[s.source] = seq
        self.exporter.add(encoded)

    def _unencodable(self, s: FlowSample, exc: Exception) -> None:
        self.health.count("dropped.unencodable")
        self.once.warn("encode_flow", "flow_sample_unencodable", error=repr(exc),
                       records=[type(r).__name__ for r in s.records])

    # ------------------------------------------------------------ holds

    def expire_holds(self, now: float | None = None) -> None:
        """Release held samples whose deadline passed (the core's guarantee to capture
        modules): counted as ``holds_timed_out``, their late owners logged once."""
        now = self.clock() if now is None else now
        held = self.held
        while held and (held[0][0] <= now or not held[0][1]._holds):
            _, sample = held.popleft()
            if sample._holds:
                late = sample._force_release()
                self.health.count("holds_timed_out")
                self.once.warn("hold_timeout", "sample_hold_timed_out", owners=late)

    def release_all(self) -> None:
        """Release every held sample now (shutdown)."""
        for _, sample in list(self.held):
            sample._force_release()
        self.held.clear()

    def _arm_hold_timer(self) -> None:
        if self._hold_timer is None and self.loop is not None and self.loop.is_running():
            self._hold_timer = self.loop.call_later(HOLD_CHECK_SECONDS, self._hold_tick)

    def _hold_tick(self) -> None:
        self._hold_timer = None
        self.expire_holds()
        if self.held:
            self._arm_hold_timer()
