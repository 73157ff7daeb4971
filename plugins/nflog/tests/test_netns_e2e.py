"""NFLOG on real traffic: the real ``hostsflowd`` inside a network namespace, real rules.

The agent runs under ``ip netns exec B`` (nfnetlink_log instances are per namespace, so the
socket must be made where the rule is) and sends to two collectors on B's loopback: a socket
this test reads with our decoder, and pmacct's ``sfacctd`` (Debian) as the independent decoder.

* nftables, input hook: ``udp dport P counter numgen random mod 100 0 log group G`` (one
  rule per port) with ``sampling = 100`` (kernel 1 in 100, no user-space sub-sampling).
  Traffic A -> B.
* iptables ``statistic``, output hook: ``--probability 0.02 -j NFLOG`` (K = 50) with
  ``sampling = 200`` (user-space 1 in 4 on top, reported rate 200).  Traffic B -> A.

200,000 packets go to 40 destination ports; the rules' own per-port packet counters are the
ground truth.  Checks:

* the total sample count is within 5 standard deviations of the binomial expectation, and so
  is the sample pool;
* the sFlow bound: the estimate (samples x rate) of each port's packets must fall within
  196*sqrt(1/samples) percent of its counter.  That is a 95% interval, so a single estimate
  falls outside it 1 time in 20 by design; the test asserts at least 33 of the 40 ports
  inside (the chance of fewer with a correct agent is 0.07%), and reports the total's error
  against its own bound;
* every flow field (addresses, ports, MACs, ifIndexes, frame length, header protocol, rate)
  is right in our decoder and in sfacctd's.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
import threading
import time
from collections import Counter
from typing import Any

import pytest
from hostsflow.packet import decode_sampled_header
from hostsflow.sflow.datagram import decode_datagram
from hostsflow.sflow.records import INTERNAL_IFINDEX, SampledHeader
from hostsflow.testing import load_file_module

estimate_within_bound = load_file_module(
    "hostsflow_tests_sampling_bounds",
    Path(__file__).resolve().parents[3] / "tests" / "sampling_bounds.py").estimate_within_bound

PORTS = list(range(7800, 7840))
GROUP = 17
PACKETS = 200_000
PAYLOAD = 64
OURS, SFACCTD = 16343, 16344
FIGURES: list[str] = []
SFACCTD_KEYS = ("src_host", "dst_host", "src_port", "dst_port", "proto", "src_mac", "dst_mac",
                "in_iface", "out_iface", "sampling_rate")

pytestmark = [pytest.mark.root, pytest.mark.slow]


class Proc:
    """A child process whose stderr is collected by a thread (so it never blocks)."""

    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self.out: list[str] = []
        self._t = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                   for s, b in ((self.p.stderr, self.err), (self.p.stdout, self.out))]
        for t in self._t:
            t.start()

    def _pump(self, stream: Any, buf: list[str]) -> None:
        buf.extend(stream)

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(text in line for line in self.err + self.out):
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no '{text}' from {self.p.args}: {''.join(self.err)[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for t in self._t:
            t.join(2)


def agent_cmd(ns: str, conf: str) -> list[str]:
    main = "import sys; from hostsflow.cli import agent_main; sys.exit(agent_main())"
    return ["ip", "netns", "exec", ns, sys.executable, "-c", main, "-f", conf,
            "--status-file", ""]


def sfacctd_cmd(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns, "sfacctd", "-L", "127.0.0.1", "-l", str(SFACCTD),
            "-P", "print", "-O", "json", "-r", "1", "-c", ",".join(SFACCTD_KEYS)]


def nft_input_rule(ns: str, n: int) -> None:
    lines = [f'  iifname "vb" udp dport {port} counter numgen random mod {n} 0 log group {GROUP}'
             for port in PORTS]
    rules = ("table inet hsft {\n chain in {\n"
             "  type filter hook input priority 0; policy accept;\n"
             + "\n".join(lines) + "\n }\n}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                   check=True)


def nft_counters(ns: str) -> dict[int, int]:
    """Packets per destination port, from each rule's counter."""
    out = json.loads(subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table",
                                     "inet", "hsft"], capture_output=True, text=True,
                                    check=True).stdout)
    counts: dict[int, int] = {}
    for item in out["nftables"]:
        port = packets = None
        for expr in item.get("rule", {}).get("expr", []):
            match = expr.get("match", {})
            if match.get("left", {}).get("payload", {}).get("field") == "dport":
                port = int(match["right"])
            if "counter" in expr:
                packets = int(expr["counter"]["packets"])
        if port is not None and packets is not None:
            counts[port] = packets
    assert set(counts) == set(PORTS), counts
    return counts


