"""``agent.sockets`` against real kernel sockets on loopback: the connection's own socket and
its tcp_info, the listener answering for a connection that is gone (never the connection),
TIME_WAIT, UDP, which ends are local, the 100 ms reuse of an answer; a socket pair stands in
for the kernel where a test must choose what arrives (late, damaged, unsendable)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import pytest
from hostsflow.host.interfaces import Interface, InterfaceTable
from hostsflow.samples import DIRECTION_RECEIVED, DIRECTION_SENT
from hostsflow.sockets import (
    DST, LOOKUP_FAILED, NO_SOCKET, SRC, VIA_LISTENER, VIA_SOCKET, lookup_socket,
)
from hostsflow.sockets import diag
from hostsflow.sockets.local import ANSWER_SECONDS, ephemeral_ports
from hostsflow.testing import AgentHarness

#: the connections run between 127.0.0.2 (the client) and 127.0.0.1 (the server): both local
LOCAL = InterfaceTable([Interface("lo", 1, loopback=True, addresses=["127.0.0.1", "::1"])])
ONLY_ONE = InterfaceTable([Interface("eth9", 2, addresses=["127.0.0.1"])])


def harness(interfaces: InterfaceTable = LOCAL) -> AgentHarness:
    return AgentHarness("sflow { collector { ip = 127.0.0.1 } }", interfaces=interfaces).start()


def listener(addr: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a port below the ephemeral range, as servers have them (a
    connection gone from an ephemeral port was a client's: its listener is not asked)."""
    lst = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    low = ephemeral_ports()[0]
    for port in range(low - 2000, low):
        try:
            lst.bind((addr, port))
            break
        except OSError:
            continue
    lst.listen()
    return lst


def connect(lst: socket.socket, source: str = "127.0.0.2") -> tuple[socket.socket, socket.socket]:
    c = socket.socket(lst.family)
    c.bind((source, 0))
    c.connect(lst.getsockname()[:2])
    a, _ = lst.accept()
    c.sendall(b"x" * 20_000)
    got = 0
    while got < 20_000:
        got += len(a.recv(1 << 20))
    return c, a


def reset(sock: socket.socket) -> None:
    """Close with a RST: the connection is gone at once, on both sides."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_connection_is_the_accepted_socket_with_its_tcp_info():
    lst = listener()
    c, a = connect(lst)
    h = harness()
    try:
        sk = h.agent.sockets
        lport, cport = lst.getsockname()[1], c.getsockname()[1]
        rx = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
        tx = h.make_sample(tcp=("127.0.0.1", lport, "127.0.0.2", cport))
        assert sk.local_ends(rx) == sk.local_ends(tx) == (True, True), "all of 127/8 is local"
        s1 = sk.connection(rx, DST, with_info=True)
        s2 = sk.connection(tx, SRC, with_info=True)
        assert s1 is s2, "one lookup serves both samples of the socket"
        assert s1.inode == os.fstat(a.fileno()).st_ino and s1.uid == os.geteuid()
        assert s1.tcp_info.snd_mss > 0 and s1.tcp_info.rtt > 0 and s1.tcp_info.pmtu == 65535
        assert sk.stats["lookups"] == 1
        # the server's end: its port's listener owns it (one more lookup, kept per port)
        o = sk.owner(rx, DST)
        assert o.via == VIA_LISTENER and o.inode == os.fstat(lst.fileno()).st_ino
        assert sk.owner(tx, SRC) == o and sk.stats["lookups"] == 2
        # the client's end (an ephemeral port): its own socket, from the answer kept
        o = sk.owner(tx, DST)
        assert o.via == VIA_SOCKET and o.inode == os.fstat(c.fileno()).st_ino
        assert sk.stats["lookups"] == 3
        h.clock.advance(ANSWER_SECONDS * 1.5)
        assert sk.connection(rx, DST, with_info=True) is not None
        assert sk.stats["lookups"] == 4, "looked up afresh once the answer is 100 ms old"
        h.tick(2)
        assert h.agent.health.snapshot()["sockets.found"] == 4
    finally:
        h.stop()
        for s in (c, a, lst):
            s.close()


def test_a_listener_answering_for_a_gone_connection_is_its_owner_never_its_socket():
    """The kernel's exact lookup of a connection that is gone answers with the listening
    socket of that port: it names the owner (owner(), via listener), never the connection
    (connection() is None, so no tcp_info of it is ever used)."""
    lst = listener()
    c, a = connect(lst)
    lport, cport = lst.getsockname()[1], c.getsockname()[1]
    reset(c)
    a.close()
    h = harness()
    try:
        sk = h.agent.sockets
        s = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
        reply = lookup_socket(6, "127.0.0.1", lport, "127.0.0.2", cport)
        assert reply is not None and reply.state == 10, "the kernel answers with the listener"
        assert sk.connection(s, DST, with_info=True) is None
        o = sk.owner(s, DST)
        assert o.via == VIA_LISTENER and o.inode == os.fstat(lst.fileno()).st_ino
    finally:
        h.stop()
        lst.close()


def test_time_wait_is_named_by_its_listener():
    """The server closes first: its side is a TIME_WAIT mini-socket (inode 0, no cgroup, no
    tcp_info); the owner is the port's listener."""
    lst = listener()
    c, a = connect(lst)
    lport, cport = lst.getsockname()[1], c.getsockname()[1]
    a.close()
    c.recv(10)
    c.close()
    time.sleep(0.05)
    h = harness()
    try:
        sk = h.agent.sockets
        s = h.make_sample(tcp=("127.0.0.1", lport, "127.0.0.2", cport))
        tw = sk.connection(s, SRC, with_info=True)
        assert tw is not None and tw.state == 6 and tw.inode == 0 and tw.tcp_info is None
        o = sk.owner(s, SRC)
        assert o.via == VIA_LISTENER and o.inode == os.fstat(lst.fileno()).st_ino
        # the client's side is gone: without the owner log nobody knows it
        client = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
        assert sk.owner(client, SRC) == NO_SOCKET
    finally:
        h.stop()
        lst.close()


