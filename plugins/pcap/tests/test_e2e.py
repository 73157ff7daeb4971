"""End to end on real traffic: ``hostsflowd`` with ``pcap { }`` in a namespace, a C generator in
the peer namespace, and three collectors (our decoder, sfcapd + nfdump, sfacctd).

The link carries only the test's frames (IPv6 off, static neighbours, listening sockets so no
ICMP errors), so every sample must belong to one of the two flows the test sends:

* A -> B: UDP 5555 -> 9999, 200-byte payload (246-byte frames with FCS), received on B;
* B -> A: UDP 7777 -> 9998, 1200-byte payload (1246-byte frames, cut at headerBytes=128 and
  rebuilt from the IP length), sent by B.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hostsflow.packet import decode_sampled_header
from hostsflow.sflow.records import INTERNAL_IFINDEX, SampledHeader

from .conftest import NetPair
from .e2e_kit import AgentProcess, Collector, Sfacctd, Sfcapd, udp_socket_in_netns

pytestmark = [pytest.mark.root, pytest.mark.slow]

RX_PORTS, TX_PORTS = (5555, 9999), (7777, 9998)
RX_PAYLOAD, TX_PAYLOAD = 200, 1200
ETH_IP_UDP = 14 + 20 + 8
FCS = 4


def _need_tools() -> None:
    for tool in ("hostsflowd", "sfcapd", "nfdump", "sfacctd"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install nfdump-sflow pmacct; pip install -e .)")


def _conf(collectors: list[int], body: str) -> str:
    cols = "\n".join(f"  collector {{ ip = 127.0.0.1 udpport = {p} }}" for p in collectors)
    return f"sflow {{\n  polling = 30\n  headerBytes = 128\n{cols}\n{body}\n}}\n"


def _send(pair: NetPair, exe: Path, side: str, count: int, payload: int,
          ports: tuple[int, int], pps: int = 0) -> None:
    dst = pair.ip_b if side == "a" else pair.ip_a
    run = pair.in_a if side == "a" else pair.in_b
    out = run(str(exe), dst, str(ports[1]), str(ports[0]), str(count), str(payload), str(pps),
              timeout=120)
    assert f"sent={count} " in out, out


@pytest.mark.parametrize("rate,packets,where", [(10, 300_000, "speed"), (100, 1_000_000, "tap")])
def test_sampling_counts_estimates_pool_and_decoders(
    netpair: NetPair, udpsend: Path, tmp_path: Path, rate: int, packets: int, where: str
) -> None:
    _need_tools()
    pair = netpair
    # listeners, so no ICMP port-unreachable frames join the link
    sinks = [udp_socket_in_netns(pair.ns_b, RX_PORTS[1], pair.ip_b),
             udp_socket_in_netns(pair.ns_a, TX_PORTS[1], pair.ip_a)]
    col = Collector(pair.ns_b)
    sfc = Sfcapd(pair.ns_b, tmp_path)
    sfa = Sfacctd(pair.ns_b, tmp_path)
    # veth reports 10G: "speed" exercises the core's sampling.<speed> rule, "tap" the override
    body = (f"  sampling.10G = {rate}\n  pcap {{ dev = {pair.dev_b} }}" if where == "speed"
            else f"  sampling.10G = 7\n  pcap {{ dev = {pair.dev_b} sampling = {rate} }}")
    agent = AgentProcess(pair.ns_b, _conf([col.port, sfc.port, sfa.port], body), tmp_path)
    try:
        agent.wait_for('"tap_opened"')
        ifindex = pair.ifindex("b")
        c0 = pair.counters("b")
        tx_count = packets // 100
        # paced so that the third-party collectors (small socket buffers) keep up
        _send(pair, udpsend, "a", packets, RX_PAYLOAD, RX_PORTS, pps=6000 * rate)
        _send(pair, udpsend, "b", tx_count, TX_PAYLOAD, TX_PORTS)
        time.sleep(2.5)  # the ring's block timeout, then the agent's 1 s flush
        c1 = pair.counters("b")
        log = agent.stop()
        nf_records, nf_err = sfc.records()
        pm_lines = sfa.aggregates()
    finally:
        agent.stop()
        sfc.kill()
        sfa.kill()
        col.close()
        for s in sinks:
            s.close()
    assert '"pcap_' not in log.replace('"pcap.taps_opened"', ""), log[-3000:]

    samples = [s for _, s in col.flow_samples()]
    assert col.datagram_gaps() == 0, "datagrams were lost on the way to the test collector"
    assert [s.sequence for s in samples] == list(range(1, len(samples) + 1))

    truth_packets = (c1["rx_packets"] - c0["rx_packets"]) + (c1["tx_packets"] - c0["tx_packets"])
    truth_bytes = ((c1["rx_bytes"] - c0["rx_bytes"]) + (c1["tx_bytes"] - c0["tx_bytes"])
                   + FCS * truth_packets)
    assert truth_packets >= packets + tx_count

    # ---- every sample is one of the two flows, exactly as sent
    want = {
        "rx": dict(src=pair.ip_a, dst=pair.ip_b, ports=RX_PORTS, flen=RX_PAYLOAD + ETH_IP_UDP + FCS,
                   input=(0, ifindex), output=(0, INTERNAL_IFINDEX), smac=pair.mac_a),
        "tx": dict(src=pair.ip_b, dst=pair.ip_a, ports=TX_PORTS, flen=TX_PAYLOAD + ETH_IP_UDP + FCS,
                   input=(0, INTERNAL_IFINDEX), output=(0, ifindex), smac=pair.mac_b),
    }
    per_flow: dict[str, list[Any]] = {"rx": [], "tx": []}
    last_pool, drops = 0, 0
    for s in samples:
        assert s.source.ds_class == 0 and s.source.ds_index == ifindex
        assert s.sampling_rate == rate
        assert s.sample_pool >= last_pool, "the sample pool went backwards"
        last_pool = s.sample_pool
        assert s.drops >= drops, "drops is a running total: it never goes backwards"
        drops = s.drops
        (hdr,) = s.records
        assert isinstance(hdr, SampledHeader) and hdr.protocol == 1 and hdr.stripped == FCS
        assert len(hdr.header) == 128
        pkt = decode_sampled_header(hdr)
        assert pkt is not None and pkt.protocol == 17
        flow = "rx" if pkt.src_ip == pair.ip_a else "tx"
        w = want[flow]
        assert (pkt.src_ip, pkt.dst_ip) == (w["src"], w["dst"])
        assert (pkt.src_port, pkt.dst_port) == w["ports"]
        assert hdr.frame_length == w["flen"]
        assert (s.input, s.output) == (w["input"], w["output"])
        assert pkt.src_mac is not None and pkt.src_mac.hex(":") == w["smac"]
        per_flow[flow].append(s)

    # ---- statistics (binomial count, sFlow estimate bound, pool)
    n = len(samples)
    p = 1 / rate
    expected = truth_packets * p
    sigma = math.sqrt(truth_packets * p * (1 - p))
    est_packets = sum(s.sampling_rate for s in samples)
    est_bytes = sum(s.sampling_rate * s.records[0].frame_length for s in samples)
    err_packets = abs(est_packets - truth_packets) / truth_packets * 100
    err_bytes = abs(est_bytes - truth_bytes) / truth_bytes * 100
    bound = 196 * math.sqrt(1 / n)
    pool_err = abs(last_pool - truth_packets) / truth_packets * 100
    figures = dict(rate=rate, packets=truth_packets, samples=n, expected=round(expected, 1),
                   sigma=round(sigma, 1), z=round((n - expected) / sigma, 2),
                   est_packets_err_pct=round(err_packets, 3), est_bytes_err_pct=round(err_bytes, 3),
                   bound_pct=round(bound, 3), pool=last_pool, pool_err_pct=round(pool_err, 3),
                   drops=drops, rx_samples=len(per_flow["rx"]), tx_samples=len(per_flow["tx"]))
    print("FIGURES", json.dumps(figures))
    assert abs(n - expected) <= 5 * sigma, figures
    assert err_packets <= bound, figures
    assert err_bytes <= bound, figures
    assert pool_err <= 1.0, figures
    # all A->B frames went before the first B->A frame: the pool interpolation must know it
    if per_flow["tx"]:
        assert per_flow["tx"][0].sample_pool >= 0.99 * packets, figures
    tx_expected = tx_count * p
    assert abs(len(per_flow["tx"]) - tx_expected) <= 5 * math.sqrt(tx_count * p * (1 - p)) + 1

    # ---- nfdump (sfcapd): one record per flow sample, same fields and estimates
    bad = [line for line in nf_err.splitlines()
           if line.startswith("SFLOW:") and "New exporter" not in line]
    assert not bad, bad
    assert len(nf_records) == n
    for rec in nf_records:
        flow = "rx" if rec["src4_addr"] == pair.ip_a else "tx"
        w = want[flow]
        assert (rec["src4_addr"], rec["dst4_addr"]) == (w["src"], w["dst"])
        assert (rec["src_port"], rec["dst_port"]) == w["ports"]
        assert rec["proto"] == 17
        assert (rec["input_snmp"], rec["output_snmp"]) == (w["input"][1], w["output"][1])
        assert rec["in_packets"] == rate
        assert rec["in_bytes"] == rate * w["flen"]
        assert rec["in_src_mac"] == w["smac"]
    assert sum(r["in_packets"] for r in nf_records) == est_packets
    assert sum(r["in_bytes"] for r in nf_records) == est_bytes

    # ---- sfacctd: aggregates per flow key add up to our samples
    totals: dict[tuple[Any, ...], list[int]] = {}
    for line in pm_lines:
        key = (line["ip_src"], line["ip_dst"], line["port_src"], line["port_dst"],
               line["ip_proto"], line["iface_in"], line["iface_out"], line["sampling_rate"])
        t = totals.setdefault(key, [0, 0])
        t[0] += line["packets"]
        t[1] += line["bytes"]
    expect_pm = {}
    for flow, lst in per_flow.items():
        if not lst:
            continue
        w = want[flow]
        key = (w["src"], w["dst"], w["ports"][0], w["ports"][1], "udp", w["input"][1],
               w["output"][1], rate)
        expect_pm[key] = [len(lst), len(lst) * w["flen"]]
    assert totals == expect_pm


def _first_sample_after(col: Collector, since: float, ifindex: int, timeout: float) -> float:
    """Seconds from ``since`` until a flow sample from data source 0:ifindex arrived."""
    end = since + timeout
    while time.monotonic() < end:
        for t, s in col.flow_samples(since):
            if s.source.ds_index == ifindex:
                return t - since
        time.sleep(0.1)
    raise AssertionError(f"no sample from ifindex {ifindex} within {timeout} s")


def test_device_absent_recreated_or_down_is_sampled_again_within_5s(
    netpair: NetPair, udpsend: Path, tmp_path: Path
) -> None:
    _need_tools()
    pair = netpair
    pair.delete_link()  # absent at start
    col = Collector(pair.ns_b)
    # no per-tap rate: the core's rule (sampling.10G) also decides after each change
    agent = AgentProcess(pair.ns_b, _conf([col.port], f"  sampling.10G = 1\n  sampling = 1\n"
                                                 f"  pcap {{ dev = {pair.dev_b} }}"), tmp_path)
    senders: list[subprocess.Popen[bytes]] = []

    def traffic() -> None:
        for p in senders:
            p.wait(30)
        senders.clear()
        senders.append(subprocess.Popen(
            ["ip", "netns", "exec", pair.ns_a, str(udpsend), pair.ip_b, "9999", "5555", "1400",
             "64", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    delays = {}
    try:
        agent.wait_for('"started"')
        time.sleep(1.5)
        # 1. the device appears after start-up
        t0 = time.monotonic()
        pair.create_link()
        traffic()
        delays["created"] = _first_sample_after(col, t0, pair.ifindex("b"), 5.0)
        # 2. it is deleted and re-created (a new ifIndex, new counters)
        for p in senders:
            p.wait(30)
        pair.delete_link()
        time.sleep(1.0)
        t0 = time.monotonic()
        pair.create_link()
        traffic()
        delays["recreated"] = _first_sample_after(col, t0, pair.ifindex("b"), 5.0)
        # 3. it goes down (sampling off) and comes back up
        for p in senders:
            p.wait(30)
        pair.in_b("ip", "link", "set", pair.dev_b, "down")
        time.sleep(3.0)
        t0 = time.monotonic()
        pair.in_b("ip", "link", "set", pair.dev_b, "up")
        pair.in_a("ip", "neigh", "replace", pair.ip_b, "lladdr", pair.mac_b, "dev", pair.dev_a,
                  "nud", "permanent")
        traffic()
        delays["up_again"] = _first_sample_after(col, t0, pair.ifindex("b"), 5.0)
    finally:
        for p in senders:
            p.kill()
            p.wait()
        log = agent.stop()
        col.close()
    print("FIGURES", json.dumps({k: round(v, 2) for k, v in delays.items()}))
    assert log.count('"tap_opened"') >= 2, log[-3000:]
