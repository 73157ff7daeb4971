"""``hostsflowd --test``: one polling round of every configured module, printed decoded.

Run on the seed's own config (with the interface that exists here) and on every installed
module's sample config (``hostsflow config``'s block): each module must be configured as the
file says and show what it does in the output or the log; a module that fails makes the exit
status non-zero."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from hostsflow import hookimpl
from hostsflow.bootstrap import declare, load
from hostsflow.cli import _run_test
from hostsflow.config.registry import ConfigRegistry
from hostsflow.config.schema import render_config
from hostsflow.modules import ModuleHost, installed_modules

SEED = ("sflow { collector { ip = 10.0.0.70 } pcap { dev = lo } systemd { markTraffic = on } "
        "tcp { } }\n")
FAILURES = {"module_error", "module_disabled", "module_quarantined"}


def run_test_mode(tmp_path: Path, text: str) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """(exit status, decoded datagrams, log events) of ``hostsflowd --test --json``."""
    conf = tmp_path / "hsflowd.conf"
    conf.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "hostsflow", "-f", str(conf), "--test",
                           "--json"], capture_output=True, text=True, timeout=60)
    datagrams = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    return proc.returncode, datagrams, events


def records(datagrams: list[dict[str, Any]], kind: str) -> list[tuple[str, str]]:
    """(data source, record name) of every record in the ``kind`` samples printed."""
    return [(s["source"], r["record"]) for d in datagrams for s in d["samples"]
            if s["type"] == kind for r in s["records"]]


def event_names(events: list[dict[str, Any]], module: str | None = None) -> set[str]:
    return {e["event"] for e in events if module is None or e.get("module") == module}


class LoopbackTcp:
    """A TCP connection on loopback that sends small segments until closed, so the pcap tap
    on lo samples TCP packets of a live socket while the agent runs (and the tcp and systemd
    modules' per-sample hooks run on them)."""

    def __init__(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(listener.getsockname())
        self.server, _ = listener.accept()
        listener.close()
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._drain, daemon=True)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        while not self.stop.is_set():
            try:
                self.client.send(b"x")
            except OSError:
                return

    def _drain(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.server.recv(65536):
                    return
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.client.close()
        for t in self.threads:
            t.join(2)
        self.server.close()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (pcap, netlink)")


@needs_root
@pytest.mark.root
@pytest.mark.slow
def test_the_seed_config_runs_every_module(tmp_path: Path) -> None:
    traffic = LoopbackTcp()
    try:
        status, datagrams, events = run_test_mode(tmp_path, SEED)
    finally:
        traffic.close()
    assert status == 0, events
    assert not event_names(events) & FAILURES, events
    started = next(e for e in events if e["event"] == "started")
    assert {"pcap", "systemd", "tcp"} <= set(started["modules"])
    assert "tap_opened" in event_names(events, "pcap")
    flows = records(datagrams, "flow")
    # pcap: packets sampled on lo, which tcp and systemd (markTraffic) saw without an error;
    # both ends on lo are local, so no lookup qualifies and neither adds a record
    assert ("0:1", "sampled_header") in flows
    counters = records(datagrams, "counters")
    assert ("0:1", "port_name") in counters  # lo is polled because pcap taps it
    assert ("2:1", "virt_node") in counters  # systemd: the host as a hypervisor of services


def sample_configs() -> dict[str, str]:
    """Every installed module's sample config, as ``hostsflow config`` renders it."""
    mods = installed_modules()
    host = ModuleHost()
    registry = ConfigRegistry({n: i.distribution for n, i in mods.items()})
    for info in mods.values():
        host.load(info)
    declare(host, registry)
    return {name: render_config(registry, [name]) for name in sorted(registry.specs)}


#: what each in-repo module shows in a --test run of its sample config: one of the log events
#: it emits once configured, or a counter record it adds
SHOWS: dict[str, tuple[str, set[str]]] = {
    "pcap": ("event", {"tap_opened"}),
    "nflog": ("event", {"nflog_bound"}),
    "ulog": ("event", {"ulog_bound", "ulog_unavailable"}),  # no ULOG in Linux >= 3.17
    "systemd": ("counter", {"virt_node"}),
    "tcp": ("nothing", set()),  # it adds records to flow samples; its sample has no capture
    "user": ("event", {"user_configured"}),
}


@needs_root
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(SHOWS))
def test_every_module_sample_config_runs(tmp_path: Path, module: str) -> None:
    configs = sample_configs()
    if module not in configs:
        pytest.skip(f"module {module} is not installed")
    status, datagrams, events = run_test_mode(tmp_path, configs[module])
    assert status == 0, events
    assert not event_names(events) & FAILURES, events
    started = next(e for e in events if e["event"] == "started")
    assert module in started["modules"]
    assert ("2:1", "host_descr") in records(datagrams, "counters")  # the core's own poller
    kind, what = SHOWS[module]
    if kind == "event":
        assert what & event_names(events, module), events
    elif kind == "counter":
        assert what & {name for _, name in records(datagrams, "counters")}


def test_every_installed_module_has_an_expectation() -> None:
    assert set(sample_configs()) <= set(SHOWS)


class Broken:
    @hookimpl
    def sflow_configure(self, agent: Any) -> None:
        raise RuntimeError("cannot configure")


def test_a_failing_module_makes_the_exit_status_non_zero(capsys: Any) -> None:
    conf = "sflow { collector { ip = 127.0.0.1 } polling = 0 }"
    loaded = load(conf, "<t>", modules={"broken": Broken()}, host_poller=False)
    assert _run_test(loaded.config, loaded.host, 0.0, False) == 1
    assert "broken" in capsys.readouterr().err
    fine = load(conf, "<t>", modules={}, host_poller=False)
    assert _run_test(fine.config, fine.host, 0.0, False) == 0