def test_a_gone_connection_on_an_ephemeral_port_was_a_client_s():
    """The kernel never gives a connecting socket a port a listener holds: a connection gone
    from an ephemeral port is not blamed on a listener that took that port since."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))  # an ephemeral port
    lst.listen()
    h = harness()
    try:
        sk = h.agent.sockets
        s = h.make_sample(tcp=("127.0.0.1", lst.getsockname()[1], "127.0.0.2", 40000))
        assert sk.owner(s, SRC) == NO_SOCKET and sk.stats["lookups"] == 1
    finally:
        h.stop()
        lst.close()


def test_a_client_end_is_its_live_socket():
    """A client's end (an ephemeral port) is its own socket: ``accept`` sees it, and when it
    refuses, the refused answer comes back (nothing else is asked)."""
    lst = listener()
    c, a = connect(lst)
    h = harness()
    try:
        sk = h.agent.sockets
        s = h.make_sample(tcp=("127.0.0.2", c.getsockname()[1], "127.0.0.1", lst.getsockname()[1]))
        seen = []
        o = sk.owner(s, SRC, lambda o: seen.append(o.via) or False)
        assert o.via == VIA_SOCKET and seen == [VIA_SOCKET] and sk.stats["lookups"] == 1
        assert o.inode == os.fstat(c.fileno()).st_ino
    finally:
        h.stop()
        for x in (c, a, lst):
            x.close()


def test_udp_bound_socket_owns_every_remote():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    h = harness()
    try:
        sk = h.agent.sockets
        s = h.make_sample(udp=("127.0.0.2", 5353, "127.0.0.1", u.getsockname()[1]))
        sock = sk.connection(s, DST)
        assert sock is not None and sock.inode == os.fstat(u.fileno()).st_ino
        assert sk.owner(s, DST).via == VIA_SOCKET
        gone = h.make_sample(udp=("127.0.0.2", 5353, "127.0.0.1", 1))
        assert sk.owner(gone, DST) == NO_SOCKET
    finally:
        h.stop()
        u.close()


def test_local_ends_by_address_here_and_by_direction_in_another_namespace():
    h = harness(ONLY_ONE)
    try:
        sk = h.agent.sockets
        assert sk.local_ends(h.make_sample(tcp=("127.0.0.1", 1, "10.1.1.1", 2))) == (True, False)
        assert sk.local_ends(h.make_sample(tcp=("::ffff:127.0.0.1", 1, "10.1.1.1", 2))) == \
            (True, False)
        assert sk.local_ends(h.make_sample(tcp=("10.1.1.1", 1, "10.1.1.2", 2))) == (False, False)
        assert sk.local_ends(h.make_sample(tcp=("10.1.1.1", 1, "127.0.0.9", 2))) == (False, True)
        sent = h.make_sample(tcp=("10.1.1.1", 1, "10.1.1.2", 2), netns="/proc/1/ns/net",
                             direction=DIRECTION_SENT)
        received = h.make_sample(tcp=("10.1.1.1", 1, "10.1.1.2", 2), netns="/proc/1/ns/net",
                                 direction=DIRECTION_RECEIVED)
        assert sk.local_ends(sent) == (True, False) and sk.local_ends(received) == (False, True)
        assert sk.owner(h.make_sample(udp=("10.1.1.1", 0, "10.1.1.2", 2)), SRC) == NO_SOCKET
    finally:
        h.stop()


# ---------------------------------------------------------------- a stand-in for the kernel


def swap_kernel(h: AgentHarness) -> socket.socket:
    """Make the agent's sock_diag socket one end of a datagram socket pair; return the far end,
    on which the test plays the kernel."""
    sk = h.agent.sockets
    sk._channel(None)  # made on first use
    ch = sk._channels[None]
    h.agent.remove_reader(ch.fileno())
    ch.sock.close()
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    near.setblocking(False)
    ch.sock = near
    h.agent.add_reader(near.fileno(), lambda: sk._drain(None, ch))
    return far


def real_reply(lport: int, cport: int) -> bytearray:
    real = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, diag.NETLINK_SOCK_DIAG)
    real.send(diag.build_request(1, socket.AF_INET, 6, "127.0.0.1", lport, "127.0.0.2", cport))
    good = bytearray(real.recv(65536))
    real.close()
    return good


@pytest.fixture
def stand_in():
    """A real connection, an agent whose sock_diag socket is a socket pair, the far end (the
    test plays the kernel there) and a real kernel reply for the connection's server end."""
    lst = listener()
    c, a = connect(lst)
    lport, cport = lst.getsockname()[1], c.getsockname()[1]
    good = real_reply(lport, cport)
    h = harness()
    far = swap_kernel(h)
    try:
        yield h, far, good, lport, cport, a
    finally:
        far.close()
        h.stop()
        for x in (c, a, lst):
            x.close()


