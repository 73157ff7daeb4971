"""markTraffic: which service sent or received a sampled packet.

Runs in phase 2 (``sflow_flow_sample_released``), once every other module's phase 1 is done.
For each end of the packet that is a local address, the local socket is taken from the stash
when another module already looked that end up (the tcp module: SOCKET_LOCAL_SRC names the
end, SOCKET_CGROUP_ID / SOCKET_INODE describe it), so one lookup serves both modules; the other
local ends are taken from the cache, which the tcp module fills in phase 1 when it looks up
one end of a connection whose other end is local too (the Marker is its
:class:`hostsflow_tcp.companion.Companion`: both requests go out in one ``send()``), or looked
up here (sock_diag exact lookup through the tcp distribution's
:class:`hostsflow_tcp.lookup.DiagChannel`, without tcp_info; the kernel answers inside
``send()``, so nothing waits).  Then the service: the socket's cgroup id (INET_DIAG_CGROUP_ID)
equals the inode of the service's cgroup2 directory.  Where that does not match a service (no
cgroup v2, an old kernel, or a socket created by another process such as systemd's socket
activation), the socket inode is looked up among the sockets the services' processes hold open
(/proc/PID/fd, cached and rebuilt at most every few seconds).  Socket answers are cached per
5-tuple.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from hostsflow.samples import (
    DS_LOGICAL,
    SOCKET_CGROUP_ID,
    SOCKET_INODE,
    SOCKET_LOCAL_SRC,
    SOCKET_LOOKED_UP,
    FlowSample,
)
from hostsflow.sflow.records import ExtendedEntities
from hostsflow_tcp.diag import Reply
from hostsflow_tcp.lookup import IPPROTO_TCP, IPPROTO_UDP, DiagChannel, FlowKey, flow_key

from .services import Service, ServiceTable

POSITIVE_TTL = 10.0  # seconds a socket answer is reused
MARK_TTL = 1.0  # seconds a connection's mark (its record, or "no service") is reused
NEGATIVE_TTL = 1.0  # seconds "no such socket" is reused
INODE_MAP_MIN_AGE = 2.0  # rebuild the /proc fd map at most this often
CACHE_MAX = 65536
LATE_SECONDS = 5.0  # a lookup whose reply was not there at once is forgotten after this
_new = tuple.__new__  # builds a named tuple without its Python-level __new__ (one per lookup)


class Owner(NamedTuple):
    """What marking needs to know of a local socket to find its service (a named tuple: one
    is made per lookup)."""

    inode: int  #: 0 for sockets without an owner (TIME_WAIT, SYN_RECV)
    cgroup_id: int  #: 0 when the kernel did not report INET_DIAG_CGROUP_ID


def owner_of(reply: Reply) -> Owner | None:
    """The Owner in a sock_diag reply, None for "no such socket" or an error."""
    sock = reply.sock
    return Owner(sock.inode, sock.cgroup_id or 0) if sock is not None else None


def from_stash(stash: dict[str, Any]) -> tuple[int, Owner | None] | None:
    """``(side, Owner)`` when another module looked up the local socket of one end (side 0:
    the packet's source, 1: its destination); the Owner is None when it found no socket.
    None when the stash says nothing about either end."""
    local_src = stash.get(SOCKET_LOCAL_SRC)
    if local_src is None:
        return None
    inode, cgroup_id = stash.get(SOCKET_INODE) or 0, stash.get(SOCKET_CGROUP_ID) or 0
    side = 0 if local_src else 1
    if inode or cgroup_id:
        return side, Owner(inode, cgroup_id)
    if stash.get(SOCKET_LOOKED_UP):
        return side, None  # looked up, no such socket (or one without an owner)
    return None


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
        #: packet 5-tuple -> (reuse until, table version, the record or None)
        self._marks: dict[tuple[Any, ...], tuple[float, int, ExtendedEntities | None]] = {}
        #: seq -> (5-tuple, sent at) of lookups whose reply was not there at once
        self._late: dict[int, tuple[tuple[Any, ...], float]] = {}
        self._inode_map: dict[int, Service] = {}
        self._inode_map_at = -1e9
        self._inode_map_version = -1
        #: lookups: made here (phase 2); with_tcp: sent with the tcp module's (phase 1)
        self.stats = {"lookups": 0, "with_tcp": 0, "cache_hits": 0, "from_stash": 0, "late": 0,
                      "marked": 0, "marks_reused": 0, "by_cgroup": 0, "by_inode": 0, "inode_map_builds": 0,
                      "malformed": 0, "errors": 0}

    # ------------------------------------------------------------ phase 1, with the tcp module

    def also_wanted(self, sample: FlowSample, key: FlowKey) -> FlowKey | None:
        """The tcp module is about to look up the local socket ``key`` (protocol, local end,
        remote end): the remote end's socket when that end is local too and not cached, for
        the same ``send()`` (:mod:`hostsflow_tcp.companion`); else None."""
        if not len(self.table):
            return None
        protocol, local, lport, remote, rport = key
        if remote not in self.local:
            return None
        hit = self._cache.get((protocol, remote, rport, local, lport))
        if hit is not None and hit[0] > self.clock():
            return None
        self.stats["with_tcp"] += 1
        return _new(FlowKey, (protocol, remote, rport, local, lport))

    def answered(self, key: FlowKey, reply: Reply | None) -> None:
        """The reply to a lookup :meth:`also_wanted` asked for: into the cache (None: it was
        not there at once; phase 2 looks the socket up itself)."""
        if reply is not None:
            self._remember(key, self._owner(reply), self.clock())

    # ------------------------------------------------------------ phase 2

    def entities(self, sample: FlowSample) -> ExtendedEntities | None:
        """The extended_entities record for a released sample, or None if neither end is a
        known service.

        The answer for a packet 5-tuple is reused for :data:`MARK_TTL` seconds while the set
        of services is unchanged (the samples of one connection repeat it; working it out
        again costs a dozen dict lookups per sample).  Not when an end's reply was late (it
        is worked out again next time) or for another namespace's samples (the stash alone
        decides there)."""
        pkt = sample.packet
        if pkt is None or sample.netns is not None:
            return self._entities(sample)
        key = (pkt.protocol, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
        now = self.clock()
        version = self.table.version
        hit = self._marks.get(key)
        if hit is not None and hit[0] > now and hit[1] == version:
            self.stats["marks_reused"] += 1
            if hit[2] is not None:
                self.stats["marked"] += 1
            return hit[2]
        late = self.stats["late"]
        rec = self._entities(sample)
        if self.stats["late"] == late:
            _put(self._marks, key, (now + MARK_TTL, version, rec), now)
        return rec

    def _entities(self, sample: FlowSample) -> ExtendedEntities | None:
        ends = self.owners(sample)
        if ends is None:
            return None
        src_owner, dst_owner = ends
        src = self.service_of(src_owner) if src_owner is not None else None
        dst = self.service_of(dst_owner) if dst_owner is not None else None
        if src is None and dst is None:
            return None
        self.stats["marked"] += 1
        return ExtendedEntities(
            src_class=DS_LOGICAL if src else 0, src_index=src.source.ds_index if src else 0,
            dst_class=DS_LOGICAL if dst else 0, dst_index=dst.source.ds_index if dst else 0)

    def owners(self, sample: FlowSample) -> tuple[Owner | None, Owner | None] | None:
        """The local sockets of the packet's source and destination (None for an end that is
        not local or has no socket), or None for a packet that is not TCP/UDP over IP.

        An end another module looked up is taken from the stash; the other local ends are
        looked up (or taken from the cache).  A sample seen in another network namespace gets
        only what the stash says: this module's sock_diag socket cannot see that namespace."""
        pkt = sample.packet
        if pkt is None:
            return None
        proto = pkt.protocol
        if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
            return None
        known = from_stash(sample.stash)
        if sample.netns is not None:
            src_local = dst_local = False
        else:
            src_local, dst_local = pkt.src_ip in self.local, pkt.dst_ip in self.local
        src = dst = None
        if known is not None:
            self.stats["from_stash"] += 1
            if known[0] == 0:
                src, src_local = known[1], False
            else:
                dst, dst_local = known[1], False
        if src_local:
            src = self._socket((proto, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port))
        if dst_local:
            dst = self._socket((proto, pkt.dst_ip, pkt.dst_port, pkt.src_ip, pkt.src_port))
        return src, dst

    def _socket(self, key: tuple[Any, ...]) -> Owner | None:
        """The local socket of ``key`` = (protocol, local ip, port, remote ip, port): from
        the cache, else one exact lookup whose reply the kernel queued inside ``send()``."""
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
            self.on_readable()  # late replies to earlier lookups, read on the way
        if reply is None:  # not there yet: this end goes unmarked, the cache gets the reply
            self.stats["late"] += 1
            self._late[seq] = (key, now)
            return None
        info = self._owner(reply)
        self._remember(key, info, now)
        return info

    def _owner(self, reply: Reply) -> Owner | None:
        """The Owner a reply found (None: no such socket, or an error, counted)."""
        sock = reply.sock  # owner_of(), inlined: this is the per-lookup path
        if sock is not None:
            return _new(Owner, (sock.inode, sock.cgroup_id or 0))
        return self._answer(reply)

    def _answer(self, reply: Reply) -> Owner | None:
        # EBADMSG (a damaged reply) is already in the reader's malformed count
        if reply.sock is None and reply.errno not in (0, errno.ENOENT, errno.EBADMSG):
            self.stats["errors"] += 1
        return owner_of(reply)

    def _remember(self, key: tuple[Any, ...], info: Owner | None, now: float) -> None:
        _put(self._cache, key, (now + (POSITIVE_TTL if info is not None else NEGATIVE_TTL), info),
             now)

    def on_readable(self) -> None:
        """The sock_diag socket has late replies: put their answers in the cache."""
        if self.diag is None:
            return
        try:
            replies, bad = self.diag.read()
        except OSError:
            self.stats["errors"] += 1
            return
        self.stats["malformed"] += bad
        for reply in replies:
            late = self._late.pop(reply.seq, None)
            if late is not None:
                self._remember(late[0], self._answer(reply), self.clock())

    def expire(self, now: float) -> None:
        """Drop stale cache entries and late lookups that were never answered."""
        self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._marks = {k: v for k, v in self._marks.items() if v[0] > now}
        self._late = {s: v for s, v in self._late.items() if v[1] > now - LATE_SECONDS}

    # ------------------------------------------------------------ services

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
