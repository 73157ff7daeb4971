"""Helpers for the capture modules whose packets a firewall rule logs, already sampled by the
kernel (NFLOG, ULOG, and third-party ones): from a readable log socket to the
:class:`~hostsflow.samples.FlowSample` batch the core takes.

* :func:`rule_probability` -- the ``probability`` option of such a module's block (the rule's
  1-in-K, above 0);
* :func:`reconcile_rate` -- hsflowd's rule (``setSamplingRate``) for the user-space
  sub-sampling rate and the rate reported to collectors, when a rule samples 1 in K;
* :class:`SubSampler` -- the random 1-in-``sub`` skip applied on top of the kernel's sampling;
* :func:`build_sampled_header` -- the sampled_header record from an L3 payload and an optional
  link-layer header (frame length rebuilt from the IP length);
* :func:`placement` -- direction, input/output ifIndex and data source from a netfilter hook;
* :class:`Samplers` -- per data source sample pool and drop totals, and the FlowSample itself;
* :class:`ReadResult` -- what a module's parser found in one ``recv()`` buffer;
* :class:`LoggedPacketReader` -- what a reader of logged packets does with each one (pool,
  sub-sampling, header record, sample), so a module only parses its own messages;
* :class:`FirewallLogModule` -- the module's block, logger and rates, for its hooks;
* :class:`WatchedSocket` -- the log socket and its registration with the agent loop;
* :func:`drain_log_socket` -- one wakeup of the log socket: read, hand the samples over in one
  batch, count what happened under the module's name.
"""

from __future__ import annotations

import errno
import math
import random
from collections.abc import Callable
from typing import Any

import attrs
from hostsflow.config import option, real
from hostsflow.hookspecs import AgentAPI, hookimpl
from hostsflow.packet import ip_length
from hostsflow.samples import (
    DIRECTION_RECEIVED,
    DIRECTION_SENT,
    DS_IFINDEX,
    DataSource,
    FlowSample,
)
from hostsflow.sflow.records import (
    HEADER_ETHERNET,
    HEADER_IPV4,
    HEADER_IPV6,
    INTERNAL_IFINDEX,
    SampledHeader,
)

FCS_BYTES = 4

#: ``recv()`` calls per wakeup at most, so one busy socket cannot hold the loop
MAX_RECVS_PER_WAKEUP = 64

# ---------------------------------------------------------------- sampling rate


def _above_zero(_inst: Any, _attr: Any, value: float) -> None:
    if value <= 0.0:
        raise ValueError("probability must be above 0 (the rule logs 1 in 1/probability)")


def rule_probability(help: str) -> Any:
    """The ``probability`` option of a firewall-log module's block: the probability with
    which the rule logs a packet, in (0, 1], default 1 (every packet)."""
    return option(1.0, help=help, converter=real(0.0, 1.0), validator=_above_zero)


@attrs.frozen
class Rates:
    """``kernel`` = K (the rule logs 1 in K), ``sub`` = user-space 1-in-sub (0 = off),
    ``actual`` = sub x K, the rate reported in every sample."""

    kernel: int
    sub: int
    actual: int


def kernel_rate(probability: float) -> int:
    """K = (u32)(1/probability) as hsflowd computes it (truncation), after absorbing float
    noise (1/0.1 must be 10, not 9); probability 0 or >= 1 gives 1."""
    if probability <= 0.0 or probability >= 1.0:
        return 1
    return max(1, int(1.0 / probability + 1e-9))


def reconcile_rate(sampling: int, probability: float) -> Rates:
    """hsflowd ``setSamplingRate``: with K = 1/probability > 1, sub = ceil(S / K) and
    actual = sub x K (S=400,K=400 -> 1,400; S=1000,K=400 -> 3,1200; S=10,K=400 -> 1,400);
    without a probability the kernel is assumed to log every packet: sub = actual = S.
    S = 0 turns sampling off (sub 0)."""
    k = kernel_rate(probability)
    if sampling <= 0:
        return Rates(k, 0, 0)
    sub = math.ceil(sampling / k) if k > 1 else sampling
    return Rates(k, sub, sub * k)


