"""The tcp module on real connections between two network namespaces (veth, offloads off).

The agent runs in-process (testing kit); samples are real frames captured with an AF_PACKET
socket on namespace ``a``'s veth, tagged ``netns=a`` and with the direction the kernel gave
(PACKET_OUTGOING = sent), so the core's ``agent.sockets`` looks the sockets up through a diag
socket it opens in namespace ``a``.  Ground truth: ``ss -tin`` in that namespace and
``os.fstat`` of the sockets.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from hostsflow.host.interfaces import InterfaceTable
from hostsflow.sflow.records import ExtendedTcpInfo
from hostsflow.sockets import DST, SRC, lookup_socket
from hostsflow.testing import AgentHarness
from hostsflow_tcp.module import TcpModule

pytestmark = pytest.mark.root


def harness(udp: bool = False) -> tuple[AgentHarness, TcpModule]:
    tcp = TcpModule()
    conf = "sflow { collector { ip = 127.0.0.1 } tcp { %s } }" % ("udp = on" if udp else "")
    h = AgentHarness(conf, modules={"tcp": tcp}, interfaces=InterfaceTable([]))
    h.start()
    return h, tcp


def feed(h: AgentHarness, samples: list) -> None:
    """Hand the samples over and send them (the core answers inside the hook: no holds)."""
    h.feed(*samples)
    assert not any(s.held for s in samples)
    h.flush()


def tcp_records(h: AgentHarness) -> list[list[ExtendedTcpInfo]]:
    return [[r for r in s.records if isinstance(r, ExtendedTcpInfo)] for s in h.flow_samples()]


def rtt_agrees(ours: float, ours_var: float, ss_rtt: float, ss_var: float) -> bool:
    """Within the variance the kernel itself reports (plus ss's 1 µs rounding)."""
    return abs(ours - ss_rtt) <= 2 * (ours_var + ss_var) + 2


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "v4mapped"])
def test_values_agree_with_ss_and_direction(pair, kit, family):
    fam = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
    cli, srv, lst = pair.connect(fam, mapped=family == "v4mapped")
    cap = kit.Capture(pair)
    h, tcp = harness()
    try:
        local, lport = cli.getsockname()[:2]
        remote, rport = cli.getpeername()[:2]
        local, remote = local.removeprefix("::ffff:"), remote.removeprefix("::ffff:")
        pump = kit.Pump(cli, srv, total=3_000_000)
        frames = cap.frames(kit.flow_filter(lport), 40)
        pump.finish()
        time.sleep(0.2)  # idle: no RTT samples change between our lookup and ss's
        sent = [f for f in frames if f[1] == 4]
        recv = [f for f in frames if f[1] != 4]
        assert sent and recv, "captured both data (sent) and ACKs (received)"
        samples = [kit.to_sample(f, t, cap.ifindex, pair.pa) for f, t in frames]
        feed(h, samples)
        ss = kit.ss_info(pair, "a", local, lport, remote, rport)
        recs = tcp_records(h)
        assert len(recs) == len(frames) and all(len(r) == 1 for r in recs)
        sk = h.agent.sockets
        assert sk.stats["lookups"] >= 1 and sk.stats["found"] == sk.stats["lookups"]
        for (frame, ptype), (rec,) in zip(frames, recs):
            assert rec.dir == (2 if ptype == 4 else 1)
            assert rec.snd_mss == ss["mss"] and rec.rcv_mss == ss["rcvmss"]
            assert rec.pmtu == ss["pmtu"] == 1500
            assert rec.snd_cwnd == ss["cwnd"]
            assert rec.retrans == ss["total_retrans"]
            assert 0 < rec.min_rtt <= rec.rtt + 4 * rec.rttvar
        last = recs[-1][0]
        assert rtt_agrees(last.rtt, last.rttvar, ss["rtt"], ss["rttvar"]), (last, ss)
        inode = os.fstat(cli.fileno()).st_ino
        for s in samples:  # the core's answer, as any module sees it
            side = SRC if s.direction == 2 else DST
            sock = sk.connection(s, side)
            assert sock.inode == inode and sock.uid == os.geteuid() and sock.cgroup_id >= 1
            assert sk.owner(s, side).inode == inode
    finally:
        h.stop()
        cap.close()
        for s in (cli, srv, lst):
            s.close()


def test_retransmissions_counted_with_random_drops(pair, kit):
    cli, srv, lst = pair.connect(socket.AF_INET, cc="cubic")
    port = lst.getsockname()[1]
    pair.exec("b", "nft", f"add table inet hsftcp; add chain inet hsftcp in {{ type filter hook "
              f"input priority 0; }}; add rule inet hsftcp in tcp dport {port} "
              f"numgen random mod 100 < 5 drop")
    cap = kit.Capture(pair)
    h, tcp = harness()
    try:
        lport = cli.getsockname()[1]
        pump = kit.Pump(cli, srv, total=4_000_000)
        for t in pump.threads:
            t.join(30)  # sender finished
        frames = cap.frames(kit.flow_filter(lport), 5, timeout=2)
        pump.finish()
        assert frames
        feed(h, [kit.to_sample(f, t, cap.ifindex, pair.pa) for f, t in frames])
        ss = kit.ss_info(pair, "a", pair.a4, lport, pair.b4, port)
        recs = [r for rs in tcp_records(h) for r in rs]
        assert recs
        assert recs[-1].retrans > 0
        # retransmissions only grow; the last lookup happened just before ss
        assert recs[-1].retrans <= ss["total_retrans"] <= recs[-1].retrans + 5
    finally:
        pair.exec("b", "nft", "delete table inet hsftcp", check=False)
        h.stop()
        cap.close()
        for s in (cli, srv, lst):
            s.close()


