"""End to end on real traffic: ``hostsflowd`` with ``pcap { }`` in a namespace, a C generator in
the peer namespace, and three collectors (our decoder, sfcapd + nfdump, sfacctd).

The link carries only the test's frames (IPv6 off, static neighbours, a listening socket on
every destination port so no ICMP errors), so every sample belongs to one of the flows the test
sends:

* A -> B: UDP 5555 -> each of 40 ports 5600..5639, the i-th with a ``64 + 16*i``-byte payload
  (110- and 126-byte frames with FCS are captured whole, the others are cut at headerBytes=128
  and rebuilt from the IP length), received on B;
* B -> A: UDP 7777 -> 9998, 1200-byte payload (1246-byte frames), sent by B.

The statistics follow the sFlow bound the way ``plugins/nflog`` checks it: a 95% bound on one
estimate fails a correct agent 1 time in 20, so each destination port's estimate (rate x its
samples, and rate x the sum of its frame lengths) is held against its own bound, truth being
exactly what the sender sent to that port, and at least 33 of the 40 must be inside (a 0.07%
chance of a false failure).  The total's error is reported against its bound; the sample count
is asserted within 5 sigma and the pool within 1%.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hostsflow.packet import decode_sampled_header
from hostsflow.sflow.datagram import decode_datagram
from hostsflow.sflow.records import INTERNAL_IFINDEX, SampledHeader
from hostsflow.testing import load_file_module

from .conftest import NetPair
from .e2e_kit import Collector, Sfacctd, Sfcapd, udp_socket_in_netns

TESTS = Path(__file__).resolve().parents[3] / "tests"
AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                TESTS / "agent_process.py").AgentProcess
bounds = load_file_module("hostsflow_tests_sampling_bounds", TESTS / "sampling_bounds.py")
estimate_within_bound, sflow_bound_pct = bounds.estimate_within_bound, bounds.sflow_bound_pct

pytestmark = [pytest.mark.root, pytest.mark.slow]

RX_SPORT = 5555
RX_DPORTS = tuple(range(5600, 5640))
TX_PORTS = (7777, 9998)
TX_PAYLOAD = 1200
ETH_IP_UDP = 14 + 20 + 8
FCS = 4
HEADER_BYTES = 128


def rx_payload(dport: int) -> int:
    """The payload the test sends to one of the A -> B destination ports."""
    return 64 + 16 * RX_DPORTS.index(dport)


def frame_length(payload: int) -> int:
    """The sFlow frame length (with FCS) of a UDP/IPv4 datagram of ``payload`` bytes."""
    return payload + ETH_IP_UDP + FCS


def _need_tools() -> None:
    for tool in ("hostsflowd", "sfcapd", "nfdump", "sfacctd"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install nfdump-sflow pmacct; pip install -e .)")


def _conf(collectors: list[int], body: str) -> str:
    cols = "\n".join(f"  collector {{ ip = 127.0.0.1 udpport = {p} }}" for p in collectors)
    return f"sflow {{\n  polling = 30\n  headerBytes = {HEADER_BYTES}\n{cols}\n{body}\n}}\n"


def _send(pair: NetPair, exe: Path, side: str, count: int, payload: int,
          ports: tuple[int, int], pps: int = 0) -> int:
    """Run the C generator in one namespace; the number of datagrams it says it sent."""
    dst = pair.ip_b if side == "a" else pair.ip_a
    run = pair.in_a if side == "a" else pair.in_b
    out = run(str(exe), dst, str(ports[1]), str(ports[0]), str(count), str(payload), str(pps),
              timeout=120)
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    assert int(fields.get("sent", -1)) == count, out
    return int(fields["sent"])


@pytest.mark.parametrize("rate,packets,where", [(10, 300_000, "speed"), (100, 1_000_000, "tap")])
def test_sampling_counts_estimates_pool_and_decoders(
    netpair: NetPair, udpsend: Path, tmp_path: Path, rate: int, packets: int, where: str
) -> None:
    _need_tools()
    pair = netpair
    # listeners on every destination port, so no ICMP port-unreachable frames join the link
    # (default buffers: they overflow quietly, which sends nothing back)
    sinks = [udp_socket_in_netns(pair.ns_b, port, pair.ip_b, rcvbuf=0) for port in RX_DPORTS]
    sinks.append(udp_socket_in_netns(pair.ns_a, TX_PORTS[1], pair.ip_a, rcvbuf=0))
    col = Collector(pair.ns_b)
    sfc = Sfcapd(pair.ns_b, tmp_path)
    sfa = Sfacctd(pair.ns_b, tmp_path)
    # veth reports 10G: "speed" exercises the core's sampling.<speed> rule, "tap" the override
    body = (f"  sampling.10G = {rate}\n  pcap {{ dev = {pair.dev_b} }}" if where == "speed"
            else f"  sampling.10G = 7\n  pcap {{ dev = {pair.dev_b} sampling = {rate} }}")
    agent = AgentProcess(_conf([col.port, sfc.port, sfa.port], body), tmp_path, netns=pair.ns_b)
    sent: dict[int, int] = {}
    try:
        agent.wait_for_log('"tap_opened"')
        ifindex = pair.ifindex("b")
        c0 = pair.counters("b")
        tx_count = packets // 100
        # paced so that the third-party collectors (small socket buffers) keep up
        for dport in RX_DPORTS:
            sent[dport] = _send(pair, udpsend, "a", packets // len(RX_DPORTS), rx_payload(dport),
                                (RX_SPORT, dport), pps=6000 * rate)
        tx_sent = _send(pair, udpsend, "b", tx_count, TX_PAYLOAD, TX_PORTS)
        time.sleep(2.5)  # the ring's block timeout, then the agent's 1 s flush
        c1 = pair.counters("b")
        agent.stop(timeout=10)
        log = agent.log()
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

    # the link carried exactly what the generator sent, nothing else and nothing lost: the
    # sender's counts are the truth per port, the veth counters the truth for the pool
    tx_flen = frame_length(TX_PAYLOAD)
    truth_packets = (c1["rx_packets"] - c0["rx_packets"]) + (c1["tx_packets"] - c0["tx_packets"])
    truth_bytes = ((c1["rx_bytes"] - c0["rx_bytes"]) + (c1["tx_bytes"] - c0["tx_bytes"])
                   + FCS * truth_packets)
    assert (c1["rx_packets"] - c0["rx_packets"], c1["tx_packets"] - c0["tx_packets"]) == (
        sum(sent.values()), tx_sent)
    assert truth_bytes == (sum(n * frame_length(rx_payload(d)) for d, n in sent.items())
                           + tx_sent * tx_flen)

    # ---- every sample is one of the flows, exactly as sent
    rx: dict[str, Any] = {"src": pair.ip_a, "dst": pair.ip_b, "input": (0, ifindex),
                          "output": (0, INTERNAL_IFINDEX), "smac": pair.mac_a}
    tx: dict[str, Any] = {"src": pair.ip_b, "dst": pair.ip_a, "input": (0, INTERNAL_IFINDEX),
                          "output": (0, ifindex), "smac": pair.mac_b}
    per_port: dict[int, list[Any]] = {d: [] for d in RX_DPORTS}
    tx_samples: list[Any] = []
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
        pkt = decode_sampled_header(hdr)
        assert pkt is not None and pkt.protocol == 17
        if pkt.src_ip == pair.ip_a:
            w, sport, dport = rx, RX_SPORT, pkt.dst_port
            assert dport in per_port, pkt
            flen = frame_length(rx_payload(dport))
            per_port[dport].append(s)
        else:
            w, (sport, dport), flen = tx, TX_PORTS, tx_flen
            tx_samples.append(s)
        assert (pkt.src_ip, pkt.dst_ip) == (w["src"], w["dst"])
        assert (pkt.src_port, pkt.dst_port) == (sport, dport)
        assert hdr.frame_length == flen
        assert len(hdr.header) == min(HEADER_BYTES, flen - FCS)
        assert (s.input, s.output) == (w["input"], w["output"])
        assert pkt.src_mac is not None and pkt.src_mac.hex(":") == w["smac"]

    # ---- statistics: binomial count, pool, and the sFlow bound port by port
    n = len(samples)
    p = 1 / rate
    expected = truth_packets * p
    sigma = math.sqrt(truth_packets * p * (1 - p))
    pool_err = abs(last_pool - truth_packets) / truth_packets * 100
    k = {d: len(lst) for d, lst in per_port.items()}
    by_packets = estimate_within_bound(
        k, {d: sum(s.sampling_rate for s in lst) for d, lst in per_port.items()}, sent)
    by_bytes = estimate_within_bound(
        k, {d: sum(s.sampling_rate * s.records[0].frame_length for s in lst)
            for d, lst in per_port.items()},
        {d: c * frame_length(rx_payload(d)) for d, c in sent.items()})
    est_packets = sum(s.sampling_rate for s in samples)
    est_bytes = sum(s.sampling_rate * s.records[0].frame_length for s in samples)
    figures = {
        "rate": rate, "packets": truth_packets, "samples": n, "expected": round(expected, 1),
        "sigma": round(sigma, 1), "z": round((n - expected) / sigma, 2),
        "ports_inside_packets": f"{by_packets.inside}/{len(RX_DPORTS)}",
        "ports_inside_bytes": f"{by_bytes.inside}/{len(RX_DPORTS)}",
        "port_samples": f"{min(k.values())}..{max(k.values())}",
        "total_packets_err_pct": round(100 * (est_packets - truth_packets) / truth_packets, 3),
        "total_bytes_err_pct": round(100 * (est_bytes - truth_bytes) / truth_bytes, 3),
        "total_bound_pct": round(sflow_bound_pct(n), 3),
        "pool": last_pool, "pool_err_pct": round(pool_err, 3), "drops": drops,
        "rx_samples": n - len(tx_samples), "tx_samples": len(tx_samples)}
    print("FIGURES", json.dumps(figures))
    assert abs(n - expected) <= 5 * sigma, figures
    assert pool_err <= 1.0, figures
    assert by_packets.ok, f"packets per port: {by_packets}"
    assert by_bytes.ok, f"bytes per port: {by_bytes}"
    # all A->B frames went before the first B->A frame: the pool interpolation must know it
    if tx_samples:
        assert tx_samples[0].sample_pool >= 0.99 * sum(sent.values()), figures
    tx_expected = tx_sent * p
    assert abs(len(tx_samples) - tx_expected) <= 5 * math.sqrt(tx_sent * p * (1 - p)) + 1

    # ---- nfdump (sfcapd): one record per flow sample, same fields and estimates
    bad = [line for line in nf_err.splitlines()
           if line.startswith("SFLOW:") and "New exporter" not in line]
    assert not bad, bad
    assert len(nf_records) == n
    nf_ports: Counter[int] = Counter()
    for rec in nf_records:
        if rec["src4_addr"] == pair.ip_a:
            w, sport, dport = rx, RX_SPORT, rec["dst_port"]
            assert dport in per_port, rec
            flen = frame_length(rx_payload(dport))
            nf_ports[dport] += 1
        else:
            w, (sport, dport), flen = tx, TX_PORTS, tx_flen
        assert (rec["src4_addr"], rec["dst4_addr"]) == (w["src"], w["dst"])
        assert (rec["src_port"], rec["dst_port"]) == (sport, dport)
        assert rec["proto"] == 17
        assert (rec["input_snmp"], rec["output_snmp"]) == (w["input"][1], w["output"][1])
        assert rec["in_packets"] == rate
        assert rec["in_bytes"] == rate * flen
        assert rec["in_src_mac"] == w["smac"]
    assert nf_ports == +Counter(k)
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
    flows = [(rx, RX_SPORT, d, lst, frame_length(rx_payload(d))) for d, lst in per_port.items()]
    flows.append((tx, *TX_PORTS, tx_samples, tx_flen))
    expect_pm = {(w["src"], w["dst"], sport, dport, "udp", w["input"][1], w["output"][1], rate):
                 [len(lst), len(lst) * flen]
                 for w, sport, dport, lst, flen in flows if lst}
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
    agent = AgentProcess(_conf([col.port], f"  sampling.10G = 1\n  sampling = 1\n"
                                      f"  pcap {{ dev = {pair.dev_b} }}"), tmp_path,
                         netns=pair.ns_b)
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
        agent.wait_for_log('"started"')
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
        agent.stop(timeout=10)
        log = agent.log()
        col.close()
    print("FIGURES", json.dumps({k: round(v, 2) for k, v in delays.items()}))
    assert log.count('"tap_opened"') >= 2, log[-3000:]
    # the address elected once the device appeared stays through its re-creation and the
    # down/up (each shorter than the agent's grace): one datagram sequence, never restarted
    dgrams = [decode_datagram(d) for _, d in col.raw]
    addresses = [d.agent_address for d in dgrams]
    assert pair.ip_b in addresses, addresses[:5]
    kept = dgrams[addresses.index(pair.ip_b):]
    assert {d.agent_address for d in kept} == {pair.ip_b}, Counter(addresses)
    seqs = [d.sequence for d in kept]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the datagram sequence restarted"
    # a data source's sequence numbers run on across the down/up: so does its pool
    behind = [(s.sequence, s.sample_pool) for _, s in col.flow_samples()
              if s.sample_pool < s.sequence]
    assert not behind, behind[:10]


def test_pool_never_behind_its_samples_at_1_in_1_flat_out(
    netpair: NetPair, udpsend: Path, tmp_path: Path
) -> None:
    """At 1 in 1 with the generator as fast as it goes, every sample's pool is at least its
    sequence number: the pool counts the packets the data source's samples were taken from,
    so it can never hold fewer (on main, 1 in 300 samples had pool = sequence - 1: the rank
    interpolation put the i-th of k samples at i*n/(k+1) instead of i*(n+1)/(k+1))."""
    _need_tools()
    pair = netpair
    sink = udp_socket_in_netns(pair.ns_b, 5600, pair.ip_b, rcvbuf=0)
    col = Collector(pair.ns_b)
    agent = AgentProcess(_conf([col.port], f"  pcap {{ dev = {pair.dev_b} sampling = 1 }}"),
                         tmp_path, netns=pair.ns_b)
    count = 200_000
    try:
        agent.wait_for_log('"tap_opened"')
        c0 = pair.counters("b")
        sent = _send(pair, udpsend, "a", count, 64, (RX_SPORT, 5600))
        time.sleep(2.5)  # the ring's block timeout, then the agent's 1 s flush
        c1 = pair.counters("b")
        agent.stop(timeout=10)
    finally:
        agent.stop()
        col.close()
        sink.close()
    samples = [s for _, s in col.flow_samples()]
    truth = (c1["rx_packets"] - c0["rx_packets"]) + (c1["tx_packets"] - c0["tx_packets"])
    behind = [(s.sequence, s.sample_pool) for s in samples if s.sample_pool < s.sequence]
    pools = [s.sample_pool for s in samples]
    print("FIGURES", json.dumps({"sent": sent, "link_packets": truth, "samples": len(samples),
                                 "last_seq": samples[-1].sequence if samples else 0,
                                 "last_pool": pools[-1] if pools else 0,
                                 "drops": samples[-1].drops if samples else 0,
                                 "pool_behind_seq": len(behind)}))
    assert len(samples) >= 0.5 * count, "too few samples reached the collector to judge"
    assert not behind, behind[:10]
    assert all(a < b for a, b in zip(pools, pools[1:])), "pools must rise by at least one"
    assert pools[-1] <= truth, "the pool counted more packets than the link carried"
