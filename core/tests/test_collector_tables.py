"""The collector tools' tables under floods of keys, the traffic breakdown (flows), the hints,
and top's screen: in-process, datagrams from the agent's own encoder, a clock of the test's."""

from __future__ import annotations

import io
import json
import time

import pytest
from hostsflow.samples import DataSource
from hostsflow.sflow.datagram import DatagramHeader, encode_datagram
from hostsflow.sflow.records import ExtendedEntities
from hostsflow.testing import encoded_flow_sample, encoded_names_sample, ethernet_frame
from hostsflow.tools import aggregate
from hostsflow.tools.aggregate import Aggregator
from hostsflow.tools.allow import SourceFilter, parse_network
from hostsflow.tools.flows import FlowQueryError, parse_filter, parse_keys
from hostsflow.tools.hints import AgentStatus, notices
from hostsflow.tools.keytable import KeyTable

AGENT = "192.0.2.1"
HOST, PEER_A, PEER_B = "192.0.2.1", "198.51.100.7", "198.51.100.8"


def named(index: int, name: str) -> bytes:
    return encoded_names_sample(DataSource(3, index), name)


def flow(frame: bytes, rate: int, src: tuple[int, int] = (0, 0),
         dst: tuple[int, int] = (0, 0)) -> bytes:
    recs: list = []
    if src != (0, 0) or dst != (0, 0):
        recs.append(ExtendedEntities(src[0], src[1], dst[0], dst[1]))
    return encoded_flow_sample(frame, rate, *recs)


def dgram(samples: list[bytes], agent: str = AGENT) -> bytes:
    return encode_datagram(DatagramHeader(agent, 0, 1, 1000), samples)


