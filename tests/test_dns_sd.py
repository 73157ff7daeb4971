"""DNS-SD against a real DNS server: dnsmasq on a loopback address the test picks, in a network
namespace, serving SRV and TXT records of ``_sflow._udp.<domain>``.

* the lookup (dnspython) reads SRV targets and ports, TXT strings and TTLs as hsflowd does;
  a name without records is an empty answer, a server that is gone a failed one;
* a real ``hostsflowd`` with ``dns-sd { }`` and ``pcap { }`` (traffic from a peer namespace,
  its resolver pointed at dnsmasq) finds its collector and sampling rate in DNS, follows a
  change of the records without a restart (datagram and sample sequence numbers run on), refuses
  an out-of-range answer with one log line, and keeps the last good settings when the server
  goes away; ``hostsflowd --test`` and the status file say where each setting came from.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hostsflow.dnssd import lookup
from hostsflow.dnssd.records import settings_from
from hostsflow.testing import load_file_module

pytestmark = [pytest.mark.root, pytest.mark.slow]

HERE = Path(__file__).parent
dk = load_file_module("hostsflow_tests_dnsmasq_kit", HERE / "dnsmasq_kit.py")
kit = load_file_module("hostsflow_tests_faults_kit", HERE / "faults_kit.py")
AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                HERE / "agent_process.py").AgentProcess


@pytest.fixture
def netns():
    why = dk.why_not()
    if why:
        pytest.skip(why)
    name = f"hsdns{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def domain() -> str:
    return f"fleet-{secrets.token_hex(3)}.test"


def test_lookup_reads_srv_and_txt_records_as_hsflowd(netns, tmp_path):
    d = domain()
    dns = dk.Dnsmasq(tmp_path, netns, d)
    try:
        dns.serve(srv=[(f"c2.{d}", 6400), (f"c1.{d}", 6343)],
                  txt=["txtvers=1", "sampling=20", "polling=2", "headerBytes=300"], ttl=45)

        def ask(name: str) -> Any:
            return dk.in_netns(netns, lambda: lookup.query(name, [dns.address], dns.port))

        a = ask(dns.name)
        assert a.status == "ok", a
        assert sorted((r.target, r.port) for r in a.srv) == [(f"c1.{d}", 6343), (f"c2.{d}", 6400)]
        assert [t.text for t in a.txt] == [b"txtvers=1", b"sampling=20", b"polling=2",
                                          b"headerBytes=300"]
        assert a.ttl == 45
        s = settings_from(a)
        assert [(c.ip, c.udpport) for c in s.collectors] == [(f"c1.{d}", 6343), (f"c2.{d}", 6400)]
        assert s.values == {"sampling": 20, "polling": 2, "header_bytes": 256}
        # a name without records: an empty answer (no collectors), not a failure
        assert ask(f"_sflow._udp.other.{d}").status == "none"
        dns.stop()
        t0 = time.monotonic()
        gone = ask(dns.name)
        assert gone.status == "failed" and gone.error, gone
        # dnspython checks the lifetime between tries: the try under way (2 s) ends first
        assert time.monotonic() - t0 < lookup.LIFETIME + 2.5
    finally:
        dns.stop()


# ---------------------------------------------------------------- a real agent


@pytest.fixture
def pair():
    why = dk.why_not()
    if why:
        pytest.skip(why)
    yield from kit.pcap_pair("mount")


def flows(dgs: list[Any], ifindex: int) -> list[Any]:
    return [s for d in dgs for s in d.flow_samples if s.source.ds_index == ifindex]


def status_of(agent: Any, since: float = 0.0) -> dict[str, Any]:
    """The agent's status file as written after ``since`` (a ``time.time()``); it is
    rewritten every few seconds (and may be caught while being written)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if os.stat(agent.status_path).st_mtime >= since:
                return json.loads(Path(agent.status_path).read_text())
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no status file written at {agent.status_path}")


def events(agent: Any, name: str) -> list[dict[str, Any]]:
    out = []
    for line in agent.log().splitlines():
        if line.startswith("{"):
            e = json.loads(line)
            if e.get("event") == name:
                out.append(e)
    return out


