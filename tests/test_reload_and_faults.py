"""The agent keeps exporting through reloads and faults: SIGHUP with a new or a broken config,
an unreachable collector, a collector name that does not resolve."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from hostsflow.testing import UdpCollector, load_file_module

AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                Path(__file__).with_name("agent_process.py")).AgentProcess


def conf(*ports: int, polling: int = 1, extra: str = "") -> str:
    collectors = "\n".join(f"  collector {{ ip = 127.0.0.1 udpport = {p} }}" for p in ports)
    return f"sflow {{\n{collectors}\n  polling = {polling}\n{extra}}}\n"


def closed_udp_port() -> int:
    """A loopback UDP port nobody listens on (bound briefly, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sighup_switches_collectors_and_refuses_a_broken_config(tmp_path):
    with UdpCollector() as a, UdpCollector() as b:
        with AgentProcess(conf(a.port), tmp_path) as agent:
            a.wait_for(lambda d: len(d) >= 2)
            # a new collector and polling interval, without a restart
            with open(agent.conf, "w") as f:
                f.write(conf(b.port, polling=2))
            agent.proc.send_signal(signal.SIGHUP)
            b.wait_for(lambda d: len(d) >= 2, timeout=10)
            n_a = len(a.raw)
            time.sleep(1.5)
            assert len(a.raw) <= n_a + 1, "old collector still fed after reload"
            seqs = [d.sequence for d in b.datagrams]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

            # a broken config is refused, the old one stays in force
            with open(agent.conf, "w") as f:
                f.write("sflow {\n  collector { ip = 127.0.0.1 udpport = 99999 }\n}\n")
            agent.proc.send_signal(signal.SIGHUP)
            n_b = len(b.raw)
            b.wait_for(lambda d: len(d) >= n_b + 2, timeout=10)
            assert agent.proc.poll() is None
            log = agent.log()
            assert "reload_refused" in log and f"{agent.conf}:2:" in log
            assert "Traceback" not in log
            assert agent.stop() == 0


def test_unreachable_and_unresolvable_collectors_do_not_stop_the_good_one(tmp_path):
    dead = closed_udp_port()
    with UdpCollector() as good:
        text = (
            "sflow {\n"
            f"  collector {{ ip = 127.0.0.1 udpport = {dead} }}\n"
            "  collector { ip = no-such-collector.invalid }\n"
            f"  collector {{ ip = 127.0.0.1 udpport = {good.port} }}\n"
            "  polling = 1\n}\n"
        )
        with AgentProcess(text, tmp_path) as agent:
            good.wait_for(lambda d: len(d) >= 10, timeout=20)
            seqs = [d.sequence for d in good.datagrams]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "datagrams lost"
            log = agent.log()
            # logged once while it lasts, not once per datagram
            assert log.count("collector_unresolved") == 1, log
            # the closed port answers with ICMP port unreachable: seen, logged once, retried
            assert log.count("collector_send_failed") == 1, log
            assert agent.stop() == 0
