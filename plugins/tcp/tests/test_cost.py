"""What a lookup costs per sample, with few and with ~10,000 sockets (run with ``-s`` to see the
figures; the README quotes them).  The bounds are loose, to catch a regression by an order of
magnitude, not to benchmark the machine."""

from __future__ import annotations

import os
import random
import socket
import statistics
import subprocess
import time

import pytest
from hostsflow.host.interfaces import Interface, InterfaceTable
from hostsflow.sflow.records import ExtendedTcpInfo
from hostsflow.testing import AgentHarness
from hostsflow.sockets import diag
from hostsflow_tcp.module import TcpModule
from pyroute2.netlink.diag import inet_diag_msg

pytestmark = [pytest.mark.slow, pytest.mark.root]

N = 1500


def _measure(h: AgentHarness, tuples: list[tuple[str, int, str, int]], netns: str,
             fresh: bool = True) -> float:
    """Median agent CPU in µs per sample (the whole ``take_samples`` call for one sample: the
    kernel answers inside ``send()``, so nothing waits).  ``fresh``: forget the answers the
    core reuses for a while (outside the timing), so every sample costs a lookup."""
    samples = []
    for t in tuples:
        s = h.make_sample(tcp=t, netns=netns, direction=2)
        samples.append(s)
    h.feed(samples[0])  # opens the namespace channel outside the timing
    sk = h.agent.sockets
    late = sk.stats["late"]
    cpu = []
    for s in samples[1:]:
        if fresh:
            sk._answers.clear()
        t0 = time.perf_counter()
        h.feed(s)
        cpu.append((time.perf_counter() - t0) * 1e6)
        assert not s.held
    assert sk.stats["late"] - late < len(samples) // 10, "replies not there at once"
    return statistics.median(cpu)


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
    tag = f"{os.getpid()}-{random.randint(100, 999)}"
    names = [f"sfT-tcpcost-{tag}-{n}" for n in ("many", "few")]
    socks: list[socket.socket] = []
    h = None
    try:
        figures = {}
        p = TcpModule()
        h = AgentHarness("sflow { collector { ip = 127.0.0.1 } tcp { } }", modules={"tcp": p},
                         interfaces=InterfaceTable([Interface("lo", 1, addresses=["127.0.0.1"])]))
        h.start()
        pairs_by_ns = {}
        for ns, n in zip(names, (5000, 20)):
            path = f"/var/run/netns/{ns}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
                           check=True)
            made = kit.in_netns(path, lambda n=n: _connections(n, "127.0.0.1"))
            socks += made
            assert len(made) == 2 * n + 1
            # samples seen from the client side, cycling over the connections
            pairs = [(made[1 + 2 * (i % n)].getsockname(), made[1 + 2 * (i % n)].getpeername())
                     for i in range(0, 3 * N, 3)][:N]
            pairs_by_ns[path] = pairs
            tuples = [("127.0.0.1", c[1], "127.0.0.1", s[1]) for c, s in pairs]
            figures[n] = _measure(h, tuples, path)
            if n == 20:
                before = h.agent.sockets.stats["lookups"]
                figures["reused"] = _measure(h, tuples, path, fresh=False)
                assert h.agent.sockets.stats["lookups"] - before <= 20
        h.flush()
        got = [r for s in h.flow_samples() for r in s.records if isinstance(r, ExtendedTcpInfo)]
        assert len(got) == 3 * N  # every lookup found its socket

        # decoding one real reply: our parser against pyroute2's generic decoder
        path, pairs = next(iter(pairs_by_ns.items()))
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
        print(f"\nTCP-COST agent CPU per sample: 20 sockets {figures[20]:.1f} us, "
              f"10k sockets {figures[5000]:.1f} us, answer reused {figures['reused']:.1f} us; "
              f"decode one reply: ours {ours:.1f} us, pyroute2 {theirs:.1f} us")
        assert figures[20] < 2000 and figures[5000] < 2000
        assert figures["reused"] < figures[20]
        assert ours < theirs
    finally:
        if h is not None:
            h.stop()
        for s in socks:
            s.close()
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _query(c: tuple, s: tuple) -> bytes:
    q = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, diag.NETLINK_SOCK_DIAG)
    try:
        q.send(diag.build_request(3, socket.AF_INET, 6, c[0], c[1], s[0], s[1]))
        return q.recv(65536)
    finally:
        q.close()
