"""sock_diag (inet_diag) wire format: build exact-lookup requests, read replies.

A small hand-written codec instead of pyroute2's generic ``nlmsg`` decoder, because it runs once
per eligible sampled packet: decoding one reply with pyroute2 costs tens of microseconds, this
parser a few (see the README for the measured figures).  Every length read from the kernel is
checked before it is used; anything that does not fit raises :class:`MalformedReply`, which the
caller counts and skips.

Layouts (``linux/inet_diag.h``, ``linux/tcp.h``; native byte order except ports and addresses):

* ``nlmsghdr`` 16 bytes: len u32, type u16, flags u16, seq u32, pid u32.
* ``inet_diag_req_v2`` 56 bytes: family, protocol, ext, pad (u8), states u32, ``inet_diag_sockid``.
* ``inet_diag_sockid`` 48 bytes: sport be16, dport be16, src[16], dst[16], if u32, cookie 2*u32.
* ``inet_diag_msg`` 72 bytes: family, state, timer, retrans (u8), sockid, expires, rqueue, wqueue,
  uid, inode (u32); then route attributes (``rtattr``: len u16, type u16, 4-byte aligned).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3

INET_DIAG_INFO = 2
INET_DIAG_CGROUP_ID = 21
#: ``idiag_ext`` bit asking for INET_DIAG_INFO (struct tcp_info).  INET_DIAG_CGROUP_ID has no bit
#: (``idiag_ext`` is a u8 and the attribute is number 21): the kernel sends it with every reply
#: when it is built with CONFIG_SOCK_CGROUP_DATA.
EXT_INFO = 1 << (INET_DIAG_INFO - 1)

TCP_ESTABLISHED = 1
STATES_ALL = 0xFFFFFFFF
NOCOOKIE = 0xFFFFFFFFFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")
#: nlmsghdr + inet_diag_req_v2 (family, protocol, ext, pad, states, then the sockid: sport and
#: dport in network order (given through htons), src[16], dst[16], if, cookie)
_REQUEST = struct.Struct("=IHHIIBBBxIHH16s16sIQ")
#: inet_diag_msg in one read: family, state, timer, retrans, sport, dport (read in native
#: order here, swapped with ntohs), src[16], dst[16], if, cookie, expires, rqueue, wqueue, uid,
#: inode
_MSG = struct.Struct("=BBBBHH16s16sIQIIIII")
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_ntop, _pton, _htons, _ntohs = socket.inet_ntop, socket.inet_pton, socket.htons, socket.ntohs
_RTA = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")
_U64 = struct.Struct("=Q")

NLMSGHDR_LEN = 16
REQ_LEN = 56
DIAG_MSG_LEN = 72

_U32 = struct.Struct("=I")
#: the shortest tcp_info we accept (up to and including tcpi_total_retrans, kernel 2.6.x)
TCPI_MIN_LEN = 104
#: struct tcp_info up to tcpi_total_retrans in one read: snd_mss (offset 16), rcv_mss, unacked,
#: lost (32), pmtu (60), rtt (68), rttvar, snd_cwnd (80), reordering (88), total_retrans (100)
_TCPI = struct.Struct("=16x3I4xI24xI4x2I4xI4xI8xI")
assert _TCPI.size == TCPI_MIN_LEN
#: offset of tcpi_min_rtt (kernel 4.6 and later)
_TCPI_MIN_RTT = 148


class MalformedReply(ValueError):
    """A sock_diag reply whose lengths or fields do not fit; count it and skip the message."""


class TcpInfo(NamedTuple):
    """The struct tcp_info fields that extended_tcp_info (2209) carries, in the record's order
    (``ExtendedTcpInfo(dir, *tcp_info)``).  A named tuple: one is built per reply."""

    snd_mss: int = 0
    rcv_mss: int = 0
    unacked: int = 0
    lost: int = 0
    total_retrans: int = 0
    pmtu: int = 0
    rtt: int = 0
    rttvar: int = 0
    snd_cwnd: int = 0
    reordering: int = 0
    min_rtt: int = 0


# SockInfo and Reply are built once per reply on the packet path: named tuples, built with
# tuple.__new__ by the parser (an attrs class's __init__ costs about 0.4 us more per object), and
# the address strings are made only when asked for (two inet_ntop calls are another 0.3-0.6 us;
# the systemd module's marking never reads them).  Measured with Python 3.11.
class SockInfo(NamedTuple):
    """One socket as a sock_diag reply describes it.

    ``src``/``dst`` are the address strings (properties, decoded from ``src_raw``/``dst_raw``,
    the 16-byte ``idiag_src``/``idiag_dst`` fields, on each use)."""

    family: int
    state: int
    src_raw: bytes
    sport: int
    dst_raw: bytes
    dport: int
    uid: int
    inode: int
    cookie: int
    tcp_info: TcpInfo | None = None
    cgroup_id: int | None = None

    @property
    def src(self) -> str:
        """The socket's own (local) address."""
        return _ntop(self.family, self.src_raw[:4] if self.family == _AF_INET else self.src_raw)

    @property
    def dst(self) -> str:
        """The peer's address (all zeros for a listening or unconnected socket)."""
        return _ntop(self.family, self.dst_raw[:4] if self.family == _AF_INET else self.dst_raw)