def flood(agg: Aggregator, total: int, now: float, per: int = 500,
          spread: bool = False) -> None:
    """``total`` made-up names, ``per`` a datagram, from one spoofed agent address (or, with
    ``spread``, each datagram from another one)."""
    frame = ethernet_frame(udp=(PEER_A, 1, HOST, 2), payload=bytes(60))
    for d in range(total // per):
        agent = f"192.0.2.{100 + d}" if spread else "192.0.2.66"
        agg.feed(dgram([named(1000 + d * per + i, f"spoof-{d * per + i}") for i in range(per)]
                       + [flow(frame, 10, dst=(3, 1000 + d * per))], agent=agent),
                 now=now)


# ---------------------------------------------------------------- bounded tables


def test_keytable_refuses_when_full_and_expires_oldest_first():
    t: KeyTable[str, int] = KeyTable(3, ttl=10)
    assert t.put("a", 1, 0) and t.put("b", 2, 1) and t.put("c", 3, 2)
    assert not t.put("d", 4, 5) and t.refused == 1
    assert t.touch("a", 0, 6)  # seen again: now the newest
    assert t.put("d", 4, 11.5) and "b" not in t and "a" in t  # b (seen at 1) expired
    assert t.expire(100) == 3 and len(t) == 0


def test_15000_names_snapshot_costs_o_keys():
    agg = Aggregator(window=5)
    t0 = 1_000_000.0
    agg.feed(dgram([named(7, "web.service")]), now=t0)
    flood(agg, 15_000, t0 + 0.5, spread=True)  # 30 agents of 500 names: the global cap
    st = agg.stats
    assert len(agg.services) == aggregate.MAX_SERVICES
    # every name past the cap is refused, and so is each later flow sample to one of them (the
    # flood's datagrams 9 to 30 each carry one): refusals are counted per attempt
    refused_names = 15_001 - aggregate.MAX_SERVICES
    refused_flows = 30 - (aggregate.MAX_SERVICES - 1) // 500 - 1
    assert st.services_refused == refused_names + refused_flows
    times = []
    for i in range(5):
        t = time.perf_counter()
        snap, point = agg.tick(now=t0 + 2 + i)
        json.dumps(snap.to_dict())
        times.append(time.perf_counter() - t)
    print(f"snapshot + tick + JSON with {len(agg.services)} services kept of 15,001 heard: "
          f"median {sorted(times)[2] * 1000:.1f} ms")
    assert sorted(times)[2] < 0.050
    assert len(snap.services) == aggregate.SNAPSHOT_SERVICES
    assert snap.services_total == aggregate.MAX_SERVICES
    assert len(point["bps"]) <= aggregate.CHART_SERVICES
    # names expire: after their time to live the table is empty again and a new one fits
    later = t0 + aggregate.SERVICE_TTL + 10
    agg.feed(dgram([named(8, "db.service")]), now=later)
    snap = agg.snapshot(now=later + 1)
    assert [s.label for s in snap.services] == ["db.service"]


def test_one_agent_flooding_names_leaves_room_for_the_others():
    agg = Aggregator(window=5)
    t0 = 50_000.0
    flood(agg, 15_000, t0 + 0.5)  # all from 192.0.2.66
    assert len(agg.services) == aggregate.MAX_SERVICES_PER_AGENT
    frame = ethernet_frame(tcp=(PEER_A, 40000, HOST, 80), payload=bytes(300))
    agg.feed(dgram([named(7, "web.service"), flow(frame, 10, dst=(3, 7))]), now=t0 + 1.5)
    snap = agg.snapshot(now=t0 + 3)
    web = snap.service("192.0.2.1/web.service")
    assert web is not None and web.inbound.pps == pytest.approx(10 / snap.span)
    assert snap.services_total == aggregate.MAX_SERVICES_PER_AGENT + 1
    assert agg.stats.services_refused >= 15_000 - aggregate.MAX_SERVICES_PER_AGENT


def test_per_second_keys_are_bounded_and_counted():
    agg = Aggregator(window=2)
    t0 = 500.0
    samples = [flow(ethernet_frame(udp=(f"10.{i >> 8 & 255}.{i & 255}.1", 1000 + i % 50000,
                                        HOST, 53), payload=bytes(20)), 1, dst=(3, 5))
               for i in range(aggregate.MAX_KEYS_PER_BUCKET + 500)]
    for i in range(0, len(samples), 200):
        agg.feed(dgram(samples[i:i + 200]), now=t0 + 0.5)
    b = agg._buckets[-1]
    assert len(b.remote) == aggregate.MAX_KEYS_PER_BUCKET
    assert agg.stats.keys_refused >= 500
    # the refused keys' bytes are still in the service's rate and the total
    snap = agg.snapshot(now=t0 + 2)
    assert snap.services[0].inbound.pps == pytest.approx(len(samples) / 2)


def test_hostile_names_are_only_names():
    agg = Aggregator(window=2)
    frame = ethernet_frame(udp=(PEER_A, 1, HOST, 2), payload=bytes(100))
    names = {1: "toString", 2: "__proto__", 3: "other", 4: "constructor", 5: "dup", 6: "dup"}
    agg.feed(dgram([named(i, n) for i, n in names.items()] +
                   [flow(frame, i, dst=(3, i)) for i in names]), now=10.5)
    snap, point = agg.tick(now=12.0)
    labels = sorted(s.label for s in snap.services)
    assert labels == sorted(["toString", "__proto__", "other", "constructor", "dup#5", "dup#6"])
    assert set(point["bps"]) == set(labels)
    assert snap.other.bps == 0  # the service called "other" is not the unmarked traffic


# ---------------------------------------------------------------- the breakdown


def test_other_broken_down_by_protocol_port_and_address_exactly():
    agg = Aggregator(window=4)
    t0 = 2000.0
    dns = ethernet_frame(udp=(PEER_B, 53, HOST, 33333), payload=bytes(100))
    web = ethernet_frame(tcp=(PEER_A, 40000, HOST, 443), payload=bytes(400))
    marked = ethernet_frame(tcp=(PEER_A, 40001, HOST, 80), payload=bytes(200))
    for sec in range(6):
        agg.feed(dgram([named(9, "httpd.service")] + [flow(dns, 1)] * 10 + [flow(web, 1)] * 5
                       + [flow(marked, 1, dst=(3, 9))] * 3), now=t0 + sec + 0.5)
    now = t0 + 6
    res = agg.flow_query(parse_keys("protocol,src_addr,dst_port"), parse_filter("service="),
                         now=now)
    assert res["span"] == 4
    rows = {tuple(g["key"]): g for g in res["groups"]}
    assert set(rows) == {("udp", PEER_B, 33333), ("tcp", PEER_A, 443)}
    assert rows[("udp", PEER_B, 33333)]["pps"] == 10
    assert rows[("udp", PEER_B, 33333)]["bps"] == 10 * (len(dns) + 4) * 8
    assert rows[("tcp", PEER_A, 443)]["series"] == [5 * (len(web) + 4) * 8] * 4
    snap = agg.snapshot(now=now)
    assert res["matched"]["bps"] == pytest.approx(snap.other.bps)  # all of "other", no more
    # by service, every packet: the marked ones under their service, the rest under ""
    res = agg.flow_query(("service",), [], now=now)
    assert {g["key"][0]: g["pps"] for g in res["groups"]} == {"": 15, "httpd.service": 3}
    # filters: negation, either end, a port
    res = agg.flow_query(("protocol",), parse_filter("port=443"), now=now)
    assert [g["key"] for g in res["groups"]] == [["tcp"]] and res["groups"][0]["pps"] == 5
    res = agg.flow_query(("dst_port",), parse_filter("protocol!=udp,address=" + PEER_A), now=now)
    assert sorted(g["key"][0] for g in res["groups"]) == [80, 443]
    # time zoom: one second only
    res = agg.flow_query(("protocol",), [], start=t0 + 2, end=t0 + 3, now=now)
    assert res["t"] == [int(t0) + 2] and res["span"] == 1
    assert {g["key"][0]: g["pps"] for g in res["groups"]} == {"udp": 10, "tcp": 8}


def test_flow_keys_beyond_the_cap_are_counted_as_not_itemised():
    agg = Aggregator(window=2)
    agg.flows.per_second = 100
    samples = [flow(ethernet_frame(udp=(PEER_A, 1000 + i, HOST, 53), payload=bytes(20)), 1)
               for i in range(150)]
    agg.feed(dgram(samples), now=300.5)
    res = agg.flow_query(("src_port",), [], now=302.0)
    assert res["matched"]["groups"] == 100
    assert res["not_itemised"]["pps"] == pytest.approx(50 / 2)
    assert agg.flows.refused == 50


def test_flow_query_errors_name_the_field():
    with pytest.raises(FlowQueryError, match="nosuch"):
        parse_keys("protocol,nosuch")
    with pytest.raises(FlowQueryError, match="bogus"):
        parse_filter("bogus=1")
    with pytest.raises(FlowQueryError, match="FIELD=VALUE"):
        parse_filter("protocol")


# ---------------------------------------------------------------- --allow


def test_source_filter():
    f = SourceFilter(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])
    assert f.allows("10.1.2.3") and f.allows("192.0.2.7") and f.allows("2001:db8::1")
    assert f.allows("::ffff:10.9.9.9")  # IPv4 on an IPv6 socket
    assert not f.allows("192.0.2.8") and not f.allows("fe80::1%eth0") and not f.allows("junk")
    with pytest.raises(ValueError, match="10.0.0.1/8"):
        parse_network("10.0.0.1/8")
    agg = Aggregator(allow=SourceFilter(["10.0.0.0/8"]))
    assert agg.accepts("10.0.0.1") and not agg.accepts("127.0.0.1")
    assert agg.stats.sources_refused == 1


