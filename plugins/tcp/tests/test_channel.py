"""DiagChannel.request_now: the synchronous exact lookup on the non-blocking channel (used by
the systemd module's marking), replies to other requests kept for read(), and a reply that is
not there yet; request_many: several lookups in one send().  Real kernel sockets; a socket pair stands in for the kernel where the test must
choose what arrives."""

from __future__ import annotations

import errno
import os
import socket
import sys

import pytest
from hostsflow_tcp import diag
from hostsflow_tcp.lookup import IPPROTO_TCP, IPPROTO_UDP, DiagChannel, flow_key


@pytest.fixture
def channel():
    ch = DiagChannel()
    yield ch
    ch.close()


def _tcp_pair(family: int, addr: str):
    lst = socket.socket(family)
    lst.bind((addr, 0))
    lst.listen()
    c = socket.create_connection(lst.getsockname()[:2])
    a, _ = lst.accept()
    return c, a, lst


@pytest.mark.parametrize("family,addr", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_request_now_tcp_with_and_without_tcp_info(channel, family, addr):
    c, a, lst = _tcp_pair(family, addr)
    try:
        key = flow_key(IPPROTO_TCP, addr, c.getsockname()[1], addr, lst.getsockname()[1])
        seq, r = channel.request_now(key, with_info=False)
        assert r is not None and r.seq == seq and r.sock is not None
        assert r.sock.inode == os.fstat(c.fileno()).st_ino and r.sock.uid == os.geteuid()
        assert r.sock.tcp_info is None  # not asked for
        assert (r.sock.src, r.sock.sport) == (addr, c.getsockname()[1])
        seq2, r2 = channel.request_now(key)
        assert seq2 != seq and r2 is not None and r2.sock is not None
        assert r2.sock.tcp_info is not None and r2.sock.tcp_info.snd_mss > 0
        assert not channel.has_held
    finally:
        for s in (c, a, lst):
            s.close()


def test_request_now_udp_and_v4_mapped_and_missing(channel):
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.bind(("::", 0))  # dual stack: found from an AF_INET request for a v4-mapped tuple
    try:
        port = u.getsockname()[1]
        _, r = channel.request_now(flow_key(IPPROTO_UDP, "::ffff:127.0.0.1", port, "127.0.0.9", 53))
        assert r is not None and r.sock is not None
        assert r.sock.inode == os.fstat(u.fileno()).st_ino
        _, gone = channel.request_now(flow_key(IPPROTO_TCP, "127.0.0.1", 1, "127.0.0.1", 2))
        assert gone is not None and gone.sock is None and gone.errno == errno.ENOENT
    finally:
        u.close()


def test_reply_to_an_earlier_send_is_kept_for_read(channel):
    """A request sent with send() and not read yet: request_now meets its reply first, returns
    its own, and the next read() hands the other one out (the socket will not signal it)."""
    c, a, lst = _tcp_pair(socket.AF_INET, "127.0.0.1")
    try:
        lp, cp = lst.getsockname()[1], c.getsockname()[1]
        first = channel.send(flow_key(IPPROTO_TCP, "127.0.0.1", lp, "127.0.0.1", cp))
        seq, r = channel.request_now(flow_key(IPPROTO_TCP, "127.0.0.1", cp, "127.0.0.1", lp))
        assert r is not None and r.seq == seq and r.sock.inode == os.fstat(c.fileno()).st_ino
        assert channel.has_held
        replies, bad = channel.read()
        assert bad == 0 and [x.seq for x in replies] == [first]
        assert replies[0].sock.inode == os.fstat(a.fileno()).st_ino
        assert not channel.has_held and channel.read() == ([], 0)
    finally:
        for s in (c, a, lst):
            s.close()


def test_reply_not_there_yet_and_malformed_on_the_way(channel):
    """The kernel is replaced by a socket pair: a damaged datagram is already queued, the answer
    to the request comes only later.  request_now never blocks: it returns no reply, keeps the
    malformed count for read(), and the late answer arrives through read()."""
    real = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, diag.NETLINK_SOCK_DIAG)
    c, a, lst = _tcp_pair(socket.AF_INET, "127.0.0.1")
    lp, cp = lst.getsockname()[1], c.getsockname()[1]
    real.send(diag.build_request(1, socket.AF_INET, 6, "127.0.0.1", cp, "127.0.0.1", lp, ext=0))
    good = real.recv(65536)
    real.close()
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    channel.sock.close()
    channel.sock = near
    near.setblocking(False)
    try:
        far.send(b"\x10\x00")  # shorter than a netlink header
        seq, r = channel.request_now(flow_key(IPPROTO_TCP, "127.0.0.1", cp, "127.0.0.1", lp))
        assert r is None and channel.has_held
        assert far.recv(4096)[8:12] == seq.to_bytes(4, sys.byteorder)  # the request went out
        late = bytearray(good)
        late[8:12] = seq.to_bytes(4, sys.byteorder)
        far.send(bytes(late))
        replies, bad = channel.read()
        assert bad == 1 and [x.seq for x in replies] == [seq]
        assert replies[0].sock.inode == os.fstat(c.fileno()).st_ino
        assert not channel.has_held
    finally:
        far.close()
        for s in (c, a, lst):
            s.close()


