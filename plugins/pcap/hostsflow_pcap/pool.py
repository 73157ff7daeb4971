"""The sample pool: how many packets the tapped interface really carried.

The kernel filter throws away the packets it does not sample, so the capture socket cannot
count them (test-facilities.md gotcha 4).  The pool comes from the interface's own packet
counters (received + sent), read once per read batch and once per tick, and each sample gets the
value interpolated at its capture time between two readings.  The pool only grows: a counter
that goes backwards (interface re-created, counters reset) restarts the delta from the new value.
"""

from __future__ import annotations

import os
import time
from typing import Callable


class PacketCounter:
    """Reads ``rx_packets + tx_packets`` of one interface (only ``rx_packets`` for a loopback
    device, which counts each packet in both, while the capture sees it once).

    Prefers the interface's sysfs files, kept open and re-read with ``pread``; uses
    ``/proc/self/net/dev`` when sysfs shows another network namespace than the one the agent
    runs in (sysfs belongs to the namespace it was mounted in; ``ip netns exec`` remounts it, a
    bare ``setns`` does not), detected by comparing sysfs's ifindex with the tap's.
    """

    def __init__(self, name: str, ifindex: int, loopback: bool = False) -> None:
        self.name = name
        self.ifindex = ifindex
        self.loopback = loopback
        self._fds: list[int] = []
        self._read: Callable[[], int | None] = self._read_procfs
        base = f"/sys/class/net/{name}"
        try:
            with open(f"{base}/ifindex", "rb") as f:
                sys_index = int(f.read())
            if sys_index == ifindex:
                self._fds = [
                    os.open(f"{base}/statistics/rx_packets", os.O_RDONLY),
                    os.open(f"{base}/statistics/tx_packets", os.O_RDONLY),
                ]
                self._read = self._read_sysfs
        except (OSError, ValueError):
            self.close()
            self._read = self._read_procfs
        self.source = "sysfs" if self._fds else "procfs"

    def read(self) -> int | None:
        """Packets received plus sent so far, or None if the interface cannot be read."""
        return self._read()

    def _read_sysfs(self) -> int | None:
        try:
            rx, tx = self._fds
            if self.loopback:
                return int(os.pread(rx, 32, 0))
            return int(os.pread(rx, 32, 0)) + int(os.pread(tx, 32, 0))
        except (OSError, ValueError):
            return None

    def _read_procfs(self) -> int | None:
        prefix = self.name + ":"
        try:
            with open("/proc/self/net/dev", "rb") as f:
                text = f.read().decode("ascii", "replace")
        except OSError:
            return None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith(prefix):
                fields = line[len(prefix) :].split()
                try:
                    return int(fields[1]) + (0 if self.loopback else int(fields[9]))
                except (IndexError, ValueError):
                    return None
        return None

    def close(self) -> None:
        """Close the sysfs files."""
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []


class SamplePool:
    """A monotonic packet pool fed by :class:`PacketCounter` readings.

    ``update(now)`` takes a reading; ``at(ts)`` gives the pool at a time between the previous
    reading and the last one (linear), which is what each sample of a batch gets.
    """

    __slots__ = ("counter", "total", "prev_total", "prev_time", "last_time", "_last_raw")

    def __init__(self, counter: PacketCounter, now: float | None = None) -> None:
        self.counter = counter
        self.total = 0
        self._last_raw = counter.read()
        t = time.time() if now is None else now
        self.prev_total = 0
        self.prev_time = t
        self.last_time = t

    def update(self, now: float | None = None) -> int:
        """Read the counters; the pool so far.  The previous reading becomes the start of the
        interpolation window."""
        raw = self.counter.read()
        t = time.time() if now is None else now
        self.prev_total, self.prev_time = self.total, self.last_time
        if raw is not None:
            last = self._last_raw
            if last is not None and raw >= last:
                self.total += raw - last
            self._last_raw = raw
        self.last_time = t
        return self.total

    def at(self, ts: float) -> int:
        """The pool at wall-clock time ``ts``, interpolated between the last two readings."""
        span = self.last_time - self.prev_time
        if span <= 0 or ts >= self.last_time:
            return self.total
        if ts <= self.prev_time:
            return self.prev_total
        return self.prev_total + int((self.total - self.prev_total) * (ts - self.prev_time) / span)

    def close(self) -> None:
        self.counter.close()
