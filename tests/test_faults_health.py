"""Health figures: samples taken and sent, drops by reason, module errors, faults; one ``health``
log line every five minutes; the same figures in ``hostsflow status`` of a real agent."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import hostsflow
import structlog
from hostsflow.agent import HEALTH_LOG_SECONDS
from hostsflow.health import read_status
from hostsflow.sflow.records import Record, flow_record
from hostsflow.sflow.xdr import u32
from hostsflow.testing import AgentHarness, UdpCollector, load_file_module

AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                Path(__file__).with_name("agent_process.py")).AgentProcess


@flow_record(9177, enterprise=4094)
class Tag(Record):
    value: int = u32()


class Flaky:
    """Adds a record that cannot be encoded to every 10th sample (that sample is dropped) and
    raises in every 5th tick (a module error)."""

    def __init__(self) -> None:
        self.n = 0
        self.ticks = 0

    @hostsflow.hookimpl
    def sflow_declare_config(self, registry):
        import attrs

        registry.block("flaky", attrs.make_class("FlakyConfig", {}, frozen=True))

    @hostsflow.hookimpl
    def sflow_flow_sample_released(self, sample):
        self.n += 1
        sample.add(Tag(value=-1 if self.n % 10 == 0 else self.n))

    @hostsflow.hookimpl
    def sflow_tick(self):
        self.ticks += 1
        if self.ticks % 5 == 0:
            raise RuntimeError("tick failed")


def test_health_line_every_five_minutes_with_samples_drops_and_errors():
    conf = "sflow { collector { ip = 127.0.0.1 } polling = 0 flaky { } }"
    with structlog.testing.capture_logs() as logs:
        with AgentHarness(conf, modules={"flaky": Flaky()}) as h:
            for second in range(2 * HEALTH_LOG_SECONDS):
                h.feed(*[h.make_sample(udp=("10.0.0.1", 1000 + i, "10.0.0.2", 53))
                         for i in range(3)])
                h.tick()
            sent = len(h.flow_samples())
    lines = [e for e in logs if e["event"] == "health"]
    assert len(lines) == 2, [e["event"] for e in logs][:20]
    first, last = lines
    assert first["flow_samples_taken"] == 3 * HEALTH_LOG_SECONDS
    assert last["flow_samples_taken"] == 6 * HEALTH_LOG_SECONDS
    # every 10th sample carried an unencodable record: dropped, counted by reason
    assert last["dropped"] == {"unencodable": 6 * HEALTH_LOG_SECONDS // 10}
    assert last["flow_samples_sent"] == sent == 6 * HEALTH_LOG_SECONDS * 9 // 10
    assert last["datagrams"] == last["datagrams_delivered"] > 0
    # one error every 5th tick, still counted (the module is never quarantined: it recovers)
    assert last["module_errors"] == 2 * HEALTH_LOG_SECONDS // 5
    assert first["module_errors"] == HEALTH_LOG_SECONDS // 5
    # the unencodable record is logged once, not per sample
    assert sum(e["event"] == "flow_sample_unencodable" for e in logs) == 1


def test_status_of_a_real_agent_counts_undelivered_datagrams(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with UdpCollector() as good:
        text = ("sflow {\n"
                f"  collector {{ ip = 127.0.0.1 udpport = {good.port} }}\n"
                f"  collector {{ ip = 127.0.0.1 udpport = {dead} }}\n"
                "  polling = 1\n}\n")
        with AgentProcess(text, tmp_path) as agent:
            good.wait_for(lambda d: len(d) >= 6, timeout=15)
            time.sleep(5.5)  # the status file is rewritten every 5 s
            status = read_status(agent.status_path)
            assert agent.stop() == 0
        counters = status["counters"]
        assert counters["datagrams"] >= 6
        # every datagram went to the good collector; the dead one refused or was skipped
        assert counters["datagrams_delivered"] >= counters["datagrams"]
        # UDP: a datagram to the closed port leaves without an error; the ICMP refusal fails
        # the *next* send, which counts the earlier one undelivered; so only the last one (and
        # one the kernel did not answer at once) may look delivered
        looks_delivered = 2 + counters["datagrams"] // 10
        assert counters["dropped.undelivered"] >= counters["datagrams"] - looks_delivered
        final = [json.loads(line) for line in agent.log().splitlines()
                 if line.startswith("{") and '"stopped"' in line]
        assert final and final[0]["datagrams"] == len(good.raw)
