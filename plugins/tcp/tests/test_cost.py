"""What a lookup costs per sample, with few and with ~10,000 sockets (run with ``-s`` to see the
figures; the README quotes them).  The bounds are loose, to catch a regression by an order of
magnitude, not to benchmark the machine."""

from __future__ import annotations

import os
import random
import select
import socket
import statistics
import subprocess
import time

import pytest
from hostsflow.host.interfaces import Interface, InterfaceTable
from hostsflow.sflow.records import ExtendedTcpInfo
from hostsflow.testing import AgentHarness
from hostsflow_tcp import diag
from hostsflow_tcp.plugin import TcpPlugin
from pyroute2.netlink.diag import inet_diag_msg

pytestmark = [pytest.mark.slow, pytest.mark.root]

N = 1500


def _measure(h: AgentHarness, p: TcpPlugin, tuples: list[tuple[str, int, str, int]],
             netns: str | None, fresh: bool = True) -> tuple[float, float]:
    """Median (round trip, agent CPU) in µs per sample: feed one sample and, if it was held,
    wait for the reply and handle it.  CPU = time in the hook plus time in the reader, without
    the kernel wait.  Normally the reply is read inside the hook (the kernel answers inside
    ``send()``) and both are the hook's time.  ``fresh``: forget the answers the module
    reuses for a while (outside the timing), so every sample costs a lookup."""
    rtt, cpu = [], []
    samples = []
    for t in tuples:
        s = h.make_sample(tcp=t)
        s.netns = netns
        s.direction = 2
        samples.append(s)
    h.feed(samples[0])  # opens the namespace channel outside the timing
    ch = next(iter(c for k, c in p.channels.items() if (k is None) == (netns is None)))
    poller = select.poll()  # fds may be above FD_SETSIZE here
    poller.register(ch.fileno(), select.POLLIN)
    held = 0
    for s in samples[1:]:
        if fresh:
            p.recent.clear()
        t0 = t1 = t2 = t3 = time.perf_counter()
        h.feed(s)
        t1 = t2 = t3 = time.perf_counter()
        if s.held:
            held += 1
            poller.poll(1000)
            t2 = time.perf_counter()
            p._on_readable(ch)
            t3 = time.perf_counter()
        rtt.append((t3 - t0) * 1e6)
        cpu.append(((t1 - t0) + (t3 - t2)) * 1e6)
        assert not s.held
    assert held < len(samples) // 10, f"{held} of {len(samples)} replies were not there at once"
    return statistics.median(rtt), statistics.median(cpu)


def _connections(n: int, addr: str) -> list[socket.socket]:
    lst = socket.socket()
    lst.bind((addr, 0))
    lst.listen(4096)
    socks = [lst]
    for _ in range(n):
        c = socket.socket()
        c.connect(lst.getsockname())
        a, _ = lst.accept()
        socks += [c, a]
    return socks


def test_lookup_cost_few_and_10k_sockets(kit):
    if os.geteuid() != 0:
        pytest.skip("needs root for a test namespace")
    ns = f"sfT-tcpcost-{os.getpid()}-{random.randint(100, 999)}"
    path = f"/var/run/netns/{ns}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    socks: list[socket.socket] = []
    h = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        socks = kit.in_netns(path, lambda: _connections(5000, "127.0.0.1"))
        assert len(socks) == 10_001
        # samples for 1500 of those connections, seen from the client side
        pairs = [(socks[1 + 2 * i].getsockname(), socks[1 + 2 * i].getpeername())
                 for i in range(0, 5000, 3)][:N]
        tuples = [("127.0.0.1", c[1], "127.0.0.1", s[1]) for c, s in pairs]

        p = TcpPlugin()
        h = AgentHarness("sflow { collector { ip = 127.0.0.1 } tcp { } }", plugins={"tcp": p},
                         interfaces=InterfaceTable([Interface("lo", 1, addresses=["127.0.0.1"])]))
        h.start()
        rtt_10k, cpu_10k = _measure(h, p, tuples, path)

        # the agent's own namespace, few sockets: 127.0.0.2 -> 127.0.0.1
        few = []
        for _ in range(20):
            lst = socket.socket()
            lst.bind(("127.0.0.1", 0))
            lst.listen()
            c = socket.socket()
            c.bind(("127.0.0.2", 0))
            c.connect(lst.getsockname())
            few += [lst, c, lst.accept()[0]]
        socks += few
        ftuples = [("127.0.0.1", few[3 * (i % 20)].getsockname()[1], "127.0.0.2",
                    few[3 * (i % 20) + 1].getsockname()[1]) for i in range(N)]
        rtt_few, cpu_few = _measure(h, p, ftuples, None)
        before = p.stats["requests"]
        _, cpu_reused = _measure(h, p, ftuples, None, fresh=False)  # 20 sockets, answers reused
        assert p.stats["requests"] - before <= 20
        h.flush()
        got = [r for s in h.flow_samples() for r in s.records if isinstance(r, ExtendedTcpInfo)]
        assert len(got) == 3 * N  # every lookup found its socket

        # decoding one real reply: our parser against pyroute2's generic decoder
        c0, s0 = pairs[0]
        raw = kit.in_netns(path, lambda: _query(c0, s0))
        t0 = time.perf_counter()
        for _ in range(2000):
            list(diag.iter_replies(raw))
        ours = (time.perf_counter() - t0) / 2000 * 1e6
        t0 = time.perf_counter()
        for _ in range(200):
            m = inet_diag_msg(raw)
            m.decode()
            m.get_attr("INET_DIAG_INFO")
        theirs = (time.perf_counter() - t0) / 200 * 1e6
        print(f"\nTCP-COST few sockets: round trip {rtt_few:.1f} us, agent CPU {cpu_few:.1f} us; "
              f"10k sockets (netns): round trip {rtt_10k:.1f} us, agent CPU {cpu_10k:.1f} us; "
              f"answer reused: agent CPU {cpu_reused:.1f} us; "
              f"decode one reply: ours {ours:.1f} us, pyroute2 {theirs:.1f} us")
        assert rtt_few < 2000 and rtt_10k < 2000
        assert cpu_reused < cpu_few
        assert ours < theirs
    finally:
        if h is not None:
            h.stop()
        for s in socks:
            s.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _query(c: tuple, s: tuple) -> bytes:
    q = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, diag.NETLINK_SOCK_DIAG)
    try:
        q.send(diag.build_request(3, socket.AF_INET, 6, c[0], c[1], s[0], s[1]))
        return q.recv(65536)
    finally:
        q.close()
