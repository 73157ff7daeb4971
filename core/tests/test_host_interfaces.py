"""The interface table and interface counters in fresh network namespaces with a veth pair.

Each test runs the scan inside the namespace (``ip netns exec NS python -c ...``) and compares
with what netlink (``ip -j``), ethtool and /sys say inside the same namespace.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from hostsflow.host.interfaces import Interface, InterfaceTable, scan_interfaces

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 is not installed"),
]


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def ns_python(ns: str, code: str) -> object:
    """Run ``code`` with this Python inside netns ``ns``; it prints one JSON value."""
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def pair():
    """Namespaces A and B joined by veth vA (10.77.0.1/24) <-> vB (10.77.0.2/24), both up."""
    tag = f"hf-host-{os.getpid()}-{secrets.token_hex(3)}"
    a, b = f"{tag}-a", f"{tag}-b"
    made = []
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", a, "link", "add", "vA", "type", "veth", "peer", "name", "vB", "netns", b)
        sh("ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", "vA")
        sh("ip", "-n", b, "addr", "add", "10.77.0.2/24", "dev", "vB")
        sh("ip", "-n", a, "link", "set", "vA", "up")
        sh("ip", "-n", b, "link", "set", "vB", "up")
        deadline = time.monotonic() + 5  # linkwatch reports carrier changes with a delay
        while time.monotonic() < deadline:
            states = [json.loads(sh("ip", "-n", ns, "-j", "link", "show", dev))[0]["operstate"]
                      for ns, dev in ((a, "vA"), (b, "vB"))]  # fmt: skip
            if states == ["UP", "UP"]:
                break
            time.sleep(0.05)
        yield a, b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


SCAN = """
import json
from hostsflow.host.interfaces import scan_interfaces
t = scan_interfaces()
print(json.dumps([dict(name=i.name, ifindex=i.ifindex, mac=i.mac.hex(), speed=i.speed,
    duplex=i.duplex, up=i.up, oper_up=i.oper_up, loopback=i.loopback, promisc=i.promisc,
    kind=i.kind, addresses=i.addresses, mtu=i.mtu, iflink=i.iflink) for i in t]))
"""


def test_scan_matches_netlink_and_ethtool(pair):
    a, b = pair
    sh("ip", "-n", b, "link", "set", "vB", "promisc", "on")
    got = {i["name"]: i for i in ns_python(b, SCAN)}
    links = {l["ifname"]: l for l in json.loads(sh("ip", "-n", b, "-j", "addr", "show"))}
    assert set(got) == set(links) == {"lo", "vB"}
    for name, link in links.items():
        g = got[name]
        assert g["ifindex"] == link["ifindex"]
        assert g["mac"] == link["address"].replace(":", "")
        assert g["mtu"] == link["mtu"]
        assert g["up"] == ("UP" in link["flags"])
        assert g["loopback"] == ("LOOPBACK" in link["flags"])
        assert g["promisc"] == ("PROMISC" in link["flags"])
        assert sorted(g["addresses"]) == sorted(x["local"] for x in link.get("addr_info", []))
    assert got["lo"]["kind"] == "loopback" and got["vB"]["kind"] == "veth"
    assert got["vB"]["promisc"] is True
    assert "10.77.0.2" in got["vB"]["addresses"]
    # the veth peer's ifindex (in namespace A) is what iflink shows
    peer = json.loads(sh("ip", "-n", a, "-j", "link", "show", "vA"))[0]
    assert got["vB"]["iflink"] == peer["ifindex"]
    assert got["vB"]["oper_up"] is True
    if shutil.which("ethtool"):
        out = sh("ip", "netns", "exec", b, "ethtool", "vB")
        m = re.search(r"Speed:\s*(\d+)Mb/s", out)
        assert got["vB"]["speed"] == (int(m.group(1)) * 1_000_000 if m else 0)
        d = re.search(r"Duplex:\s*(\w+)", out)
        assert got["vB"]["duplex"] == {"Full": 1, "Half": 2}.get(d.group(1) if d else "", 0)
    else:
        mbps = int(sh("ip", "netns", "exec", b, "cat", "/sys/class/net/vB/speed"))
        assert got["vB"]["speed"] == max(mbps, 0) * 1_000_000


def test_down_interface_has_no_oper_state_or_speed(pair):
    _, b = pair
    sh("ip", "-n", b, "link", "set", "vB", "down")
    got = {i["name"]: i for i in ns_python(b, SCAN)}
    assert got["vB"]["up"] is False and got["vB"]["oper_up"] is False
    assert got["vB"]["speed"] == 0  # the kernel does not report speed of a down veth


DIFF = """
import json, subprocess
from hostsflow.host.interfaces import scan_interfaces
t1 = scan_interfaces()
subprocess.run(["ip", "link", "add", "brx", "type", "bridge"], check=True)
subprocess.run(["ip", "link", "set", "vB", "mtu", "1400"], check=True)
t2 = scan_interfaces()
subprocess.run(["ip", "link", "del", "brx"], check=True)
t3 = scan_interfaces()
d1, d2, d0 = t1.diff(t2), t2.diff(t3), t3.diff(scan_interfaces())
print(json.dumps(dict(d1=[d1.added, d1.removed, d1.changed], d2=[d2.added, d2.removed, d2.changed],
    d0=bool(d0), kind=t2.by_name("brx").kind, by_index=t2.by_index(t2.by_name("brx").ifindex).name)))
