"""NFLOG group taken by another process when a real ``hostsflowd`` starts: the agent drops root
anyway (to nobody, keeping only CAP_NET_ADMIN), logs the conflict once, retries with backoff,
and binds the group as soon as it comes free; then packets logged by an nftables rule arrive as
flow samples.  This is also the check that CAP_NET_ADMIN is all a re-bind needs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hostsflow.privileges import unreadable_python_paths
from hostsflow.testing import load_file_module

pytestmark = [pytest.mark.root, pytest.mark.slow]
GROUP = 23


kit = load_file_module("hostsflow_tests_faults_kit", Path(__file__).with_name("faults_kit.py"))
AgentProcess = load_file_module("hostsflow_tests_agent_process", Path(__file__).with_name("agent_process.py")).AgentProcess


def test_group_taken_then_freed_is_bound_after_the_drop(tmp_path):
    why = kit.why_not("nft")
    if why:
        pytest.skip(why)
    if importlib.util.find_spec("hostsflow_nflog") is None:
        pytest.skip("needs the hostsflow-nflog module installed")
    if unreadable_python_paths("nobody"):
        pytest.skip("this Python installation is not readable by nobody (the agent keeps root)")
    from hostsflow_nflog.nlsocket import NflogSocket

    pair = kit.NetPair()
    work = Path(tempfile.mkdtemp(prefix="hsff-"))
    os.chmod(work, 0o755)
    holder = NflogSocket(GROUP, 128, 1, 1, netns=pair.ns_b)
    col = stream = agent = None
    try:
        for cmd in ("add table inet hsff",
                    "add chain inet hsff c { type filter hook input priority 0; }",
                    f"add rule inet hsff c udp dport 9999 log group {GROUP}"):
            subprocess.run(["ip", "netns", "exec", pair.ns_b, "nft", cmd], check=True, timeout=10)
        holder.open()  # another process has the group
        col = kit.NsCollector(pair.ns_b)
        conf = (f"sflow {{\n  collector {{ ip = 127.0.0.1 udpport = {col.port} }}\n"
                f"  polling = 0\n  sampling = 1\n"
                f"  nflog {{ group = {GROUP} probability = 1 timeout = 0.1 }}\n}}\n")
        agent = AgentProcess(conf, work, netns=pair.ns_b)
        stream = kit.UdpStream(pair, pps=200)
        deadline = time.monotonic() + 10
        while '"started"' not in agent.log():
            assert time.monotonic() < deadline, agent.log()
            time.sleep(0.1)
        time.sleep(2.5)  # two failed retries (after 1 and 2 s)
        st = kit.proc_status(agent.pid)
        assert st["Uid"].split()[0] == "65534"
        assert int(st["CapEff"], 16) == 1 << 12  # CAP_NET_ADMIN only
        assert not col.raw, "samples while another process had the group?"
        holder.close()
        t_free = time.monotonic()
        col.wait_for(lambda d: sum(len(x.flow_samples) for x in d) >= 50, timeout=15)
        bound_after = time.monotonic() - t_free
        assert agent.proc.poll() is None
    finally:
        holder.close()
        if stream is not None:
            stream.stop()
        status = agent.stop() if agent is not None else None
        text = agent.log() if agent is not None else ""
        if col is not None:
            col.close()
        pair.close()
        shutil.rmtree(work, ignore_errors=True)
    assert status == 0
    events = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
    names = [e["event"] for e in events]
    dropped = events[names.index("dropped_privileges")]
    assert dropped["capabilities"] == ["CAP_NET_ADMIN"]
    assert names.count("nflog_bind_failed") == 1  # once per failure streak
    assert "already bound by another process" in events[names.index("nflog_bind_failed")]["reason"]
    assert names.count("nflog_bound") == 1 and names.index("nflog_bound") > names.index("started")
    (stopped,) = [e for e in events if e["event"] == "stopped"]
    assert stopped["nflog.bind_failures"] >= 2
    assert bound_after < 9  # the backoff was at most 4 s when the group came free
    print(f"FIGURES bound {bound_after:.1f} s after the group came free")