def test_request_many_both_ends_in_one_send(channel):
    """Both ends of a loopback connection, the first with tcp_info, in one request_many: each
    reply is the right socket, in the order asked, nothing is left over; and a missing socket
    among them gets its ENOENT without disturbing the others."""
    c, a, lst = _tcp_pair(socket.AF_INET, "127.0.0.1")
    try:
        lp, cp = lst.getsockname()[1], c.getsockname()[1]
        client = flow_key(IPPROTO_TCP, "127.0.0.1", cp, "127.0.0.1", lp)
        server = flow_key(IPPROTO_TCP, "127.0.0.1", lp, "127.0.0.1", cp)
        missing = flow_key(IPPROTO_TCP, "127.0.0.1", 1, "127.0.0.1", 2)
        (s1, r1), (s2, r2), (s3, r3) = channel.request_many(
            [(client, True), (missing, False), (server, False)])
        assert len({s1, s2, s3}) == 3 and (r1.seq, r2.seq, r3.seq) == (s1, s2, s3)
        assert r1.sock.inode == os.fstat(c.fileno()).st_ino and r1.sock.tcp_info.snd_mss > 0
        assert r2.sock is None and r2.errno == errno.ENOENT
        assert r3.sock.inode == os.fstat(a.fileno()).st_ino and r3.sock.tcp_info is None
        assert not channel.has_held and channel.read() == ([], 0)
    finally:
        for s in (c, a, lst):
            s.close()


def test_request_many_writes_one_datagram(channel):
    """What request_many writes (a socket pair stands in for the kernel): ONE datagram holding
    one 72-byte request per key, with their own seqs; no reply yet gives None for each."""
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    channel.sock.close()
    channel.sock = near
    near.setblocking(False)
    try:
        keys = [(flow_key(IPPROTO_TCP, "127.0.0.1", 1000 + i, "127.0.0.2", 80), i == 0)
                for i in range(3)]
        got = channel.request_many(keys)
        assert [r for _, r in got] == [None, None, None]
        data = far.recv(65536)
        assert len(data) == 3 * 72
        far.setblocking(False)
        with pytest.raises(BlockingIOError):
            far.recv(65536)  # nothing else was written
        seqs = [int.from_bytes(data[i * 72 + 8:i * 72 + 12], sys.byteorder) for i in range(3)]
        assert seqs == [s for s, _ in got]
        assert [data[i * 72 + 18] for i in range(3)] == [diag.EXT_INFO, 0, 0]  # idiag_ext
    finally:
        far.close()
