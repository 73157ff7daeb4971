"""The agent: the parts of one running agent put together, what the modules may use of it
(:class:`~hostsflow.hookspecs.AgentAPI`, next to the hook specs), its lifecycle and one agent
second.

The jobs are in their own modules: :mod:`.flow_pipeline` (the packet path: phase 1, holds,
phase 2, encode), :mod:`.counter_polling` (which data sources are polled when),
:mod:`.host.refresh` and :mod:`.host.agent_address` (the interface table and the agent
address), :mod:`.delivery` (exporter, sink, delivery figures), :mod:`.privileges` (what the
modules keep when root is dropped) and :mod:`.run_loop` (the daemon's asyncio loop and
signals).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Callable

import structlog

from .counter_polling import CounterPolling
from .delivery import Delivery
from .dnssd import records as dns_records
from .flow_pipeline import FlowPipeline
from .health import Health
from .host import identity
from .host.agent_address import choose_agent_address, is_candidate
from .host.interfaces import Interface, InterfaceTable, scan_interfaces
from .host.refresh import InterfaceRefresh
from .host.sampling import sampling_rate_for
from .logsetup import OnceLog
from .modules import ModuleHost
from .privileges import Retention
from .sflow.exporter import RecordingSink, Sink

HEALTH_LOG_SECONDS = 300  # one "health" log line every five minutes
FALLBACK_ADDRESS = "127.0.0.1"  # when no interface has an address to elect
#: seconds an elected address that left every interface is kept before another is elected
ADDRESS_GRACE_SECONDS = 10


class Agent:
    """A running hostsflow agent.

    Build it with a validated config and a :class:`ModuleHost` holding the enabled modules
    (the CLI does this from the config file; the testing kit from an explicit list).  The
    modules get it as ``agent`` in every hook, and may use what
    :class:`~hostsflow.hookspecs.AgentAPI` lists."""

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
        uuid: bytes | None = None,
        machine_id: bytes | None = None,
    ) -> None:
        """:param user: drop root to this user after configure (None: never drop).
        :param uuid: the host UUID given on the command line (hsflowd's ``-u``): before the
            config's ``uuid`` and the system's.
        :param machine_id: the machine-id to derive the UUID from (hsflowd's ``-m``)."""
        self.file_config = config  #: the config file's settings (DNS-SD may override some)
        self.dnssd: Any = None  #: the DNS-SD client (started with the agent when configured)
        self.config = dns_records.apply(config, None)
        self.host = host
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = structlog.get_logger("hostsflow.agent")
        self.once = OnceLog(self.log)
        self.health = Health()
        self.health_log_seconds = HEALTH_LOG_SECONDS
        self.loop: asyncio.AbstractEventLoop | None = None
        self.user = user
        self.seconds = 0
        self._readers: set[int] = set()
        self._sockets: Any = None  # LocalSockets, made when a module first asks

        self.hostname = identity.hostname()
        self.uuid = uuid or identity.host_uuid(getattr(config.uuid, "bytes", config.uuid),
                                               machine_id=machine_id)
        self.retention = Retention()
        self.retain_root = self.retention.retain_root
        self.retain_capabilities = self.retention.retain_capabilities
        self.refresh = InterfaceRefresh(scan, self.log)
        # the core's election for now; the modules have their say once configured (start)
        self.address = self._elect_address(ask_modules=False)
        self._address_gone_since: int | None = None  #: agent second the address left
        self.delivery = Delivery(self.config, self.address, clock, sink)
        self.exporter = self.delivery.exporter
        self.polling = CounterPolling(host, self, self.exporter, self.health, self.once,
                                      self.rng)
        self.pipeline = FlowPipeline(self.exporter, self.health, self.once, clock)
        # the packet path, called by capture modules per read: the pipeline's own methods
        self.take_samples = self.pipeline.take_samples
        self.take_batch = self.pipeline.take_batch
        host.on_change = lambda: self.pipeline.bind(host, self)
        self.pipeline.bind(host, self)

    # ------------------------------------------------------------ what modules use

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

    @property
    def interfaces(self) -> InterfaceTable:
        """The interface table now (a new object whenever it changes)."""
        return self.refresh.table

    @property
    def interfaces_version(self) -> int:
        """Bumped whenever :attr:`interfaces` changes."""
        return self.refresh.version

    @property
    def hold_timeout(self) -> float:
        """Seconds a held sample may wait before the core releases it."""
        return self.pipeline.hold_timeout

    @hold_timeout.setter
    def hold_timeout(self, seconds: float) -> None:
        self.pipeline.hold_timeout = seconds

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

    # ------------------------------------------------------------ the core's own

    @property
    def sink(self) -> Sink:
        """Where datagrams go now (replaced when a reload changes the collectors)."""
        return self.delivery.sink

    @property
    def root_reasons(self) -> list[str]:
        return self.retention.root_reasons

    @property
    def kept_capabilities(self) -> dict[str, set[str]]:
        return self.retention.kept_capabilities

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
        """Configure the modules, elect the address, drop root, then start the modules
        inside ``loop``.

        :raises PrivilegeError: the drop to :attr:`user` failed (the agent must not run on)."""
        self.loop = self.pipeline.loop = loop or asyncio.get_event_loop()
        self.refresh.watch(self.add_reader)
        self.configure()
        self._update_address()
        self.retention.drop(self.user, self.config.drop_priv, self.log)
        self._start_dns_sd()
        self.host.hook.sflow_start(agent=self)
        self.log.info(
            "started", agent_address=self.address, modules=sorted(self.host.states),
            collectors=[f"{c.ip}:{c.udpport}" for c in self.config.collectors],
        )

    def stop(self) -> None:
        """Release held samples (while every module still runs), send what is pending, then
        the final hooks (the health figures they see, the status file's last, are the
        whole run's), flush what they added and close the sockets."""
        if self.dnssd is not None:
            self.dnssd.stop()
        self.pipeline.release_all()
        self.exporter.flush()
        if self._sockets is not None:
            self._sockets.stats.push(self.count)
        self._update_health()
        self.host.hook.sflow_final(agent=self)
        if self._sockets is not None:
            self._sockets.close()
        for fd in list(self._readers):
            self.remove_reader(fd)
        self.refresh.close()
        self.delivery.close()
        self._update_health()

    def reload(self, new_config: Any) -> None:
        """Install a new config file's validated settings (SIGHUP) without losing samples in
        flight; the DNS-SD answer in force stays on top of them unless DNS-SD changed."""
        old_dns = self.file_config.dns_sd
        self.file_config = new_config
        if new_config.dns_sd != old_dns:
            if self.dnssd is not None:
                self.dnssd.stop()
                self.dnssd = None
            if self.loop is not None:
                self._start_dns_sd()
        settings = self.dnssd.settings if self.dnssd is not None else None
        self._install(dns_records.apply(new_config, settings))
        self.log.info("config_reloaded")

    def apply_dns_sd(self, settings: Any) -> None:
        """Install a new DNS-SD answer's settings, as a reload does."""
        self._install(dns_records.apply(self.file_config, settings))
        self.log.info("dns_sd_applied", name=settings.name, ttl=settings.ttl,
                      collectors=[f"{c.ip}:{c.udpport}" for c in settings.collectors],
                      settings=sorted(k for k in settings.sources if k != "collector"))

    def setting_origins(self) -> dict[str, dict[str, Any]]:
        """Where each setting DNS-SD may set comes from now (file, DNS with its TTL,
        default)."""
        from .dnssd.origins import origins

        settings = self.dnssd.settings if self.dnssd is not None else None
        return origins(self.config, self.file_config, settings)

    def _install(self, new_config: Any) -> None:
        """Put a config in force: collectors, datagram size, polling interval, the modules'
        ``sflow_config_changed``, the agent address.  The exporter goes on (no sequence
        restart) unless the agent address changes."""
        old = self.config
        self.delivery.reconfigure(old, new_config, self.health)
        self.config = new_config
        if old.polling != new_config.polling:
            self.polling.new_interval(new_config.polling)
        self.host.hook.sflow_config_changed(agent=self, old=old, new=new_config)
        self._update_address()

    def _start_dns_sd(self) -> None:
        cfg = self.file_config.dns_sd
        if cfg is None:
            return
        from .dnssd.client import DnsSd

        self.dnssd = DnsSd(cfg, self.apply_dns_sd, self.log, self.rng)
        assert self.loop is not None
        self.dnssd.start(self.loop)
        self.log.info("dns_sd_started", name=self.dnssd.name,
                      first_query_in=round(self.dnssd.next_query - time.time(), 1))

    # ------------------------------------------------------------ one agent second

    def second(self) -> None:
        """One second of agent time: tick, interface refresh, holds past their deadline,
        counter polling, tock, flush, health figures."""
        now = self.clock()
        self.seconds += 1
        self.host.hook.sflow_tick(agent=self, now=now)
        if self._sockets is not None:
            self._sockets.tick(now)
        if self.refresh.refresh(self.seconds, self.config.refresh_adaptors) or (
                self._address_gone_since is not None):
            self._update_address(refreshed=True)
        self.pipeline.expire_holds(now)
        self.poll_counters()
        self.host.hook.sflow_tock(agent=self, now=now)
        self.delivery.tick()
        self.exporter.flush()
        self._update_health()
        if self.health_log_seconds > 0 and self.seconds % self.health_log_seconds == 0:
            self.log.info("health", **self.health.summary())

    def poll_counters(self, force: bool = False) -> None:
        """Poll every data source whose countdown reached zero (all of them if ``force``)."""
        self.polling.poll(self.config.polling, force)

    # ------------------------------------------------------------ internals

    def _update_health(self) -> None:
        """Refresh the derived health figures (once a second, cheap): flow samples sent,
        datagrams and their copies delivered or not, module errors."""
        self.health.set("flow_samples_sent", self.pipeline.samples_sent)
        self.delivery.record(self.health)
        self.health.set("module_errors", sum(st.errors for st in self.host.states.values()))

    def _guarded_reader(self, fd: int, callback: Callable[[], Any]) -> Callable[[], None]:
        def read() -> None:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a reader must never stop the loop
                self.health.count("reader_errors")
                self.once.warn(f"reader:{fd}", "reader_failed", fd=fd, error=repr(exc))

        return read

    def _elect_address(self, ask_modules: bool = True) -> str:
        """The agent address: ``sflow_agent_address`` (first result, once modules are
        configured), else the core's election, else 127.0.0.1 (logged once)."""
        ask = ((lambda ranked: self.host.hook.sflow_agent_address(agent=self,
                                                                  candidates=ranked))
               if ask_modules else None)
        address = choose_agent_address(self.interfaces, self.config, ask)
        if address:
            return address
        if ask_modules:  # before configure a module may still give one
            self.once.warn("agent_address", "no_agent_address", fallback=FALLBACK_ADDRESS)
        return FALLBACK_ADDRESS

    def _update_address(self, refreshed: bool = False) -> None:
        """Elect again; a new address restarts the datagram sequence.  After an interface
        refresh (``refreshed``), an address that left every admin-up interface is kept for
        :data:`ADDRESS_GRACE_SECONDS` (an interface removed and re-added, or down and up, a
        DHCP renewal) rather than swapped for a worse one and back; a better one arriving
        while the elected one is still there wins at once."""
        address = self._elect_address()
        if address == self.address:
            self._address_gone_since = None
            return
        if (refreshed and self.address != FALLBACK_ADDRESS
                and not is_candidate(self.interfaces, self.config, self.address)):
            if self._address_gone_since is None:
                self._address_gone_since = self.seconds
                self.log.info("agent_address_gone", address=self.address, elected=address,
                              grace_seconds=ADDRESS_GRACE_SECONDS)
            if self.seconds - self._address_gone_since < ADDRESS_GRACE_SECONDS:
                return
        self._address_gone_since = None
        self.log.info("agent_address_changed", old=self.address, new=address)
        self.address = address
        self.exporter.restart(address)


def recording_agent(config: Any, host: ModuleHost, **kw: Any) -> tuple[Agent, RecordingSink]:
    """An agent whose datagrams are kept in memory instead of sent (``--test``, testing kit)."""
    sink = RecordingSink()
    return Agent(config, host, sink=sink, **kw), sink
