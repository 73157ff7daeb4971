"""The pcap module's hooks: keep one sampling tap per selected device, feed the agent.

Every second (``sflow_tick``) the module compares the taps it has with what the ``pcap { }``
blocks select among ``agent.interfaces``: it opens taps on devices that appeared (or came
back), closes taps whose device went away or was re-created under a new ifIndex, and re-attaches
the kernel filter when a device's sampling rate changed (its speed changed, or a reload).  Each
tap's descriptor is watched by the agent's loop; a wakeup drains the ring and hands the whole
batch to ``agent.take_batch``.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import attrs
from hostsflow import AgentAPI, hookimpl
from hostsflow.privileges import has_capability

from .config import PcapConfig
from .tap import DEFAULT_TIMEOUT_MS, Tap, TapError

NAME = "pcap"
DEFAULT_HEADER_BYTES = 128


@attrs.define(slots=True, frozen=True)
class Want:
    """A tap the config asks for right now: device, ifIndex, MAC, rate and options."""

    name: str
    ifindex: int
    mac: bytes | None
    rate: int
    speed: int
    promisc: bool
    buffer: int | None  #: None: the tap sizes its ring by the sampling rate
    loopback: bool = False


class PcapModule:
    """hsflowd's mod_pcap: ``pcap { dev = eth0 }`` samples eth0 one packet in N, in the kernel."""

    def __init__(self) -> None:
        self.agent: Any = None  # the AgentAPI, from sflow_configure on
        self.log: Any = None
        self.taps: dict[str, Tap] = {}
        #: the last sample pool per ifIndex of a closed tap: a tap re-opened on that data
        #: source counts on from it, as its sequence numbers do
        self.pool_ends: dict[int, int] = {}
        self.started = False
        self.timeout_ms = DEFAULT_TIMEOUT_MS
        self.unprivileged = False  #: no CAP_NET_RAW: no tap can open, said once at configure
        self.missing: set[str] = set()  #: devices named with dev = that do not exist (logged)

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def sflow_declare_config(self, registry: Any) -> None:
        registry.block(
            NAME, PcapConfig, repeatable=True,
            help="sample packets on a device one in N at random (kernel filter + libpcap)",
        )

    @hookimpl
    def sflow_configure(self, agent: AgentAPI) -> None:
        self.agent = agent
        self.log = agent.logger(NAME)
        # Capture sockets need CAP_NET_RAW, also for devices that appear after start-up (as
        # nobody with only this capability libpcap opens, sets promiscuous mode and the ring).
        if not has_capability("CAP_NET_RAW"):
            # libpcap would fail on every device with an obscure status (lo: "unsupported link
            # type -3"): say what is missing, once, and stay out of the way
            self.unprivileged = True
            self.log.error("pcap_not_permitted", uid=os.geteuid(),
                           detail="capturing packets needs root or CAP_NET_RAW, which this "
                                  "agent does not have: the pcap module samples nothing "
                                  "(run hostsflowd as root, or give it CAP_NET_RAW)")
            agent.count("faults.pcap_not_permitted")
            return
        agent.retain_capabilities(
            "CAP_NET_RAW", reason="pcap: open taps on devices that appear or come back later")
        self.sync()

    @hookimpl
    def sflow_start(self, agent: AgentAPI) -> None:
        self.started = True
        for tap in self.taps.values():
            self._watch(tap)

    @hookimpl
    def sflow_tick(self, agent: AgentAPI, now: float) -> None:
        self.sync()
        for tap in self.taps.values():
            tap.tick()

    @hookimpl
    def sflow_config_changed(self, agent: AgentAPI, old: Any, new: Any) -> None:
        self.sync()

    @hookimpl
    def sflow_data_sources(self, agent: AgentAPI) -> list[Any]:
        # hsflowd forces an interface counter poller for every tapped device
        return [tap.source for tap in self.taps.values()]

    @hookimpl
    def sflow_final(self, agent: AgentAPI) -> None:
        for name in list(self.taps):
            self._close(name, "stopping")

    # ------------------------------------------------------------------ tap set

    def blocks(self) -> list[PcapConfig]:
        if self.agent is None:
            return []
        return list(self.agent.module_config(NAME) or ())  # repeatable: a list of blocks

    def wanted(self) -> dict[str, Want]:
        """The taps the config asks for among the devices present now (first block wins)."""
        agent = self.agent
        out: dict[str, Want] = {}
        present = {iface.name for iface in agent.interfaces}
        missing = {b.dev for b in self.blocks() if b.dev is not None and b.dev not in present}
        for dev in sorted(missing - self.missing):
            self.log.warning("pcap_device_missing", dev=dev,
                             detail="no such device (yet): tapped as soon as it appears")
        for dev in sorted(self.missing - missing):
            self.log.info("pcap_device_appeared", dev=dev)
        self.missing = missing
        for block in self.blocks():
            for iface in agent.interfaces:
                if iface.name in out or not block.selects(iface.name, iface.kind, iface.speed):
                    continue
                if block.sampling is not None:
                    rate = block.sampling
                elif iface.up:
                    rate = agent.sampling_rate(iface)
                else:
                    rate = 0  # down: nothing to sample; re-rated when it comes up
                mac = bytes(iface.mac) if iface.has_mac else None
                out[iface.name] = Want(
                    iface.name, iface.ifindex, mac, int(rate), iface.speed, block.promisc,
                    block.buffer, iface.loopback,
                )
        return out

    def sync(self) -> None:
        """Bring the open taps in line with the config and the interface table."""
        if self.agent is None or self.unprivileged:
            return
        wanted = self.wanted()
        for name, tap in list(self.taps.items()):
            want = wanted.get(name)
            if want is None:
                self._close(name, "device gone or no longer selected")
            elif want.ifindex != tap.ifindex or _current_ifindex(name) != tap.ifindex:
                self._close(name, "device gone or re-created")
            elif (want.promisc, want.buffer, want.mac) != (tap.promisc, tap.buffer, tap.mac):
                self._close(name, "tap options changed")
        for name, want in wanted.items():
            existing = self.taps.get(name)
            if existing is None:
                if _current_ifindex(name) != want.ifindex:
                    continue  # the table is stale: wait for the agent's next scan
                self._open(want)
            elif want.rate != existing.rate:
                self._rerate(existing, want)

    def _open(self, want: Want) -> None:
        agent = self.agent
        snaplen = int(getattr(agent.config, "header_bytes", DEFAULT_HEADER_BYTES))
        try:
            tap = Tap(
                want.name, want.ifindex, want.mac, want.rate, snaplen=snaplen,
                promisc=want.promisc, buffer_bytes=want.buffer, timeout_ms=self.timeout_ms,
                loopback=want.loopback, pool_start=self.pool_ends.get(want.ifindex, 0),
            )
        except TapError as exc:
            agent.warn_once(f"pcap_open:{want.name}", "pcap_open_failed", dev=want.name,
                            error=str(exc))
            return
        agent.clear_warning(f"pcap_open:{want.name}")
        tap.speed = want.speed
        self.taps[want.name] = tap
        agent.count("pcap.taps_opened")
        self.log.info("tap_opened", dev=want.name, ifindex=want.ifindex, sampling=want.rate,
                      snaplen=snaplen, promisc=want.promisc, pool=tap.counter_source)
        if self.started:
            self._watch(tap)

    def _rerate(self, tap: Tap, want: Want) -> None:
        self._read(tap)  # frames sampled at the old rate go out with it
        if tap.closed:
            return
        old = tap.rate
        try:
            tap.set_rate(want.rate)
        except TapError as exc:
            self.agent.warn_once(f"pcap_rate:{tap.name}", "pcap_rate_failed", dev=tap.name,
                                 error=str(exc))
            return
        tap.speed = want.speed
        self.log.info("tap_rate_changed", dev=tap.name, old=old, new=want.rate, speed=want.speed)

    def _close(self, name: str, reason: str) -> None:
        tap = self.taps.pop(name, None)
        if tap is None:
            return
        fd = tap.fileno()
        if fd >= 0 and self.started:
            self.agent.remove_reader(fd)
        tap.close()
        self.pool_ends[tap.ifindex] = tap.last_pool
        self.log.info("tap_closed", dev=name, ifindex=tap.ifindex, reason=reason,
                      samples=tap.samples)

    def _watch(self, tap: Tap) -> None:
        self.agent.add_reader(tap.fileno(), lambda: self._read(tap))

    # ------------------------------------------------------------------ packet path

    def _read(self, tap: Tap) -> None:
        """Reader callback: drain the tap's ring and hand the batch over."""
        try:
            batch = tap.drain()
        except TapError as exc:
            self.agent.warn_once(f"pcap_read:{tap.name}", "pcap_read_failed", dev=tap.name,
                                 error=str(exc))
            if self.taps.get(tap.name) is tap:
                self._close(tap.name, "read failed")
            return
        if batch:
            if tap.new_drops:
                self.agent.count("dropped.pcap_ring", tap.new_drops)
            self.agent.take_batch(batch)

    def status(self) -> dict[str, dict[str, int]]:
        """Per-tap figures: rate, ifIndex and the capture statistics."""
        return {name: {"rate": t.rate, "ifindex": t.ifindex, **t.stats()}
                for name, t in self.taps.items()}


def _current_ifindex(name: str) -> int:
    """The device's ifIndex in this network namespace now, 0 if it does not exist."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0
