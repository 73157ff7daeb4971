"""End to end: a real ``hostsflowd`` process streams host and interface counters to a collector
on loopback; the values are checked against /proc and /sys read around the poll, and a
third-party decoder (tshark) reads the same datagrams."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hostsflow.sflow import records as R
from hostsflow.testing import UdpCollector, load_file_module

AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                Path(__file__).with_name("agent_process.py")).AgentProcess
write_pcap = load_file_module("hostsflow_tests_pcap_file",
                              Path(__file__).with_name("pcap_file.py")).write_pcap

POLLING = 2


def config(port: int, polling: int = POLLING) -> str:
    return f"""
# written by tests/test_agent_e2e.py
sflow {{
  collector {{ ip = 127.0.0.1 udpport = {port} }}
  polling = {polling}
}}
"""


def sys_stat(name: str, stat: str) -> int:
    return int(Path(f"/sys/class/net/{name}/statistics/{stat}").read_text())


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, rest = line.split(":", 1)
        out[key] = int(rest.split()[0]) * 1024
    return out


def snmp() -> dict[str, dict[str, int]]:
    lines = Path("/proc/net/snmp").read_text().splitlines()
    out: dict[str, dict[str, int]] = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        group = head.split(":")[0]
        out[group] = dict(zip(head.split()[1:], map(int, vals.split()[1:])))
    return out


def counters_of(datagrams, ds_class: int, ds_index: int):
    return [s for d in datagrams for s in d.counter_samples
            if (s.source.ds_class, s.source.ds_index) == (ds_class, ds_index)]


@pytest.fixture
def running(tmp_path):
    """The agent on a counters-only config, with /proc and /sys read before it starts."""
    interfaces = [n for n in os.listdir("/sys/class/net") if n != "lo"]
    before = {
        "snmp": snmp(),
        "if": {n: {s: sys_stat(n, s) for s in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}
               for n in interfaces},
    }
    with UdpCollector() as col, AgentProcess(config(col.port), tmp_path) as agent:
        # two host samples: the second is at least one polling interval after the first
        col.wait_for(lambda d: len(counters_of(d, 2, 1)) >= 2, timeout=3 * POLLING + 5)
        after = {
            "snmp": snmp(),
            "if": {n: {s: sys_stat(n, s) for s in ("rx_bytes", "tx_bytes", "rx_packets",
                                                     "tx_packets")} for n in interfaces},
        }
        status = agent.stop()
        yield col.datagrams, before, after, interfaces, status, col, agent


def test_datagram_headers(running):
    datagrams, *_ , status, col, agent = running
    assert status == 0, agent.log()
    assert len(datagrams) >= 2
    seqs = [d.sequence for d in datagrams]
    assert seqs == list(range(1, len(seqs) + 1)), "datagram sequence numbers count from 1"
    assert all(d.version == 5 and d.sub_agent_id == 100000 for d in datagrams)
    uptimes = [d.uptime for d in datagrams]
    assert uptimes == sorted(uptimes)
    host = counters_of(datagrams, 2, 1)
    assert [s.sequence for s in host] == list(range(1, len(host) + 1))
    assert all(len(raw) <= 1400 for raw in col.raw)


def test_host_counters_match_proc(running):
    datagrams, before, after, *_ = running
    sample = counters_of(datagrams, 2, 1)[-1]
    descr = sample.record(R.HostDescr)
    assert descr.hostname == socket.gethostname()
    assert descr.os_name == 2 and descr.os_release == platform.release()
    assert descr.machine_type == (3 if platform.machine() == "x86_64" else descr.machine_type)
    assert descr.uuid != bytes(16)

    cpu = sample.record(R.HostCpu)
    assert cpu.cpu_num == os.cpu_count()
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert uptime - 15 <= cpu.uptime <= uptime + 1

    mem = sample.record(R.HostMemory)
    info = meminfo()
    assert mem.mem_total == info["MemTotal"]
    assert mem.swap_total == info["SwapTotal"]
    assert abs(mem.mem_free - info["MemFree"]) < 200 * 2**20

    for cls, group in ((R.Mib2Tcp, "Tcp"), (R.Mib2Udp, "Udp"), (R.Mib2Ip, "Ip")):
        rec = sample.record(cls)
        for name, lo in before["snmp"][group].items():
            if not hasattr(rec, name) or name in ("MaxConn", "CurrEstab", "Forwarding",
                                                   "DefaultTTL", "RtoAlgorithm", "RtoMin",
                                                   "RtoMax"):
                continue
            hi = after["snmp"][group][name]
            value = getattr(rec, name)
            assert lo & 0xFFFFFFFF <= value <= hi & 0xFFFFFFFF, (group, name, lo, value, hi)
    icmp = sample.record(R.Mib2Icmp)
    # by column name: InCsumErrors sits third in the kernel's table and must not shift the rest
    assert before["snmp"]["Icmp"]["InDestUnreachs"] <= icmp.InDestUnreachs <= \
        after["snmp"]["Icmp"]["InDestUnreachs"]
    assert sample.record(R.HostDiskIo).disk_total > 0
    assert sample.record(R.HostNetIo) is not None


def test_interface_counters_match_sys(running):
    datagrams, before, after, interfaces, *_ = running
    assert interfaces, "no interface besides lo on this machine"
    for name in interfaces:
        ifindex = int(Path(f"/sys/class/net/{name}/ifindex").read_text())
        samples = counters_of(datagrams, 0, ifindex)
        assert samples, f"no counter sample for {name} (0:{ifindex})"
        s = samples[-1]
        gen = s.record(R.GenericInterface)
        assert gen.ifIndex == ifindex
        assert s.record(R.PortName).name == name
        for field, stat in (("ifInOctets", "rx_bytes"), ("ifOutOctets", "tx_bytes")):
            lo, hi = before["if"][name][stat], after["if"][name][stat]
            assert lo <= getattr(gen, field) <= hi, (name, field, lo, getattr(gen, field), hi)
        # unicast packets are total minus multicast where the kernel tells multicast
        total_in = gen.ifInUcastPkts + (gen.ifInMulticastPkts if gen.ifInMulticastPkts != 0xFFFFFFFF else 0)
        assert before["if"][name]["rx_packets"] <= total_in <= after["if"][name]["rx_packets"]
        up = Path(f"/sys/class/net/{name}/operstate").read_text().strip() == "up"
        assert bool(gen.ifStatus & 2) == up


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_reads_agent_datagrams(running, tmp_path):
    datagrams, *_, col, agent = running
    pcap = tmp_path / "agent.pcap"
    write_pcap(str(pcap), col.raw)
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "json", "--no-duplicate-keys", "-d",
         "udp.port==6343,sflow"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    packets = json.loads(out)
    assert len(packets) == len(datagrams)
    for pkt, ours in zip(packets, datagrams):
        layer = pkt["_source"]["layers"]["sflow"]
        assert layer["sflow_245.version"] == "5"
        assert layer["sflow_245.agent"] == ours.agent_address
        assert layer["sflow_245.sub_agent_id"] == str(ours.sub_agent_id)
        assert layer["sflow_245.sequence_number"] == str(ours.sequence)
        assert layer["sflow_245.sysuptime"] == str(ours.uptime)
        assert layer["sflow_245.numsamples"] == str(len(ours.samples))
    # interface counter samples as tshark reads them (--no-duplicate-keys keeps them all).
    # tshark 4.0 knows no host record (2000-2010) and does not skip unknown records, so it
    # misreads the rest of a datagram from the first one; the agent puts interface samples
    # first in a datagram, so those before it are checked.
    text = json.dumps(packets)
    checked = 0
    readable = []
    for d in datagrams:
        for s in d.counter_samples:
            if s.source.ds_class != 0:
                break
            readable.append(s)
    for s in readable:
        gen = s.record(R.GenericInterface)
        for field, key in (("ifIndex", "ifindex"), ("ifInOctets", "ifinoct"),
                           ("ifOutOctets", "ifoutoct"), ("ifInUcastPkts", "ifinpkt")):
            assert f'"sflow_245.{key}": "{getattr(gen, field)}"' in text, (field, gen)
        checked += 1
    assert checked >= 1


def test_sigterm_flushes_and_exits_quickly(tmp_path):
    with UdpCollector() as col:
        agent = AgentProcess(config(col.port, polling=1), tmp_path)
        try:
            col.wait_for(lambda d: len(d) >= 1, timeout=10)
            n = len(col.raw)
            t0 = time.monotonic()
            status = agent.stop()
            elapsed = time.monotonic() - t0
        finally:
            agent.stop()
        assert status == 0
        assert elapsed < 1.0, f"SIGTERM took {elapsed:.2f}s"
        assert "Traceback" not in agent.log()
        assert len(col.raw) >= n
