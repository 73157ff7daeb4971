"""Turn ULOG ``recv()`` buffers into flow samples.

Called on: the packet path, once per datagram read from the ULOG socket (and by the tests with
kernel-format byte fixtures).  ULOG names devices, so each name is looked up to an ifIndex.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hostsflow.firewall_log import LoggedPacketReader, Rates, ReadStats, is_ethernet_header, placement
from hostsflow.samples import FlowSample

from .protocol import read_messages

__all__ = ["UlogReader", "ReadStats"]

NFPROTO_IPV4 = 2


class UlogReader(LoggedPacketReader):
    """Stateful converter from ULOG buffers to :class:`FlowSample` lists.

    :param ifindex: device name -> ifIndex (0 if unknown).
    """

    def __init__(self, rates: Rates, header_bytes: int, ifindex: Callable[[str], int],
                 rng: random.Random | None = None) -> None:
        self.ifindex = ifindex
        super().__init__(rates, header_bytes, rng=rng)

    def process(self, data: bytes, stats: ReadStats | None = None) -> list[FlowSample]:
        res = read_messages(data)
        st = self.begin(stats, len(res.packets), res.malformed, res.first_error)
        out: list[FlowSample] = []
        lookup = self.ifindex
        for pkt in res.packets:
            indev = lookup(pkt.indev) if pkt.indev else 0
            outdev = lookup(pkt.outdev) if pkt.outdev else 0
            where = placement(pkt.hook, indev, outdev, NFPROTO_IPV4)
            mac = pkt.mac if is_ethernet_header(pkt.mac) else None
            self.offer(where, pkt.payload, mac, st, out)
        return out
