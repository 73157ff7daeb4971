"""The agent drops root after start-up unless a module needs it, and reports its health."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostsflow.privileges import capability_mask, unreadable_python_paths
from hostsflow.testing import UdpCollector, load_file_module

AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                Path(__file__).with_name("agent_process.py")).AgentProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


proc_status = load_file_module("hostsflow_tests_faults_kit",
                               Path(__file__).with_name("faults_kit.py")).proc_status


def conf(port: int, extra: str = "") -> str:
    return f"sflow {{\n  collector {{ ip = 127.0.0.1 udpport = {port} }}\n  polling = 1\n{extra}}}\n"


def test_counters_only_agent_runs_as_nobody_without_capabilities(tmp_path):
    blocked = unreadable_python_paths("nobody")
    with UdpCollector() as col, AgentProcess(conf(col.port), tmp_path) as agent:
        if blocked:
            # this interpreter lives where nobody cannot read it (e.g. under /root): dropping
            # would break lazy imports, so the agent says why and does not run on as root
            assert agent.proc.wait(15) == 2
            assert "drop_privileges_failed" in agent.log() and blocked[0] in agent.log()
            return
        col.wait_for(lambda d: len(d) >= 3)
        st = proc_status(agent.pid)
        assert "dropped_privileges" in agent.log()
        assert st["Uid"].split() == ["65534"] * 4, st["Uid"]
        for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(st[key], 16) == 0, (key, st[key])
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
        n = len(col.raw)
        col.wait_for(lambda d: len(d) >= n + 2)  # still polling /proc and sending as nobody
        # health counters, readable with `hostsflow status` while the agent runs
        time.sleep(5.5)
        out = subprocess.run([sys.executable, "-c", "from hostsflow.cli import tools_main;"
                              "import sys; sys.exit(tools_main())", "status",
                              "--status-file", agent.status_path, "--json"],
                             capture_output=True, text=True, check=True).stdout
        status = json.loads(out)
        assert status["datagrams"] >= 3 and status["counters"]["counter_samples"] >= 3
        assert agent.stop() == 0


def test_keep_root_flag_and_dropPriv_off(tmp_path):
    with UdpCollector() as col:
        with AgentProcess(conf(col.port, "  dropPriv = off\n"), tmp_path / "a"
                          if (tmp_path / "a").mkdir() is None else None) as agent:
            col.wait_for(lambda d: len(d) >= 2)
            assert proc_status(agent.pid)["Uid"].split()[0] == "0"
        with AgentProcess(conf(col.port), tmp_path / "b" if (tmp_path / "b").mkdir() is None
                          else None, args=("-P",)) as agent:
            n = len(col.raw)
            col.wait_for(lambda d: len(d) >= n + 2)
            assert proc_status(agent.pid)["Uid"].split()[0] == "0"


def test_capability_names_are_checked():
    assert capability_mask(["CAP_NET_RAW", "net_admin"]) == (1 << 13) | (1 << 12)
    with pytest.raises(ValueError):
        capability_mask(["CAP_FLY"])
