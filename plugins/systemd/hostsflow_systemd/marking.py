"""markTraffic: which service sent or received a sampled packet.

For each end of the packet that is a local address, find the local socket (sock_diag exact
lookup through the tcp distribution's :class:`hostsflow_tcp.lookup.DiagChannel`, or the socket
another module already put in the stash), then the service: the socket's cgroup id
(INET_DIAG_CGROUP_ID) equals the inode of the service's cgroup2 directory.
Where that does not match a service (no cgroup v2, an old kernel, or a socket created by
another process such as systemd's socket activation), the socket inode is looked up among the
sockets the services' processes hold open (/proc/PID/fd, cached and rebuilt at most every
few seconds).  Socket answers are cached per 5-tuple; the loop never waits on the kernel.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from hostsflow.samples import (
    DS_LOGICAL,
    SOCKET_CGROUP_ID,
    SOCKET_INODE,
    SOCKET_LOCAL_SRC,
    FlowSample,
)
from hostsflow.sflow.records import ExtendedEntities
from hostsflow_tcp.diag import Reply
from hostsflow_tcp.lookup import IPPROTO_TCP, IPPROTO_UDP, DiagChannel, flow_key

from .services import Service, ServiceTable

POSITIVE_TTL = 10.0  # seconds a socket answer is reused
NEGATIVE_TTL = 1.0  # seconds "no such socket" is reused
INODE_MAP_MIN_AGE = 2.0  # rebuild the /proc fd map at most this often
CACHE_MAX = 65536
STASH_KEY = "systemd.sockets"  #: [src Owner|None, dst Owner|None] found in phase 1


@attrs.frozen(slots=True)
class Owner:
    """What marking needs to know of a local socket to find its service."""

    inode: int  #: 0 for sockets without an owner (TIME_WAIT, SYN_RECV)
    cgroup_id: int  #: 0 when the kernel did not report INET_DIAG_CGROUP_ID


def owner_of(reply: Reply) -> Owner | None:
    """The Owner in a sock_diag reply, None for "no such socket" or an error."""
    sock = reply.sock
    return Owner(sock.inode, sock.cgroup_id or 0) if sock is not None else None


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
                 diag: DiagChannel | None = None) -> None:
        self.table = table
        self.clock = clock
        self.diag = diag
        self.local = LocalAddresses()
        self._cache: dict[tuple[Any, ...], tuple[float, Owner | None]] = {}
        self._pending: dict[int, _Pending] = {}
        self._inode_map: dict[int, Service] = {}
        self._inode_map_at = -1e9
        self._inode_map_version = -1
        self.stats = {"lookups": 0, "cache_hits": 0, "held": 0, "marked": 0, "by_cgroup": 0,
                      "by_inode": 0, "inode_map_builds": 0, "malformed": 0, "errors": 0}

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
        found: list[Owner | None] = [None, None]
        stash = sample.stash
        known = self._from_stash(stash) if SOCKET_LOCAL_SRC in stash else None
        for side, is_local in ((0, src_local), (1, dst_local)):
            if not is_local:
                continue
            if known is not None and known[0] == side:
                found[side] = known[1]  # another module already looked this socket up
                continue
            if side == 0:
                key = (pkt.protocol, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
            else:
                key = (pkt.protocol, pkt.dst_ip, pkt.dst_port, pkt.src_ip, pkt.src_port)
            found[side] = self._socket(key, sample, side)
        stash[STASH_KEY] = found

    @staticmethod
    def _from_stash(stash: dict[str, Any]) -> tuple[int, Owner] | None:
        """(side, Owner) when the well-known socket keys are already in the stash (side 0: the
        local socket is the packet's source)."""
        local_src = stash.get(SOCKET_LOCAL_SRC)
        if local_src is None:
            return None
        inode, cgroup_id = stash.get(SOCKET_INODE) or 0, stash.get(SOCKET_CGROUP_ID) or 0
        if not (inode or cgroup_id):
            return None
        return (0 if local_src else 1), Owner(inode, cgroup_id)

    def _socket(self, key: tuple[Any, ...], sample: FlowSample, side: int) -> Owner | None:
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            self.stats["cache_hits"] += 1
            return hit[1]
        if self.diag is None:
            return None
        try:
            fkey = flow_key(*key)
        except ValueError:
            return None  # mixed address families
        self.stats["lookups"] += 1
        try:
            seq, reply = self.diag.request_now(fkey, with_info=False)
        except OSError:
            self.stats["errors"] += 1
            return None
        if self.diag.has_held:
            self.on_readable()  # replies for held samples read on the way
        if reply is None:
            self.stats["held"] += 1
            self._pending[seq] = _Pending(key, sample, side, sample.hold("systemd"))
            return None
        sock = reply.sock  # owner_of(), inlined: this is the per-lookup path
        info = Owner(sock.inode, sock.cgroup_id or 0) if sock is not None else self._answer(reply)
        self._remember(key, info, now)
        return info

    def _answer(self, reply: Reply) -> Owner | None:
        # EBADMSG (a damaged reply) is already in the reader's malformed count
        if reply.sock is None and reply.errno not in (0, errno.ENOENT, errno.EBADMSG):
            self.stats["errors"] += 1
        return owner_of(reply)

    def _remember(self, key: tuple[Any, ...], info: Owner | None, now: float) -> None:
        if len(self._cache) >= CACHE_MAX:
            self.expire(now)
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
        self._cache[key] = (now + (POSITIVE_TTL if info is not None else NEGATIVE_TTL), info)

    def on_readable(self) -> None:
        """The sock_diag socket has replies for held samples: fill their stash, release them."""
        if self.diag is None:
            return
        try:
            replies, bad = self.diag.read()
        except OSError:
            self.stats["errors"] += 1
            return
        self.stats["malformed"] += bad
        for reply in replies:
            p = self._pending.pop(reply.seq, None)
            if p is None:
                continue
            info = self._answer(reply)
            self._remember(p.key, info, self.clock())
            found = p.sample.stash.get(STASH_KEY)
            if isinstance(found, list):
                found[p.side] = info
            p.hold.release()

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

    def service_of(self, info: Owner) -> Service | None:
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
