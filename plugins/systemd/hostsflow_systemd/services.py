"""The table of monitored services: which units are data sources, their dsIndex and UUID, their
cgroup id (for traffic marking), and the counter records of one poll.

``sync`` is called with every fresh unit list from D-Bus (mark and sweep); ``poll`` at each
counter poll of a service; both run on the agent loop and only read small cgroup files.
"""

from __future__ import annotations

import os
import platform
import re
import time
from typing import Callable, Iterable

import attrs
from hostsflow.samples import DS_LOGICAL, DataSource
from hostsflow.sflow.records import (
    HostDescr, HostParent, Record, VirtCpu, VirtDiskIo, VirtMemory, VirtNetIo, VirtNode,
)

from .cgroups import CgroupMounts, ServiceAccounting, Usage, mem_total
from .identity import DsIndexAllocator, unit_uuid

OS_LINUX = 2
_MACHINE = {"x86_64": 3, "amd64": 3, "i386": 2, "i686": 2, "x86": 2, "aarch64": 10,
            "arm64": 10, "armv7l": 8, "ppc64le": 6, "ppc64": 6, "s390x": 7, "riscv64": 12}
SERVICE_RE = re.compile(r"\.service\Z")


def machine_type() -> int:
    """sFlow machine_type of this host (0 unknown)."""
    return _MACHINE.get(platform.machine().lower(), 0)


def under_slice(control_group: str, slices: Iterable[str]) -> bool:
    """True if one of the ControlGroup's path components is a monitored slice
    (``/system.slice/x.service``, ``/u/app.slice/y.service`` for slice ``app.slice``)."""
    parts = control_group.strip("/").split("/")
    return any(s in parts for s in slices)


@attrs.define(eq=False)
class Service:
    """One monitored service (a data source 3:dsIndex)."""

    name: str
    control_group: str
    uuid: bytes
    source: DataSource
    cgroup_id: int
    accounting: ServiceAccounting
    pids: list[int] = attrs.Factory(list)
    procs_files: tuple[str, ...] = ()  #: the cgroup.procs files to read, worked out once