def iptables_output_rule(ns: str, probability: float) -> None:
    ipt = ["ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-o", "vb", "-p", "udp"]
    for port in PORTS:  # counting rules: the ground truth
        subprocess.run([*ipt, "--dport", str(port)], check=True)
    subprocess.run([*ipt, "--dport", f"{PORTS[0]}:{PORTS[-1]}", "-m", "statistic", "--mode",
                    "random", "--probability", str(probability), "-j", "NFLOG",
                    "--nflog-group", str(GROUP), "--nflog-size", "128"], check=True)


def iptables_counters(ns: str) -> dict[int, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-L", "OUTPUT", "-n", "-v",
                          "-x"], capture_output=True, text=True, check=True).stdout
    counts: dict[int, int] = {}
    for line in out.splitlines()[2:]:
        m = re.search(r"dpt:(\d+)\s*$", line)
        if m and "NFLOG" not in line:
            counts[int(m.group(1))] = int(line.split()[0])
    assert set(counts) == set(PORTS), out
    return counts


def run_case(netpair: Any, *, sampling: int, probability: float, rule: str) -> dict[str, Any]:
    """Start sfacctd + the agent in B, install the rule, send traffic, collect everything."""
    b = netpair.b
    ours = netpair.udp_socket(b)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    ours.bind(("127.0.0.1", OURS))
    ours.settimeout(0.2)
    datagrams: list[bytes] = []
    reading = threading.Event()
    reading.set()

    def read() -> None:  # drain while the traffic runs: the agent flushes every second
        while reading.is_set():
            try:
                datagrams.append(ours.recv(65536))
            except (TimeoutError, OSError):
                pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    tmp = tempfile.mkdtemp(prefix="hsfnflog")
    conf = os.path.join(tmp, "hsflowd.conf")
    with open(conf, "w") as f:
        f.write(f"""sflow {{
  sampling = {sampling}
  polling = 0
  collector {{ ip = 127.0.0.1 udpport = {OURS} }}
  collector {{ ip = 127.0.0.1 udpport = {SFACCTD} }}
  nflog {{ group = {GROUP} probability = {probability} timeout = 0.1 qthreshold = 32 }}
}}
""")
    collector = Proc(sfacctd_cmd(b))
    agent = Proc(agent_cmd(b, conf))
    try:
        agent.wait_for("nflog_bound")
        if rule == "nft":
            nft_input_rule(b, round(1 / probability))
            t0 = time.monotonic()
            sent = netpair.send(netpair.a, netpair.ip_b, PORTS, PACKETS, PAYLOAD)
        else:
            iptables_output_rule(b, probability)
            t0 = time.monotonic()
            sent = netpair.send(b, netpair.ip_a, PORTS, PACKETS, PAYLOAD)
        send_seconds = time.monotonic() - t0
        time.sleep(2.5)  # kernel timeout 0.1 s + the agent's 1 s flush
        agent.stop()
        time.sleep(1.2)
        collector.stop(signal.SIGINT)  # sfacctd purges its cache on exit
        truth = nft_counters(b) if rule == "nft" else iptables_counters(b)
    finally:
        agent.stop()
        collector.stop(signal.SIGINT)
        reading.clear()
        reader.join(2)
        ours.close()
        shutil.rmtree(tmp, ignore_errors=True)
    samples = [s for raw in datagrams for s in decode_datagram(raw).samples
               if hasattr(s, "sampling_rate")]
    sf = [json.loads(line) for line in collector.out if line.startswith("{")]
    assert sum(truth.values()) > 0.9 * PACKETS, (sent, truth)  # the traffic reached the rules
    return {"samples": samples, "truth": truth, "sfacctd": sf, "agent_log": agent.err,
            "send_seconds": send_seconds, "sent": sent}


