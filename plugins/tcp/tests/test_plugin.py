"""The tcp module in the agent's own namespace (loopback), eligibility, de-duplication, bad
replies, the cgroup id, and the reusable :func:`lookup_socket`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from hostsflow.host.interfaces import Interface, InterfaceTable
from hostsflow.samples import (
    DIRECTION_SENT,
    SOCKET_CGROUP_ID,
    SOCKET_INODE,
    SOCKET_LOCAL_SRC,
    SOCKET_LOOKED_UP,
)
from hostsflow.sflow.records import ExtendedTcpInfo
from hostsflow.testing import AgentHarness
from hostsflow_tcp import companion, diag, lookup_socket
from hostsflow_tcp.lookup import FlowKey, flow_key
from hostsflow_tcp.plugin import REUSE_SECONDS, TcpPlugin

LOCAL = InterfaceTable([Interface("lo", 1, loopback=True, addresses=["127.0.0.1", "::1"])])


@pytest.fixture
def loop_conn():
    """127.0.0.2 -> 127.0.0.1: only .1 counts as local in LOCAL, so exactly one end is."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    c = socket.socket()
    c.bind(("127.0.0.2", 0))
    c.connect(lst.getsockname())
    a, _ = lst.accept()
    c.sendall(b"x" * 50_000)
    got = 0
    while got < 50_000:
        got += len(a.recv(1 << 20))
    yield c, a, lst
    for s in (c, a, lst):
        s.close()


def make(udp: bool = False, interfaces: InterfaceTable = LOCAL) -> tuple[AgentHarness, TcpPlugin]:
    p = TcpPlugin()
    conf = "sflow { collector { ip = 127.0.0.1 } tcp { %s } }" % ("udp = on" if udp else "")
    h = AgentHarness(conf, plugins={"tcp": p}, interfaces=interfaces)
    h.start()
    return h, p


def swap_channel_socket(h: AgentHarness, p: TcpPlugin, sock: socket.socket,
                        watch: bool = True) -> None:
    """Replace the plugin's sock_diag socket with ``sock`` (one end of a socket pair the test
    plays the kernel on), watched by the agent's loop unless ``watch`` is false."""
    ch = p.channels[None]
    h.agent.remove_reader(ch.fileno())
    ch.sock.close()
    ch.sock = sock
    if watch:
        sock.setblocking(False)
        p._watch(ch)


def settle(h: AgentHarness, p: TcpPlugin) -> None:
    end = time.monotonic() + 1
    while p.pending and time.monotonic() < end:
        h.run_loop(0.02)
    h.flush()


def recs(h: AgentHarness) -> list[list[ExtendedTcpInfo]]:
    return [[r for r in s.records if isinstance(r, ExtendedTcpInfo)] for s in h.flow_samples()]


def test_local_socket_both_directions_one_request(loop_conn):
    c, a, lst = loop_conn
    lport, cport = lst.getsockname()[1], c.getsockname()[1]
    h, p = make()
    try:
        rx = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
        tx = h.make_sample(tcp=("127.0.0.1", lport, "127.0.0.2", cport))
        h.feed(rx, tx)
        # the kernel answers inside send(): no hold, the record is there when the hook returns
        assert not rx.held and not tx.held and not p.pending
        h.flush()
        (r1,), (r2,) = recs(h)
        assert (r1.dir, r2.dir) == (1, 2)
        assert r1.snd_mss > 0 and r1.rtt > 0 and r1.pmtu == 65535
        # same socket: one request, its answer reused for the second sample
        assert p.stats["requests"] == 1 and p.stats["reused"] == 1 and p.stats["held"] == 0
        assert rx.stash[SOCKET_INODE] == tx.stash[SOCKET_INODE] == os.fstat(a.fileno()).st_ino
        # the core's well-known key says which end the socket keys describe
        assert rx.stash[SOCKET_LOCAL_SRC] is False and tx.stash[SOCKET_LOCAL_SRC] is True
    finally:
        h.stop()


class _OtherEnd:
    """A companion (as the systemd module's marking is) that wants the other end of every
    connection the tcp module looks up, and keeps the replies it is handed."""

    def __init__(self) -> None:
        self.asked: list[FlowKey] = []
        self.got: dict[FlowKey, object] = {}

    def also_wanted(self, sample, key: FlowKey) -> FlowKey:
        self.asked.append(key)
        return flow_key(key.protocol, key.remote, key.rport, key.local, key.lport)

    def answered(self, key: FlowKey, reply) -> None:
        self.got[key] = reply


