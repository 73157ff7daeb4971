"""Turn NFLOG ``recv()`` buffers into flow samples.

Called on: the packet path, once per kernel batch read from the socket (and directly by the
tests with hand-built buffers).  Keeps the state that spans batches: the last NFULA_SEQ (gaps
are lost messages), the user-space sub-sampler and the per data source pools.
"""

from __future__ import annotations

import random

import attrs
from hostsflow.samples import FlowSample

from hostsflow.capture import Rates, Samplers, SubSampler, build_sampled_header, is_ethernet_header, placement
from .protocol import read_messages

ARPHRD_ETHER = 1
SEQ_MOD = 1 << 32


@attrs.define
class ReadStats:
    """Counts for one processed buffer (the plugin adds them to the agent's health counters)."""

    messages: int = 0
    malformed: int = 0
    first_error: str | None = None
    lost: int = 0
    no_source: int = 0
    not_ip: int = 0
    taken: int = 0


class NflogReader:
    """Stateful converter from NFLOG message buffers to :class:`FlowSample` lists.

    :param rates: the reconciled rates (kernel K, user-space sub, reported actual).
    :param header_bytes: the most header bytes to report (``headerBytes``).
    """

    def __init__(self, rates: Rates, header_bytes: int, netns: str | None = None,
                 rng: random.Random | None = None) -> None:
        self.samplers = Samplers()
        self.last_seq: int | None = None
        self.netns = netns
        self._rng = rng or random.Random()
        self.set_rates(rates, header_bytes)

    def set_rates(self, rates: Rates, header_bytes: int) -> None:
        """New rates or header size (config reload); pools and sequence state are kept."""
        self.rates = rates
        self.header_bytes = header_bytes
        self.sub = SubSampler(rates.sub, self._rng)

    def reset_sequence(self) -> None:
        """Forget the last sequence number (a fresh bind restarts the kernel's count at 0)."""
        self.last_seq = None

    def lost(self, n: int) -> None:
        self.samplers.lost(n)

    def process(self, data: bytes, stats: ReadStats | None = None) -> list[FlowSample]:
        """The flow samples taken from one buffer; bad messages are counted in ``stats``."""
        st = stats if stats is not None else ReadStats()
        res = read_messages(data)
        st.messages += len(res.packets)
        if res.malformed:
            st.malformed += res.malformed
            st.first_error = st.first_error or res.first_error
        out: list[FlowSample] = []
        samplers = self.samplers
        kernel, actual = self.rates.kernel, self.rates.actual
        take = self.sub.take
        last = self.last_seq
        for pkt in res.packets:
            seq = pkt.seq
            if seq is not None:
                if last is not None:
                    gap = (seq - last - 1) % SEQ_MOD
                    if 0 < gap < SEQ_MOD // 2:
                        samplers.lost(gap)
                        st.lost += gap
                last = seq
            where = placement(pkt.hook, pkt.physindev or pkt.indev,
                              pkt.physoutdev or pkt.outdev, pkt.family)
            if not where.source:
                st.no_source += 1
                continue
            samplers.seen(where.source, kernel)
            if not take():
                continue
            mac = pkt.hwheader
            if mac is not None and not (pkt.hwtype in (0, ARPHRD_ETHER)
                                        and is_ethernet_header(mac)):
                mac = None
            header = build_sampled_header(pkt.payload, mac, self.header_bytes)
            if header is None:
                st.not_ip += 1
                continue
            out.append(samplers.sample(where, actual, header, netns=self.netns))
        self.last_seq = last
        st.taken += len(out)
        return out
