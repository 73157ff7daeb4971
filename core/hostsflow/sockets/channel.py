"""Find the local socket of a 5-tuple with sock_diag, in this or another network namespace.

Two ways in:

* :func:`lookup_socket` – a blocking one-shot lookup (a fresh netlink socket, one request, one
  reply).  Reusable by any module or tool that wants "the local socket of this flow" (uid, inode,
  cgroup id, tcp_info); costs one netlink round trip (~100 µs) plus the socket set-up.
* :class:`DiagChannel` – a long-lived non-blocking netlink socket for the packet path: ``send``
  returns a sequence number at once, ``read`` hands back the replies that have arrived;
  ``request_now`` sends and takes the reply the kernel queued inside ``send()``
  (:class:`hostsflow.sockets.LocalSockets`, the agent's ``agent.sockets``, uses it).

Orientation: the caller gives the *local* end and the *remote* end.  TCP requests put the local
end in ``idiag_src``; for UDP the kernel's ``udp_dump_one`` looks the tuple up as an arriving
packet (source = remote), so the ends are swapped there (checked on 6.18, see the tests).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import select
import socket
import threading
import time
from typing import NamedTuple

from . import diag
from .diag import Reply, SockInfo

IPPROTO_TCP, IPPROTO_UDP = 6, 17


class FlowKey(NamedTuple):
    """A connection seen from the local host: protocol, local address/port, remote
    address/port.  Addresses are strings; v4-mapped IPv6 addresses are folded to IPv4 (the
    kernel finds dual-stack sockets from an AF_INET request).

    A named tuple rather than a frozen attrs class: one is made per lookup and hashed as a dict
    key, and a tuple is built in a quarter of the time and hashed in a third."""

    protocol: int
    local: str
    lport: int
    remote: str
    rport: int

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.local else socket.AF_INET


_new = tuple.__new__  # builds a named tuple without its Python-level __new__ (made per lookup)
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def flow_key(protocol: int, local: str, lport: int, remote: str, rport: int) -> FlowKey:
    """Make a :class:`FlowKey`, folding v4-mapped IPv6 addresses to IPv4.

    Raises ValueError when one end is IPv4 and the other IPv6."""
    if local.startswith("::ffff:") and "." in local:
        local = local[7:]
    if remote.startswith("::ffff:") and "." in remote:
        remote = remote[7:]
    if (":" in local) != (":" in remote):
        raise ValueError(f"mixed address families {local} / {remote}")
    return _new(FlowKey, (protocol, local, lport, remote, rport))


def request_for(key: FlowKey, seq: int, *, with_info: bool = True) -> bytes:
    """The exact-lookup request for ``key`` (tcp_info asked for TCP when ``with_info``)."""
    protocol, local, lport, remote, rport = key
    family = _AF_INET6 if ":" in local else _AF_INET
    if protocol == IPPROTO_UDP:  # udp_dump_one: src = sender of an arriving packet
        return diag.build_request(seq, family, protocol, remote, rport, local, lport, ext=0)
    return diag.build_request(seq, family, protocol, local, lport, remote, rport,
                              ext=diag.EXT_INFO if with_info else 0)


def _open_raw() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, diag.NETLINK_SOCK_DIAG)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return s


def open_diag_socket(netns: str | None = None) -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the agent's namespace, or in the network namespace at path
    ``netns`` (``/var/run/netns/NAME``, ``/proc/PID/ns/net``).

    A netlink socket keeps the namespace it was created in, so for another namespace a
    short-lived helper thread enters it (``setns(2)``) and creates the socket; the calling
    thread never changes namespace.  Needs CAP_SYS_ADMIN for ``setns``; raises OSError when it
    cannot be done."""
    if netns is None:
        return _open_raw()
    nsfd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    result: list[socket.socket | Exception] = []

    def enter_and_open() -> None:
        try:
            setns(nsfd, CLONE_NEWNET)
            result.append(_open_raw())
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller thread
            result.append(exc)

    try:
        t = threading.Thread(target=enter_and_open, name="hostsflow-tcp-setns", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(nsfd)
    out = result[0] if result else OSError(errno_mod.EIO, "setns helper thread failed")
    if isinstance(out, Exception):
        raise out
    return out


CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71


def setns(fd: int, nstype: int) -> None:
    """setns(2) for the calling thread (Python 3.11 has no ``os.setns``; one libc call is not
    worth importing pyroute2, which loads its whole package, for)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def netns_cookie(sock: socket.socket) -> int | None:
    """The kernel's cookie of the network namespace ``sock`` lives in (SO_NETNS_COOKIE, Linux
    5.14 and later), or None when the kernel cannot say."""
    try:
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    except OSError:
        return None


def netns_identity(path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of a namespace file: two paths naming the same namespace agree."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


class DiagChannel:
    """A non-blocking sock_diag socket with its own sequence numbers.

    ``send(key)`` writes one request and returns its seq (or raises OSError, e.g. EAGAIN when the
    socket buffer is full).  ``read()`` drains what has arrived and returns ``(replies,
    malformed)``: the decoded replies and how many messages had to be skipped.  A message that is
    well framed but has a bad body is returned as a ``Reply`` with ``errno=EBADMSG`` so the caller
    can still finish the pending request that had its seq.  ``request_now(key)`` is ``send`` plus
    a read of its own reply when the kernel has already queued it (it does so inside ``send()``
    for exact lookups), never blocking."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.sock = open_diag_socket(netns)
        self.sock.setblocking(False)
        #: what its owner files it under (LocalSockets: the namespace's identity)
        self.ident: object = None
        #: the namespace's cookie (the owner log's key), None on kernels before 5.14
        self.netns_cookie = netns_cookie(self.sock)
        self._seq = 0x50C00  # hsflowd's starting value
        self.last_used = time.monotonic()
        #: times the kernel reported ENOBUFS (replies lost; their samples time out)
        self.overruns = 0
        #: replies to other requests (and the malformed count) that request_now read on its way;
        #: the next read() returns them first
        self._held: list[Reply] = []
        self._held_bad = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def send(self, key: FlowKey, *, with_info: bool = True) -> int:
        """Write one request; returns its seq.  Stamps ``last_used`` (time.monotonic)."""
        seq = self.next_seq()
        self.sock.send(request_for(key, seq, with_info=with_info))
        self.last_used = time.monotonic()
        return seq

    @property
    def has_held(self) -> bool:
        """True when :meth:`request_now` read replies (or malformed messages) that belong to
        other requests: call :meth:`read` for them, the socket will not signal them again."""
        return bool(self._held) or self._held_bad > 0

    def read(self, limit: int = 64) -> tuple[list[Reply], int]:
        """The replies held back by :meth:`request_now`, then up to ``limit`` datagrams read
        without blocking."""
        replies, malformed = self._held, self._held_bad
        self._held, self._held_bad = [], 0
        for _ in range(limit):
            data = self._recv()
            if not data:
                break
            got, bad = read_buffer(data)
            replies.extend(got)
            malformed += bad
        return replies, malformed

    def request_now(self, key: FlowKey, *, with_info: bool = True, limit: int = 8
                    ) -> tuple[int, Reply | None]:
        """Send an exact lookup for ``key`` and return ``(seq, reply)`` without blocking.

        The kernel answers an exact (non-dump) lookup inside ``send()``, so the reply is
        normally queued already: it is read and returned, and nothing more is read.  ``reply`` is
        None when it is not there (yet); it then comes through :meth:`read` like the reply to a
        :meth:`send`.  Replies to other requests met on the way are kept for the next
        :meth:`read` (see :attr:`has_held`).  Raises OSError as :meth:`send` does.  This is
        the per-sample path: it leaves ``last_used`` to the caller, who has the clock."""
        seq = self.next_seq()
        self.sock.send(request_for(key, seq, with_info=with_info))
        return seq, self._take(seq, limit)

    def _take(self, seq: int, limit: int) -> Reply | None:
        """The reply to ``seq`` from what is queued, reading at most ``limit`` datagrams;
        the replies to other requests read on the way are held for :meth:`read`."""
        held = self._held
        if held:  # read on the way to an earlier request's reply
            for i, r in enumerate(held):
                if r.seq == seq:
                    del held[i]
                    return r
        for _ in range(limit):
            data = self._recv()
            if not data:
                break
            got, bad = read_buffer(data)
            if bad:
                self._held_bad += bad
            mine: Reply | None = None
            for r in got:
                if mine is None and r.seq == seq:
                    mine = r
                else:
                    held.append(r)
            if mine is not None:
                return mine
        return None

    def _recv(self) -> bytes:
        """One datagram, or b"" when none is queued.  ENOBUFS (the kernel dropped replies,
        whose samples then time out) is counted in ``overruns`` and reading goes on."""
        while True:
            try:
                return self.sock.recv(65536)
            except BlockingIOError:
                return b""
            except OSError as exc:
                if exc.errno != errno_mod.ENOBUFS:
                    raise
                self.overruns += 1

    def close(self) -> None:
        self.sock.close()


