"""The hook specifications: the whole contract between the core and its modules.

Read top to bottom, this module is the agent's timeline:

1. **Declare** – ``sflow_declare_config``: each enabled module names its config block.
2. **Configure** – ``sflow_configure``: the config is valid; open privileged sockets now.
3. **Start** – ``sflow_start``: privileges are dropped; register file descriptors, start work.
4. **Every second** – ``sflow_tick``, then counter polling (``sflow_data_sources`` and
   ``sflow_poll_counters`` for each data source that is due), then ``sflow_tock``, then the
   core flushes the datagram.
5. **Per sampled packet** (never per captured packet) – a capture module hands the core a batch
   of :class:`~hostsflow.samples.FlowSample`; for each, ``sflow_flow_sample`` (may hold the
   sample), then once every hold is released or timed out ``sflow_flow_sample_released``, then
   the core encodes it.
6. **Reload** – ``sflow_config_changed`` after SIGHUP installed a new valid config.
7. **Stop** – ``sflow_final``.

Decisions (``sflow_sampling_rate``, ``sflow_agent_address``) are first-result hooks: the first
module that returns something other than None decides, and the core's own rule is the fallback.

Every implementation is called by the core with keyword arguments and may accept any subset of
them.  An implementation that raises is logged once (rate limited), counted, and after repeated
failures its module is quarantined; the other modules keep running.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

import pluggy

if TYPE_CHECKING:
    from .config.registry import ConfigRegistry
    from .config.schema import AgentConfig
    from .host.interfaces import Interface, InterfaceTable
    from .samples import DataSource, FlowSample, PacketBatch
    from .sflow.records import Record
    from .sockets import LocalSockets

PROJECT = "hostsflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------- the agent, as modules see it


class AgentAPI(Protocol):
    """What a module may use of the agent it gets as ``agent`` in every hook (the running
    :class:`hostsflow.agent.Agent` has more: its lifecycle, its second, its parts, which are
    the core's).  docs/plugins.md, "The Agent API", describes each member; a test keeps the
    two in step."""

    @property
    def config(self) -> "AgentConfig":
        """The validated config now in force."""

    def module_config(self, name: str) -> Any:
        """The module's block: an instance of its attrs class, a list for a repeatable block,
        or None when the file has none."""

    def logger(self, name: str) -> Any:
        """A structlog logger bound to ``module=name``."""

    def warn_once(self, key: str, event: str, **kw: Any) -> None:
        """Log ``event`` the first time ``key`` goes wrong, count every time."""

    def clear_warning(self, key: str) -> None:
        """The condition ``key`` is over."""

    def count(self, name: str, n: int = 1) -> None:
        """Bump a health counter."""

    @property
    def rng(self) -> random.Random:
        """The agent's random generator (seeded by the testing kit)."""

    def now(self) -> float:
        """The agent clock, monotonic seconds."""

    def add_reader(self, fd: int, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (from ``sflow_start`` on)."""

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``."""

    def call_later(self, delay: float, callback: Callable[[], Any]) -> Any:
        """A one-shot timer on the agent loop."""

    @property
    def interfaces(self) -> "InterfaceTable":
        """The interface table now (a new object whenever it changes)."""

    @property
    def interfaces_version(self) -> int:
        """Bumped whenever ``interfaces`` changes."""

    @property
    def sockets(self) -> "LocalSockets":
        """The local socket at each end of a sampled packet, and who owns it."""

    def sampling_rate(self, interface: "Interface") -> int:
        """1-in-N for an interface: a module's decision, else hsflowd's rule."""

    def take_samples(self, samples: Iterable["FlowSample"]) -> None:
        """Hand the core a batch of sampled packets (capture modules)."""

    def take_batch(self, batch: "PacketBatch") -> None:
        """Hand the core the sampled packets of one read on one data source."""

    @property
    def hold_timeout(self) -> float:
        """Seconds a held sample may wait before the core releases it."""

    def retain_capabilities(self, *capabilities: str, reason: str) -> None:
        """Keep these capabilities when the agent drops root (from ``sflow_configure``)."""

    def retain_root(self, reason: str) -> None:
        """Keep root after start-up (from ``sflow_configure``)."""

    @property
    def seconds(self) -> int:
        """Agent seconds run so far."""

    @property
    def hostname(self) -> str:
        """The host's name."""

    @property
    def uuid(self) -> bytes:
        """The host's 16-byte UUID."""

    @property
    def address(self) -> str:
        """The agent address written into every datagram."""


# ---------------------------------------------------------------- declare and configure


@hookspec
def sflow_declare_config(registry: "ConfigRegistry") -> None:
    """Declare the config block(s) this module reads.

    Called on: start-up, once per enabled module, before the config file is validated (and by
    ``hostsflow config`` to print an annotated sample).

    :param registry: call ``registry.block(name, cls, repeatable=False, help="...")`` with an
        attrs class whose fields have defaults and ``metadata={"help": ...}``
        (use :func:`hostsflow.config.option`).  ``name`` must be the module's entry-point name.
    :returns: nothing; results are ignored.  Every module's declarations are kept.
    """


@hookspec
def sflow_configure(agent: AgentAPI) -> None:
    """Set up with the validated config, before privileges are dropped.

    Called on: start-up, once, after the config is valid and interfaces are discovered; the
    agent is still root.  Open privileged sockets (pcap, netlink, D-Bus) here.  Read your block
    with ``agent.module_config("name")`` (a list for repeatable blocks).  Raising here disables
    this module only; the agent starts without it.

    :param agent: the running agent, as :class:`AgentAPI` describes it.
    :returns: nothing; results are ignored.
    """


@hookspec
def sflow_start(agent: AgentAPI) -> None:
    """Start work: register file descriptors, timers and asyncio tasks.

    Called on: start-up, once, after ``sflow_configure`` on every module and after privileges
    were dropped, inside the agent's asyncio loop.  Use ``agent.add_reader(fd, callback)`` for
    sockets the core should watch.

    :returns: nothing; results are ignored.
    """


@hookspec
def sflow_config_changed(agent: AgentAPI, old: "AgentConfig", new: "AgentConfig") -> None:
    """React to a reloaded config (SIGHUP, or a new DNS-SD answer).

    Called on: the poll path, after a new config file was read and validated and installed as
    ``agent.config``, or after a DNS-SD answer changed collectors or settings (the file's
    config with the answer's values on top).  A config with errors never gets here: the old one
    stays in force.  Sampling rates, polling interval, collectors and module blocks may all
    have changed.

    :param old: the config that was in force.
    :param new: the config now in force (also ``agent.config``).
    :returns: nothing; results are ignored.
    """


# ---------------------------------------------------------------- time


@hookspec
def sflow_tick(agent: AgentAPI, now: float) -> None:
    """Do once-a-second work: refresh state, expire caches, read drop counters.

    Called on: the poll path, once per second, before counter polling.  Must not block.

    :param now: the agent clock (monotonic seconds; driven by the testing kit in tests).
    :returns: nothing; results are ignored.
    """


@hookspec
def sflow_tock(agent: AgentAPI, now: float) -> None:
    """Finish the second: called after every tick handler and after this second's counter
    polling, just before the core flushes the pending datagram.

    Called on: the poll path, once per second.  Must not block.

    :returns: nothing; results are ignored.
    """


@hookspec
def sflow_final(agent: AgentAPI) -> None:
    """Release resources: close sockets, unbind netlink groups, stop tasks.

    Called on: shutdown (SIGTERM), once, even if earlier hooks of this module failed; the core
    flushes the last datagram after it.

    :returns: nothing; results are ignored.
    """


# ---------------------------------------------------------------- counters (poll path)


@hookspec
def sflow_data_sources(agent: AgentAPI) -> "list[DataSource] | None":
    """Name the data sources this module wants polled for counters.

    Called on: the poll path, once per second before polling.  The core keeps one poller per
    data source, polls it every ``polling`` seconds with a random phase (as hsflowd does), and
    forgets a source as soon as no module names it any more.  The core's host poller returns
    ``2:1`` (the host) and ``0:ifIndex`` for sampled interfaces.

    :returns: a list of :class:`~hostsflow.samples.DataSource`, or None.  The lists of all
        modules are concatenated and de-duplicated by ``ds_class:ds_index``.
    """


@hookspec
def sflow_poll_counters(agent: AgentAPI, source: "DataSource") -> "list[Record] | None":
    """Return counter records for one data source that is due for polling.

    Called on: the poll path, for every due data source, with every module: return records only
    for sources you know (e.g. the systemd module adds ``virt_node`` 2100 to ``2:1`` and all the
    records of its own ``3:*`` sources).

    :param source: the data source being polled.
    :returns: a list of counter records, or None.  The lists of all modules are concatenated
        into one counter sample; when two modules return the same record format for the same
        source the first is kept and the second is dropped with a warning.
    """


# ---------------------------------------------------------------- flow samples (packet path)


@hookspec
def sflow_flow_sample(agent: AgentAPI, sample: "FlowSample") -> None:
    """Enrich a sampled packet (phase 1).

    Called on: the packet path, once per *sampled* packet, in the order the capture module
    handed the batch over.  Must not block.  You may ``sample.add(record)``, put values in
    ``sample.stash`` (well-known keys in :mod:`hostsflow.samples`), or take
    ``hold = sample.hold("name")`` for an asynchronous lookup and call ``hold.release()`` when it
    is done; the core releases it anyway after ``agent.hold_timeout`` seconds (default 0.4).

    :returns: nothing; results are ignored.  Every module sees every sample.
    """


@hookspec
def sflow_flow_sample_released(agent: AgentAPI, sample: "FlowSample") -> None:
    """Add records that depend on phase-1 results (phase 2).

    Called on: the packet path, once per sampled packet, after every hold on it was released or
    timed out, just before the core encodes it.  Must not block and cannot hold.  Example: the
    systemd module reads the socket cgroup id that the tcp module put in the stash.

    :returns: nothing; results are ignored.
    """


# ---------------------------------------------------------------- decisions (first result)


@hookspec(firstresult=True)
def sflow_sampling_rate(agent: AgentAPI, interface: "Interface") -> "int | None":
    """Decide the 1-in-N sampling rate for an interface.

    Called on: the poll path, when a capture module asks ``agent.sampling_rate(interface)`` (at
    tap open and whenever the interface's speed changes).

    :returns: N (0 = do not sample), or None to leave the decision to the next module and finally
        to the core's hsflowd rule (``sampling.<speed>``, ``sampling.bps_ratio``, speed/1e6 with a
        floor of 100, then ``sampling``).  First non-None result wins.
    """


@hookspec(firstresult=True)
def sflow_agent_address(agent: AgentAPI, candidates: "list[Any]") -> "str | None":
    """Choose the agent address written into every datagram.

    Called on: start-up, after ``sflow_configure`` ran on every module (so a module can answer
    from its config); after a reload, once ``sflow_config_changed`` ran; and on the poll path
    whenever the interfaces change.

    :param candidates: the local addresses, best first by the core's election (``agent``,
        ``agent.cidr``, then hsflowd's priorities).
    :returns: an address string, or None to keep the core's choice.  First non-None result wins.
    """
