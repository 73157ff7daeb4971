"""Least privilege, read from /proc/PID/status of a real agent run as the README's quick start
runs it (root, ``hostsflowd -f CONF``) with pcap, tcp and ``systemd { markTraffic = on }``
enabled against a real ``systemd --user``: it runs as nobody with exactly the capabilities
those modules need, in all of effective, permitted and bounding sets, no ambient ones,
no_new_privs set and its own seccomp filter; the status file's directory is nobody's; the
systemd module still reads /proc/PID/io of a root service (CAP_SYS_PTRACE and
CAP_DAC_READ_SEARCH, not root) and the owner log still marks samples.

The packaged unit's run is in tests/test_booted_operator.py."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
from hostsflow import seccomp
from hostsflow.privileges import capability_mask, capability_names, process_privileges
from hostsflow.sflow.records import ExtendedEntities, VirtDiskIo
from hostsflow.testing import UdpCollector, load_file_module

from .faults_kit import user_manager_class, why_not

AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                Path(__file__).with_name("agent_process.py")).AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: what pcap (CAP_NET_RAW), systemd's /proc/PID/io (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH) and
#: markTraffic's owner log for new slices (CAP_BPF, CAP_NET_ADMIN) keep; tcp needs none
EXPECTED = {"CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_BPF", "CAP_NET_ADMIN"}


def test_quick_start_agent_with_pcap_tcp_systemd_has_only_what_modules_need(tmp_path):
    conftest = user_manager_class()
    why = why_not() or conftest._why_not()
    if why:
        pytest.skip(why)
    um = conftest.UserManager()
    run_dir = Path(f"/run/hostsflow-test-operator-{os.getpid()}")
    try:
        um.start()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        um.add_service("web", [sys.executable, "-m", "http.server", str(port),
                               "--bind", "127.0.0.1"])
        with UdpCollector() as col:
            text = ("sflow {\n"
                    f"  collector {{ ip = 127.0.0.1 udpport = {col.port} }}\n"
                    "  polling = 1\n  sampling = 1\n"
                    "  pcap { dev = lo }\n  tcp { }\n"
                    f"  systemd {{ markTraffic = on slice = app.slice bus = {um.address} }}\n"
                    "}\n")
            with AgentProcess(text, tmp_path,
                              args=("--status-file", str(run_dir / "status.json"))) as agent:
                agent.wait_for_log("dropped_privileges", 15)
                deadline = time.monotonic() + 20
                disk = marked = None
                while time.monotonic() < deadline and not (disk and marked):
                    for _ in range(20):  # traffic to the service, on lo
                        with socket.create_connection(("127.0.0.1", port), 2) as s:
                            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                            while s.recv(65536):
                                pass
                    time.sleep(0.5)
                    dgs = col.datagrams
                    disk = [r for d in dgs for c in d.counter_samples if c.source.ds_class == 3
                            for r in c.records if isinstance(r, VirtDiskIo)]
                    marked = [f for d in dgs for f in d.flow_samples
                              if any(isinstance(r, ExtendedEntities) for r in f.records)]
                st = process_privileges(agent.pid)
                print(f"\n  /proc/{agent.pid}/status: uid {st['uid']} CapEff "
                      f"{st['CapEff']:016x} CapBnd {st['CapBnd']:016x} NoNewPrivs "
                      f"{st['NoNewPrivs']} Seccomp {st['Seccomp']}: "
                      f"{capability_names(st['CapEff'])}")
                want = capability_mask(EXPECTED)
                assert st["uid"] == 65534, st
                assert (st["CapEff"], st["CapPrm"], st["CapBnd"], st["CapAmb"]) == (
                    want, want, want, 0), capability_names(st["CapBnd"])
                assert st["NoNewPrivs"] == 1
                assert st["Seccomp"] == (2 if seccomp.supported() else 0)
                assert '"seccomp": "on"' in agent.log() or not seccomp.supported()
                # the status file is the agent's user's, in a directory the agent made
                deadline = time.monotonic() + 10
                while not (run_dir / "status.json").exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert os.stat(run_dir).st_uid == 65534
                assert os.stat(run_dir / "status.json").st_uid == 65534
                # and the modules work as nobody
                assert disk and max(r.rd_req for r in disk) > 0, disk[:2]
                assert marked, "no sample marked with a service"
                assert "module_error" not in agent.log(), agent.log()[-3000:]
                assert agent.stop() == 0
    finally:
        um.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
