"""Turn ULOG ``recv()`` buffers into flow samples.

Called on: the packet path, once per datagram read from the ULOG socket (and by the tests with
kernel-format byte fixtures).  ULOG names devices, so each name is looked up to an ifIndex.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs
from hostsflow.samples import FlowSample

from hostsflow.capture import Rates, Samplers, SubSampler, build_sampled_header, is_ethernet_header, placement
from .protocol import read_messages

NFPROTO_IPV4 = 2


@attrs.define
class ReadStats:
    messages: int = 0
    malformed: int = 0
    first_error: str | None = None
    no_source: int = 0
    not_ip: int = 0
    taken: int = 0


class UlogReader:
    """Stateful converter from ULOG buffers to :class:`FlowSample` lists.

    :param ifindex: device name -> ifIndex (0 if unknown).
    """

    def __init__(self, rates: Rates, header_bytes: int, ifindex: Callable[[str], int],
                 rng: random.Random | None = None) -> None:
        self.samplers = Samplers()
        self.ifindex = ifindex
        self._rng = rng or random.Random()
        self.set_rates(rates, header_bytes)

    def set_rates(self, rates: Rates, header_bytes: int) -> None:
        self.rates = rates
        self.header_bytes = header_bytes
        self.sub = SubSampler(rates.sub, self._rng)

    def lost(self, n: int) -> None:
        self.samplers.lost(n)

    def process(self, data: bytes, stats: ReadStats | None = None) -> list[FlowSample]:
        st = stats if stats is not None else ReadStats()
        res = read_messages(data)
        st.messages += len(res.packets)
        if res.malformed:
            st.malformed += res.malformed
            st.first_error = st.first_error or res.first_error
        out: list[FlowSample] = []
        samplers, lookup = self.samplers, self.ifindex
        kernel, actual = self.rates.kernel, self.rates.actual
        for pkt in res.packets:
            indev = lookup(pkt.indev) if pkt.indev else 0
            outdev = lookup(pkt.outdev) if pkt.outdev else 0
            where = placement(pkt.hook, indev, outdev, NFPROTO_IPV4)
            if not where.source:
                st.no_source += 1
                continue
            samplers.seen(where.source, kernel)
            if not self.sub.take():
                continue
            mac = pkt.mac if is_ethernet_header(pkt.mac) else None
            header = build_sampled_header(pkt.payload, mac, self.header_bytes)
            if header is None:
                st.not_ip += 1
                continue
            out.append(samplers.sample(where, actual, header))
        st.taken += len(out)
        return out
