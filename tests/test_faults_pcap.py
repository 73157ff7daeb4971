"""A real ``hostsflowd`` with ``pcap { }`` in a network namespace, traffic from a peer namespace:

* after dropping root it runs as nobody with only CAP_NET_RAW, and still re-opens its tap when
  the sampled interface is deleted and re-created;
* SIGHUP changes the sampling rate and the polling interval without a restart, and no sample
  in flight is lost (datagram and per-source sequence numbers continuous across the reload);
* SIGTERM with pcap, tcp and systemd enabled flushes the last datagram and exits 0 in < 1 s.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hostsflow.privileges import unreadable_python_paths
from hostsflow.sflow.records import ExtendedTcpInfo
from hostsflow.testing import load_file_module

pytestmark = [pytest.mark.root, pytest.mark.slow]


kit = load_file_module("hostsflow_tests_faults_kit", Path(__file__).with_name("faults_kit.py"))
AgentProcess = load_file_module("hostsflow_tests_agent_process", Path(__file__).with_name("agent_process.py")).AgentProcess


@pytest.fixture
def pair():
    yield from kit.pcap_pair()


@pytest.fixture
def workdir():
    """A directory nobody may read: the agent re-reads its config there on SIGHUP after it
    dropped root (as /etc/hsflowd.conf, mode 0644)."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="hsff-")
    os.chmod(d, 0o755)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def collector(pair):
    c = kit.NsCollector(pair.ns_b)
    try:
        yield c
    finally:
        c.close()


def conf(port: int, body: str, polling: int = 30) -> str:
    return (f"sflow {{\n  collector {{ ip = 127.0.0.1 udpport = {port} }}\n"
            f"  polling = {polling}\n{body}\n}}\n")


def flows_from(dgs: list[Any], ifindex: int) -> list[Any]:
    return [s for d in dgs for s in d.flow_samples if s.source.ds_index == ifindex]


def log_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_tap_reopened_on_recreated_interface_as_nobody_with_cap_net_raw(pair, collector, workdir):
    if unreadable_python_paths("nobody"):
        pytest.skip("this Python installation is not readable by nobody (the agent keeps root)")
    stream = kit.UdpStream(pair, pps=400)
    agent = AgentProcess(conf(collector.port, f"  pcap {{ dev = {pair.dev_b} sampling = 4 }}"),
                         workdir, netns=pair.ns_b)
    try:
        first = pair.ifindex("b")
        collector.wait_for(lambda d: len(flows_from(d, first)) >= 20, timeout=10)
        st = kit.proc_status(agent.pid)
        assert st["Uid"].split() == ["65534"] * 4, st["Uid"]
        assert int(st["CapEff"], 16) == 1 << 13 and int(st["CapPrm"], 16) == 1 << 13  # NET_RAW
        dropped = [e for e in log_events(agent.log()) if e["event"] == "dropped_privileges"]
        assert dropped and dropped[0]["capabilities"] == ["CAP_NET_RAW"], agent.log()[-2000:]

        pair.delete_link()
        time.sleep(1.0)
        t0 = time.time()
        pair.create_link()
        second = pair.ifindex("b")
        assert second != first
        collector.wait_for(lambda d: len(flows_from(d, second)) >= 20, timeout=10, since=t0)
        delay = min(t for t, raw in collector.timed() if t >= t0 and
                    flows_from([kit.decode_datagram(raw)], second)) - t0
        print(f"FIGURES first sample on the re-created interface after {delay:.2f} s")
        assert delay < 5.0
        assert kit.proc_status(agent.pid)["Uid"].split()[0] == "65534"  # still nobody
    finally:
        stream.stop()
        status = agent.stop()
    events = log_events(agent.log())
    opened = [e for e in events if e["event"] == "tap_opened"]
    assert [e["ifindex"] for e in opened] == [first, second]
    assert not [e for e in events if e["event"] == "pcap_open_failed"]
    # the deletion itself is one fault, logged once ("The interface went down")
    assert len([e for e in events if e["event"] == "pcap_read_failed"]) <= 1
    assert status == 0


