"""The quick start's demo traffic (scripts/demo_traffic.py) fills the view, for real: the demo
started as the quick start starts it (with unique names here), a real ``hostsflowd`` on the
config scripts/quickstart-config.sh writes for ``--view`` with the demo's device, and a real
``hostsflow view``.  Through the view's JSON API: the TCP table has rows with an RTT for the
demo's connections of each kind (downloads, browsing sessions, the poller's), and the flows
come from the short GETs, the downloads, the UDP queries and the poller.  Then ``stop`` leaves
no namespace, device, process or state behind.

This host's PID 1 is not systemd, so the demo's services run as plain processes here and are
not named; tests/test_booted_demo.py runs the same demo in a booted container, where they are.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hostsflow.testing import load_file_module

from . import demo_kit as dk
from .collector_kit import start_view

pytestmark = [pytest.mark.root, pytest.mark.slow]
SPAN_S = 15  # three of the demo's download cycles

AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                Path(__file__).with_name("agent_process.py")).AgentProcess


def test_demo_fills_the_tcp_table_and_leaves_nothing(tmp_path):
    names = dk.DemoNames.unique()
    view, sflow, base = start_view(tmp_path, window=5)
    agent = None
    try:
        started = dk.demo_command("start", names, "--duration", "120")
        assert started.returncode == 0, started.stderr
        assert "plain processes" in started.stdout  # and it says why services go unnamed
        conf = dk.quickstart_config("view", f"{sflow[0]}:{sflow[1]}", names.dev)
        assert f"pcap {{ dev = {names.dev} sampling = 10 }}" in conf, conf
        agent = AgentProcess(conf, tmp_path)
        agent_started = time.time()

        def filled():
            seen = dk.demo_seen(base, names)
            ok = (seen.kinds(names) == {"download", "pages", "poller"} and seen.short_get_bps
                  and seen.download_bps and seen.udp_bps and seen.poller_bps)
            return seen if ok else None

        seen = dk.wait_for(filled, 40, "TCP rows with an RTT of each kind, flows of each kind")
        rtts = seen.rtts_ms()
        remotes = sorted({c["remote"].rsplit(":", 1)[0] for c in seen.connections})
        print(f"\n  TCP table: {len(seen.connections)} demo rows {sorted(seen.kinds(names))} "
              f"(remotes {remotes}), RTT ms "
              f"{rtts[0]:.3f}..{rtts[-1]:.3f}; flows bit/s: short GETs {seen.short_get_bps:.0f}, "
              f"downloads {seen.download_bps:.0f}, UDP {seen.udp_bps:.0f}, poller "
              f"{seen.poller_bps:.0f}; services {seen.services}")
        # the downloads (16 MiB every 5 s, read at 8 MB/s) outweigh the short GETs and
        # browsing sessions: judged over three download cycles (a 5 s window can hold the
        # first seconds of one download only)
        time.sleep(max(0.0, agent_started + SPAN_S + 2 - time.time()))
        end = int(time.time())
        cycles = dk.demo_seen(base, names, span=(end - SPAN_S, end))
        print(f"  over {SPAN_S} s: downloads {cycles.download_bps:.0f}, short GETs and pages "
              f"{cycles.short_get_bps:.0f} bit/s")
        assert cycles.download_bps > 10 * cycles.short_get_bps, cycles
        # every row is the demo's: the web port here or the namespace's server there
        for c in seen.connections:
            ports = {c["local"].rsplit(":", 1)[1], c["remote"].rsplit(":", 1)[1]}
            assert ports & {str(dk.WEB_PORT), str(dk.NS_PORT)}, c
        assert "Traceback" not in agent.log(), agent.log()[-3000:]
    finally:
        if agent is not None:
            agent.stop()
        stopped = dk.demo_command("stop", names)
        view.stop()
    assert stopped.returncode == 0, stopped.stderr
    assert f"namespace {names.name}" in stopped.stdout, stopped.stdout
    assert dk.leftovers(names) == []