class SubSampler:
    """Take 1 in ``sub`` messages at random: the skip to the next taken one is uniform in
    [1, 2*sub-1] (mean ``sub``), as hsflowd and the sFlow reference sampler do.
    ``sub`` 1 takes everything; 0 takes nothing."""

    __slots__ = ("_rng", "skip", "sub")

    def __init__(self, sub: int, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.sub = sub
        self.skip = self._next()

    def _next(self) -> int:
        return self._rng.randint(1, 2 * self.sub - 1) if self.sub > 1 else 1

    def take(self) -> bool:
        if self.sub <= 1:
            return self.sub == 1
        self.skip -= 1
        if self.skip > 0:
            return False
        self.skip = self._next()
        return True


# ---------------------------------------------------------------- header record


def build_sampled_header(l3: bytes, mac_header: bytes | None,
                         header_bytes: int) -> SampledHeader | None:
    """The sampled_header record for a packet logged from its L3 header on.

    With an Ethernet ``mac_header`` (14 bytes, more with an inline VLAN tag): protocol 1, the
    header is MAC header + payload cut to ``header_bytes``, frame_length = original L3 length +
    MAC header + 4 (FCS), stripped = 4.  Without one: protocol 11 (IPv4) or 12 (IPv6), the
    header is the IP packet cut to ``header_bytes``, frame_length = the IP length, stripped 0.
    The original L3 length comes from the IP header (the kernel copied at most the snap
    length); a non-IP payload behind a MAC header counts as captured.  None: neither IP nor
    Ethernet, nothing sensible to report."""
    version = l3[0] >> 4 if l3 else 0
    if version == 4 and len(l3) >= 20:
        protocol: int | None = HEADER_IPV4
    elif version == 6 and len(l3) >= 40:
        protocol = HEADER_IPV6
    else:
        protocol = None  # not IP, or too short to say
    # a zero length field (IPv6 jumbogram, BIG TCP) or one shorter than what was captured
    # falls back to the captured length
    l3_len = max(ip_length(l3), len(l3)) if protocol is not None else len(l3)
    if mac_header:
        return SampledHeader(
            protocol=HEADER_ETHERNET,
            frame_length=len(mac_header) + l3_len + FCS_BYTES,
            stripped=FCS_BYTES,
            header=(mac_header + l3[: max(0, header_bytes - len(mac_header))])[:header_bytes],
        )
    if protocol is None:
        return None
    return SampledHeader(protocol=protocol, frame_length=l3_len, stripped=0,
                         header=l3[:header_bytes])


def is_ethernet_header(mac: bytes | None) -> bool:
    """A usable Ethernet header: at least 14 bytes and not all-zero addresses (the loopback
    device hands out a zero 14-byte header; hsflowd treats that as no MAC header too)."""
    return mac is not None and len(mac) >= 14 and any(mac[:12])


# ---------------------------------------------------------------- direction and interfaces

# netfilter hooks (NF_INET_*; NF_BR_* use the same numbers)
HOOK_PRE_ROUTING, HOOK_LOCAL_IN, HOOK_FORWARD, HOOK_LOCAL_OUT, HOOK_POST_ROUTING = 0, 1, 2, 3, 4
NFPROTO_ARP, NFPROTO_NETDEV = 3, 5


@attrs.frozen
class Placement:
    """Where a logged packet was: direction, input and output ifIndex (0 unknown,
    0x3FFFFFFF this host) and the data source ifIndex (0 = none, sample discarded)."""

    direction: int
    input: int
    output: int
    source: int


def placement(hook: int, indev: int, outdev: int, family: int = 2) -> Placement:
    """Map a netfilter hook and the logged in/out devices to sFlow terms.

    Received (prerouting, input; netdev/arp ingress): data source = in device, input = in,
    output = out device if known, else this host (input hook) or unknown (prerouting: no
    routing decision yet).  Sent (output, postrouting; netdev/arp egress): data source = out
    device, output = out, input = in device for a forwarded packet, else this host.
    Forwarded: received on the in device, input = in, output = out.  Unlike hsflowd's
    "standalone host" model, input is never swapped with output."""
    if family == NFPROTO_NETDEV or family == NFPROTO_ARP:
        # netdev: 0 ingress, 1 egress; arp: 0 in, 1 out, 2 forward
        sent = hook == 1
        if family == NFPROTO_ARP and hook == 2:
            return Placement(DIRECTION_RECEIVED, indev, outdev, indev)
        if sent:
            return Placement(DIRECTION_SENT, indev or INTERNAL_IFINDEX, outdev, outdev)
        return Placement(DIRECTION_RECEIVED, indev, outdev or INTERNAL_IFINDEX, indev)
    if hook == HOOK_LOCAL_IN:
        return Placement(DIRECTION_RECEIVED, indev, outdev or INTERNAL_IFINDEX, indev)
    if hook == HOOK_PRE_ROUTING:
        return Placement(DIRECTION_RECEIVED, indev, outdev, indev)
    if hook == HOOK_FORWARD:
        return Placement(DIRECTION_RECEIVED, indev, outdev, indev)
    return Placement(DIRECTION_SENT, indev or INTERNAL_IFINDEX, outdev, outdev)


# ---------------------------------------------------------------- per data source state


class Samplers:
    """Sample pool and drop totals per data source, and the FlowSample factory.

    Pool: every logged message stands for K packets (the rule's 1-in-K), so each message,
    taken or skipped by the sub-sampler, adds K to its data source's pool; the expected pool
    per taken sample is therefore the reported rate (hsflowd adds the rate per taken sample,
    same mean, more noise).  Drops: lost messages cannot be tied to an interface, so they are
    added to the next sample's data source (the total over data sources is exact)."""

    def __init__(self) -> None:
        self.pools: dict[int, int] = {}
        self.drops: dict[int, int] = {}
        self.pending_drops = 0

    def seen(self, ifindex: int, kernel_rate: int) -> None:
        """A logged message for data source ``ifindex`` (before sub-sampling)."""
        self.pools[ifindex] = self.pools.get(ifindex, 0) + kernel_rate

    def lost(self, n: int) -> None:
        """``n`` logged messages never reached us (sequence gap, socket overrun)."""
        self.pending_drops += n

    def sample(self, where: Placement, rate: int, header: SampledHeader,
               timestamp: float = 0.0, netns: str | None = None) -> FlowSample:
        ifindex = where.source
        drops = self.drops.get(ifindex, 0) + self.pending_drops
        self.drops[ifindex] = drops
        self.pending_drops = 0
        return FlowSample(
            source=DataSource(DS_IFINDEX, ifindex),
            sampling_rate=rate,
            records=[header],
            sample_pool=self.pools.get(ifindex, 0) & 0xFFFFFFFF,
            drops=drops & 0xFFFFFFFF,
            input=where.input,
            output=where.output,
            direction=where.direction,
            timestamp=timestamp,
            netns=netns,
        )


# ---------------------------------------------------------------- readers of logged packets


@attrs.define(slots=True)
class ReadResult:
    """What a module's parser found in one ``recv()`` buffer: the logged packets (of the
    module's own class), the malformed messages (how many, and why the first one was) and
    the well-formed messages that are not packets (errors, done, config acks)."""

    packets: list[Any] = attrs.Factory(list)
    malformed: int = 0
    first_error: str | None = None
    other: int = 0

    def bad(self, why: str) -> None:
        """Count one malformed message (the reason of the first one is kept)."""
        self.malformed += 1
        if self.first_error is None:
            self.first_error = why


@attrs.define
class ReadStats:
    """Counts for one processed buffer (the module adds them to the agent's health counters)."""

    messages: int = 0
    malformed: int = 0
    first_error: str | None = None
    lost: int = 0
    no_source: int = 0
    not_ip: int = 0
    taken: int = 0


class LoggedPacketReader:
    """The part of an NFLOG or ULOG reader that does not depend on the message format.

    A subclass parses a buffer, calls :meth:`begin` with the parse result's counts, then
    :meth:`offer` for each logged packet with its placement, L3 payload and link header.

    :param rates: the reconciled rates (kernel K, user-space sub, reported actual).
    :param header_bytes: the most header bytes to report (``headerBytes``).
    """

    def __init__(self, rates: Rates, header_bytes: int, netns: str | None = None,
                 rng: random.Random | None = None) -> None:
        self.samplers = Samplers()
        self.netns = netns
        self._rng = rng or random.Random()
        self.set_rates(rates, header_bytes)

    def set_rates(self, rates: Rates, header_bytes: int) -> None:
        """New rates or header size (config reload); pools are kept."""
        self.rates = rates
        self.header_bytes = header_bytes
        self.sub = SubSampler(rates.sub, self._rng)

    def lost(self, n: int) -> None:
        """``n`` logged packets never reached us (socket overrun)."""
        self.samplers.lost(n)

    def process(self, data: bytes, stats: ReadStats | None = None) -> list[FlowSample]:
        """The flow samples taken from one ``recv()`` buffer: the module parses its messages,
        then calls :meth:`begin` and :meth:`offer`."""
        raise NotImplementedError

    @staticmethod
    def begin(stats: ReadStats | None, messages: int, malformed: int,
              first_error: str | None) -> ReadStats:
        st = stats if stats is not None else ReadStats()
        st.messages += messages
        if malformed:
            st.malformed += malformed
            st.first_error = st.first_error or first_error
        return st

    def offer(self, where: Placement, payload: bytes, mac: bytes | None, st: ReadStats,
              out: list[FlowSample]) -> None:
        """One logged packet: count it in its data source's pool, keep it if the sub-sampler
        takes it, and append its flow sample to ``out``."""
        if not where.source:
            st.no_source += 1
            return
        self.samplers.seen(where.source, self.rates.kernel)
        if not self.sub.take():
            return
        header = build_sampled_header(payload, mac, self.header_bytes)
        if header is None:
            st.not_ip += 1
            return
        out.append(self.samplers.sample(where, self.rates.actual, header, netns=self.netns))
        st.taken += 1


class FirewallLogModule:
    """What the hooks of a firewall-log module share: its block (``name``, ``config_class``,
    ``help``), its logger, and the rates its rule's probability and the agent's ``sampling``
    give.  A module subclasses it and adds its own socket and reader."""

    name: str
    config_class: type
    help: str
    cfg: Any = None
    log: Any = None

    @hookimpl
    def sflow_declare_config(self, registry: Any) -> None:
        registry.block(self.name, self.config_class, help=self.help)

    def configured_rates(self, agent: AgentAPI) -> Rates | None:
        """The start of ``sflow_configure``: the module's block (``cfg``), its logger
        (``log``) and the reconciled rates; None when the file has no block for it."""
        self.cfg = agent.module_config(self.name)
        if self.cfg is None:
            return None
        self.log = agent.logger(self.name)
        return reconcile_rate(agent.config.sampling, self.cfg.probability)


class WatchedSocket:
    """A firewall-log module's socket and its registration with the agent loop."""

    def __init__(self) -> None:
        self.sock: Any = None
        self.fd = -1

    def watch(self, agent: Any, on_readable: Callable[[], None]) -> None:
        """Have the loop call ``on_readable()`` when the socket is readable (once; nothing
        while there is no socket)."""
        if self.sock is not None and self.fd < 0:
            self.fd = self.sock.fileno()
            agent.add_reader(self.fd, on_readable)

    def close(self, agent: Any) -> None:
        """Stop watching the socket and close it (safe to call again)."""
        if self.fd >= 0:
            agent.remove_reader(self.fd)
            self.fd = -1
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def drain_log_socket(agent: Any, module: str, recv: Callable[[], bytes],
                     reader: LoggedPacketReader, *, overruns_lose: bool = False) -> None:
    """One wakeup of a firewall-log socket: read up to :data:`MAX_RECVS_PER_WAKEUP` buffers
    with ``recv`` (non-blocking), turn them into samples with ``reader.process(data,
    stats)``, hand the samples to the core in one batch and count what happened as health
    counters ``<module>.messages``, ``.overruns``, ``.lost``, ``.malformed``,
    ``.no_interface`` and ``.not_ip`` (overruns, malformed messages and receive errors are
    also logged once).

    :param overruns_lose: the protocol has no sequence numbers (ULOG), so each ENOBUFS counts
        as one lost message in the drops; with them (NFLOG) the loss shows up as a gap."""
    stats = ReadStats()
    samples: list[FlowSample] = []
    overruns = 0
    for _ in range(MAX_RECVS_PER_WAKEUP):
        try:
            data = recv()
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                overruns += 1
                continue
            agent.warn_once(f"{module}.recv", f"{module}_recv_failed", error=str(exc))
            break
        samples.extend(reader.process(data, stats))
    if overruns and overruns_lose:
        reader.lost(overruns)
    if samples:
        agent.take_samples(samples)
    if stats.messages:
        agent.count(f"{module}.messages", stats.messages)
    if overruns:
        agent.count(f"{module}.overruns", overruns)
        agent.warn_once(f"{module}.enobufs", f"{module}_socket_overrun",
                        hint="the agent did not keep up; lost messages are reported as drops")
    if stats.lost:
        agent.count(f"{module}.lost", stats.lost)
    if stats.malformed:
        agent.count(f"{module}.malformed", stats.malformed)
        agent.warn_once(f"{module}.malformed", f"{module}_malformed_message",
                        example=stats.first_error)
    if stats.no_source:
        agent.count(f"{module}.no_interface", stats.no_source)
    if stats.not_ip:
        agent.count(f"{module}.not_ip", stats.not_ip)
