"""Cgroup mounts and per-service accounting reads (cpu, memory, block I/O).

Read at each counter poll of a service (``getCounters_SYSTEMD`` in hsflowd).  Every reader
tries the cgroup v2 file first, then the cgroup v1 controller, then a sum over the service's
processes from /proc, and says which source it used (``source`` field) so the plugin can
report it once.  All reads are small sysfs/procfs files: they do not block.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import attrs

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "blkio", "systemd")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@attrs.define
class CgroupMounts:
    """Where the cgroup hierarchies are mounted: ``v2`` (cgroup2 root, or None) and ``v1``
    (controller name -> mount point; ``systemd`` for the ``name=systemd`` hierarchy)."""

    v2: Path | None = None
    v1: dict[str, Path] = attrs.Factory(dict)

    @property
    def mode(self) -> str:
        """``unified`` (pure v2), ``hybrid`` (v2 plus v1 controllers) or ``legacy`` (v1 only)."""
        if self.v2 is not None and not self.v1:
            return "unified"
        if self.v2 is not None:
            return "hybrid"
        return "legacy" if self.v1 else "none"

    @classmethod
    def parse(cls, text: str) -> "CgroupMounts":
        """Read /proc/self/mountinfo text.  The first mount of each kind wins (as the kernel
        lists the oldest first)."""
        mounts = cls()
        for line in text.splitlines():
            parts = line.split(" ")
            try:
                sep = parts.index("-")
            except ValueError:
                continue
            if sep < 6 or len(parts) < sep + 3:
                continue
            mnt = Path(_unescape(parts[4]))
            fstype, superopts = parts[sep + 1], parts[sep + 3] if len(parts) > sep + 3 else ""
            if fstype == "cgroup2":
                if mounts.v2 is None:
                    mounts.v2 = mnt
            elif fstype == "cgroup":
                for opt in superopts.split(","):
                    name = "systemd" if opt == "name=systemd" else opt
                    if name in V1_CONTROLLERS and name not in mounts.v1:
                        mounts.v1[name] = mnt
        return mounts

    @classmethod
    def read(cls, path: str = "/proc/self/mountinfo") -> "CgroupMounts":
        try:
            with open(path) as f:
                return cls.parse(f.read())
        except OSError:
            return cls()

    # ------------------------------------------------------------ paths for one cgroup

    def v2_dir(self, cgroup: str) -> Path | None:
        return self.v2 / cgroup.lstrip("/") if self.v2 is not None else None

    def v1_dir(self, controller: str, cgroup: str) -> Path | None:
        root = self.v1.get(controller)
        return root / cgroup.lstrip("/") if root is not None else None

    def cgroup_id(self, cgroup: str) -> int:
        """Inode of the cgroup2 directory (= INET_DIAG_CGROUP_ID of sockets its processes
        create); 0 without cgroup v2 or if the group is gone."""
        d = self.v2_dir(cgroup)
        if d is None:
            return 0
        try:
            return os.stat(d).st_ino
        except OSError:
            return 0

    def pids(self, cgroup: str) -> list[int] | None:
        """PIDs in the group (v2 cgroup.procs, else the v1 name=systemd one); None if the group
        does not exist in either hierarchy."""
        for d in (self.v2_dir(cgroup), self.v1_dir("systemd", cgroup)):
            if d is None:
                continue
            try:
                with open(d / "cgroup.procs") as f:
                    return [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
        return None


def read_keyed(path: Path | None) -> dict[str, int] | None:
    """``key value`` lines (cpu.stat, memory.stat, cpuacct.stat) -> dict; None if unreadable."""
    if path is None:
        return None
    try:
        with open(path) as f:
            out = {}
            for line in f:
                k, _, v = line.partition(" ")
                try:
                    out[k] = int(v)
                except ValueError:
                    continue
            return out
    except OSError:
        return None


def read_int(path: Path | None) -> int | None:
    """A file holding one integer (memory.current); None if missing or ``max``."""
    if path is None:
        return None
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def mem_total() -> int:
    """Host MemTotal in bytes (maxMemory when the group has no limit)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


# ---------------------------------------------------------------- per-process fallbacks


def proc_cpu_ticks(pid: int) -> int | None:
    """utime+stime+cutime+cstime (fields 14-17 of /proc/PID/stat) in USER_HZ ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        fields = data[data.rindex(")") + 2 :].split()
        return sum(int(x) for x in fields[11:15])
    except (OSError, ValueError, IndexError):
        return None


def proc_rss(pid: int) -> int | None:
    """Resident bytes from /proc/PID/statm."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def proc_io(pid: int) -> tuple[int, int, int, int] | None:
    """(syscr, read_bytes, syscw, write_bytes) from /proc/PID/io (root only)."""
    d = read_keyed_colon(f"/proc/{pid}/io")
    if d is None:
        return None
    return (d.get("syscr", 0), d.get("read_bytes", 0), d.get("syscw", 0), d.get("write_bytes", 0))


def read_keyed_colon(path: str) -> dict[str, int] | None:
    try:
        with open(path) as f:
            out = {}
            for line in f:
                k, _, v = line.partition(":")
                try:
                    out[k] = int(v)
                except ValueError:
                    continue
            return out
    except OSError:
        return None


class DeltaAccumulator:
    """Sum of per-process counters that never goes backwards when processes exit: each pid's
    growth since it was last seen is added to a running total (hsflowd's fallback)."""

    def __init__(self, width: int = 1) -> None:
        self.total = [0] * width
        self._last: dict[int, tuple[int, ...]] = {}

    def update(self, values: dict[int, tuple[int, ...]]) -> list[int]:
        for pid, vals in values.items():
            prev = self._last.get(pid)
            for i, v in enumerate(vals):
                base = prev[i] if prev is not None else 0
                if v >= base:
                    self.total[i] += v - base
            self._last[pid] = vals
        for pid in [p for p in self._last if p not in values]:
            del self._last[pid]
        return list(self.total)