def test_sighup_changes_sampling_and_polling_and_loses_no_sample(pair, collector, workdir):
    stream = kit.UdpStream(pair, pps=1000)
    body = f"  pcap {{ dev = {pair.dev_b} sampling = %d }}"
    agent = AgentProcess(conf(collector.port, body % 20, polling=5), workdir, netns=pair.ns_b)
    try:
        ifindex = pair.ifindex("b")
        collector.wait_for(lambda d: len([s for d_ in d for s in d_.counter_samples
                                          if s.source.ds_index == ifindex]) >= 2, timeout=15)
        with open(agent.conf, "w") as f:
            f.write(conf(collector.port, body % 4, polling=1))
        t_hup = time.time()
        agent.proc.send_signal(signal.SIGHUP)
        collector.wait_for(lambda d: len([s for d_ in d for s in d_.counter_samples
                                          if s.source.ds_index == ifindex]) >= 6,
                           timeout=15, since=t_hup + 1.5)
        time.sleep(1.0)
    finally:
        stream.stop()
        status = agent.stop()
    assert status == 0, agent.log()[-2000:]
    assert "config_reloaded" in agent.log()
    timed = [(t, kit.decode_datagram(raw)) for t, raw in collector.timed()]
    dgs = [d for _, d in timed]
    # datagram sequence numbers: 1, 2, 3 ... with no gap and no restart across the reload
    assert [d.sequence for d in dgs] == list(range(1, len(dgs) + 1))
    flows = flows_from(dgs, ifindex)
    seqs = sorted(s.sequence for s in flows)
    assert seqs == list(range(1, len(flows) + 1)), "flow samples lost or repeated"
    rates = [s.sampling_rate for s in flows]
    switch = rates.index(4)
    assert set(rates[:switch]) == {20} and set(rates[switch:]) == {4}, "one switch, 20 -> 4"
    # the sample pool runs on across the switch (samples at the old rate were drained first)
    pools = [s.sample_pool for s in flows]
    assert pools == sorted(pools)
    # the rate really changed in the kernel: samples per second went up about five times
    before = [t for t, d in timed if t < t_hup for s in flows_from([d], ifindex)]
    after = [t for t, d in timed if t > t_hup + 1.5 for s in flows_from([d], ifindex)]
    r_before = len(before) / (max(before) - min(before))
    r_after = len(after) / (max(after) - min(after))
    assert 3 < r_after / r_before < 8, (r_before, r_after)
    # polling: every 5 s before, every second after the reload
    ctr = [(t, s) for t, d in timed for s in d.counter_samples if s.source.ds_index == ifindex]
    assert [s.sequence for _, s in ctr] == list(range(1, len(ctr) + 1))
    gaps_before = [b[0] - a[0] for a, b in itertools.pairwise(ctr) if b[0] < t_hup]
    gaps_after = [b[0] - a[0] for a, b in itertools.pairwise(ctr) if a[0] > t_hup + 2]
    assert gaps_before and all(4 < g < 6 for g in gaps_before), gaps_before
    assert len(gaps_after) >= 4 and all(0.5 < g < 1.5 for g in gaps_after), gaps_after


def test_sigterm_with_pcap_tcp_and_systemd_flushes_and_exits_within_a_second(
        pair, collector, workdir):
    for mod in ("hostsflow_tcp", "hostsflow_systemd"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"needs {mod} installed")
    fixtures = kit.user_manager_class()
    why = fixtures._why_not()
    if why:
        pytest.skip(why)
    um = fixtures.UserManager()
    stream = tcp = agent = None
    try:
        um.start()
        um.add_service("web", [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"])
        stream = kit.UdpStream(pair, pps=300)
        tcp = kit.TcpStream(pair, rate=100)
        body = (f"  pcap {{ dev = {pair.dev_b} sampling = 2 }}\n  tcp {{ }}\n"
                f"  systemd {{ slice = app.slice bus = \"{um.address}\" }}")
        agent = kit.NsAgent(conf(collector.port, body, polling=1), workdir, pair.ns_b)

        def ready(dgs: list[Any]) -> bool:
            recs = [r for d in dgs for s in d.flow_samples for r in s.records
                    if isinstance(r, ExtendedTcpInfo)]
            services = [s for d in dgs for s in d.counter_samples if s.source.ds_class == 3]
            return len(recs) >= 5 and len(services) >= 2

        try:
            collector.wait_for(ready, timeout=20)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{agent.log()[-3000:]}") from None
        time.sleep(0.7)  # mid-second: samples are pending in the unsent datagram
        t0 = time.monotonic()
        status = agent.stop(timeout=5)
        elapsed = time.monotonic() - t0
    finally:
        for x in (stream, tcp, agent):
            if x is not None:
                x.stop()
        um.stop()
    log = agent.log()
    assert status == 0, log[-3000:]
    assert elapsed < 1.0, f"SIGTERM took {elapsed:.2f} s"
    assert "Traceback" not in log
    time.sleep(0.3)
    (stopped,) = [e for e in log_events(log) if e["event"] == "stopped"]
    # the final flush went out: the collector has every datagram the agent sent
    assert stopped["datagrams"] == len(collector.raw) > 0
    last = kit.decode_datagram(collector.raw[-1])
    assert last.sequence == stopped["datagrams"]
    print(f"FIGURES SIGTERM to exit {elapsed * 1000:.0f} ms, {stopped['datagrams']} datagrams")
