"""End to end on real traffic: a real ``hostsflowd`` with ``pcap { dev = lo }`` and
``user { }`` samples a TCP connection between this process (the client) and a socket owned by
``nobody``; the extended_user records are read by our decoder and by tshark (which knows 1004).

Needs root (packet capture, a socket owned by another user), the hostsflow-pcap module and
tshark; it skips only when one of them is missing."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hostsflow.testing import UdpCollector, load_file_module
from hostsflow_user import ExtendedUser

# the repository's end-to-end helpers (not part of the testing kit)
TESTS = Path(__file__).resolve().parents[3] / "tests"
AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                TESTS / "agent_process.py").AgentProcess
write_pcap = load_file_module("hostsflow_tests_pcap_file", TESTS / "pcap_file.py").write_pcap

ME = pwd.getpwuid(os.geteuid()).pw_name

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="packet capture needs root"),
    pytest.mark.skipif(importlib.util.find_spec("hostsflow_pcap") is None,
                       reason="the hostsflow-pcap module is not installed"),
]


def conf(port: int) -> str:
    return f"""
sflow {{
  collector {{ ip = 127.0.0.1 udpport = {port} }}
  polling = 0
  pcap {{ dev = lo sampling = 1 }}
  user {{ }}
}}
"""


def tcp_ports(rec: Any) -> tuple[int, int] | None:
    """(sport, dport) of the TCP packet in an Ethernet sampled header, None if not IPv4/TCP."""
    h = rec.header
    if len(h) < 38 or h[12:14] != b"\x08\x00" or h[23] != 6:
        return None
    ihl = (h[14] & 15) * 4
    return int.from_bytes(h[14 + ihl:16 + ihl], "big"), int.from_bytes(h[16 + ihl:18 + ihl], "big")


def users_by_ports(datagrams: list[Any]) -> dict[tuple[int, int], set[tuple[str, str]]]:
    from hostsflow.sflow.records import SampledHeader

    out: dict[tuple[int, int], set[tuple[str, str]]] = {}
    for d in datagrams:
        for s in d.flow_samples:
            hdr = next((r for r in s.records if isinstance(r, SampledHeader)), None)
            user = next((r for r in s.records if isinstance(r, ExtendedUser)), None)
            ports = tcp_ports(hdr) if hdr else None
            if ports and user:
                out.setdefault(ports, set()).add((user.src_user, user.dst_user))
    return out


def test_extended_user_on_real_loopback_traffic(foreign_sockets: Any, tmp_path: Path) -> None:
    fs = foreign_sockets
    with UdpCollector() as col, AgentProcess(conf(col.port), tmp_path) as agent:
        deadline = time.monotonic() + 5
        while "tap_opened" not in agent.log():
            assert agent.proc.poll() is None and time.monotonic() < deadline, agent.log()
            time.sleep(0.05)
        cli = socket.create_connection(("127.0.0.1", fs.tcp_port))
        try:
            assert cli.recv(100) == b"hello from nobody"
            cport = cli.getsockname()[1]
            for _ in range(5):
                cli.sendall(b"x" * 100)
                time.sleep(0.05)
            want = {(cport, fs.tcp_port), (fs.tcp_port, cport)}
            col.wait_for(lambda d: want <= set(users_by_ports(d)), timeout=10)
        finally:
            cli.close()
        assert agent.stop() == 0, agent.log()
        seen = users_by_ports(col.datagrams)
        assert seen[(cport, fs.tcp_port)] == {(ME, fs.user)}, agent.log()
        assert seen[(fs.tcp_port, cport)] == {(fs.user, ME)}
        raw = list(col.raw)

    # the same datagrams through tshark, which has its own 1004 dissector
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    pcap = tmp_path / "user.pcap"
    write_pcap(str(pcap), raw)
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", "udp.port==6343,sflow", "-T", "fields",
         "-E", "occurrence=a", "-E", "aggregator=|", "-E", "separator=;",
         "-e", "sflow_5.extended_user.source_character_set",
         "-e", "sflow_5.extended_user.source_user",
         "-e", "sflow_5.extended_user.destination_character_set",
         "-e", "sflow_5.extended_user.destination_user",
         "-e", "tcp.srcport", "-e", "_ws.malformed"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    tshark_pairs: set[tuple[str, str, str, str]] = set()
    for line in out.stdout.splitlines():
        src_cs, src_user, dst_cs, dst_user, _ports, malformed = line.split(";")
        assert not malformed, line
        for quad in zip(src_cs.split("|"), src_user.split("|"), dst_cs.split("|"),
                        dst_user.split("|")):
            if quad[0]:
                tshark_pairs.add(quad)
    assert ("106", ME, "106", fs.user) in tshark_pairs, out.stdout
    assert ("106", fs.user, "106", ME) in tshark_pairs, out.stdout


def test_hostsflow_decode_knows_the_record_of_an_installed_module() -> None:
    """``hostsflow decode`` imports installed modules, so third-party records print by name."""
    import sys

    from hostsflow.samples import DataSource, FlowSample
    from hostsflow.sflow.datagram import DatagramHeader, encode_datagram, encode_flow_sample
    from hostsflow.sflow.records import SampledHeader
    from hostsflow.testing import ethernet_frame

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    code = "import sys; from hostsflow.cli import tools_main; sys.exit(tools_main(sys.argv[1:]))"
    dec = subprocess.Popen([sys.executable, "-c", code, "decode", "--listen",
                            f"127.0.0.1:{port}", "--json", "--count", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        frame = ethernet_frame(tcp=("127.0.0.1", 40000, "127.0.0.1", 80))
        sample = FlowSample(DataSource(0, 1), 1, [SampledHeader(1, len(frame) + 4, 4, frame),
                                                  ExtendedUser(106, "alice", 106, "bob")])
        header = DatagramHeader("127.0.0.1", 0, 1, 1000)
        raw = encode_datagram(header, [encode_flow_sample(1, sample)])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            deadline = time.monotonic() + 10
            while dec.poll() is None and time.monotonic() < deadline:
                s.sendto(raw, ("127.0.0.1", port))
                time.sleep(0.2)
        out, err = dec.communicate(timeout=10)
    finally:
        if dec.poll() is None:
            dec.kill()
            dec.wait()
    assert dec.returncode == 0, err
    assert "alice" in out and "bob" in out
    assert "extended_user" in out.lower() or "ExtendedUser" in out, out