class Reply(NamedTuple):
    """One netlink message of a reply: a socket (``sock``) or an error (``errno``, 0 = ACK)."""

    seq: int
    sock: SockInfo | None = None
    errno: int = 0
    done: bool = False


_new = tuple.__new__  # builds a named tuple from a tuple without its Python-level __new__


#: family -> address text -> packed; flows repeat addresses, and packing costs more than a lookup
_PACKED: dict[int, dict[str, bytes]] = {_AF_INET: {}, _AF_INET6: {}}
_PACKED_MAX = 8192


def _packed(family: int, addr: str) -> bytes:
    cache = _PACKED.get(family)
    p = cache.get(addr) if cache is not None else None
    if p is None:
        p = _pton(family, addr)  # OSError for a bad address or family
        if cache is not None:
            if len(cache) >= _PACKED_MAX:
                cache.clear()
            cache[addr] = p
    return p


def build_request(
    seq: int,
    family: int,
    protocol: int,
    src: str,
    sport: int,
    dst: str,
    dport: int,
    *,
    ext: int = EXT_INFO,
    states: int = STATES_ALL,
    ifindex: int = 0,
    dump: bool = False,
) -> bytes:
    """One SOCK_DIAG_BY_FAMILY request for the socket ``src:sport -> dst:dport``.

    For TCP ``src`` is the local end.  Without ``dump`` it is an exact lookup (the cookie is
    INET_DIAG_NOCOOKIE); with ``dump`` the kernel filters on the ports only."""
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    cache = _PACKED.get(family)
    psrc = cache.get(src) if cache is not None else None
    pdst = cache.get(dst) if cache is not None else None
    return _REQUEST.pack(
        NLMSGHDR_LEN + REQ_LEN, SOCK_DIAG_BY_FAMILY, flags, seq, 0,
        family, protocol, ext, states, _htons(sport), _htons(dport),
        psrc or _packed(family, src), pdst or _packed(family, dst),  # "16s" zero-pads IPv4
        ifindex, NOCOOKIE,
    )


def parse_tcp_info(data: bytes | memoryview, off: int = 0, n: int | None = None) -> TcpInfo:
    """Read the extended_tcp_info fields from the struct tcp_info of ``n`` bytes (default: the
    rest of ``data``) at ``off``, whatever the kernel's struct length.

    Fields past the end of a short (old-kernel) struct are 0, as hsflowd zero-fills."""
    if n is None:
        n = len(data) - off
    if n < TCPI_MIN_LEN:
        raise MalformedReply(f"tcp_info of {n} bytes, need at least {TCPI_MIN_LEN}")
    mss, rcv_mss, unacked, lost, pmtu, rtt, rttvar, cwnd, reordering, retrans = (
        _TCPI.unpack_from(data, off))
    min_rtt = _U32.unpack_from(data, off + _TCPI_MIN_RTT)[0] if n >= _TCPI_MIN_RTT + 4 else 0
    return _new(TcpInfo, (mss, rcv_mss, unacked, lost, retrans, pmtu, rtt, rttvar, cwnd,
                          reordering, min_rtt))


