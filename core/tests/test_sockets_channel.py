"""DiagChannel.request_now: the synchronous exact lookup on the non-blocking channel (what
``agent.sockets`` uses), replies to other requests kept for read(), and a reply that is not
there yet.  Real kernel sockets; a socket pair stands in for the kernel where the test must
choose what arrives."""

from __future__ import annotations

import errno
import os
import socket
import sys

import pytest
from hostsflow.sockets import diag
from hostsflow.sockets.channel import IPPROTO_TCP, IPPROTO_UDP, DiagChannel, flow_key


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