def test_companion_lookup_goes_out_with_ours(loop_conn):
    """A registered companion's lookup (the other end, without tcp_info) is made with the tcp
    module's own, and its reply handed over before the hook returns; a reused answer asks it
    nothing."""
    c, a, lst = loop_conn
    lport, cport = lst.getsockname()[1], c.getsockname()[1]
    p, other = TcpPlugin(), _OtherEnd()
    h = AgentHarness("sflow { collector { ip = 127.0.0.1 } tcp { } }", plugins={"tcp": p},
                     interfaces=LOCAL)
    companion.register(h.agent, other)
    try:
        h.start()
        rx = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
        h.feed(rx)
        assert not rx.held and p.stats["requests"] == 1
        peer = flow_key(6, "127.0.0.2", cport, "127.0.0.1", lport)
        assert list(other.got) == [peer]
        r = other.got[peer]
        assert r.sock.inode == os.fstat(c.fileno()).st_ino and r.sock.tcp_info is None
        assert rx.stash[SOCKET_INODE] == os.fstat(a.fileno()).st_ino
        h.feed(h.make_sample(tcp=("127.0.0.1", lport, "127.0.0.2", cport)))
        assert p.stats["reused"] == 1 and len(other.asked) == 1
        assert not p.channels[None].has_held  # nothing left over on the channel
        h.flush()
        assert [len(x) for x in recs(h)] == [1, 1]
    finally:
        companion.register(h.agent, None)
        h.stop()


def test_answer_reused_only_within_the_window(loop_conn):
    """A socket's answer is reused for REUSE_SECONDS of agent time, then looked up afresh
    (a new request); expired answers are dropped at the tick."""
    c, _a, lst = loop_conn
    lport, cport = lst.getsockname()[1], c.getsockname()[1]
    h, p = make()
    try:
        tup = ("127.0.0.1", lport, "127.0.0.2", cport)
        h.feed(h.make_sample(tcp=tup))
        h.clock.advance(REUSE_SECONDS / 2)
        h.feed(h.make_sample(tcp=tup))
        assert p.stats["requests"] == 1 and p.stats["reused"] == 1
        h.clock.advance(REUSE_SECONDS)
        h.feed(h.make_sample(tcp=tup))
        assert p.stats["requests"] == 2 and p.stats["reused"] == 1
        h.flush()
        (r1,), (r2,), (r3,) = recs(h)
        assert r1 == r2  # the reused answer
        assert r3.snd_mss > 0 and r3.rtt > 0  # a fresh, complete answer
        assert len(p.recent) == 1
        h.tick()  # a second later: expired
        assert not p.recent
    finally:
        h.stop()


def test_missing_socket_stash_names_the_end_looked_up():
    """No such socket: no record, but SOCKET_LOOKED_UP and SOCKET_LOCAL_SRC say which end was
    looked up (so the systemd module does not look it up again); no identity keys."""
    h, p = make()
    try:
        s = h.make_sample(tcp=("127.0.0.2", 1, "127.0.0.1", 2))
        h.feed(s)
        assert not s.held and p.stats["not_found"] == 1
        assert s.stash[SOCKET_LOOKED_UP] is True and s.stash[SOCKET_LOCAL_SRC] is False
        assert SOCKET_INODE not in s.stash and SOCKET_CGROUP_ID not in s.stash
        h.flush()
        assert recs(h) == [[]]
    finally:
        h.stop()


@pytest.mark.parametrize("tup", [
    ("127.0.0.1", 1000, "127.0.0.1", 2000),  # both ends local
    ("10.9.9.9", 1000, "10.9.9.8", 2000),  # neither end local
])
def test_not_exactly_one_local_end_is_skipped(tup):
    h, p = make()
    try:
        s = h.make_sample(tcp=tup, direction=DIRECTION_SENT)
        h.feed(s)
        assert not s.held and p.stats["requests"] == 0
    finally:
        h.stop()


def test_udp_only_when_enabled():
    for udp, want in ((False, 0), (True, 1)):
        h, p = make(udp=udp)
        try:
            h.feed(h.make_sample(udp=("127.0.0.2", 5000, "127.0.0.1", 53)))
            settle(h, p)
            assert p.stats["requests"] == want
            assert all(not r for r in recs(h))
        finally:
            h.stop()


def test_malformed_reply_counted_logged_once_and_skipped(loop_conn, capsys):
    """The channel's socket is swapped for a real datagram socket pair whose far end answers
    with a damaged copy of a real kernel reply (right seq, attribute length out of range)."""
    c, a, lst = loop_conn
    lport, cport = lst.getsockname()[1], c.getsockname()[1]
    real = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, diag.NETLINK_SOCK_DIAG)
    real.send(diag.build_request(1, socket.AF_INET, 6, "127.0.0.1", lport, "127.0.0.2", cport))
    good = bytearray(real.recv(65536))
    real.close()
    h, p = make()
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        swap_channel_socket(h, p, near)
        for i in range(3):
            s = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
            h.feed(s)
            req = far.recv(4096)
            seq = int.from_bytes(req[8:12], sys.byteorder)
            assert len(req) == 72 and req[16] == socket.AF_INET
            bad = bytearray(good)
            bad[8:12] = req[8:12]
            bad[16 + 72:16 + 74] = (0xFFF0).to_bytes(2, sys.byteorder)
            far.send(bytes(bad))
            h.run_loop(0.05)
            assert not s.held, "released as soon as the damaged reply was read"
            assert seq not in {k[1] for k in p.pending}
        h.flush()
        assert len(h.flow_samples()) == 3 and all(not r for r in recs(h))
        assert p.stats["malformed"] == 3
        h.tick()
        assert h.agent.health.snapshot()["tcp.malformed"] == 3
        out = capsys.readouterr()
        assert (out.out + out.err).count("sock_diag_reply_malformed") == 1  # logged once
        assert p.stats["found"] == 0
    finally:
        far.close()
        h.stop()


