"""A module that raises in its hooks on every call does not stop the samples of the others.

A real ``hostsflowd`` runs with ``pcap { dev = lo }``, the example ``user`` module and a
throw-away third-party module ``failing`` (installed as a real ``.dist-info`` on the agent's
``sys.path``) whose ``sflow_tick`` and ``sflow_flow_sample`` raise every time.  Traffic on
loopback keeps flow samples coming.  The datagrams received before and after the module is
quarantined are counted: both periods have host counters every second (no poll skipped) and flow samples carrying
the user module's records, with no gap in the datagram sequence; the quarantine is logged
exactly once and each failing hook's error once (rate limited).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from hostsflow.modules import QUARANTINE_AFTER
from hostsflow.testing import UdpCollector, load_file_module

AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                Path(__file__).with_name("agent_process.py")).AgentProcess

FAILING = '''
import attrs
import hostsflow

@attrs.frozen
class FailingConfig:
    pass

class FailingModule:
    """Raises in every call of its packet-path and poll-path hooks."""

    @hostsflow.hookimpl
    def sflow_declare_config(self, registry):
        registry.block("failing", FailingConfig, help="always fails")

    @hostsflow.hookimpl
    def sflow_tick(self, agent, now):
        raise RuntimeError("failing module: tick")

    @hostsflow.hookimpl
    def sflow_flow_sample(self, agent, sample):
        raise RuntimeError("failing module: flow sample")
'''

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="packet capture needs root"),
    pytest.mark.skipif(importlib.util.find_spec("hostsflow_pcap") is None,
                       reason="the hostsflow-pcap module is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("hostsflow_user") is None,
                       reason="examples/hostsflow-user is not installed (scripts/install.sh)"),
]


def install_failing(site: Path) -> None:
    (site / "tp_failing.py").write_text(FAILING)
    info = site / "hostsflow_failing-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostsflow-failing\n"
                                   "Version: 0.0.1\n")
    (info / "entry_points.txt").write_text(
        "[hostsflow.modules]\nfailing = tp_failing:FailingModule\n")


def log_events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_failing_module_does_not_stop_other_samples(tmp_path: Path, monkeypatch) -> None:
    from hostsflow_user import ExtendedUser

    site = tmp_path / "site"
    site.mkdir()
    install_failing(site)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    with UdpCollector() as col:
        conf = f"""
sflow {{
  collector {{ ip = 127.0.0.1 udpport = {col.port} }}
  polling = 1
  pcap {{ dev = lo sampling = 1 }}
  user {{ }}
  failing {{ }}
}}
"""
        # -P: the test's module lives where nobody cannot read it (an agent that cannot
        # drop privileges stops, and this test is about modules, not privileges)
        with AgentProcess(conf, tmp_path, args=("-P",)) as agent:
            quarantined_at = None
            deadline = time.monotonic() + 30
            # one packet every 0.25 s: with the samples of the agent's own datagrams and its
            # tick, the failing module fails several times a second and is quarantined after
            # QUARANTINE_AFTER consecutive failures, typically within the first two seconds
            while time.monotonic() < deadline:
                a.sendto(b"ping", b.getsockname())
                time.sleep(0.25)
                q = [e for e in log_events(agent.log()) if e.get("event") == "module_quarantined"]
                if q and quarantined_at is None:
                    quarantined_at = datetime.fromisoformat(
                        q[0]["timestamp"].replace("Z", "+00:00")).timestamp()
                    after_deadline = time.monotonic() + 3.5
                if quarantined_at is not None and time.monotonic() > after_deadline:
                    break
            assert quarantined_at is not None, agent.log()
            assert agent.stop() == 0, agent.log()
        a.close()
        b.close()
        raw, times = list(col.raw), list(col.received_at)

    from hostsflow.sflow.datagram import decode_datagram

    datagrams = [decode_datagram(d) for d in raw]
    assert [d.sequence for d in datagrams] == list(range(1, len(datagrams) + 1))
    before = [(d, t) for d, t in zip(datagrams, times) if t < quarantined_at]
    after = [(d, t) for d, t in zip(datagrams, times) if t > quarantined_at + 0.01]
    assert before and after

    def host_samples(period: list) -> list:
        return [s for d, _ in period for s in d.counter_samples
                if (s.source.ds_class, s.source.ds_index) == (2, 1)]

    # host counters every second (polling = 1) over the whole run, none skipped
    all_hosts = host_samples(before + after)
    assert [s.sequence for s in all_hosts] == list(range(1, len(all_hosts) + 1))
    run_span = times[-1] - times[0]
    assert len(all_hosts) >= int(run_span) - 1, (len(all_hosts), run_span)
    for period, seconds in ((before, 1), (after, 3)):
        span = period[-1][1] - period[0][1]
        hosts = host_samples(period)
        assert len(hosts) >= seconds and len(hosts) >= int(span) - 1, (len(hosts), span)
        # ... and flow samples of the loopback traffic, enriched by the user module
        flows = [s for d, _ in period for s in d.flow_samples]
        assert sum(1 for s in flows if s.record(ExtendedUser) is not None) >= 1, period

    events = log_events(agent.log())
    quarantines = [e for e in events if e.get("event") == "module_quarantined"]
    assert len(quarantines) == 1
    assert quarantines[0]["module"] == "failing"
    assert quarantines[0]["distribution"] == "hostsflow-failing"
    assert quarantines[0]["consecutive_failures"] == QUARANTINE_AFTER
    errors = [e for e in events if e.get("event") == "module_error"]
    # flow samples went out while the module was failing on them (and on the tick)
    assert {e["hook"] for e in errors} == {"sflow_tick", "sflow_flow_sample"}
    assert len(errors) == len({e["hook"] for e in errors}) >= 1  # once per hook
    assert all(e["module"] == "failing" for e in errors)
