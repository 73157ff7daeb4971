"""markTraffic: which service sent or received a sampled packet.

Runs in phase 2 (``sflow_flow_sample_released``).  For each end of the packet that is local
(``agent.sockets.local_ends``), the core says who owned that end's socket
(``agent.sockets.owner``): the owner log's entry, written by the kernel when the connection
sent (so a socket that closed before its sample was looked up still has its owner), else the
live socket, else the local port's listening socket (a server's side after the connection is
gone, or while only a TIME_WAIT mini-socket is left).  An owner names a service by its cgroup
id (INET_DIAG_CGROUP_ID / the log's: the inode of the service's cgroup2 directory), else by a
socket inode one of the service's processes holds open (/proc/PID/fd, cached and rebuilt at
most every few seconds: for sockets systemd created, as in socket activation).  What cannot be
known stays unmarked; each sample's outcome is counted by reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hostsflow.health import Tally
from hostsflow.samples import DS_LOGICAL, FlowSample
from hostsflow.sflow.records import ExtendedEntities
from hostsflow.sockets import CHANGED_HANDS, DST, IPPROTO_TCP, IPPROTO_UDP, LOOKUP_FAILED, SRC, Owner

from .services import Service, ServiceTable

MARK_TTL = 1.0  #: seconds a TCP connection's mark is reused for its further samples
INODE_MAP_MIN_AGE = 2.0  # rebuild the /proc fd map at most this often
CACHE_MAX = 65536

#: why a sample went out without extended_entities, most telling first
UNMARKED = ("lookup_failed", "changed_hands", "socket_gone", "not_service", "not_local",
            "not_tcp_udp")
_REASON = {LOOKUP_FAILED: "lookup_failed", CHANGED_HANDS: "changed_hands"}
#: an end with one of these outcomes will not change while the connection lasts
_SETTLED = frozenset(("", "not_service", "not_local"))


class Marker:
    """Finds the services at both ends of a sampled packet."""

    def __init__(self, table: ServiceTable, sockets: Any, clock: Callable[[], float]) -> None:
        self.table = table
        self.sockets = sockets
        self.clock = clock
        #: TCP packet 5-tuple -> (reuse until, table version, the record or None, its outcome)
        self._marks: dict[tuple[Any, ...], tuple[float, int, ExtendedEntities | None, str]] = {}
        self._inode_map: dict[int, Service] = {}
        self._inode_map_at = -1e9
        self._inode_map_version = -1
        #: each sample's outcome: marked, or unmarked for a reason (UNMARKED); and how the
        #: services were found
        self.outcomes = Tally("systemd.marking", ("marked", *(f"unmarked.{r}" for r in UNMARKED)))
        self.stats = {"marks_reused": 0, "by_cgroup": 0, "by_inode": 0, "inode_map_builds": 0}
        self._accept = self._is_service

    def entities(self, sample: FlowSample) -> ExtendedEntities | None:
        """The extended_entities record for a released sample, or None if neither end is a
        known service.  A TCP connection's answer is reused for :data:`MARK_TTL` seconds
        while the set of services is unchanged (a 5-tuple cannot change hands that fast in
        TCP; UDP ports can, so UDP samples are worked out each time)."""
        pkt = sample.packet
        if pkt is None or (pkt.protocol != IPPROTO_TCP and pkt.protocol != IPPROTO_UDP):
            self.outcomes["unmarked.not_tcp_udp"] += 1
            return None
        if pkt.protocol != IPPROTO_TCP:
            return self._entities(sample)
        key = (sample.netns, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
        now = self.clock()
        version = self.table.version
        hit = self._marks.get(key)
        if hit is not None and hit[0] > now and hit[1] == version:
            self.stats["marks_reused"] += 1
            self.outcomes[hit[3]] += 1
            return hit[2]
        rec = self._entities(sample, key, now, version)
        return rec

    def _entities(self, sample: FlowSample, key: Any = None, now: float = 0.0,
                  version: int = 0) -> ExtendedEntities | None:
        src_local, dst_local = self.sockets.local_ends(sample)
        if not src_local and not dst_local:
            self.outcomes["unmarked.not_local"] += 1
            return None
        src, why_src = self._service(sample, SRC) if src_local else (None, "not_local")
        dst, why_dst = self._service(sample, DST) if dst_local else (None, "not_local")
        rec = None
        if src is None and dst is None:
            outcome = f"unmarked.{min(why_src, why_dst, key=UNMARKED.index)}"
        else:
            outcome = "marked"
            rec = ExtendedEntities(
                src_class=DS_LOGICAL if src else 0, src_index=src.source.ds_index if src else 0,
                dst_class=DS_LOGICAL if dst else 0, dst_index=dst.source.ds_index if dst else 0)
        self.outcomes[outcome] += 1
        if key is not None and why_src in _SETTLED and why_dst in _SETTLED:
            # every end's answer is final (a service, or an owner that is none): reuse it
            _put(self._marks, key, (now + MARK_TTL, version, rec, outcome), now)
        return rec

    def _service(self, sample: FlowSample, side: int) -> tuple[Service | None, str]:
        """The service owning local end ``side``, or None and why not."""
        found = self.sockets.owner(sample, side, self._accept)
        if isinstance(found, str):
            return None, _REASON.get(found, "socket_gone")
        svc = self.service_of(found)
        return (svc, "") if svc is not None else (None, "not_service")

    def _is_service(self, owner: Owner) -> bool:
        return self.service_of(owner) is not None

    def expire(self, now: float) -> None:
        """Drop expired marks."""
        self._marks = {k: v for k, v in self._marks.items() if v[0] > now}

    # ------------------------------------------------------------ services

    def service_of(self, owner: Owner) -> Service | None:
        """The service owning a socket: by cgroup id, else by inode among the services' fds."""
        if owner.cgroup_id:
            svc = self.table.by_cgroup_id.get(owner.cgroup_id)
            if svc is not None:
                self.stats["by_cgroup"] += 1
                return svc
        if not owner.inode:
            return None
        svc = self._inode_map.get(owner.inode)
        if svc is None and self._rebuild_inode_map():
            svc = self._inode_map.get(owner.inode)
        if svc is not None:
            self.stats["by_inode"] += 1
        return svc

    def _rebuild_inode_map(self) -> bool:
        now = self.clock()
        if (now - self._inode_map_at < INODE_MAP_MIN_AGE
                and self._inode_map_version == self.table.version):
            return False
        self._inode_map_at, self._inode_map_version = now, self.table.version
        self.stats["inode_map_builds"] += 1
        self._inode_map = socket_inodes(self.table)
        return True


def _put(cache: dict[Any, tuple[Any, ...]], key: Any, entry: tuple[Any, ...], now: float) -> None:
    """``cache[key] = entry`` (entries start with their expiry time); when the cache is full,
    expired entries are dropped first, and everything if that is not enough."""
    if len(cache) >= CACHE_MAX:
        for k in [k for k, v in cache.items() if v[0] <= now]:
            del cache[k]
        if len(cache) >= CACHE_MAX:
            cache.clear()
    cache[key] = entry


def socket_inodes(table: ServiceTable) -> dict[int, Service]:
    """socket inode -> service, from the ``socket:[N]`` links in /proc/PID/fd of every
    process of every service."""
    out: dict[int, Service] = {}
    for svc in table:
        for pid in svc.pids:
            base = f"/proc/{pid}/fd"
            try:
                fds = os.listdir(base)
            except OSError:
                continue
            for fd in fds:
                try:
                    link = os.readlink(f"{base}/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    try:
                        out[int(link[8:-1])] = svc
                    except ValueError:
                        continue
    return out
