"""The agent: one asyncio loop, the 1 Hz tick/poll/tock/flush cycle, and the flow-sample
pipeline (phase 1, holds, phase 2, encode).

Everything a module may use is a public method or attribute of :class:`Agent`; see
docs/plugins.md for the author's view.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import random
import signal
import struct
import time
from typing import Any, Callable, Iterable

import attrs
import structlog

from .health import Health
from .host import identity
from .host.agent_address import candidates, elect_agent_address
from .host.sampling import sampling_rate_for
from .host.interfaces import Interface, InterfaceTable, interfaces_fingerprint, scan_interfaces
from .host.link_watch import LinkWatch
from .logsetup import OnceLog
from .modules import ModuleHost
from .privileges import PrivilegeError, capability_mask, drop_privileges
from .samples import DS_IFINDEX, HOST_SOURCE, DataSource, FlowSample, PacketBatch
from .sflow.datagram import encode_counter_sample, encode_flow_sample, encode_packet_batch
from .sflow.exporter import Collector, Exporter, RecordingSink, Sink, UdpSender

DEFAULT_HOLD_TIMEOUT = 0.4  # seconds; hsflowd's mod_tcp waits up to 400 ms
INTERFACE_SCAN_SECONDS = 2  # without rtnetlink: how often the /sys fingerprint is checked
HOLD_CHECK_SECONDS = 0.1
HEALTH_LOG_SECONDS = 300  # one "health" log line every five minutes


@attrs.define
class Poller:
    """Counter polling state of one data source."""

    source: DataSource
    countdown: int
    sequence: int = 0


class Agent:
    """A running hostsflow agent.

    Build it with a validated config and a :class:`ModuleHost` holding the enabled modules
    (the CLI does this from the config file; the testing kit from an explicit list)."""

    def __init__(
        self,
        config: Any,
        host: ModuleHost,
        *,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.monotonic,
        scan: Callable[[], InterfaceTable] = scan_interfaces,
        rng: random.Random | None = None,
        user: str | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.clock = clock
        self.scan = scan
        self.rng = rng or random.Random()
        self.log = structlog.get_logger("hostsflow.agent")
        self.once = OnceLog(self.log)
        self.health = Health()
        self.health_log_seconds = HEALTH_LOG_SECONDS
        self.hold_timeout = DEFAULT_HOLD_TIMEOUT
        self.loop: asyncio.AbstractEventLoop | None = None
        self.root_reasons: list[str] = []
        self.kept_capabilities: dict[str, set[str]] = {}
        self.user = user

        self.interfaces = scan()
        self._if_mark = interfaces_fingerprint()
        self._links: LinkWatch | None = None
        self.interfaces_version = 0
        self.hostname = identity.hostname()
        self.uuid = identity.host_uuid(getattr(config.uuid, "bytes", config.uuid))
        # the core's election for now; the modules have their say once configured (start)
        self.address = self._elect_address(ask_modules=False)
        self.sink = sink if sink is not None else self._udp_sender()
        self._sink_base = (0, 0, 0)  # (delivered, undelivered, datagrams) of replaced senders
        self.exporter = Exporter(
            self.sink, self.address, config.sub_agent_id, config.datagram_bytes, clock
        )

        self._pollers: dict[DataSource, Poller] = {}
        self._sources_key: tuple[tuple[DataSource, ...], ...] | None = None
        self._poll_list: list[Poller] = []  # self._pollers in polling order
        self._flow_seq: dict[DataSource, int] = collections.defaultdict(int)
        self._held: collections.deque[tuple[float, FlowSample]] = collections.deque()
        self._hold_timer: Any = None
        self.seconds = 0
        self._readers: set[int] = set()
        self._sockets: Any = None  # LocalSockets, made when a module first asks
        self._phase1: tuple[Callable[..., Any], ...] = ()
        self._phase2: tuple[Callable[..., Any], ...] = ()
        host.on_change = self._resolve_fast_path
        self._resolve_fast_path()

    # ------------------------------------------------------------ module-facing helpers

    def module_config(self, name: str) -> Any:
        """This module's config block: an instance, a list for repeatable blocks, or None."""
        return self.config.modules.get(name)

    def logger(self, name: str) -> Any:
        """A structlog logger bound to ``module=name``."""
        return structlog.get_logger(f"hostsflow.{name}").bind(module=name)

    def warn_once(self, key: str, event: str, **kw: Any) -> None:
        """Log ``event`` the first time ``key`` goes wrong; stay quiet until cleared."""
        self.health.count(f"faults.{key.split(':', 1)[0]}")
        self.once.warn(key, event, **kw)

    def clear_warning(self, key: str) -> None:
        self.once.clear(key)

    def count(self, name: str, n: int = 1) -> None:
        """Bump a health counter (shown by ``hostsflow status``)."""
        self.health.count(name, n)

    def now(self) -> float:
        return self.clock()

    def add_reader(self, fd: int, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (registered once, kept)."""
        assert self.loop is not None, "add_reader is for sflow_start or later"
        self.loop.add_reader(fd, self._guarded_reader(fd, callback))
        self._readers.add(fd)

    def remove_reader(self, fd: int) -> None:
        if self.loop is not None and fd in self._readers:
            self.loop.remove_reader(fd)
            self._readers.discard(fd)

    def call_later(self, delay: float, callback: Callable[[], Any]) -> Any:
        assert self.loop is not None
        return self.loop.call_later(delay, callback)

    def retain_root(self, reason: str) -> None:
        """Ask to keep root after start-up (call from ``sflow_configure``); logged with the
        reason.  Prefer :meth:`retain_capabilities` when a capability or two is enough."""
        self.root_reasons.append(reason)

    def retain_capabilities(self, *capabilities: str, reason: str) -> None:
        """Ask to keep these Linux capabilities (``"CAP_NET_RAW"``...) when the agent drops
        root after ``sflow_configure``; logged with the reason."""
        capability_mask(capabilities)  # unknown names fail here, in the module's configure
        self.kept_capabilities.setdefault(reason, set()).update(capabilities)

    @property
    def sockets(self) -> Any:
        """The local sockets at the ends of sampled packets, and who owns them
        (:class:`hostsflow.sockets.LocalSockets`, shared by every module; made on first use)."""
        if self._sockets is None:
            from .sockets import LocalSockets

            self._sockets = LocalSockets(self)
        return self._sockets

    def sampling_rate(self, interface: Interface) -> int:
        """1-in-N for an interface: a module's decision, else hsflowd's rule
        (``lookupPacketSamplingRate``)."""
        n = self.host.hook.sflow_sampling_rate(agent=self, interface=interface)
        if n is not None:
            return int(n)
        return sampling_rate_for(interface, self.config.sampling, self.config.sampling_by)

    # ------------------------------------------------------------ lifecycle

    def configure(self) -> None:
        """Run ``sflow_configure``; a module that raises there is disabled, the rest go on."""
        before = {n: s.errors for n, s in self.host.states.items()}
        self.host.hook.sflow_configure(agent=self)
        for name, state in list(self.host.states.items()):
            if state.errors > before.get(name, 0) and not state.quarantined:
                self.log.error("module_disabled", module=name, reason="sflow_configure failed")
                self.health.count("modules.disabled")
                self.host.unregister(name)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Configure modules, then start them inside ``loop``."""
        self.loop = loop or asyncio.get_event_loop()
        self._watch_links()
        self.configure()
        self._update_address()
        self.drop_privileges()
        self.host.hook.sflow_start(agent=self)
        self.log.info(
            "started", agent_address=self.address, modules=sorted(self.host.states),
            collectors=[f"{c.ip}:{c.udpport}" for c in self.config.collectors],
        )

    def drop_privileges(self) -> None:
        """After configure: become ``self.user`` keeping the capabilities modules asked for,
        unless ``dropPriv = off``, a module asked to keep root, or no user was given (the
        testing kit).  A failure is logged and the agent carries on as it is."""
        if self.user is None or not self.config.drop_priv or os.geteuid() != 0:
            return
        if self.root_reasons:
            self.log.info("keeping_root", reasons=self.root_reasons)
            return
        keep = sorted(set().union(*self.kept_capabilities.values()))
        try:
            uid, gid = drop_privileges(self.user, keep)
        except PrivilegeError as exc:
            self.log.error("drop_privileges_failed", user=self.user, error=str(exc))
            self.health.count("faults.drop_privileges")
            return
        self.log.info("dropped_privileges", user=self.user, uid=uid, gid=gid,
                      capabilities=keep, reasons=sorted(self.kept_capabilities))

    def stop(self) -> None:
        """Final hooks, then flush the pending datagram and close the sockets."""
        if self._sockets is not None:
            self._sockets.stats.push(self.count)  # the last counts, for the final status
        self.host.hook.sflow_final(agent=self)
        if self._sockets is not None:
            self._sockets.close()
        for _, sample in list(self._held):
            sample._force_release()
        self._held.clear()
        self.exporter.flush()
        for fd in list(self._readers):
            self.remove_reader(fd)
        if self._links is not None:
            self._links.close()
            self._links = None
        self.sink.close()
        self._update_health()

    def reload(self, new_config: Any) -> None:
        """Install a new validated config (SIGHUP) without losing samples in flight."""
        old = self.config
        self.exporter.flush()
        self.config = new_config
        if _collector_list(old) != _collector_list(new_config) and isinstance(self.sink, UdpSender):
            self._update_health()
            self._sink_base = (self.health.counters["datagrams_delivered"],
                               self.health.counters["dropped.undelivered"],
                               self.exporter.datagrams)
            self.sink.close()
            self.sink = self._udp_sender()
            self.exporter.sink = self.sink
        self.exporter.max_bytes = new_config.datagram_bytes
        self.exporter.sub_agent_id = new_config.sub_agent_id
        if old.polling != new_config.polling:
            # new random phases; the sequence numbers run on (a reset would look like a
            # restarted agent to the collectors)
            for poller in self._pollers.values():
                poller.countdown = self.rng.randint(1, max(1, new_config.polling))
        self.host.hook.sflow_config_changed(agent=self, old=old, new=new_config)
        self._update_address()
        self.log.info("config_reloaded")

    # ------------------------------------------------------------ the 1 Hz cycle

    def second(self) -> None:
        """One second of agent time: tick, interface refresh, polling, tock, flush."""
        now = self.clock()
        self.seconds += 1
        self.host.hook.sflow_tick(agent=self, now=now)
        if self._sockets is not None:
            self._sockets.tick(now)
        if self._links is not None or self.seconds % INTERFACE_SCAN_SECONDS == 0:
            self.refresh_interfaces()
        self.expire_holds(now)
        self.poll_counters()
        self.host.hook.sflow_tock(agent=self, now=now)
        self.exporter.flush()
        self._update_health()
        if self.health_log_seconds > 0 and self.seconds % self.health_log_seconds == 0:
            self.log.info("health", **self.health.summary())

    def refresh_interfaces(self) -> None:
        """Rescan interfaces when the kernel said something changed (rtnetlink), or, without
        that, when the cheap /sys fingerprint changed; and every ``refresh_adaptors`` seconds
        for what neither shows."""
        due = self.seconds % max(1, self.config.refresh_adaptors) == 0
        if self._links is not None:
            if not self._links.take() and not due:
                return
        else:
            mark = interfaces_fingerprint()
            if mark == self._if_mark and not due:
                return
            self._if_mark = mark
        table = self.scan()
        if self.interfaces.diff(table):
            self.interfaces = table
            self.interfaces_version += 1
            self._update_address()

    def _watch_links(self) -> None:
        try:
            self._links = LinkWatch()
        except OSError as exc:  # no rtnetlink here: fall back to the /sys fingerprint
            self.log.info("link_watch_unavailable", error=str(exc))
            self._links = None
            return
        self.add_reader(self._links.fileno(), self._links.drain)

    def poll_counters(self, force: bool = False) -> None:
        """Poll every data source whose countdown reached zero (all of them if ``force``)."""
        interval = self.config.polling
        if interval <= 0 and not force:
            return
        results = self.host.hook.sflow_data_sources(agent=self)
        key = tuple(tuple(r) if r else () for r in results)
        if key != self._sources_key:
            self._sources_key = key
            self._update_pollers(key, interval)
        for poller in self._poll_list:
            poller.countdown -= 1
            if poller.countdown <= 0 or force:
                poller.countdown = max(1, interval)
                self.poll_source(poller)

    def _update_pollers(self, results: tuple[tuple[DataSource, ...], ...], interval: int) -> None:
        """Reconcile the pollers with the data sources the modules name (only when the
        answer changed): new sources get a random phase, gone ones are dropped, and the
        polling order is worked out once."""
        wanted: dict[DataSource, None] = {}
        for result in results:
            for ds in result:
                wanted.setdefault(ds)
        for ds in [d for d in self._pollers if d not in wanted]:
            del self._pollers[ds]
        for ds in wanted:
            if ds not in self._pollers:
                phase = self.rng.randint(1, max(1, interval))
                self._pollers[ds] = Poller(ds, phase)
        self._poll_list = [self._pollers[ds] for ds in sorted(self._pollers, key=_poll_order)]

    def poll_source(self, poller: Poller) -> None:
        records: list[Any] = []
        seen: dict[int, Any] = {}
        for result in reversed(self.host.hook.sflow_poll_counters(agent=self, source=poller.source)):
            for rec in result or ():
                tag = rec.tag()
                if tag in seen:
                    self.warn_once(
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

    # ------------------------------------------------------------ the packet path

    def take_samples(self, samples: Iterable[FlowSample]) -> None:
        """Hand the core a batch of sampled packets (called by capture modules per read batch)."""
        phase1, released = self._phase1, self._released
        if not phase1 and not self._phase2:
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
                        self._held.append((self.clock() + self.hold_timeout, s))
                        self._arm_hold_timer()
                        continue
                released(s)
        self.health.count("flow_samples_taken", n)

    def take_batch(self, batch: PacketBatch) -> None:
        """Hand the core the packets one capture read sampled on one data source (see
        :class:`~hostsflow.samples.PacketBatch`).  With no per-sample hook implemented, the
        batch is encoded in one pass without a FlowSample per packet; otherwise it becomes
        FlowSamples and goes through :meth:`take_samples`."""
        if self._phase1 or self._phase2:
            self.take_samples(batch.flow_samples())
            return
        seq = self._flow_seq[batch.source]
        try:
            encoded = encode_packet_batch(seq + 1, batch)
        except (struct.error, TypeError, ValueError):
            # a value out of range somewhere: one by one, so only the bad packet is lost
            self.health.count("flow_samples_taken", self._encode_all(batch.flow_samples()))
            return
        self._flow_seq[batch.source] = seq + len(encoded)
        self.exporter.add_all(encoded)
        self.health.count("flow_samples_taken", len(encoded))

    def _encode_all(self, samples: Iterable[FlowSample]) -> int:
        """The packet path when no module implements a per-sample hook: number, encode and
        queue every sample in one loop (no call per sample besides the encoder and the
        exporter, one sequence-number lookup per run of samples from one data source).
        Returns the number of samples."""
        add, seqs = self.exporter.add, self._flow_seq
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
        for fn in self._phase2:
            fn(s)
        seq = self._flow_seq[s.source] + 1
        try:
            encoded = encode_flow_sample(seq, s)
        except Exception as exc:  # noqa: BLE001 - a module's bad record loses one sample only
            self._unencodable(s, exc)
            return
        self._flow_seq[s.source] = seq
        self.exporter.add(encoded)

    def _unencodable(self, s: FlowSample, exc: Exception) -> None:
        self.health.count("dropped.unencodable")
        self.once.warn("encode_flow", "flow_sample_unencodable", error=repr(exc),
                       records=[type(r).__name__ for r in s.records])

    def expire_holds(self, now: float | None = None) -> None:
        """Release held samples whose deadline passed (the core's guarantee to capture modules)."""
        now = self.clock() if now is None else now
        held = self._held
        while held and (held[0][0] <= now or not held[0][1]._holds):
            _, sample = held.popleft()
            if sample._holds:
                late = sample._force_release()
                self.health.count("holds_timed_out")
                self.once.warn("hold_timeout", "sample_hold_timed_out", owners=late)

    def _arm_hold_timer(self) -> None:
        if self._hold_timer is None and self.loop is not None and self.loop.is_running():
            self._hold_timer = self.loop.call_later(HOLD_CHECK_SECONDS, self._hold_tick)

    def _hold_tick(self) -> None:
        self._hold_timer = None
        self.expire_holds()
        if self._held:
            self._arm_hold_timer()

    # ------------------------------------------------------------ internals

    def _update_health(self) -> None:
        """Refresh the derived health figures (once a second, cheap): flow samples sent,
        datagrams and their copies delivered or not, module errors."""
        h = self.health
        h.set("flow_samples_sent", sum(self._flow_seq.values()))
        h.set("datagrams", self.exporter.datagrams)
        delivered0, undelivered0, datagrams0 = self._sink_base
        sink = self.sink
        if isinstance(sink, UdpSender):
            sent = sink.sent
            copies = (self.exporter.datagrams - datagrams0) * len(sink.collectors)
            h.set("dropped.undelivered", undelivered0 + max(0, copies - sent))
        else:
            sent = len(getattr(sink, "datagrams", ())) or getattr(sink, "sent", 0)
        h.set("datagrams_delivered", delivered0 + sent)
        h.set("module_errors", sum(st.errors for st in self.host.states.values()))

    def _resolve_fast_path(self) -> None:
        self._phase1 = self.host.bound_impls("sflow_flow_sample", agent=self)
        self._phase2 = self.host.bound_impls("sflow_flow_sample_released", agent=self)

    def _guarded_reader(self, fd: int, callback: Callable[[], Any]) -> Callable[[], None]:
        def read() -> None:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a reader must never stop the loop
                self.health.count("reader_errors")
                self.once.warn(f"reader:{fd}", "reader_failed", fd=fd, error=repr(exc))

        return read

    def _udp_sender(self) -> UdpSender:
        return UdpSender(
            [Collector(c.ip, c.udpport, c.dev) for c in self.config.collectors], self.clock
        )

    def _elect_address(self, ask_modules: bool = True) -> str:
        """The agent address: ``sflow_agent_address`` (first result, once modules are
        configured), else the core's election (agentIP, agent, agent.cidr, hsflowd's
        priorities), else 127.0.0.1."""
        cfg = self.config
        cidrs = [str(c) for c in cfg.agent_cidr]
        chosen = elect_agent_address(
            self.interfaces, agent_ip=cfg.agent_ip, agent_dev=cfg.agent, cidrs=cidrs
        )
        ranked = [c.address for c in candidates(self.interfaces, cfg.agent, cidrs)]
        if chosen and chosen not in ranked:
            ranked.insert(0, chosen)  # agentIP: used as given
        hooked = (self.host.hook.sflow_agent_address(agent=self, candidates=ranked)
                  if ask_modules else None)
        address = hooked or chosen
        if not address:
            if ask_modules:  # before configure a module may still give one
                self.once.warn("agent_address", "no_agent_address", fallback="127.0.0.1")
            address = "127.0.0.1"
        return address

    def _update_address(self) -> None:
        address = self._elect_address()
        if address != self.address:
            self.log.info("agent_address_changed", old=self.address, new=address)
            self.address = address
            self.exporter.restart(address)

    # ------------------------------------------------------------ running

    async def run(self, reload: Callable[[], Any] | None = None) -> None:
        """Run until SIGTERM/SIGINT; SIGHUP calls ``reload()`` (which returns a new config or
        raises a config error that is logged while the old config stays in force)."""
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()

        def request_stop() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: self._try_reload(reload))
        self.start(loop)
        settle_gc()
        next_second = self.clock() + 1.0
        timer: asyncio.TimerHandle | None = None

        def tick() -> None:
            # One timer callback a second (no task, future or wait_for per second).
            nonlocal next_second, timer
            timer = None
            if stop.done():
                return
            try:
                self.second()
            except Exception as exc:  # the old loop let it end run(); so does this one
                stop.set_exception(exc)
                return
            next_second += 1.0
            if self.clock() - next_second > 5:  # the host was suspended: do not replay
                next_second = self.clock() + 1.0
            timer = loop.call_later(max(0.0, next_second - self.clock()), tick)

        timer = loop.call_later(max(0.0, next_second - self.clock()), tick)
        try:
            await stop
        finally:
            if timer is not None:
                timer.cancel()
            self.stop()
            self.log.info("stopped", **self.health.snapshot())

    def _try_reload(self, reload: Callable[[], Any]) -> None:
        try:
            new = reload()
        except Exception as exc:  # noqa: BLE001 - a bad config must not stop the agent
            self.log.error("reload_refused", error=str(exc))
            self.health.count("reloads_refused")
            return
        self.reload(new)


def settle_gc() -> None:
    """Once start-up is over: hide every object alive now (modules, config, modules, tables)
    from the cyclic garbage collector, and let it run less often.

    The packet path makes a few short-lived container objects per sample (FlowSample, its
    records list and stash, the sampled_header), freed by reference counting; with the default
    threshold a collection ran every ~100 samples and re-scanned the batch in flight and every
    long-lived object (about 15 % of the per-sample CPU, bench/RESULTS.md).  Cycles are still
    collected, just in larger steps."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _poll_order(ds: DataSource) -> tuple[int, int, int]:
    """Interfaces first (decoders that stop at host records, such as tshark, still read them),
    then the host, then virtual sources: gmond must see the host before its services."""
    rank = 0 if ds.ds_class == DS_IFINDEX else 1 if ds == HOST_SOURCE else 2
    return rank, ds.ds_class, ds.ds_index


def _collector_list(config: Any) -> list[tuple[Any, ...]]:
    return [(c.ip, c.udpport, c.dev) for c in config.collectors]


def recording_agent(config: Any, host: ModuleHost, **kw: Any) -> tuple[Agent, RecordingSink]:
    """An agent whose datagrams are kept in memory instead of sent (``--test``, testing kit)."""
    sink = RecordingSink()
    return Agent(config, host, sink=sink, **kw), sink
