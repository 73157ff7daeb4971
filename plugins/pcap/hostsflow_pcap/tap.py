"""One capture tap: a pcap handle on one interface with the kernel sampling filter attached.

The tap is opened with ``pcapy.create`` (snap length = ``headerBytes``, ring size, promiscuous
mode, block timeout), made non-blocking, and given the 1-in-N cBPF program on its descriptor.
The agent's loop watches the descriptor; on every wakeup :meth:`Tap.drain` empties the ring in
batches (``next_batch`` until a short read) and hands the sampled packets over as one
:class:`~hostsflow.samples.PacketBatch`.  Nothing here logs or calls hooks per packet.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import pcapy
from hostsflow.packet import ETH_HLEN
from hostsflow.samples import (
    DIRECTION_RECEIVED,
    DIRECTION_SENT,
    DIRECTION_UNKNOWN,
    DataSource,
    PacketBatch,
)
from hostsflow.sflow.records import (
    HEADER_ETHERNET,
    HEADER_IPV4,
    HEADER_IPV6,
    INTERNAL_IFINDEX,
)

from .bpf import attach_filter, drop_all_program, sampling_program
from .frames import ethernet_length, raw_ip_length
from .pool import PacketCounter, SamplePool

DLT_EN10MB = 1
DLT_RAW = 12  # pcap's LINKTYPE_RAW; libpcap may also report DLT_RAW (12 or 14)
DLT_RAW_ALT = 14
FCS = 4

#: packets per next_batch call; a shorter read means the ring is empty
BATCH = 1024
#: at most this many next_batch calls per wakeup (bounds memory and the time away from the
#: loop; the descriptor stays readable, so the loop calls again)
MAX_BATCHES = 8
#: the kernel retires a ring block at the latest this long after its first packet (ms)
DEFAULT_TIMEOUT_MS = 50
#: ring sizes when the config sets none: near every packet reaching user space (1 in fewer
#: than RING_RATE_THRESHOLD) needs room for ~50 ms at 300k samples/s; sparser sampling fills
#: the small ring about ten times more slowly for the same traffic
BIG_RING_BYTES = 4 << 20
SMALL_RING_BYTES = 1 << 20
RING_RATE_THRESHOLD = 10


def default_ring_bytes(rate: int) -> int:
    """The capture ring for a tap opened at 1-in-``rate`` (the ring is mapped, so it is
    resident memory: keep it small where the sample rate allows).  Chosen when the tap opens:
    a later change of rate re-attaches the filter on the same socket and ring, so that the
    sample pool and drop counts run on; re-opening would restart them."""
    return BIG_RING_BYTES if 0 < rate < RING_RATE_THRESHOLD else SMALL_RING_BYTES

_META = struct.Struct("=IIII")  # sec, usec, offset, caplen


class TapError(Exception):
    """The tap cannot be opened or has stopped working (e.g. its interface went away)."""


#: libpcap's negative status codes (pcap/pcap.h), as an operator would put them
_PCAP_ERRORS = {
    -1: "libpcap error",
    -3: "capture not activated (libpcap refused it: usually missing root or CAP_NET_RAW)",
    -4: "the device is already being captured with these settings",
    -5: "no such device",
    -7: "the device does not support monitor mode",
    -8: "permission denied: capturing needs root or CAP_NET_RAW",
    -9: "the device is not up",
    -11: "promiscuous mode not permitted",
}


def _activate_error(status: int) -> str:
    return _PCAP_ERRORS.get(status, f"libpcap status {status}")


class Tap:
    """A sampling capture on one interface (one ``pcap { }`` block matched to one device).

    :param name: device name.
    :param ifindex: its ifIndex (the sample's data source ``0:ifindex``).
    :param mac: its 6-byte MAC, used to tell sent from received frames (None: unknown).
    :param rate: 1-in-N; 0 opens the tap with a filter that keeps nothing.
    :param snaplen: bytes kept per sampled frame (``headerBytes``).
    :param buffer_bytes: capture ring size (None: :func:`default_ring_bytes` for ``rate``).
    :param loopback: the device is a loopback (libpcap shows each packet once, not twice).
    :param pool_start: the sample pool to count on from (a tap re-opened on the data source
        of one before it).
    """

    def __init__(
        self,
        name: str,
        ifindex: int,
        mac: bytes | None,
        rate: int,
        snaplen: int = 128,
        promisc: bool = False,
        buffer_bytes: int | None = None,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        loopback: bool = False,
        pool_start: int = 0,
    ) -> None:
        self.name = name
        self.ifindex = ifindex
        self.mac = bytes(mac) if mac else None
        self.rate = rate
        self.snaplen = snaplen
        self.promisc = promisc
        self.buffer = buffer_bytes  #: as configured (None: sized by the rate at open)
        self.loopback = loopback
        self.speed = 0
        self.source = DataSource(0, ifindex, name)
        self.samples = 0
        self._cap: Any = None
        self._fd = -1
        self._dlt = DLT_EN10MB
        self._last_drop = 0
        self.drops_total = 0
        self.new_drops = 0  #: ring drops the kernel reported since the previous batch
        self._pool: SamplePool | None = None
        #: the pool given to the last sample (a tap re-opened on the same data source starts
        #: where the previous one left off: the data source's sequence numbers run on)
        self._last_pool = pool_start
        self._last_time = time.time()  #: when the packet at ``_last_pool`` passed (about)
        self.ring_bytes = buffer_bytes or default_ring_bytes(rate)  #: the ring it opened with
        self._open(self.ring_bytes, timeout_ms)

    # ------------------------------------------------------------------ lifecycle

    def _open(self, buffer_bytes: int, timeout_ms: int) -> None:
        try:
            cap = pcapy.create(self.name)
            cap.set_snaplen(self.snaplen)
            cap.set_promisc(1 if self.promisc else 0)
            cap.set_timeout(timeout_ms)
            cap.set_buffer_size(buffer_bytes)
            status = cap.activate()
        except pcapy.PcapError as exc:
            raise TapError(f"{self.name}: {exc}") from exc
        self._cap = cap
        try:
            if isinstance(status, int) and status < 0:
                raise TapError(f"{self.name}: {_activate_error(status)}")
            dlt = cap.datalink()
            if dlt < 0:  # activation failed without saying so
                raise TapError(f"{self.name}: {_activate_error(dlt)}")
            if dlt not in (DLT_EN10MB, DLT_RAW, DLT_RAW_ALT):
                raise TapError(f"{self.name}: unsupported link type {dlt}")
            self._dlt = dlt
            cap.setnonblock(1)
            self._fd = cap.getfd()
            self._attach(self.rate)
            # Packets queued between activate() and the filter were not sampled: throw them
            # away, then start counting the pool and the drops from here.
            self._discard()
            self._last_drop = self._drops_now()
            self._pool = SamplePool(PacketCounter(self.name, self.ifindex, self.loopback),
                                    start=self._last_pool)
        except (pcapy.PcapError, OSError) as exc:
            self.close()
            raise TapError(f"{self.name}: {exc}") from exc
        except TapError:
            self.close()
            raise

    def fileno(self) -> int:
        """The capture descriptor to watch for readability."""
        return self._fd

    @property
    def counter_source(self) -> str:
        """Where the sample pool comes from ("sysfs" or "procfs")."""
        return self._pool.counter.source if self._pool else "none"

    def close(self) -> None:
        """Close the capture handle and the counter files (idempotent)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._cap is not None:
            try:
                self._cap.close()
            except (pcapy.PcapError, AttributeError):
                pass
            self._cap = None
        self._fd = -1

    @property
    def closed(self) -> bool:
        return self._cap is None

    # ------------------------------------------------------------------ rate

    def _attach(self, rate: int) -> None:
        prog = drop_all_program() if rate <= 0 else sampling_program(rate, self.snaplen)
        attach_filter(self._fd, prog)
        self.rate = rate

    def set_rate(self, rate: int) -> None:
        """Put a new 1-in-N program on the socket (replaces the old one).  Drain first so the
        frames sampled at the old rate are reported with it."""
        if rate != self.rate:
            try:
                self._attach(rate)
            except OSError as exc:
                raise TapError(f"{self.name}: {exc}") from exc

    # ------------------------------------------------------------------ reading

    def _drops_now(self) -> int:
        try:
            return int(self._cap.stats()[1])
        except (pcapy.PcapError, IndexError, TypeError):
            return self._last_drop

    def _discard(self) -> None:
        cap = self._cap
        while True:
            _, meta = cap.next_batch(BATCH)
            if len(meta) < BATCH * 16:
                return

    @property
    def last_pool(self) -> int:
        """The sample pool of the last sample taken (where a re-opened tap starts)."""
        return self._last_pool

    def tick(self) -> None:
        """Once a second: read the interface counters, so the interpolation window after an
        idle spell is short."""
        if self._pool is not None:
            self._pool.update()

    def drain(self) -> PacketBatch | None:
        """Read every sampled frame waiting in the ring; return them as one batch (None if
        the ring was empty).

        Raises :class:`TapError` if the capture failed (the interface went away)."""
        cap = self._cap
        if cap is None:
            return None
        chunks = []
        try:
            for _ in range(MAX_BATCHES):
                data, meta = cap.next_batch(BATCH)
                if not meta:
                    break
                chunks.append((data, meta))
                if len(meta) < BATCH * 16:
                    break
        except pcapy.PcapError as exc:
            raise TapError(f"{self.name}: {exc}") from exc
        if not chunks:
            return None
        return self._build(chunks)

    def _build(self, chunks: list[tuple[bytes, bytes]]) -> PacketBatch:
        """The batch for ``next_batch`` results: one packet tuple per frame (see
        :class:`~hostsflow.samples.PacketBatch`), with its sample pool, direction and frame
        length.  This loop runs for every sampled packet: plain tuples, locals only."""
        pool = self._pool
        assert pool is not None
        _, p1 = pool.update()
        now = time.time()
        k = 0
        for _, meta in chunks:
            k += len(meta) >> 4
        # sFlow's drops is the sampler's running total: add only the kernel's increase since
        # the last read (hsflowd adds the cumulative count again on every sample)
        drop_now = self._drops_now()
        self.new_drops = max(drop_now - self._last_drop, 0)
        self.drops_total += self.new_drops
        self._last_drop = drop_now
        # These k frames are a uniform random subset of the packets counted since the last
        # sample (pool ``base`` at ``self._last_time``), but only of those up to the last
        # frame: the reading also counts packets after it, whose sampled frames the ring has
        # not handed over yet.  So the batch covers n of the counted packets: the share that
        # passed by its last frame's time, and no more than k frames (plus the ring's drops)
        # can stand for at 1 in r: r per frame on average, three standard deviations above
        # (none at 1 in 1, where every packet is a frame).  The i-th frame sits on average at
        # packet i(n+1)/(k+1); the rest carries over to the next batch.  A pool never falls
        # behind the samples it holds: if the counters show fewer packets than frames (a
        # driver that updates its statistics late), each sample adds one.
        base = self._last_pool
        span = p1 - base
        since = self._last_time
        self._last_time = now
        if span > k:
            meta = chunks[-1][1]
            sec, usec = _META.unpack_from(meta, len(meta) - 16)[:2]
            last_time = sec + usec * 1e-6
            if 0.0 < last_time - since < now - since:
                span = int(span * (last_time - since) / (now - since))
                self._last_time = last_time
            rate = self.rate if self.rate > 0 else 1
            mean = (k + self.new_drops) * rate
            most = int(mean + 3.0 * math.sqrt(mean * (rate - 1)))
            if span > most:
                span = most
                self._last_time = last_time
            if span < k:
                span = k
        step = (span + 1) / (k + 1) if span >= k else 1.0
        rank = 0

        snaplen, mac, ifindex = self.snaplen, self.mac, self.ifindex
        packets: list[tuple[int, int, int, int, int, int, bytes, float]] = []
        append = packets.append
        iter_meta = _META.iter_unpack
        if self._dlt == DLT_EN10MB:
            stripped = FCS
            for data, meta in chunks:
                for sec, usec, off, caplen in iter_meta(meta):
                    pkt = data[off : off + caplen]
                    rank += 1
                    if caplen < snaplen:
                        flen = caplen + FCS
                    else:
                        flen = ethernet_length(pkt, caplen, snaplen) + FCS
                    if mac is not None and pkt[6:12] == mac:
                        append((base + int(rank * step), INTERNAL_IFINDEX, ifindex, DIRECTION_SENT,
                                HEADER_ETHERNET, flen, pkt, sec + usec * 1e-6))
                    else:
                        append((base + int(rank * step), ifindex, INTERNAL_IFINDEX,
                                DIRECTION_RECEIVED, HEADER_ETHERNET, flen, pkt, sec + usec * 1e-6))
        else:
            # hsflowd: a link without a MAC header counts 14 bytes of it as stripped
            stripped = FCS + ETH_HLEN
            for data, meta in chunks:
                for sec, usec, off, caplen in iter_meta(meta):
                    pkt = data[off : off + caplen]
                    if not pkt:
                        continue
                    version = pkt[0] >> 4
                    if version == 4:
                        proto = HEADER_IPV4
                    elif version == 6:
                        proto = HEADER_IPV6
                    else:
                        continue
                    rank += 1
                    flen = raw_ip_length(pkt, caplen, snaplen) + FCS + ETH_HLEN
                    append((base + int(rank * step), 0, 0, DIRECTION_UNKNOWN, proto, flen, pkt,
                            sec + usec * 1e-6))
        self.samples += len(packets)
        self._last_pool = base + int(rank * step)
        return PacketBatch(self.source, self.rate, self.drops_total & 0xFFFFFFFF, stripped,
                           packets)

    def stats(self) -> dict[str, int]:
        """Capture statistics for status output: kernel-accepted frames and ring drops."""
        if self._cap is None:
            return {"received": 0, "dropped": 0, "samples": self.samples}
        try:
            recv, drop, _ = self._cap.stats()
        except pcapy.PcapError:
            recv, drop = 0, self._last_drop
        return {"received": int(recv), "dropped": int(drop), "samples": self.samples}

    @staticmethod
    def now() -> float:
        """Wall-clock time, the clock of capture timestamps."""
        return time.time()