def check_statistics(name: str, samples: list[Any], truth: dict[int, int], rate: int,
                     kernel: int) -> None:
    total = sum(truth.values())
    n = len(samples)
    p = 1 / rate
    expected = total * p
    sigma = math.sqrt(total * p * (1 - p))
    estimate = n * rate
    err = 100 * (estimate - total) / total
    pool = max(s.sample_pool for s in samples)
    pool_err = 100 * (pool - total) / total
    # the pool counts every logged message x K: binomial over total/K messages
    pool_sigma = 100 * math.sqrt((1 - 1 / kernel) / (total / kernel))
    per_port = Counter(decode_sampled_header(h).dst_port  # type: ignore[union-attr]
                       for s in samples for h in s.records if isinstance(h, SampledHeader))
    bound = estimate_within_bound(per_port, {p: k * rate for p, k in per_port.items()}, truth)
    inside = bound.inside
    FIGURES.append(
        f"{name}: truth {total} packets, {n} samples (expected {expected:.0f}, "
        f"{(n - expected) / sigma:+.2f} sigma), estimate {estimate} ({err:+.2f}%, 95% bound "
        f"+/-{196 * math.sqrt(1 / n):.2f}%), pool {pool} ({pool_err:+.2f}%), "
        f"{inside}/{len(truth)} per-port estimates inside their 95% bound")
    print(FIGURES[-1])
    assert abs(n - expected) <= 5 * sigma, FIGURES[-1]
    assert abs(pool_err) <= 5 * pool_sigma, FIGURES[-1]
    assert bound.ok, f"{FIGURES[-1]}: {bound}"
    assert {s.sampling_rate for s in samples} == {rate}
    assert {s.drops for s in samples} == {0}


def mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def test_nft_numgen_input_received(netpair: Any, need_tools: Any) -> None:
    need_tools("nft", "sfacctd")
    r = run_case(netpair, sampling=100, probability=0.01, rule="nft")
    samples = r["samples"]
    check_statistics("nft numgen 1/100, input", samples, r["truth"], rate=100, kernel=100)
    vb = netpair.ifindex_b
    frame = 14 + 20 + 8 + PAYLOAD + 4
    for s in samples:
        assert (s.source.ds_class, s.source.ds_index) == (0, vb)
        assert s.input == (0, vb) and s.output == (0, INTERNAL_IFINDEX)
        (h,) = [x for x in s.records if isinstance(x, SampledHeader)]
        assert (h.protocol, h.frame_length, h.stripped) == (1, frame, 4)
        info = decode_sampled_header(h)
        assert info is not None
        assert (info.src_mac, info.dst_mac) == (netpair.mac_a, netpair.mac_b)
        assert (info.src_ip, info.dst_ip, info.protocol, info.dst_port) == (
            netpair.ip_a, netpair.ip_b, 17, info.dst_port)
        assert info.dst_port in PORTS
    check_sfacctd(r["sfacctd"], samples, src=netpair.ip_a, dst=netpair.ip_b,
                  iface_in=vb, iface_out=INTERNAL_IFINDEX, rate=100,
                  macs=(mac(netpair.mac_a), mac(netpair.mac_b)), frame=frame)


