"""Agent address election (hsflowd's selectAgentAddress) and the sampling-rate rule
(lookupPacketSamplingRate):
table tests on the pure functions, then one election in a real namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from hostsflow.host.agent_address import (
    AgentCidr,
    base_priority,
    candidates,
    cidr_adjust,
    elect_agent_address,
)
from hostsflow.host.interfaces import Interface, InterfaceTable
from hostsflow.host.sampling import format_speed, lookup_setting, sampling_rate_for


def iface(name, ifindex, *addrs, kind="physical", loopback=False, up=True, dynamic=(), alias=""):
    return Interface(
        name=name, ifindex=ifindex, mac=bytes([2, 0, 0, 0, 0, ifindex]), up=up, oper_up=up,
        loopback=loopback, kind=kind, addresses=list(addrs), dynamic_addresses=frozenset(dynamic),
        alias=alias,
    )  # fmt: skip


LO = iface("lo", 1, "127.0.0.1", "::1", kind="loopback", loopback=True)


# ---------------------------------------------------------------- base priorities


@pytest.mark.parametrize(
    "addr,vlan,loopback,expected",
    [
        ("8.8.8.8", False, False, 12),
        ("192.0.2.1", False, False, 12),
        ("10.1.2.3", False, False, 11),
        ("172.16.0.1", False, False, 11),
        ("172.31.255.1", False, False, 11),
        ("172.32.0.1", False, False, 12),
        ("192.168.1.1", False, False, 11),
        ("2001:db8::1", False, False, 10),
        ("fd00::1", False, False, 9),
        ("fc00::1", False, False, 9),
        ("10.1.2.3", True, False, 8),
        ("8.8.8.8", True, False, 8),
        ("2001:db8::1", True, False, 7),
        ("fd00::1", True, False, 9),  # ULA is decided before the VLAN check, as hsflowd
        ("fe80::1", False, False, 6),
        ("169.254.3.4", False, False, 5),
        ("169.254.3.4", True, False, 5),
        ("127.0.0.1", False, True, 4),
        ("127.0.0.1", False, False, 12),  # IPv4 loopback is known by its interface only
        ("::1", False, False, 3),
        ("::1", False, True, 3),
        ("240.0.0.1", False, False, 1),
        ("224.0.0.1", False, False, 0),
        ("ff02::1", False, False, 0),
    ],
)
def test_base_priority(addr, vlan, loopback, expected):
    assert base_priority(ipaddress.ip_address(addr), vlan=vlan, loopback=loopback) == expected


def test_cidr_boost_order_and_veto():
    # file order: A, B.  Stored reversed (B index 1, A index 2): earlier lines boost more,
    # and when both match, the later line (found first) decides.
    cidrs = [AgentCidr.parse("10.0.0.0/8"), AgentCidr.parse("10.1.0.0/16")]
    a = ipaddress.ip_address
    assert cidr_adjust(11, a("10.2.0.1"), cidrs) == 11 + 2 * 13
    assert cidr_adjust(11, a("10.1.0.1"), cidrs) == 11 + 1 * 13
    assert cidr_adjust(12, a("8.8.8.8"), cidrs) == 12
    assert cidr_adjust(10, a("2001:db8::1"), cidrs) == 10  # families never match
    veto = [AgentCidr.parse("!10.1.0.0/16"), AgentCidr.parse("10.0.0.0/8")]
    assert cidr_adjust(11, a("10.1.0.1"), veto) == 11 + 13  # the later line wins
    veto = [AgentCidr.parse("10.0.0.0/8"), AgentCidr.parse("! 10.1.0.0/16")]
    assert cidr_adjust(11, a("10.1.0.1"), veto) == 0
    assert str(AgentCidr.parse("!10.1.2.3/16")) == "!10.1.0.0/16"


# ---------------------------------------------------------------- elections


ELECTIONS = [
    # (interfaces, kwargs, expected address)
    ([LO], {}, "127.0.0.1"),  # v4 loopback (4) beats v6 loopback (3)
    ([LO, iface("eth0", 2, "fe80::2")], {}, "fe80::2"),
    ([LO, iface("eth0", 2, "169.254.9.9", "fe80::2")], {}, "fe80::2"),
    ([LO, iface("eth0", 2, "10.0.0.5", "2001:db8::5", "198.51.100.5")], {}, "198.51.100.5"),
    ([LO, iface("eth0", 2, "10.0.0.5", "2001:db8::5")], {}, "10.0.0.5"),
    ([LO, iface("eth0", 2, "fd00::5", "2001:db8::5")], {}, "2001:db8::5"),
    ([LO, iface("eth0.7", 3, "198.51.100.7", kind="vlan"), iface("eth0", 2, "fd00::2")], {}, "fd00::2"),
    ([LO, iface("eth0.7", 3, "198.51.100.7", kind="vlan"), iface("eth0", 2, "fe80::2")], {}, "198.51.100.7"),
    # down interfaces do not take part
    ([LO, iface("eth0", 2, "198.51.100.5", up=False)], {}, "127.0.0.1"),
    # agent.cidr boosts a lower class over a higher one
    ([LO, iface("eth0", 2, "10.0.0.5", "2001:db8::5")], {"cidrs": ["2001:db8::/32"]}, "2001:db8::5"),
    ([LO, iface("eth0", 2, "10.0.0.5", "10.9.0.5")], {"cidrs": ["10.9.0.0/16"]}, "10.9.0.5"),
    # veto
    ([LO, iface("eth0", 2, "198.51.100.5", "10.0.0.5")], {"cidrs": ["!198.51.100.0/24"]}, "10.0.0.5"),
    ([iface("eth0", 2, "198.51.100.5")], {"cidrs": ["!0.0.0.0/0"]}, None),
    # agent=dev pegs (+13) by name, else by alias; an unknown device is ignored
    ([LO, iface("eth0", 2, "198.51.100.5"), iface("eth1", 3, "10.0.0.5")], {"agent_dev": "eth1"}, "10.0.0.5"),
    ([LO, iface("eth0", 2, "198.51.100.5"), iface("eth1", 3, "10.0.0.5", alias="mgmt")],
     {"agent_dev": "mgmt"}, "10.0.0.5"),
    ([LO, iface("eth0", 2, "198.51.100.5"), iface("eth1", 3, "10.0.0.5")], {"agent_dev": "nope"}, "198.51.100.5"),
    ([LO, iface("eth0", 2, "198.51.100.5")], {"agent_dev": "lo"}, "127.0.0.1"),
    # agentIP wins outright
    ([LO, iface("eth0", 2, "198.51.100.5")], {"agent_ip": "203.0.113.9"}, "203.0.113.9"),
    ([LO], {"agent_ip": "2001:DB8::0:1"}, "2001:db8::1"),
    # tie-breakers: configured beats dynamic v6, then lowest ifIndex, then discovery order
    ([iface("eth0", 2, "2001:db8::a", "2001:db8::b", dynamic={"2001:db8::a"})], {}, "2001:db8::b"),
    ([iface("eth5", 5, "198.51.100.5"), iface("eth2", 2, "198.51.100.2")], {}, "198.51.100.2"),
    ([iface("eth2", 2, "198.51.100.9", "198.51.100.1")], {}, "198.51.100.9"),
    ([], {}, None),
]  # fmt: skip


@pytest.mark.parametrize("ifaces,kwargs,expected", ELECTIONS)
def test_election(ifaces, kwargs, expected):
    assert elect_agent_address(InterfaceTable(ifaces), **kwargs) == expected


def test_candidates_best_first_and_shared_address():
    # the same address on two interfaces: one candidate, both devices, lowest ifIndex,
    # the higher of its priorities (not on the VLAN)
    t = InterfaceTable([
        LO,
        iface("br0", 7, "198.51.100.5", kind="bridge"),
        iface("br0.9", 8, "198.51.100.5", kind="vlan"),
        iface("eth0", 2, "10.0.0.5", "fe80::2"),
    ])  # fmt: skip
    c = candidates(t)
    assert [x.address for x in c] == ["198.51.100.5", "10.0.0.5", "fe80::2", "127.0.0.1", "::1"]
    assert c[0].devices == ("br0", "br0.9") and c[0].min_ifindex == 7 and c[0].priority == 12
    assert [x.priority for x in c] == sorted((x.priority for x in c), reverse=True)
    pegged = candidates(t, agent_dev="eth0")
    assert pegged[0].address == "10.0.0.5" and pegged[0].pegged and pegged[0].priority == 24


# ---------------------------------------------------------------- sampling rate


class Nic:
    def __init__(self, speed, up=True):
        self.speed, self.up = speed, up


@pytest.mark.parametrize(
    "speed,expected",
    [
        (0, "0"),
        (999, "999"),
        (1000, "1K"),
        (10_000_000, "10M"),
        (100_000_000, "100M"),
        (1_000_000_000, "1G"),
        (2_500_000_000, "2G"),
        (10_000_000_000, "10G"),
        (40_000_000_000, "40G"),
        (100_000_000_000, "100G"),
        (1_000_000_000_000, "1T"),
        (400_000_000_000_000, "400T"),
    ],
)
def test_format_speed(speed, expected):
    assert format_speed(speed) == expected


SAMPLING = [
    # (speed, up, global sampling, sampling.<x> settings, expected N)
    (1_000_000_000, True, 400, {}, 1000),
    (10_000_000_000, True, 400, {}, 10000),
    (100_000_000, True, 400, {}, 100),
    (10_000_000, True, 400, {}, 100),
    (25_000_000_000, True, 400, {}, 25000),
    (0, True, 400, {}, 400),  # unknown speed: the global rate
    (0, True, 256, {"1G": 5}, 256),
    (1_000_000_000, False, 400, {}, 0),  # down: not sampled
    (0, False, 400, {}, 0),
    (1_000_000_000, True, 400, {"1G": 512}, 512),
    (10_000_000_000, True, 400, {"1G": 512, "10G": 2000}, 2000),
    (10_000_000_000, True, 400, {"1G": 512}, 10000),  # "1G" is not a prefix match of "10G"
    (1_000_000_000, True, 400, {"bps_ratio": 2_000_000}, 500),
    (1_000_000_000, True, 400, {"bps_ratio": 2_000_000, "1G": 64}, 64),  # speed key first
    (1_000, True, 400, {"bps_ratio": 1_000_000}, 1),  # at least 1
    (1_000_000_000, True, 400, {"bps_ratio": 0}, 400),  # ratio 0: the global rate
    (1_000_000_000, True, 400, {"http": 7, "app.x": 9}, 1000),  # application keys are ignored
]  # fmt: skip


@pytest.mark.parametrize("speed,up,glob,by,expected", SAMPLING)
def test_sampling_rate_for(speed, up, glob, by, expected):
    assert sampling_rate_for(Nic(speed, up), glob, by) == expected


def test_sampling_rate_accepts_interface_objects_and_none():
    assert sampling_rate_for(iface("eth0", 2), 300, {}) == 300  # Interface with speed 0
    nic = Interface("eth0", 2, speed=1_000_000_000, up=True)
    assert sampling_rate_for(nic, 400, None) == 1000
    assert sampling_rate_for(None, 123, {"1G": 5}) == 123


def test_lookup_setting_deepest_match():
    settings = {"app": 1, "app.xyz": 2, "app.xyz.pqr": 3, "apple": 4}
    assert lookup_setting(settings, "app.xyz.pqr.abc") == 3
    assert lookup_setting(settings, "app.xyz.other") == 2
    assert lookup_setting(settings, "app.q") == 1
    assert lookup_setting(settings, "apple") == 4
    assert lookup_setting(settings, "appl") is None
    assert lookup_setting(settings, "App") is None  # case-sensitive, as hsflowd


# ---------------------------------------------------------------- a real namespace


ELECT = """
import json
from hostsflow.host.interfaces import scan_interfaces
from hostsflow.host.agent_address import candidates, elect_agent_address
t = scan_interfaces()
print(json.dumps(dict(
    default=elect_agent_address(t),
    v6=elect_agent_address(t, cidrs=["2001:db8:77::/48"]),
    veto=elect_agent_address(t, cidrs=["!198.51.100.0/24"]),
    pegged=elect_agent_address(t, agent_dev="lo"),
    dynamic=sorted(t.by_name("vB").dynamic_addresses),
    order=[c.address for c in candidates(t)])))
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 is not installed")
def test_election_in_a_namespace():
    ns = f"hf-host-{os.getpid()}-{secrets.token_hex(3)}"

    def run(*a: str) -> None:
        subprocess.run(a, check=True, capture_output=True, text=True)

    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "add", "vA", "type", "veth", "peer", "name", "vB")
        for dev in ("vA", "vB"):
            run("ip", "-n", ns, "link", "set", dev, "up")
        for addr in ("10.77.0.2/24", "198.51.100.9/24", "169.254.7.7/16"):
            run("ip", "-n", ns, "addr", "add", addr, "dev", "vB")
        run("ip", "-n", ns, "addr", "add", "2001:db8:77::9/64", "dev", "vB", "nodad")
        run("ip", "-n", ns, "addr", "add", "2001:db8:78::9/64", "dev", "vB", "nodad",
            "valid_lft", "600", "preferred_lft", "600")  # fmt: skip
        time.sleep(0.1)
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(ELECT)],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert out["default"] == "198.51.100.9"
    assert out["v6"] == "2001:db8:77::9"
    assert out["veto"] == "10.77.0.2"
    assert out["pegged"] == "127.0.0.1"
    assert out["dynamic"] == ["2001:db8:78::9"]
    order = out["order"]
    assert order[:3] == ["198.51.100.9", "10.77.0.2", "2001:db8:77::9"]
    assert order.index("2001:db8:77::9") < order.index("2001:db8:78::9")  # configured first
    assert order.index("169.254.7.7") > order.index("2001:db8:78::9")


def test_accepts_the_config_agent_cidr_objects():
    from hostsflow.config.options import AgentCIDR

    t = InterfaceTable([LO, iface("eth0", 2, "198.51.100.5", "10.0.0.5")])
    veto = [AgentCIDR(ipaddress.ip_network("198.51.100.0/24"), negate=True)]
    assert elect_agent_address(t, cidrs=veto) == "10.0.0.5"
    boost = [AgentCIDR(ipaddress.ip_network("127.0.0.0/8"))]
    assert elect_agent_address(t, cidrs=boost) == "127.0.0.1"