"""


def test_diff_reports_added_removed_changed(pair):
    _, b = pair
    out = ns_python(b, DIFF)
    assert out["d1"] == [["brx"], [], ["vB"]]
    assert out["d2"] == [[], ["brx"], []]
    assert out["d0"] is False
    assert out["kind"] == "bridge" and out["by_index"] == "brx"


COUNTERS = """
import json
from hostsflow.host.interfaces import scan_interfaces
from hostsflow.host.counters import interface_counters
def stats():
    base = "/sys/class/net/vB/statistics/"
    return {k: int(open(base + k).read()) for k in ("rx_bytes", "rx_packets", "multicast",
            "rx_dropped", "rx_errors", "tx_bytes", "tx_packets", "tx_dropped", "tx_errors")}
t = scan_interfaces()
before = stats()
gi, pn = interface_counters(t.by_name("vB"))
after = stats()
print(json.dumps(dict(before=before, after=after,
    gi={a.name: getattr(gi, a.name) for a in type(gi).__attrs_attrs__}, name=pn.name,
    ifindex=t.by_name("vB").ifindex, speed=t.by_name("vB").speed, duplex=t.by_name("vB").duplex)))
"""

SEND = """
import socket, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.77.0.1"))
for i in range(300):
    s.sendto(b"u" * 100, ("10.77.0.2", 9))
for i in range(40):
    s.sendto(b"m" * 100, ("239.7.7.7", 9))
print(json.dumps(True))
"""


def test_interface_counters_match_sysfs(pair):
    a, b = pair
    ns_python(a, SEND)
    out = ns_python(b, COUNTERS)
    before, after, gi = out["before"], out["after"], out["gi"]
    m32 = 0xFFFFFFFF
    assert after["rx_packets"] >= 340
    assert before["rx_bytes"] <= gi["ifInOctets"] <= after["rx_bytes"]
    assert before["tx_bytes"] <= gi["ifOutOctets"] <= after["tx_bytes"]
    assert before["multicast"] <= gi["ifInMulticastPkts"] <= after["multicast"]
    ucast_lo = before["rx_packets"] - after["multicast"]
    ucast_hi = after["rx_packets"] - before["multicast"]
    assert ucast_lo <= gi["ifInUcastPkts"] <= ucast_hi
    assert before["tx_packets"] <= gi["ifOutUcastPkts"] <= after["tx_packets"]
    for f, k in [("ifInDiscards", "rx_dropped"), ("ifInErrors", "rx_errors"),
                 ("ifOutDiscards", "tx_dropped"), ("ifOutErrors", "tx_errors")]:  # fmt: skip
        assert before[k] & m32 <= gi[f] <= after[k] & m32
    assert gi["ifIndex"] == out["ifindex"] and out["name"] == "vB"
    assert gi["ifSpeed"] == out["speed"] and gi["ifDirection"] == out["duplex"]
    assert gi["ifStatus"] == 3 and gi["ifPromiscuousMode"] == 0
    assert gi["ifInBroadcastPkts"] == gi["ifOutBroadcastPkts"] == m32
    assert gi["ifOutMulticastPkts"] == gi["ifInUnknownProtos"] == m32


def test_table_lookups_in_this_namespace():
    t = scan_interfaces()
    assert len(t) == len(os.listdir("/sys/class/net"))
    for i in t:
        assert t.by_name(i.name) is i and t.by_index(i.ifindex) is i
        if i.has_mac:
            owner = t.by_mac(i.mac)
            assert owner is not None and owner.mac == i.mac and owner.ifindex <= i.ifindex
    assert [i.ifindex for i in t] == sorted(i.ifindex for i in t)
    assert t.by_name("hf-no-such") is None and t.by_index(0) is None
    unused = bytes.fromhex("02ff" + secrets.token_hex(4))
    assert all(i.mac != unused for i in t) and t.by_mac(unused) is None


def test_table_with_shared_macs_prefers_lowest_ifindex():
    mac = bytes.fromhex("020000000001")
    t = InterfaceTable([Interface("br0", 9, mac, kind="bridge"), Interface("eth1", 3, mac)])
    assert t.by_mac(mac).name == "eth1"
    assert t.names() == ["eth1", "br0"]
    assert "br0" in t and "nope" not in t