# ---------------------------------------------------------------- the readings


@attrs.define
class Usage:
    """One poll's readings for a service and where each came from."""

    cpu_ms: int = 0
    cpu_source: str = "none"
    memory: int = 0
    max_memory: int = 0
    memory_source: str = "none"
    rd_req: int = 0
    rd_bytes: int = 0
    wr_req: int = 0
    wr_bytes: int = 0
    disk_source: str = "none"


class ServiceAccounting:
    """Reads one service's cgroup accounting with the v2 -> v1 -> /proc fallback chain.
    Keeps the per-process accumulators between polls."""

    def __init__(self, mounts: CgroupMounts, cgroup: str, allow_proc_io: bool = True) -> None:
        self.mounts = mounts
        self.cgroup = cgroup
        self.allow_proc_io = allow_proc_io
        self._cpu = DeltaAccumulator(1)
        self._io = DeltaAccumulator(4)

    def read(self, pids: Iterable[int], host_mem: int) -> Usage:
        pids = list(pids)
        u = Usage()
        self._read_cpu(u, pids)
        self._read_memory(u, pids, host_mem)
        self._read_disk(u, pids)
        return u

    def _read_cpu(self, u: Usage, pids: list[int]) -> None:
        m, cg = self.mounts, self.cgroup
        stat = read_keyed(m.v2_dir(cg) / "cpu.stat") if m.v2 is not None else None
        if stat and "usage_usec" in stat:
            u.cpu_ms, u.cpu_source = stat["usage_usec"] // 1000, "cgroup2 cpu.stat"
            return
        d = m.v1_dir("cpuacct", cg)
        if d is not None and d.is_dir():
            ns = read_int(d / "cpuacct.usage")
            if ns is not None:
                u.cpu_ms, u.cpu_source = ns // 1_000_000, "cgroup1 cpuacct.usage"
                return
            st = read_keyed(d / "cpuacct.stat")
            if st:
                ticks = st.get("user", 0) + st.get("system", 0)
                u.cpu_ms, u.cpu_source = ticks * 1000 // USER_HZ, "cgroup1 cpuacct.stat"
                return
        vals = {p: (t,) for p in pids if (t := proc_cpu_ticks(p)) is not None}
        (ticks,) = self._cpu.update(vals)
        u.cpu_ms, u.cpu_source = ticks * 1000 // USER_HZ, "/proc/PID/stat"

    def _read_memory(self, u: Usage, pids: list[int], host_mem: int) -> None:
        m, cg = self.mounts, self.cgroup
        u.max_memory = host_mem
        d2 = m.v2_dir(cg)
        cur = read_int(d2 / "memory.current") if d2 is not None else None
        if cur is not None:
            u.memory, u.memory_source = cur, "cgroup2 memory.current"
            limit = read_int(d2 / "memory.max") if d2 is not None else None
            if limit:
                u.max_memory = min(limit, host_mem) if host_mem else limit
            return
        d1 = m.v1_dir("memory", cg)
        if d1 is not None and cg.strip("/") and d1.is_dir():
            st = read_keyed(d1 / "memory.stat")
            if st is not None and "rss" in st:
                u.memory, u.memory_source = st["rss"], "cgroup1 memory.stat rss"
                limit = read_int(d1 / "memory.limit_in_bytes")
                if limit and (not host_mem or limit < host_mem):
                    u.max_memory = limit
                return
        u.memory = sum(r for p in pids if (r := proc_rss(p)) is not None)
        u.memory_source = "/proc/PID/statm"

    def _read_disk(self, u: Usage, pids: list[int]) -> None:
        m, cg = self.mounts, self.cgroup
        d2 = m.v2_dir(cg)
        if d2 is not None and (d2 / "io.stat").exists():
            try:
                with open(d2 / "io.stat") as f:
                    for line in f:
                        for kv in line.split()[1:]:
                            k, _, v = kv.partition("=")
                            if k == "rbytes":
                                u.rd_bytes += int(v)
                            elif k == "wbytes":
                                u.wr_bytes += int(v)
                            elif k == "rios":
                                u.rd_req += int(v)
                            elif k == "wios":
                                u.wr_req += int(v)
                u.disk_source = "cgroup2 io.stat"
                return
            except (OSError, ValueError):
                u.rd_bytes = u.wr_bytes = u.rd_req = u.wr_req = 0
        d1 = m.v1_dir("blkio", cg)
        if d1 is not None and cg.strip("/") and d1.is_dir():
            b = _blkio(d1 / "blkio.io_service_bytes_recursive")
            r = _blkio(d1 / "blkio.io_serviced_recursive")
            if b is not None and r is not None:
                u.rd_bytes, u.wr_bytes = b
                u.rd_req, u.wr_req = r
                u.disk_source = "cgroup1 blkio"
                return
        if not self.allow_proc_io:
            return
        vals = {p: v for p in pids if (v := proc_io(p)) is not None}
        u.rd_req, u.rd_bytes, u.wr_req, u.wr_bytes = self._io.update(vals)
        u.disk_source = "/proc/PID/io"


def _blkio(path: Path) -> tuple[int, int] | None:
    """Sum the ``<dev> Read|Write <n>`` lines of a blkio file."""
    try:
        rd = wr = 0
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[1] == "Read":
                    rd += int(parts[2])
                elif len(parts) == 3 and parts[1] == "Write":
                    wr += int(parts[2])
        return rd, wr
    except (OSError, ValueError):
        return None