def test_send_fails_sample_goes_out_without_record_counted(loop_conn):
    """The netlink socket cannot send (a datagram socket whose peer is gone stands in for it):
    the samples are not held and go out at once without the record, the failures counted and
    logged once; with a companion too (two requests in one send), it gets no answer."""
    c, a, lst = loop_conn
    lport, cport = lst.getsockname()[1], c.getsockname()[1]
    p, other = TcpPlugin(), _OtherEnd()
    h = AgentHarness("sflow { collector { ip = 127.0.0.1 } tcp { } }", plugins={"tcp": p},
                     interfaces=LOCAL)
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    far.close()
    try:
        h.start()
        swap_channel_socket(h, p, near, watch=False)
        s1 = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
        h.feed(s1)
        companion.register(h.agent, other)
        p.companion = other  # as if registered before sflow_start
        s2 = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
        h.feed(s2)
        assert not s1.held and not s2.held and not p.pending
        assert p.stats["send_failed"] == 2 and p.stats["requests"] == 0
        assert len(other.asked) == 1 and not other.got
        h.flush()
        assert len(h.flow_samples()) == 2 and all(not r for r in recs(h))
        h.tick()
        assert h.agent.health.snapshot()["tcp.send_failed"] == 2
    finally:
        companion.register(h.agent, None)
        h.stop()


def test_reply_never_comes_core_releases_and_pending_expires(loop_conn):
    c, a, lst = loop_conn
    lport, cport = lst.getsockname()[1], c.getsockname()[1]
    h, p = make()
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        swap_channel_socket(h, p, near)
        s = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
        h.feed(s)
        assert s.held and len(p.pending) == 1
        h.tick()  # 1 s later: the core's 0.4 s hold deadline has passed
        h.agent.expire_holds()
        assert not s.held
        h.tick()
        assert not p.pending and p.stats["stale"] == 1
        h.flush()
        assert len(h.flow_samples()) == 1 and not recs(h)[0]
    finally:
        far.close()
        h.stop()


def test_lookup_socket_v4_v6_udp_missing():
    for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        lst = socket.socket(fam)
        lst.bind((addr, 0))
        lst.listen()
        c = socket.create_connection(lst.getsockname()[:2])
        a, _ = lst.accept()
        try:
            info = lookup_socket(6, addr, c.getsockname()[1], addr, lst.getsockname()[1])
            assert info is not None and info.inode == os.fstat(c.fileno()).st_ino
            assert info.tcp_info is not None and info.tcp_info.rtt > 0
            assert info.uid == os.geteuid()
        finally:
            for s in (c, a, lst):
                s.close()
    assert lookup_socket(6, "127.0.0.1", 1, "127.0.0.1", 1) is None
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    try:
        info = lookup_socket(17, "127.0.0.1", u.getsockname()[1], "127.0.0.9", 4444)
        assert info is not None and info.inode == os.fstat(u.fileno()).st_ino
        assert info.tcp_info is None
    finally:
        u.close()


CHILD = """
import socket, sys, time
c = socket.socket()
c.bind(("127.0.0.1", 0))
c.connect(("127.0.0.2", int(sys.argv[1])))
print(c.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_cgroup_id_is_the_cgroup2_directory_inode():
    root = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
    if os.geteuid() != 0 or not os.path.exists(os.path.join(root, "cgroup.procs")):
        pytest.skip("needs root and a cgroup2 mount")
    cg = os.path.join(root, f"hostsflow-tcp-test-{os.getpid()}")
    os.mkdir(cg)
    lst = socket.socket()
    lst.bind(("127.0.0.2", 0))
    lst.listen()
    proc = None
    try:
        # the child joins the group before it creates its socket
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(lst.getsockname()[1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=lambda: open(os.path.join(cg, "cgroup.procs"), "w").write("0"),
        )
        cport = int(proc.stdout.readline())
        lport = lst.getsockname()[1]
        info = lookup_socket(6, "127.0.0.1", cport, "127.0.0.2", lport)
        assert info is not None and info.cgroup_id == os.stat(cg).st_ino != 1
        # the plugin stashes it for the systemd module (127.0.0.1 is the local end)
        h, p = make()
        try:
            s = h.make_sample(tcp=("127.0.0.1", cport, "127.0.0.2", lport))
            h.feed(s)
            settle(h, p)
            assert s.stash[SOCKET_CGROUP_ID] == os.stat(cg).st_ino
            assert recs(h)[0][0].dir == 2
        finally:
            h.stop()
    finally:
        if proc is not None:
            proc.stdin.close()
            proc.wait(5)
        lst.close()
        os.rmdir(cg)
