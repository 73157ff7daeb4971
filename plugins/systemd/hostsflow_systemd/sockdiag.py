"""A small sock_diag (NETLINK_SOCK_DIAG) exact lookup: which local socket owns a 5-tuple, and
its cgroup2 id (INET_DIAG_CGROUP_ID) and inode.

Used for traffic marking when the tcp plugin did not already put the socket's cgroup id in the
sample's stash (for example for UDP, or when both ends are local services).  The request is a
non-dump exact lookup: the kernel answers it synchronously inside ``send()``, so the reply is
read at once with a non-blocking ``recv``; the loop never waits.
"""

from __future__ import annotations

import errno
import socket
import struct

import attrs

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_CGROUP_ID = 21
INET_DIAG_NOCOOKIE = 0xFFFFFFFFFFFFFFFF
ALL_STATES = 0xFFFFFFFF

_HDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBxI")
_PORTS = struct.Struct("!HH")


@attrs.frozen(slots=True)
class SockInfo:
    """What sock_diag says about one socket."""

    inode: int
    uid: int
    cgroup_id: int  #: 0 when the kernel did not report INET_DIAG_CGROUP_ID


class SockDiagError(Exception):
    """The netlink reply could not be parsed."""


class SockDiag:
    """One non-blocking sock_diag socket doing exact lookups (TCP and UDP, IPv4 and IPv6)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        self.sock.setblocking(False)
        self.sock.bind((0, 0))
        self._seq = 0x50C00
        self.requests = 0
        self.not_found = 0
        self.malformed = 0
        self.overruns = 0
        self.stray: list[tuple[int, SockInfo | None]] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, proto: int, family: int, local: bytes, lport: int, remote: bytes,
             rport: int) -> int:
        """Send an exact lookup for the local socket of (local:lport <-> remote:rport) and
        return its sequence number.  ``local``/``remote`` are packed addresses of ``family``."""
        if proto == socket.IPPROTO_UDP:
            # udp_dump_one looks the socket up as for an incoming packet: the request's src is
            # the remote end (kernel comment: "src and dst are swapped for historical reasons")
            src, sport, dst, dport = remote, rport, local, lport
        else:
            src, sport, dst, dport = local, lport, remote, rport
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        body = (_REQ.pack(family, proto, 0, ALL_STATES) + _PORTS.pack(sport, dport) +
                src.ljust(16, b"\0") + dst.ljust(16, b"\0") +
                struct.pack("=IQ", 0, INET_DIAG_NOCOOKIE))
        self.requests += 1
        self.sock.send(_HDR.pack(16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body)
        return seq

    def poll(self, limit: int = 256) -> list[tuple[int, "SockInfo | None"]]:
        """Replies that have arrived, as (seq, SockInfo or None for "no such socket"); never
        blocks."""
        out: list[tuple[int, SockInfo | None]] = []
        for _ in range(limit):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            out.extend(self._parse_all(data))
        return out

    def lookup(self, proto: int, family: int, local: bytes, lport: int, remote: bytes,
               rport: int) -> SockInfo | None:
        """Send and read the answer at once (the kernel answers exact lookups inside
        ``send``).  Raises BlockingIOError if it did not; replies to other requests read on the
        way are kept in ``self.stray``."""
        seq = self.send(proto, family, local, lport, remote, rport)
        for _ in range(4):
            for rseq, info in self.poll(8):
                if rseq == seq:
                    return info
                self.stray.append((rseq, info))
        raise BlockingIOError(errno.EAGAIN, "sock_diag reply not there yet")

    def _parse_all(self, data: bytes) -> list[tuple[int, "SockInfo | None"]]:
        """Decode every message of one datagram; malformed ones are counted and skipped."""
        out: list[tuple[int, SockInfo | None]] = []
        off = 0
        while off + 16 <= len(data):
            ln, typ, _flags, seq, _pid = _HDR.unpack_from(data, off)
            if ln < 16 or off + ln > len(data):
                self.malformed += 1
                break
            if typ == NLMSG_ERROR or typ == NLMSG_DONE:
                self.not_found += 1
                out.append((seq, None))
            elif ln < 16 + 72:
                self.malformed += 1
                out.append((seq, None))
            else:
                uid, inode = struct.unpack_from("=II", data, off + 16 + 64)
                cgid = 0
                a, end = off + 16 + 72, off + ln
                while a + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype == INET_DIAG_CGROUP_ID and alen >= 12 and a + 12 <= end:
                        cgid = struct.unpack_from("=Q", data, a + 4)[0]
                    a += (alen + 3) & ~3
                out.append((seq, SockInfo(inode, uid, cgid)))
            off += (ln + 3) & ~3
        return out


