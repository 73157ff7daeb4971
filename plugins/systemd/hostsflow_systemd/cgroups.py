"""Cgroup mounts and per-service accounting reads (cpu, memory, block I/O).

Read at each counter poll of a service (``getCounters_SYSTEMD`` in hsflowd).  Every reader
tries the cgroup v2 file first, then the cgroup v1 controller, then a sum over the service's
processes from /proc, and says which source it used (``source`` field) so the plugin can
report it once.  All reads are small sysfs/procfs files: they do not block.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

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

    def v2_path(self, cgroup: str) -> str | None:
        """:meth:`v2_dir` as a plain string (the per-poll readers use strings, not Paths)."""
        return f"{self.v2}/{cgroup.strip('/')}" if self.v2 is not None else None

    def v1_path(self, controller: str, cgroup: str) -> str | None:
        """:meth:`v1_dir` as a plain string."""
        root = self.v1.get(controller)
        return f"{root}/{cgroup.strip('/')}" if root is not None else None

    def find_dirs(self, names: Iterable[str], depth: int = 5) -> list[str]:
        """The cgroup2 directories called one of ``names`` (slices such as ``system.slice``)
        down to ``depth`` levels below the root; the walk does not enter a match."""
        if self.v2 is None:
            return []
        wanted, found = set(names), []
        level = [str(self.v2)]
        for _ in range(depth):
            below = []
            for d in level:
                try:
                    entries = list(os.scandir(d))
                except OSError:
                    continue
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        (found if e.name in wanted else below).append(e.path)
            level = below
        return sorted(found)

    def cgroup_id(self, cgroup: str) -> int:
        """Inode of the cgroup2 directory (= INET_DIAG_CGROUP_ID of sockets its processes
        create); 0 without cgroup v2 or if the group is gone."""
        d = self.v2_path(cgroup)
        if d is None:
            return 0
        try:
            return os.stat(d).st_ino
        except OSError:
            return 0

    def procs_files(self, cgroup: str) -> tuple[str, ...]:
        """The cgroup.procs files :meth:`pids` tries, in order (v2, then v1 name=systemd)."""
        dirs = (self.v2_path(cgroup), self.v1_path("systemd", cgroup))
        return tuple(f"{d}/cgroup.procs" for d in dirs if d is not None)

    def pids(self, cgroup: str, files: tuple[str, ...] | None = None) -> list[int] | None:
        """PIDs in the group (v2 cgroup.procs, else the v1 name=systemd one); None if the group
        does not exist in either hierarchy.  ``files``: :meth:`procs_files` computed once."""
        for path in files if files is not None else self.procs_files(cgroup):
            data = read_bytes(path)
            if data is None:
                continue
            try:
                return [int(x) for x in data.split()]
            except ValueError:
                continue
        return None


def read_bytes(path: str | Path | None) -> bytes | None:
    """The whole of a small procfs/sysfs file, or None if it cannot be read.  os.open/os.read:
    no buffered file object per read (these files are read for every service at every poll)."""
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            if len(chunk) < 4096:  # procfs/sysfs hand a small file over in one read
                break
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def keyed_value(data: bytes, key: bytes, sep: bytes = b" ") -> int | None:
    """The integer after ``key`` + ``sep`` at the start of a line of ``data`` (a unit after it
    is ignored); None if absent or not an integer (picks one line out of memory.stat without parsing all of it)."""
    tag = key + sep
    if data.startswith(tag):
        i = len(tag)
    else:
        i = data.find(b"\n" + tag)
        if i < 0:
            return None
        i += len(tag) + 1
    j = data.find(b"\n", i)
    try:
        return int((data[i:] if j < 0 else data[i:j]).split(None, 1)[0])  # "16318432 kB"
    except (ValueError, IndexError):
        return None


def parse_keyed(data: bytes, sep: bytes = b" ") -> dict[str, int]:
    """``key<sep>value`` lines -> dict (lines whose value is not an integer are skipped)."""
    out = {}
    for line in data.split(b"\n"):
        k, _, v = line.partition(sep)
        try:
            out[k.decode()] = int(v)
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def read_keyed(path: str | Path | None) -> dict[str, int] | None:
    """``key value`` lines (cpu.stat, memory.stat, cpuacct.stat) -> dict; None if unreadable."""
    data = read_bytes(path)
    return parse_keyed(data) if data is not None else None


def read_int(path: str | Path | None) -> int | None:
    """A file holding one integer (memory.current); None if missing or ``max``."""
    data = read_bytes(path)
    if data is None:
        return None
    try:
        return int(data)
    except ValueError:
        return None


def mem_total() -> int:
    """Host MemTotal in bytes (maxMemory when the group has no limit)."""
    data = read_bytes("/proc/meminfo")
    if data is None:
        return 0
    kb = keyed_value(data, b"MemTotal:", b"")
    return kb * 1024 if kb is not None else 0


# ---------------------------------------------------------------- per-process fallbacks


def proc_cpu_ticks(pid: int) -> int | None:
    """utime+stime+cutime+cstime (fields 14-17 of /proc/PID/stat) in USER_HZ ticks."""
    data = read_bytes(f"/proc/{pid}/stat")
    if data is None:
        return None
    try:
        fields = data[data.rindex(b")") + 2 :].split()
        return sum(int(x) for x in fields[11:15])
    except (ValueError, IndexError):
        return None


def proc_rss(pid: int) -> int | None:
    """Resident bytes from /proc/PID/statm."""
    data = read_bytes(f"/proc/{pid}/statm")
    if data is None:
        return None
    try:
        return int(data.split()[1]) * PAGE_SIZE
    except (ValueError, IndexError):
        return None


def proc_io(pid: int) -> tuple[int, int, int, int] | None:
    """(syscr, read_bytes, syscw, write_bytes) from /proc/PID/io (root only)."""
    data = read_bytes(f"/proc/{pid}/io")
    if data is None:
        return None
    return tuple(keyed_value(data, k, b":") or 0  # type: ignore[return-value]
                 for k in (b"syscr", b"read_bytes", b"syscw", b"write_bytes"))


def read_keyed_colon(path: str) -> dict[str, int] | None:
    """``key: value`` lines (/proc/PID/io) -> dict; None if unreadable."""
    data = read_bytes(path)
    return parse_keyed(data, b":") if data is not None else None


class DeltaAccumulator:
    """Sum of per-process counters that never goes backwards when processes exit: each pid's
    growth since it was last seen is added to a running total (hsflowd's fallback)."""

    def __init__(self, width: int = 1) -> None:
        self.total = [0] * width
        self._last: dict[int, tuple[int, ...]] = {}

    def update(self, values: Mapping[int, tuple[int, ...]]) -> list[int]:
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
    Keeps the per-process accumulators between polls.  The file names are worked out once
    (plain strings); each poll opens only the files of the chain up to the first that answers."""

    def __init__(self, mounts: CgroupMounts, cgroup: str, allow_proc_io: bool = True) -> None:
        self.mounts = mounts
        self.cgroup = cgroup
        self.allow_proc_io = allow_proc_io
        self._cpu = DeltaAccumulator(1)
        self._io = DeltaAccumulator(4)
        v2 = mounts.v2_path(cgroup)
        cpuacct = mounts.v1_path("cpuacct", cgroup)
        # v1 memory and blkio are not read for the root group (hsflowd does the same)
        below_root = bool(cgroup.strip("/"))
        memory = mounts.v1_path("memory", cgroup) if below_root else None
        blkio = mounts.v1_path("blkio", cgroup) if below_root else None
        self._v2_cpu_stat = f"{v2}/cpu.stat" if v2 else None
        self._v2_mem_current = f"{v2}/memory.current" if v2 else None
        self._v2_mem_max = f"{v2}/memory.max" if v2 else None
        self._v2_io_stat = f"{v2}/io.stat" if v2 else None
        self._v1_cpuacct_usage = f"{cpuacct}/cpuacct.usage" if cpuacct else None
        self._v1_cpuacct_stat = f"{cpuacct}/cpuacct.stat" if cpuacct else None
        self._v1_mem_stat = f"{memory}/memory.stat" if memory else None
        self._v1_mem_limit = f"{memory}/memory.limit_in_bytes" if memory else None
        self._v1_blkio_bytes = f"{blkio}/blkio.io_service_bytes_recursive" if blkio else None
        self._v1_blkio_ios = f"{blkio}/blkio.io_serviced_recursive" if blkio else None

    def read(self, pids: Iterable[int], host_mem: int) -> Usage:
        pids = list(pids)
        u = Usage()
        self._read_cpu(u, pids)
        self._read_memory(u, pids, host_mem)
        self._read_disk(u, pids)
        return u

    def _read_cpu(self, u: Usage, pids: list[int]) -> None:
        data = read_bytes(self._v2_cpu_stat)
        usec = keyed_value(data, b"usage_usec") if data else None
        if usec is not None:
            u.cpu_ms, u.cpu_source = usec // 1000, "cgroup2 cpu.stat"
            return
        if self._v1_cpuacct_usage is not None:
            ns = read_int(self._v1_cpuacct_usage)
            if ns is not None:
                u.cpu_ms, u.cpu_source = ns // 1_000_000, "cgroup1 cpuacct.usage"
                return
            st = read_keyed(self._v1_cpuacct_stat)
            if st:
                ticks = st.get("user", 0) + st.get("system", 0)
                u.cpu_ms, u.cpu_source = ticks * 1000 // USER_HZ, "cgroup1 cpuacct.stat"
                return
        vals = {p: (t,) for p in pids if (t := proc_cpu_ticks(p)) is not None}
        (ticks,) = self._cpu.update(vals)
        u.cpu_ms, u.cpu_source = ticks * 1000 // USER_HZ, "/proc/PID/stat"

    def _read_memory(self, u: Usage, pids: list[int], host_mem: int) -> None:
        u.max_memory = host_mem
        cur = read_int(self._v2_mem_current)
        if cur is not None:
            u.memory, u.memory_source = cur, "cgroup2 memory.current"
            limit = read_int(self._v2_mem_max)
            if limit:
                u.max_memory = min(limit, host_mem) if host_mem else limit
            return
        data = read_bytes(self._v1_mem_stat)
        rss = keyed_value(data, b"rss") if data is not None else None
        if rss is not None:
            u.memory, u.memory_source = rss, "cgroup1 memory.stat rss"
            limit = read_int(self._v1_mem_limit)
            if limit and (not host_mem or limit < host_mem):
                u.max_memory = limit
            return
        u.memory = sum(r for p in pids if (r := proc_rss(p)) is not None)
        u.memory_source = "/proc/PID/statm"

    def _read_disk(self, u: Usage, pids: list[int]) -> None:
        data = read_bytes(self._v2_io_stat)
        if data is not None:
            try:
                for line in data.split(b"\n"):
                    for kv in line.split()[1:]:
                        k, _, v = kv.partition(b"=")
                        if k == b"rbytes":
                            u.rd_bytes += int(v)
                        elif k == b"wbytes":
                            u.wr_bytes += int(v)
                        elif k == b"rios":
                            u.rd_req += int(v)
                        elif k == b"wios":
                            u.wr_req += int(v)
                u.disk_source = "cgroup2 io.stat"
                return
            except ValueError:
                u.rd_bytes = u.wr_bytes = u.rd_req = u.wr_req = 0
        if self._v1_blkio_bytes is not None:
            b = _blkio(self._v1_blkio_bytes)
            r = _blkio(self._v1_blkio_ios) if b is not None else None
            if b is not None and r is not None:
                u.rd_bytes, u.wr_bytes = b
                u.rd_req, u.wr_req = r
                u.disk_source = "cgroup1 blkio"
                return
        if not self.allow_proc_io:
            return
        vals = {p: io for p in pids if (io := proc_io(p)) is not None}
        u.rd_req, u.rd_bytes, u.wr_req, u.wr_bytes = self._io.update(vals)
        u.disk_source = "/proc/PID/io"


def _blkio(path: str | None) -> tuple[int, int] | None:
    """Sum the ``<dev> Read|Write <n>`` lines of a blkio file."""
    data = read_bytes(path)
    if data is None:
        return None
    rd = wr = 0
    try:
        for line in data.split(b"\n"):
            parts = line.split()
            if len(parts) == 3 and parts[1] == b"Read":
                rd += int(parts[2])
            elif len(parts) == 3 and parts[1] == b"Write":
                wr += int(parts[2])
    except ValueError:
        return None
    return rd, wr