# ---------------------------------------------------------------- hints


def _status(counters: dict, modules: tuple = ("pcap", "systemd"), **raw) -> AgentStatus:
    doc = {"counters": counters, "modules": {m: {} for m in modules}, **raw}
    return AgentStatus("/run/x.json", 1.0, counters, doc["modules"], doc)


def test_hints_name_the_real_cause():
    agg = Aggregator(window=2)
    frame = ethernet_frame(udp=(PEER_A, 1, HOST, 2), payload=bytes(100))
    agg.feed(dgram([flow(frame, 1)]), now=10.5)
    snap = agg.snapshot(now=12.0)
    no_module = notices(snap, _status({}, modules=("pcap",)))[0]
    assert "without the systemd module" in no_module
    bus = notices(snap, _status({"faults.systemd": 4, "systemd.marking.unmarked.not_service": 9}))
    assert "cannot reach systemd over D-Bus" in bus[0] and "4 failed" in bus[0]
    slice_ = notices(snap, _status({"systemd.marking.unmarked.not_service": 9}))[0]
    assert "no running service under the slices" in slice_
    unknown = notices(snap, None)[0]
    assert "name no service" in unknown
    stale = _status({})
    stale.age = 1000
    assert any("1000 s ago" in n and "may be gone" in n for n in notices(snap, stale))
    gone = _status({}, pid=2**22 + 1)  # above pid_max's default ceiling: no such process
    gone.age = 1000
    assert any(f"(pid {2**22 + 1}) that wrote it is gone" in n for n in notices(snap, gone))


