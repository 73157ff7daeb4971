"""Turn NFLOG ``recv()`` buffers into flow samples.

Called on: the packet path, once per kernel batch read from the socket (and directly by the
tests with hand-built buffers).  Keeps the state that spans batches: the last NFULA_SEQ (gaps
are lost messages), the user-space sub-sampler and the per data source pools.
"""

from __future__ import annotations

from hostsflow.firewall_log import LoggedPacketReader, ReadStats, is_ethernet_header, placement
from hostsflow.samples import FlowSample

from .protocol import read_messages

__all__ = ["NflogReader", "ReadStats"]

ARPHRD_ETHER = 1
SEQ_MOD = 1 << 32


class NflogReader(LoggedPacketReader):
    """Stateful converter from NFLOG message buffers to :class:`FlowSample` lists; adds the
    NFULA_SEQ gap count (lost messages) to what :class:`LoggedPacketReader` does."""

    last_seq: int | None = None

    def reset_sequence(self) -> None:
        """Forget the last sequence number (a fresh bind restarts the kernel's count at 0)."""
        self.last_seq = None

    def process(self, data: bytes, stats: ReadStats | None = None) -> list[FlowSample]:
        """The flow samples taken from one buffer; bad messages are counted in ``stats``."""
        res = read_messages(data)
        st = self.begin(stats, len(res.packets), res.malformed, res.first_error)
        out: list[FlowSample] = []
        last = self.last_seq
        for pkt in res.packets:
            seq = pkt.seq
            if seq is not None:
                if last is not None:
                    gap = (seq - last - 1) % SEQ_MOD
                    if 0 < gap < SEQ_MOD // 2:
                        self.samplers.lost(gap)
                        st.lost += gap
                last = seq
            where = placement(pkt.hook, pkt.physindev or pkt.indev,
                              pkt.physoutdev or pkt.outdev, pkt.family)
            mac = pkt.hwheader
            if mac is not None and not (pkt.hwtype in (0, ARPHRD_ETHER)
                                        and is_ethernet_header(mac)):
                mac = None
            self.offer(where, pkt.payload, mac, st, out)
        self.last_seq = last
        return out