def test_agent_takes_collector_and_sampling_from_dns_and_follows_them(pair, tmp_path):
    d = domain()
    dns = dk.Dnsmasq(tmp_path, pair.ns_b, d)
    a = kit.NsCollector(pair.ns_b)
    b = kit.NsCollector(pair.ns_b)
    hosts = {f"collector.{d}": "127.0.0.1"}
    text = ("sflow {\n"
            f"  dns-sd {{ domain = .{d} startDelay = 0 }}\n"
            "  sampling = 400\n  polling = 30\n  headerBytes = 96\n"
            f"  pcap {{ dev = {pair.dev_b} }}\n}}\n")
    stream = kit.UdpStream(pair, pps=500)
    agent = None
    try:
        # a veth is 10G: sampling.10G applies to it (the speed lookup), as in hsflowd
        dns.serve(srv=[(f"collector.{d}", a.port)], txt=["txtvers=1", "sampling.10G=20",
                                                          "polling=1"], hosts=hosts)
        resolv = dns.resolv_conf()

        # --test: what would be sent, and where each setting came from
        conf = tmp_path / "test.conf"
        conf.write_text(text)
        out = subprocess.run([*kit.resolver_wrapper(pair.ns_b, resolv), sys.executable, "-m",
                              "hostsflow", "--test", "-f", str(conf)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"sampling.10G = 20  (DNS TXT {dns.name}, TTL 1)" in out.stdout, out.stdout[:2000]
        assert f"collector = collector.{d}:{a.port}  (DNS SRV {dns.name}, TTL 1)" in out.stdout
        assert f"headerBytes = 96  ({conf}:5)" in out.stdout

        agent = AgentProcess(text, tmp_path, wrapper=kit.resolver_wrapper(pair.ns_b, resolv))
        ifindex = pair.ifindex("b")
        a.wait_for(lambda dg: len(flows(dg, ifindex)) >= 20, timeout=20)
        assert {s.sampling_rate for s in flows(a.datagrams, ifindex)} == {20}
        status = status_of(agent, since=time.time())
        assert status["settings"]["sampling.10G"] == {"value": 20, "from": "dns",
                                                  "record": f"TXT {dns.name}", "ttl": 1}
        assert status["settings"]["polling"]["from"] == "dns"
        assert status["settings"]["headerBytes"]["from"] == "file"
        assert status["dns_sd"]["state"] == "ok" and status["dns_sd"]["ttl"] == 1
        # the TTL of 1 s is taken as hsflowd's 10 s minimum
        assert 9 <= status["dns_sd"]["next_query"] - status["dns_sd"]["last_query"] <= 11

        # the records change: another collector, another rate; no restart
        t_change = time.time()
        dns.serve(srv=[(f"collector.{d}", b.port)], txt=["sampling.10G=10", "polling=1"],
                  hosts=hosts)
        b.wait_for(lambda dg: len([s for s in flows(dg, ifindex) if s.sampling_rate == 10])
                   >= 20, timeout=25)
        took = min(t for t, _ in b.timed()) - t_change
        n_a = len(a.raw)
        time.sleep(1.5)
        assert len(a.raw) <= n_a + 1, "the old collector is still fed"

        # an out-of-range answer is refused with one log line; the settings stay
        dns.serve(srv=[(f"collector.{d}", a.port)], txt=["sampling.10G=10", "polling=999"],
                  hosts=hosts)
        deadline = time.monotonic() + 25
        while not events(agent, "dns_sd_answer_refused") and time.monotonic() < deadline:
            time.sleep(0.2)
        refused = events(agent, "dns_sd_answer_refused")
        assert len(refused) == 1 and "polling=999" in refused[0]["reason"], agent.log()[-3000:]

        # the server goes away: the last good settings stay
        dns.stop()
        deadline = time.monotonic() + 35  # the next query (10 s), then its 10 s lifetime
        while not events(agent, "dns_sd_query_failed") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert events(agent, "dns_sd_query_failed"), agent.log()[-3000:]
        n_b = len(b.raw)
        time.sleep(2)
        assert len(b.raw) > n_b + 2, "the last good collector is not fed any more"
        status = status_of(agent, since=time.time())
        assert status["settings"]["sampling.10G"]["value"] == 10
        assert status["dns_sd"]["state"] == "failed"
    finally:
        stream.stop()
        rc = agent.stop() if agent is not None else 0
        dns.stop()
        a.close()
        b.close()
    assert rc == 0, agent.log()[-2000:]
    print(f"FIGURES DNS-SD: a change of the records reached the agent {took:.1f} s after it "
          "(TTL 1 s, hsflowd's 10 s minimum between queries)")
    # one stream of datagrams across the change: the sequence runs on from a to b
    seq_a = [dg.sequence for dg in a.datagrams]
    seq_b = [dg.sequence for dg in b.datagrams]
    assert seq_a == list(range(seq_a[0], seq_a[0] + len(seq_a)))
    assert seq_b == list(range(seq_a[-1] + 1, seq_a[-1] + 1 + len(seq_b)))
    # and no flow sample lost or repeated at the switch
    samples = sorted(s.sequence for s in flows(a.datagrams + b.datagrams, ifindex))
    assert samples == list(range(samples[0], samples[0] + len(samples)))
    assert len(events(agent, "dns_sd_applied")) == 2  # the first answer, the change