# ---------------------------------------------------------------- top's screen


def _screen(snap) -> str:
    pytest.importorskip("rich")
    from hostsflow.tools.top import render
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(render(snap))
    return console.export_text()


def test_top_empty_tables_say_none_yet():
    text = _screen(Aggregator(window=2).snapshot(now=5.0))
    assert text.count("none yet") == 3  # connections, protocols, remotes


def test_top_other_in_the_total_column_and_remotes_not_repeated():
    agg = Aggregator(window=2)
    frame = ethernet_frame(tcp=(PEER_A, 40000, HOST, 80), payload=bytes(600))
    junk = ethernet_frame(udp=(PEER_B, 53, HOST, 3333), payload=bytes(100))
    for sec in range(2):
        agg.feed(dgram([named(9, "httpd.service"), flow(frame, 10, dst=(3, 9)),
                        flow(junk, 10)]), now=30 + sec + 0.5)
    snap = agg.snapshot(now=32.0)
    text = _screen(snap)
    other = next(line for line in text.splitlines() if "other (no service)" in line)
    cells = [c.strip() for c in other.split("│") if c.strip()]
    from hostsflow.tools.aggregate import format_rate

    # name, total, pkts/s: nothing under in or out (the direction of unmarked traffic is unknown)
    assert cells == ["other (no service)", format_rate(snap.other.bps), f"{snap.other.pps:.0f}"]
    remote_line = next(line for line in text.splitlines() if PEER_A in line)
    assert remote_line.count("httpd.service") == 2  # once in each of two tables, side by side
    assert f"httpd.service in {PEER_A}" not in text  # not "service dir key" run together


# ---------------------------------------------------------------- kept apart from the agent


def test_the_agent_never_imports_the_collector_tools():
    import subprocess
    import sys

    code = ("import sys, hostsflow.cli, hostsflow.agent, hostsflow.run_loop, hostsflow.bootstrap\n"
            "from hostsflow.cli import agent_main\n"
            "print(sorted(m for m in sys.modules if m.startswith('hostsflow.tools')"
            " or m in ('aiohttp', 'rich')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_collector_socket_gets_a_receive_buffer_for_a_fleets_bursts():
    """4 MiB asked; root gets it past net.core.rmem_max (SO_RCVBUFFORCE), anyone else up to
    rmem_max.  The kernel reports twice what it grants."""
    import os
    import socket

    from hostsflow.tools.decode import RECEIVE_BUFFER, open_socket

    sysctl = "/proc/sys/net/core/rmem_max"
    with open(sysctl) as f:
        rmem_max = int(f.read())
    if os.geteuid() == 0:  # a stock Debian's rmem_max, which root's buffer must get past
        with open(sysctl, "w") as f:
            f.write("212992")
    try:
        with open_socket("127.0.0.1:0") as sock:
            got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        if os.geteuid() == 0:
            with open(sysctl, "w") as f:
                f.write(str(rmem_max))
    want = RECEIVE_BUFFER if os.geteuid() == 0 else min(RECEIVE_BUFFER, rmem_max)
    assert got >= 2 * want