def test_a_late_reply_serves_the_next_samples(stand_in):
    h, far, good, lport, cport, a = stand_in
    sk = h.agent.sockets
    s = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
    assert sk.connection(s, DST) is None and sk.stats["late"] == 1
    req = far.recv(4096)
    good[8:12] = req[8:12]  # the request's seq
    far.send(bytes(good))
    h.run_loop(0.05)
    assert sk.connection(s, DST).inode == os.fstat(a.fileno()).st_ino
    assert sk.stats["lookups"] == 1, "the late reply answered"


def test_damaged_replies_counted_logged_once_and_skipped(stand_in, capsys):
    h, far, good, lport, cport, _ = stand_in
    sk = h.agent.sockets
    for i in range(3):
        h.clock.advance(1)
        s = h.make_sample(tcp=("127.0.0.2", cport, "127.0.0.1", lport))
        assert sk.connection(s, DST) is None
        req = far.recv(4096)
        assert len(req) == 72 and req[16] == socket.AF_INET
        bad = bytearray(good)
        bad[8:12] = req[8:12]
        bad[16 + 72:16 + 74] = (0xFFF0).to_bytes(2, sys.byteorder)  # attribute too long
        far.send(bytes(bad))
        h.run_loop(0.05)
    assert sk.stats["malformed"] == 3 and sk.stats["found"] == 0
    h.tick()
    assert h.agent.health.snapshot()["sockets.malformed"] == 3
    out = capsys.readouterr()
    assert (out.out + out.err).count("sock_diag_reply_malformed") == 1


def test_a_socket_that_cannot_send_is_counted_and_nothing_waits():
    h = harness()
    far = swap_kernel(h)
    far.close()  # the peer is gone: send() fails
    try:
        sk = h.agent.sockets
        s = h.make_sample(tcp=("127.0.0.2", 40000, "127.0.0.1", 40001))  # ephemeral ports
        assert sk.owner(s, DST) == LOOKUP_FAILED and sk.connection(s, DST) is None
        assert sk.stats["errors"] == 2 and sk.stats["lookups"] == 2
    finally:
        h.stop()


# ---------------------------------------------------------------- the one-shot lookup


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


def cgroup2_root() -> str:
    root = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
    if os.geteuid() != 0 or not os.path.exists(os.path.join(root, "cgroup.procs")):
        pytest.skip("needs root and a cgroup2 mount")
    return root


def test_cgroup_id_is_the_cgroup2_directory_inode():
    cg = os.path.join(cgroup2_root(), f"hostsflow-sockets-test-{os.getpid()}")
    os.mkdir(cg)
    lst = listener("127.0.0.2")
    proc = None
    try:
        # the child joins the group before it creates its socket
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(lst.getsockname()[1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=lambda: open(os.path.join(cg, "cgroup.procs"), "w").write("0"),
        )
        cport, lport = int(proc.stdout.readline()), lst.getsockname()[1]
        info = lookup_socket(6, "127.0.0.1", cport, "127.0.0.2", lport)
        assert info is not None and info.cgroup_id == os.stat(cg).st_ino != 1
        h = harness()
        try:
            s = h.make_sample(tcp=("127.0.0.1", cport, "127.0.0.2", lport))
            assert h.agent.sockets.owner(s, SRC).cgroup_id == os.stat(cg).st_ino
        finally:
            h.stop()
    finally:
        if proc is not None:
            proc.stdin.close()
            proc.wait(5)
        lst.close()
        os.rmdir(cg)
