"""The tcp module's own rules, in the agent's namespace: which samples it looks up (TCP with
exactly one local end, as hsflowd), that its answer is the core's (one lookup shared with any
other module), and that its block's keys are hsflowd's.  Records from real connections, and a
listener never giving one, are in test_netns.py (they need a remote end, so two namespaces)."""

from __future__ import annotations

import pytest
from hostsflow.host.interfaces import Interface, InterfaceTable
from hostsflow.samples import DIRECTION_SENT
from hostsflow.testing import AgentHarness
from hostsflow_tcp.module import TcpModule

HOST = InterfaceTable([Interface("eth9", 2, addresses=["192.0.2.1"])])


def make(block: str = "") -> tuple[AgentHarness, TcpModule]:
    p = TcpModule()
    h = AgentHarness("sflow { collector { ip = 127.0.0.1 } tcp { %s } }" % block,
                     modules={"tcp": p}, interfaces=HOST)
    h.start()
    return h, p


@pytest.mark.parametrize("tup", [
    ("127.0.0.1", 1000, "127.0.0.1", 2000),  # both ends local (loopback)
    ("192.0.2.1", 1000, "127.0.0.5", 2000),  # both ends local (an interface's and loopback)
    ("10.9.9.9", 1000, "10.9.9.8", 2000),  # neither end local
])
def test_not_exactly_one_local_end_is_not_looked_up(tup):
    h, p = make()
    try:
        s = h.make_sample(tcp=tup, direction=DIRECTION_SENT)
        h.feed(s)
        assert not s.held and p.stats["eligible"] == 0
        assert h.agent._sockets is None or h.agent.sockets.stats["lookups"] == 0
    finally:
        h.stop()


def test_one_local_end_is_looked_up_by_the_core_and_a_gone_socket_gives_no_record():
    h, p = make()
    try:
        s = h.make_sample(tcp=("192.0.2.1", 1, "198.51.100.7", 2))
        h.feed(s)
        h.flush()
        assert p.stats["eligible"] == 1 and p.stats["no_connection"] == 1
        assert h.agent.sockets.stats["lookups"] == 1 and h.agent.sockets.stats["not_found"] == 1
        (fs,) = h.flow_samples()
        assert len(fs.records) == 1  # the sampled header only
        h.tick()
        assert h.agent.health.snapshot()["tcp.no_connection"] == 1
    finally:
        h.stop()


@pytest.mark.parametrize("block", ["", "udp = on", "udp = off"])
def test_udp_is_never_looked_up_for_tcp_info(block):
    """UDP sockets have no tcp_info: ``udp`` is accepted (hsflowd's key) and changes nothing."""
    h, p = make(block)
    try:
        h.feed(h.make_sample(udp=("198.51.100.7", 5000, "192.0.2.1", 53)))
        assert p.stats["eligible"] == 0
    finally:
        h.stop()


def test_hsflowd_keys_only():
    """``tunnel`` and ``dump`` are hsflowd keys this module does not implement: a config
    error names them, as any unknown key."""
    with pytest.raises(Exception, match="tunnel"):
        make("tunnel = on")