def _attributes(data: bytes | memoryview, a: int, end: int) -> tuple[TcpInfo | None, int | None]:
    """(tcp_info, cgroup id) from the route attributes in ``data[a:end]``; the others are
    skipped."""
    tcp_info: TcpInfo | None = None
    cgroup_id: int | None = None
    while a < end:
        if end - a < 4:
            raise MalformedReply("truncated attribute header")
        alen_, atype = _RTA.unpack_from(data, a)
        if alen_ < 4 or a + alen_ > end:
            raise MalformedReply(f"attribute {atype} length {alen_} does not fit")
        atype &= 0x3FFF  # NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if atype == INET_DIAG_INFO:
            tcp_info = parse_tcp_info(data, a + 4, alen_ - 4)
        elif atype == INET_DIAG_CGROUP_ID:
            if alen_ != 12:
                raise MalformedReply(f"INET_DIAG_CGROUP_ID of {alen_ - 4} bytes")
            cgroup_id = _U64.unpack_from(data, a + 4)[0]
        a += (alen_ + 3) & ~3
    return tcp_info, cgroup_id


def parse_diag_msg(data: bytes | memoryview, off: int, end: int) -> SockInfo:
    """Decode one ``inet_diag_msg`` plus attributes lying in ``data[off:end]``."""
    if end - off < DIAG_MSG_LEN:
        raise MalformedReply(f"inet_diag_msg of {end - off} bytes, need {DIAG_MSG_LEN}")
    (family, state, _timer, _retrans, sport, dport, src16, dst16, _if, cookie, _expires, _rq,
     _wq, uid, inode) = _MSG.unpack_from(data, off)
    if family != _AF_INET and family != _AF_INET6:
        raise MalformedReply(f"inet_diag_msg family {family}")
    tcp_info, cgroup_id = _attributes(data, off + DIAG_MSG_LEN, end)
    return _new(SockInfo, (family, state, src16, _ntohs(sport), dst16, _ntohs(dport), uid, inode,
                           cookie, tcp_info, cgroup_id))


def parse_replies(data: bytes | memoryview) -> tuple[list[Reply], MalformedReply | None]:
    """Split one ``recv()`` buffer into :class:`Reply` objects, in order, stopping at the first
    message that does not fit.

    Returns the replies decoded before it and the :class:`MalformedReply` that stopped the
    split (None when the whole buffer was good).  A malformed body inside a well-framed message
    gives no reply; its seq is in the exception's ``args[1]`` so the caller can still match it.
    Never raises."""
    out: list[Reply] = []
    n = len(data)
    off = 0
    while off < n:
        if n - off < NLMSGHDR_LEN:
            return out, MalformedReply(f"{n - off} trailing bytes, shorter than a netlink header")
        ln, typ, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if ln < NLMSGHDR_LEN or off + ln > n:
            return out, MalformedReply(f"netlink message length {ln} at offset {off} of {n}")
        end = off + ln
        if typ == SOCK_DIAG_BY_FAMILY:
            try:
                sock = parse_diag_msg(data, off + NLMSGHDR_LEN, end)
            except MalformedReply as exc:
                return out, MalformedReply(str(exc), seq)
            out.append(_new(Reply, (seq, sock, 0, False)))
        elif typ == NLMSG_ERROR:
            if ln < NLMSGHDR_LEN + 4:
                return out, MalformedReply("NLMSG_ERROR without an error code", seq)
            out.append(_new(Reply, (seq, None, -_ERRNO.unpack_from(data, off + NLMSGHDR_LEN)[0],
                                    False)))
        elif typ == NLMSG_DONE:
            out.append(_new(Reply, (seq, None, 0, True)))
        else:
            return out, MalformedReply(f"unexpected netlink message type {typ}", seq)
        off += (ln + 3) & ~3
    return out, None


def iter_replies(data: bytes | memoryview) -> Iterator[Reply]:
    """Split one ``recv()`` buffer into :class:`Reply` objects, in order.

    Raises :class:`MalformedReply` at the first message whose header does not fit; the messages
    before it have already been yielded.  A malformed body inside a well-framed message yields
    nothing for that message and raises after it, so the caller can still match its seq: the
    exception carries it in ``args[1]``."""
    replies, error = parse_replies(data)
    yield from replies
    if error is not None:
        raise error
