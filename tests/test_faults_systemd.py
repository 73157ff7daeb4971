"""A real ``hostsflowd`` with ``systemd { }`` on a real ``systemd --user`` and private D-Bus:
the bus daemon is killed and restarted under it.  The outage is logged once and counted, the
services' data sources go away, host counters keep flowing, and once the bus is back (and
systemd on it again) the services come back without a restart of the agent."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hostsflow.testing import UdpCollector, load_file_module

pytestmark = [pytest.mark.root, pytest.mark.slow]


kit = load_file_module("hostsflow_tests_faults_kit", Path(__file__).with_name("faults_kit.py"))
AgentProcess = load_file_module("hostsflow_tests_agent_process", Path(__file__).with_name("agent_process.py")).AgentProcess


def service_sources(dgs: list[Any]) -> set[int]:
    return {s.source.ds_index for d in dgs for s in d.counter_samples if s.source.ds_class == 3}


def host_samples(dgs: list[Any]) -> int:
    return sum(1 for d in dgs for s in d.counter_samples
               if (s.source.ds_class, s.source.ds_index) == (2, 1))


def since(col: UdpCollector, t: float) -> list[Any]:
    from hostsflow.sflow.datagram import decode_datagram

    return [decode_datagram(r) for r, at in zip(list(col.raw), list(col.received_at)) if at >= t]


def wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def restart_bus(um: Any) -> None:
    """Start the private dbus-daemon again on the same socket and make systemd --user join it
    (it re-connects its API bus when its dbus.service is restarted)."""
    sock = um.tmp / "bus.sock"
    if sock.exists():
        sock.unlink()
    out = subprocess.run(
        ["dbus-daemon", f"--config-file={um.tmp}/bus.conf", "--print-address=1",
         "--print-pid=1", "--fork"], capture_output=True, text=True, check=True, timeout=10)
    um.dbus_pid = int(out.stdout.split()[1])
    env = dict(os.environ, XDG_RUNTIME_DIR=str(um.rt))
    subprocess.run(["systemctl", "--user", "restart", "dbus.service"], env=env, check=True,
                   timeout=15)
    from jeepney.io.blocking import open_dbus_connection

    deadline = time.monotonic() + 15
    while True:  # systemd answers on the new bus
        try:
            um._conn = open_dbus_connection(bus=um.address)
            um.call("ListUnits")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_dbus_restart_services_come_back(tmp_path):
    if importlib.util.find_spec("hostsflow_systemd") is None:
        pytest.skip("needs the hostsflow-systemd module installed")
    fixtures = kit.user_manager_class()
    why = fixtures._why_not()
    if why:
        pytest.skip(why)
    um = fixtures.UserManager()
    try:
        um.start()
        for name in ("alpha", "beta"):
            um.add_service(name, [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"])
        with UdpCollector() as col:
            text = ("sflow {\n"
                    f"  collector {{ ip = 127.0.0.1 udpport = {col.port} }}\n"
                    "  polling = 1\n"
                    f"  systemd {{ slice = app.slice bus = \"{um.address}\" }}\n}}\n")
            with AgentProcess(text, tmp_path) as agent:
                wait(lambda: len(service_sources(col.datagrams)) == 2, 15, "services polled")
                before = service_sources(col.datagrams)

                os.kill(um.dbus_pid, signal.SIGTERM)
                t_down = time.monotonic()
                wait(lambda: '"systemd_unreachable"' in agent.log(), 10, "outage seen")
                time.sleep(2.5)
                t_quiet = time.time()
                time.sleep(3.0)
                during = since(col, t_quiet)
                assert not service_sources(during), "services still polled without systemd"
                assert host_samples(during) >= 2, "host counters stopped with the bus"

                restart_bus(um)
                t_up = time.monotonic()
                wait(lambda: service_sources(since(col, t_quiet + 3.0)) == before, 70,
                     "services back")
                back_after = time.monotonic() - t_up
                assert agent.proc.poll() is None
                time.sleep(1.5)
                assert agent.stop() == 0
        log = agent.log()
        events = [json.loads(l) for l in log.splitlines() if l.startswith("{")]
        names = [e["event"] for e in events]
        assert names.count("systemd_unreachable") == 1, "the outage is logged once"
        assert names.count("systemd_connected") == 2
        assert "recovered" in names  # the fault is cleared, so a later outage is logged again
        (stopped,) = [e for e in events if e["event"] == "stopped"]
        assert stopped.get("faults.systemd", 0) >= 1  # and counted (once per retry)
        assert "Traceback" not in log
        print(f"FIGURES outage {t_up - t_down:.1f} s, services back {back_after:.1f} s "
              "after the bus")
    finally:
        um.stop()