def read_buffer(data: bytes) -> tuple[list[Reply], int]:
    """Decode one received datagram; malformed messages become ``errno=EBADMSG`` replies when
    their seq is known, and are counted.  Never raises."""
    replies, error = diag.parse_replies(data)
    if error is None:
        return replies, 0
    if len(error.args) > 1:
        replies.append(Reply(error.args[1], errno=errno_mod.EBADMSG))
    return replies, 1


def lookup_socket(
    protocol: int,
    local: str,
    lport: int,
    remote: str,
    rport: int,
    *,
    netns: str | None = None,
    timeout: float = 0.5,
    with_info: bool = True,
) -> SockInfo | None:
    """Look up the local socket of one connection (blocking, one netlink round trip).

    :param protocol: 6 (TCP) or 17 (UDP).
    :param local: the local address (IPv4 or IPv6 string; v4-mapped is folded to IPv4).
    :param lport: the local port.  ``remote``/``rport`` the other end.
    :param netns: path of a network namespace file to look in (None: the caller's).
    :returns: the :class:`SockInfo` (uid, inode, cgroup_id, tcp_info for TCP), or None when
        there is no such socket.  Raises OSError for netlink failures other than "not found"
        and :class:`MalformedReply` for a reply that cannot be decoded."""
    key = flow_key(protocol, local, lport, remote, rport)
    s = open_diag_socket(netns)
    try:
        seq = 1
        s.send(request_for(key, seq, with_info=with_info))
        deadline = time.monotonic() + timeout
        poller = select.poll()  # not select(): the fd may be above FD_SETSIZE
        poller.register(s, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError("sock_diag lookup timed out")
            for r in diag.iter_replies(s.recv(65536)):
                if r.seq != seq:
                    continue
                if r.sock is not None:
                    return r.sock
                if r.errno in (errno_mod.ENOENT, 0):
                    return None
                raise OSError(r.errno, os.strerror(r.errno))
    finally:
        s.close()