class ServiceTable:
    """Services by name, by dsIndex and by cgroup id."""

    def __init__(self, mounts: CgroupMounts, slices: Iterable[str],
                 host_uuid: Callable[[], bytes], agent_address: Callable[[], str | None],
                 allow_proc_io: bool = True, now: Callable[[], float] = time.monotonic,
                 traffic: Callable[[int], tuple[int, int, int, int] | None] | None = None
                 ) -> None:
        self.mounts = mounts
        #: cgroup id -> (bytes in, packets in, bytes out, packets out) of its sockets (the
        #: core's owner log, with markTraffic), for virt_net_io; None: not sent
        self.traffic = traffic
        self.now = now  #: the agent clock: host MemTotal is read once per second of it
        self.slices = tuple(slices)
        self.host_uuid = host_uuid
        self.agent_address = agent_address
        self.allow_proc_io = allow_proc_io
        self.by_name: dict[str, Service] = {}
        self.by_cgroup_id: dict[int, Service] = {}
        self.by_data_source: dict[DataSource, Service] = {}
        self._mem_total = 0
        self._mem_total_at: int | None = None
        self._machine_type = machine_type()
        self._os_release = platform.release()
        self.alloc = DsIndexAllocator()
        self.sources_used: dict[str, str] = {}  #: reading -> source, last poll (for reporting)
        self.version = 0  #: bumped whenever the set of services changes

    def __len__(self) -> int:
        return len(self.by_name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.by_name.values()))

    def data_sources(self) -> list[DataSource]:
        return [s.source for s in self.by_name.values()]

    def by_source(self, source: DataSource) -> Service | None:
        return self.by_data_source.get(source)

    def slice_dirs(self) -> frozenset[str]:
        """The cgroup2 directories the services sit in (their slices'), for the owner log."""
        out = set()
        for svc in self.by_name.values():
            path = self.mounts.v2_path(svc.control_group)
            if path is not None:
                out.add(os.path.dirname(path))
        return frozenset(out)

    def mem_total(self) -> int:
        """Host MemTotal in bytes, read at most once per second of the agent clock (a polling
        round asks for it once per service)."""
        second = int(self.now())
        if second != self._mem_total_at:
            self._mem_total, self._mem_total_at = mem_total(), second
        return self._mem_total

    # ------------------------------------------------------------ discovery

    def sync(self, units: dict[str, str]) -> tuple[list[str], list[str]]:
        """Mark and sweep from ``{unit name: ControlGroup}`` of the loaded, active units.

        A unit becomes a service if it is a ``.service``, its ControlGroup is under a monitored
        slice and its cgroup has at least one process.  Returns (added, removed) names."""
        added, keep = [], set()
        for name, cg in units.items():
            if not SERVICE_RE.search(name) or not cg or not under_slice(cg, self.slices):
                continue
            pids = self.mounts.pids(cg)
            if not pids:
                continue
            keep.add(name)
            svc = self.by_name.get(name)
            if svc is not None and svc.control_group != cg:
                self._drop(name)
                svc = None
            if svc is None:
                svc = self._add(name, cg)
                if svc is None:
                    continue
                added.append(name)
            svc.pids = pids
        removed = [n for n in self.by_name if n not in keep]
        for n in removed:
            self._drop(n)
        return added, removed

    def _add(self, name: str, cg: str) -> Service | None:
        uuid = unit_uuid(self.host_uuid(), name, self.agent_address())
        idx = self.alloc.assign(name, uuid)
        if idx == 0:
            return None
        svc = Service(name=name, control_group=cg, uuid=uuid,
                      source=DataSource(DS_LOGICAL, idx, name),
                      cgroup_id=self.mounts.cgroup_id(cg),
                      accounting=ServiceAccounting(self.mounts, cg, self.allow_proc_io),
                      procs_files=self.mounts.procs_files(cg))
        self.by_name[name] = svc
        self.by_data_source[svc.source] = svc
        if svc.cgroup_id:
            self.by_cgroup_id[svc.cgroup_id] = svc
        self.version += 1
        return svc

    def _drop(self, name: str) -> None:
        svc = self.by_name.pop(name, None)
        if svc is None:
            return
        self.alloc.release(name)
        if self.by_data_source.get(svc.source) is svc:
            del self.by_data_source[svc.source]
        if self.by_cgroup_id.get(svc.cgroup_id) is svc:
            del self.by_cgroup_id[svc.cgroup_id]
        self.version += 1

    def drop(self, name: str) -> None:
        """Forget a service (stopped, vanished)."""
        self._drop(name)

    # ------------------------------------------------------------ counters

    def poll(self, svc: Service) -> list[Record] | None:
        """The counter records of one service, or None (and the service dropped) if its cgroup
        is gone or has no process left."""
        pids = self.mounts.pids(svc.control_group, svc.procs_files)
        if not pids:
            self._drop(svc.name)
            return None
        svc.pids = pids
        u: Usage = svc.accounting.read(pids, self.mem_total())
        used = self.sources_used
        if (used.get("cpu") != u.cpu_source or used.get("memory") != u.memory_source
                or used.get("disk") != u.disk_source):
            self.sources_used = {"cpu": u.cpu_source, "memory": u.memory_source,
                                 "disk": u.disk_source}
        records: list[Record] = [
            HostDescr(hostname=svc.name, uuid=svc.uuid, machine_type=self._machine_type,
                      os_name=OS_LINUX, os_release=self._os_release),
            HostParent(container_type=2, container_index=1),
            VirtCpu(state=1, cpuTime=u.cpu_ms & 0xFFFFFFFF, nrVirtCpu=0),
            VirtMemory(memory=u.memory, maxMemory=u.max_memory),
            VirtDiskIo(rd_req=u.rd_req & 0xFFFFFFFF, rd_bytes=u.rd_bytes,
                       wr_req=u.wr_req & 0xFFFFFFFF, wr_bytes=u.wr_bytes),
        ]
        if self.traffic is not None:
            net = self.traffic(svc.cgroup_id) or (0, 0, 0, 0)
            records.append(VirtNetIo(bytes_in=net[0], pkts_in=net[1] & 0xFFFFFFFF,
                                     bytes_out=net[2], pkts_out=net[3] & 0xFFFFFFFF))
        return records

    def virt_node(self) -> VirtNode:
        """virt_node (2100) for the host source 2:1."""
        mhz, total, free = _cpu_mhz(), self.mem_total(), _mem_free()
        return VirtNode(mhz=mhz, cpus=os.cpu_count() or 0, memory=total, memory_free=free,
                        num_domains=len(self.by_name))


def _mem_free() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemFree:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cpu_mhz() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]))
    except (OSError, ValueError, IndexError):
        pass
    return 0