def test_iptables_statistic_output_sent(netpair: Any, need_tools: Any) -> None:
    need_tools("iptables", "sfacctd")
    r = run_case(netpair, sampling=200, probability=0.02, rule="iptables")
    samples = r["samples"]
    check_statistics("iptables statistic 0.02 + 1/4 in user space, output", samples,
                     r["truth"], rate=200, kernel=50)
    vb = netpair.ifindex_b
    ip_len = 20 + 8 + PAYLOAD
    for s in samples:
        assert (s.source.ds_class, s.source.ds_index) == (0, vb)
        assert s.input == (0, INTERNAL_IFINDEX) and s.output == (0, vb)
        (h,) = [x for x in s.records if isinstance(x, SampledHeader)]
        assert (h.protocol, h.frame_length, h.stripped) == (11, ip_len, 0)
        info = decode_sampled_header(h)
        assert info is not None
        assert (info.src_ip, info.dst_ip, info.protocol, info.dst_port) == (
            netpair.ip_b, netpair.ip_a, 17, info.dst_port)
        assert info.dst_port in PORTS
    check_sfacctd(r["sfacctd"], samples, src=netpair.ip_b, dst=netpair.ip_a,
                  iface_in=INTERNAL_IFINDEX, iface_out=vb, rate=200, macs=None, frame=ip_len)


def check_sfacctd(lines: list[dict[str, Any]], samples: list[Any], *, src: str, dst: str, iface_in: int,
                  iface_out: int, rate: int, macs: tuple[str, str] | None, frame: int) -> None:
    """sfacctd saw every sample with the same fields and the same per-port counts as ours."""
    n = len(samples)
    per_port = Counter(decode_sampled_header(h).dst_port  # type: ignore[union-attr]
                       for s in samples for h in s.records if isinstance(h, SampledHeader))
    flows = [x for x in lines if x.get("event_type") == "purge"]
    total = sum(x["packets"] for x in flows)
    keys = Counter((x["ip_src"], x["ip_dst"], x["ip_proto"], x["iface_in"],
                    x["iface_out"], x["sampling_rate"]) for x in flows)
    ports: Counter[int] = Counter()
    for x in flows:
        ports[x["port_dst"]] += x["packets"]
    FIGURES.append(f"  sfacctd: {total} samples in {len(flows)} aggregate(s): {dict(keys)}")
    print(FIGURES[-1])
    assert total == n, FIGURES[-1]
    assert set(keys) == {(src, dst, "udp", iface_in, iface_out, rate)}, FIGURES[-1]
    assert ports == per_port
    assert sum(x["bytes"] for x in flows) == n * frame
    if macs is not None:
        assert {(x["mac_src"], x["mac_dst"]) for x in flows} == {macs}



def test_real_agent_group_taken_then_freed(netpair: Any, need_tools: Any, tmp_path: Any) -> None:
    """The real agent (privileges dropped as in production) when another process holds the
    group: one error naming it, the agent keeps running, and it binds once the group is free."""
    from hostsflow_nflog.nlsocket import NflogSocket

    b = netpair.b
    holder = NflogSocket(GROUP, 128, 10, 10, netns=b)
    holder.open()
    conf = tmp_path / "hsflowd.conf"
    conf.write_text(f"sflow {{ polling = 0 collector {{ ip = 127.0.0.1 udpport = {OURS} }}\n"
                    f"  nflog {{ group = {GROUP} probability = 0.01 }} }}\n")
    agent = Proc(agent_cmd(b, str(conf)))
    try:
        agent.wait_for("nflog_bind_failed")
        time.sleep(2.5)  # retries after 1 and 2 s fail quietly
        assert agent.p.poll() is None, "the agent exited"
        holder.close()
        agent.wait_for("nflog_bound", timeout=10)  # the retry after 4 s succeeds
        assert agent.p.poll() is None
    finally:
        holder.close()
        agent.stop()
    log = "".join(agent.err + agent.out)
    assert log.count("nflog_bind_failed") == 1, log
    line = next(x for x in agent.err + agent.out if "nflog_bind_failed" in x)
    event = json.loads(line)  # not a terminal: structlog writes JSON lines
    assert (event["group"], event["level"]) == (GROUP, "error"), line
    assert f"group {GROUP} is already bound by another process" in event["reason"], line
