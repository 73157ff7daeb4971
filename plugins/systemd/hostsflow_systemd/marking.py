"""markTraffic: which service sent or received a sampled packet.

For each end of the packet that is a local address, find the local socket (sock_diag exact
lookup, or the cgroup id the tcp plugin already put in the stash), then the service: the
socket's cgroup id (INET_DIAG_CGROUP_ID) equals the inode of the service's cgroup2 directory.
Where that does not match a service (no cgroup v2, an old kernel, or a socket created by
another process such as systemd's socket activation), the socket inode is looked up among the
sockets the services' processes hold open (/proc/PID/fd, cached and rebuilt at most every
few seconds).  Socket answers are cached per 5-tuple; the loop never waits on the kernel.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Iterable

import attrs
from hostsflow.samples import DS_LOGICAL, SOCKET_CGROUP_ID, SOCKET_INODE, FlowSample
from hostsflow.sflow.records import ExtendedEntities

from .services import Service, ServiceTable
from .sockdiag import SockDiag, SockInfo

IPPROTO_TCP, IPPROTO_UDP = 6, 17
POSITIVE_TTL = 10.0  # seconds a socket answer is reused
NEGATIVE_TTL = 1.0  # seconds "no such socket" is reused
INODE_MAP_MIN_AGE = 2.0  # rebuild the /proc fd map at most this often
CACHE_MAX = 65536
STASH_KEY = "systemd.sockets"  #: (src SockInfo|None, dst SockInfo|None) found in phase 1



@attrs.define(slots=True)
class _Pending:
    key: tuple[Any, ...]
    sample: FlowSample
    side: int
    hold: Any


class LocalAddresses:
    """The set of this host's addresses (text), rebuilt when the interface table changes."""

    def __init__(self) -> None:
        self._addrs: frozenset[str] = frozenset({"::1"})
        self._version: Any = object()

    def update(self, interfaces: Iterable[Any], version: Any) -> None:
        if version == self._version:
            return
        addrs = {"::1"}
        for ifc in interfaces:
            addrs.update(a.split("%", 1)[0] for a in getattr(ifc, "addresses", ()) or ())
        self._addrs = frozenset(addrs)
        self._version = version

    def __contains__(self, addr: str) -> bool:
        if addr in self._addrs:
            return True
        if addr.startswith("127."):
            return True
        if addr.startswith("::ffff:"):
            return addr[7:] in self._addrs or addr[7:].startswith("127.")
        return False