def _rtt_under_load(pair, kit, shaped: bool) -> list[int]:
    cli, srv, lst = pair.connect(socket.AF_INET, cc="cubic")
    if shaped:
        pair.exec("a", "tc", "qdisc", "add", "dev", pair.va, "root", "tbf", "rate", "4mbit",
                  "burst", "16kb", "latency", "300ms")
    cap = kit.Capture(pair)
    h, tcp = harness()
    try:
        lport = cli.getsockname()[1]
        pump = kit.Pump(cli, srv)
        time.sleep(1.5)  # let the queue build up
        frames = cap.frames(kit.flow_filter(lport), 20)
        feed(h, [kit.to_sample(f, t, cap.ifindex, pair.pa) for f, t in frames])
        pump.finish()
        return [r.rtt for rs in tcp_records(h) for r in rs]
    finally:
        if shaped:
            pair.exec("a", "tc", "qdisc", "del", "dev", pair.va, "root", check=False)
        h.stop()
        cap.close()
        for s in (cli, srv, lst):
            s.close()


def test_shaped_path_has_larger_rtt(pair, kit):
    free = _rtt_under_load(pair, kit, shaped=False)
    shaped = _rtt_under_load(pair, kit, shaped=True)
    assert free and shaped
    med = lambda xs: sorted(xs)[len(xs) // 2]
    # 4 Mbit/s with up to 300 ms of queue: tens of ms, against well under 5 ms on a free veth
    assert med(shaped) > 10_000, shaped
    assert med(shaped) > 5 * med(free), (free, shaped)


@pytest.mark.parametrize("how", ["reset", "time_wait"])
def test_closed_socket_sample_goes_out_without_record(pair, kit, how):
    cli, srv, lst = pair.connect(socket.AF_INET)
    cap = kit.Capture(pair)
    h, tcp = harness()
    try:
        lport = cli.getsockname()[1]
        cli.sendall(b"hello" * 100)
        srv.recv(1000)
        frames = cap.frames(kit.flow_filter(lport), 2)
        assert frames
        if how == "reset":
            cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            cli.close()
        else:  # client closes first: its side stays in TIME_WAIT (no tcp_info, no inode)
            cli.shutdown(socket.SHUT_WR)
            srv.recv(10)
            srv.close()
            time.sleep(0.1)
            cli.close()
        time.sleep(0.05)
        feed(h, [kit.to_sample(f, t, cap.ifindex, pair.pa) for f, t in frames])
        assert len(h.flow_samples()) == len(frames)
        assert all(not rs for rs in tcp_records(h))
        assert tcp.stats["no_connection"] == len(frames) and tcp.stats["records"] == 0
        sk = h.agent.sockets
        if how == "reset":
            assert sk.stats["not_found"] == 1 and sk.stats["found"] == 0
        else:  # the TIME_WAIT mini-socket is found once, and its answer serves the rest
            assert sk.stats["found"] == 1 and sk.stats["lookups"] == 1
    finally:
        h.stop()
        cap.close()
        for s in (cli, srv, lst):
            s.close()


def test_a_listener_answering_for_a_gone_connection_gives_no_record(pair, kit):
    """The server's side in namespace ``a``: once its connection is reset, the kernel's exact
    lookup answers with the listening socket (state LISTEN, mss 0, rtt 0, pmtu 0).  That must
    never become the connection's extended_tcp_info."""
    def listen_a():
        s = socket.socket()
        s.bind((pair.a4, 0))
        s.listen()
        return s

    lst = pair.run("a", listen_a)
    port = lst.getsockname()[1]
    cli = pair.run("b", lambda: socket.create_connection((pair.a4, port)))
    srv, _ = lst.accept()
    cap = kit.Capture(pair)
    h, tcp = harness()
    try:
        cli.sendall(b"hello" * 100)
        srv.recv(1000)
        frames = cap.frames(kit.flow_filter(port), 2)
        assert frames
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        srv.close()
        time.sleep(0.05)
        got = lookup_socket(6, pair.a4, port, pair.b4, cli.getsockname()[1], netns=pair.pa)
        assert got is not None and got.state == 10, "the kernel answers with the listener"
        feed(h, [kit.to_sample(f, t, cap.ifindex, pair.pa) for f, t in frames])
        assert all(not rs for rs in tcp_records(h))
        assert tcp.stats["no_connection"] == len(frames)
    finally:
        h.stop()
        cap.close()
        for s in (cli, lst):
            s.close()


@pytest.mark.parametrize("udp_on", [True, False])
def test_udp_socket_found_in_its_namespace_without_record(pair, kit, udp_on):
    """UDP: never a 2209 record (``udp = on`` is accepted, as hsflowd's key); the core finds
    the bound socket in namespace ``a`` for any module that asks."""
    def bind_a():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        return s

    def sender_b():
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    ua = pair.run("a", bind_a)
    ub = pair.run("b", sender_b)
    cap = kit.Capture(pair)
    h, tcp = harness(udp=udp_on)
    try:
        port = ua.getsockname()[1]
        for _ in range(5):
            ub.sendto(b"ping", (pair.a4, port))
        frames = cap.frames(kit.flow_filter(port, kit.udp_ports), 5)
        assert len(frames) == 5 and all(t != 4 for _, t in frames)
        samples = [kit.to_sample(f, t, cap.ifindex, pair.pa) for f, t in frames]
        feed(h, samples)
        assert len(h.flow_samples()) == 5 and all(not rs for rs in tcp_records(h))
        assert tcp.stats["eligible"] == 0
        inode = os.fstat(ua.fileno()).st_ino
        assert [h.agent.sockets.connection(s, DST).inode for s in samples] == [inode] * 5
    finally:
        h.stop()
        cap.close()
        ua.close()
        ub.close()
