"""The sample pool: how many packets the tapped interface really carried.

The kernel filter throws away the packets it does not sample, so the capture socket cannot
count them.  The pool comes from the interface's own packet
counters (received + sent), read once per read batch and once per tick; the samples of a
batch are spread over the packets counted since the previous reading by their rank.  The pool
only grows: a counter that goes backwards (interface re-created, counters reset) restarts the
delta from the new value.
"""

from __future__ import annotations

import os
from collections.abc import Callable


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

    ``update()`` takes a reading and returns the pool before and after it.  The tap spreads
    the samples read in one batch over that interval by their rank: the kernel keeps a
    uniform random subset of the packets, so the i-th of k samples sits on average at
    ``i/(k+1)`` of the packets counted in the interval, however bursty the traffic was.
    """

    __slots__ = ("_last_raw", "counter", "prev_total", "total")

    def __init__(self, counter: PacketCounter, start: int = 0) -> None:
        self.counter = counter
        self.total = start  #: where a re-opened tap's data source left off
        self.prev_total = start
        self._last_raw = counter.read()

    def update(self) -> tuple[int, int]:
        """Read the counters; (pool at the previous reading, pool now)."""
        raw = self.counter.read()
        self.prev_total = self.total
        if raw is not None:
            last = self._last_raw
            if last is not None and raw >= last:
                self.total += raw - last
            self._last_raw = raw
        return self.prev_total, self.total

    def close(self) -> None:
        self.counter.close()