class Marker:
    """Finds the services at both ends of a sampled packet."""

    def __init__(self, table: ServiceTable, clock: Callable[[], float],
                 diag: SockDiag | None = None) -> None:
        self.table = table
        self.clock = clock
        self.diag = diag
        self.local = LocalAddresses()
        self._cache: dict[tuple[Any, ...], tuple[float, SockInfo | None]] = {}
        self._pending: dict[int, _Pending] = {}
        self._inode_map: dict[int, Service] = {}
        self._inode_map_at = -1e9
        self._inode_map_version = -1
        self.stats = {"lookups": 0, "cache_hits": 0, "held": 0, "marked": 0,
                      "by_cgroup": 0, "by_inode": 0, "inode_map_builds": 0}

    # ------------------------------------------------------------ phase 1

    def examine(self, sample: FlowSample) -> None:
        """Find the local sockets of the sample's ends and put them in the stash; take a hold
        if the kernel did not answer at once."""
        if sample.netns is not None:
            return  # seen in another network namespace: our sock_diag cannot see its sockets
        pkt = sample.packet
        if pkt is None or pkt.protocol not in (IPPROTO_TCP, IPPROTO_UDP):
            return
        src_local, dst_local = pkt.src_ip in self.local, pkt.dst_ip in self.local
        if not (src_local or dst_local):
            return
        found: list[SockInfo | None] = [None, None]
        tcp_cg = sample.stash.get(SOCKET_CGROUP_ID)
        for side, is_local in ((0, src_local), (1, dst_local)):
            if not is_local:
                continue
            if side == 0:
                key = (pkt.protocol, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
            else:
                key = (pkt.protocol, pkt.dst_ip, pkt.dst_port, pkt.src_ip, pkt.src_port)
            if tcp_cg and src_local != dst_local:
                # the tcp plugin already looked this (only) local socket up
                found[side] = SockInfo(sample.stash.get(SOCKET_INODE, 0), 0, tcp_cg)
                continue
            found[side] = self._socket(key, sample, side)
        sample.stash[STASH_KEY] = found

    def _socket(self, key: tuple[Any, ...], sample: FlowSample, side: int) -> SockInfo | None:
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            self.stats["cache_hits"] += 1
            return hit[1]
        if self.diag is None:
            return None
        proto, local, lport, remote, rport = key
        try:
            fam, lpk, rpk = _pack(local, remote)
        except ValueError:
            return None
        self.stats["lookups"] += 1
        try:
            seq = self.diag.send(proto, fam, lpk, lport, rpk, rport)
        except OSError:
            return None
        info: SockInfo | None = None
        answered = False
        for rseq, rinfo in self.diag.poll(8) + self.diag.stray:
            if rseq == seq:
                info, answered = rinfo, True
            else:
                self._complete(rseq, rinfo)
        self.diag.stray.clear()
        if not answered:
            self.stats["held"] += 1
            self._pending[seq] = _Pending(key, sample, side, sample.hold("systemd"))
            return None
        self._remember(key, info, now)
        return info

    def _remember(self, key: tuple[Any, ...], info: SockInfo | None, now: float) -> None:
        if len(self._cache) >= CACHE_MAX:
            self.expire(now)
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
        self._cache[key] = (now + (POSITIVE_TTL if info is not None else NEGATIVE_TTL), info)

    def _complete(self, seq: int, info: SockInfo | None) -> None:
        p = self._pending.pop(seq, None)
        if p is None:
            return
        self._remember(p.key, info, self.clock())
        found = p.sample.stash.get(STASH_KEY)
        if isinstance(found, list):
            found[p.side] = info
        p.hold.release()

    def on_readable(self) -> None:
        """The sock_diag socket has replies for held samples."""
        if self.diag is None:
            return
        for seq, info in self.diag.poll():
            self._complete(seq, info)

    def expire(self, now: float) -> None:
        """Drop stale cache entries and pending lookups whose samples were force-released."""
        self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        for seq in [s for s, p in self._pending.items() if p.hold.done]:
            del self._pending[seq]

    # ------------------------------------------------------------ phase 2

    def entities(self, sample: FlowSample) -> ExtendedEntities | None:
        """The extended_entities record for a released sample, or None if neither end is a
        known service."""
        found = sample.stash.get(STASH_KEY)
        if not found:
            return None
        src = self.service_of(found[0]) if found[0] is not None else None
        dst = self.service_of(found[1]) if found[1] is not None else None
        if src is None and dst is None:
            return None
        self.stats["marked"] += 1
        return ExtendedEntities(
            src_class=DS_LOGICAL if src else 0, src_index=src.source.ds_index if src else 0,
            dst_class=DS_LOGICAL if dst else 0, dst_index=dst.source.ds_index if dst else 0)

    def service_of(self, info: SockInfo) -> Service | None:
        """The service owning a socket: by cgroup id, else by inode among the services' fds."""
        if info.cgroup_id:
            svc = self.table.by_cgroup_id.get(info.cgroup_id)
            if svc is not None:
                self.stats["by_cgroup"] += 1
                return svc
        if not info.inode:
            return None
        svc = self._inode_map.get(info.inode)
        if svc is None and self._rebuild_inode_map():
            svc = self._inode_map.get(info.inode)
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


def _pack(local: str, remote: str) -> tuple[int, bytes, bytes]:
    """(family, packed local, packed remote); v4-mapped IPv6 folded to IPv4."""
    if local.startswith("::ffff:") and "." in local:
        local = local[7:]
    if remote.startswith("::ffff:") and "." in remote:
        remote = remote[7:]
    if ":" in local:
        if ":" not in remote:
            raise ValueError("mixed families")
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, local), socket.inet_pton(
            socket.AF_INET6, remote)
    if ":" in remote:
        raise ValueError("mixed families")
    return socket.AF_INET, socket.inet_aton(local), socket.inet_aton(remote)
