"""The packaged unit (packaging/hostsflowd.service) under a real systemd, PID 1 of a booted
Debian 12 container (tests/booted_kit.py), with pcap, tcp and ``systemd { markTraffic = on }``
enabled: the agent runs as nobody with exactly the capabilities those modules need (effective,
permitted and bounding), no_new_privs and its own seccomp filter (read from /proc/PID/status);
``systemctl reload hostsflowd`` works after the drop (the config is re-read, the agent stays
up); /run/hostsflow and its status file are nobody's, and ``hostsflow status`` there says
who wrote it."""

from __future__ import annotations

import socket
import time

import pytest
from hostsflow.privileges import capability_mask, capability_names, privileges_in
from hostsflow.testing import UdpCollector

from . import booted_kit as bk
from .test_least_privilege import EXPECTED

pytestmark = [pytest.mark.root, pytest.mark.slow]


def config(c: bk.Container, port: int, polling: int) -> str:
    return f"""sflow {{
  collector {{ ip = {c.host_ip} udpport = {port} }}
  polling = {polling}
  pcap {{ dev = host0 }}
  systemd {{ markTraffic = on }}
  tcp {{ }}
}}
"""


@pytest.fixture(scope="module")
def booted():
    why = bk.why_not()
    if why:
        pytest.skip(why)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def configure(c: bk.Container) -> None:
        c.write("/etc/hsflowd.conf", config(c, port, 2))
        c.enable("hostsflowd.service")

    with bk.booted("hsfo", configure) as c, UdpCollector(c.host_ip, port=port) as collector:
        yield c, collector, port


def main_pid(c: bk.Container) -> int:
    return int(c.systemctl("show", "-p", "MainPID", "--value", "hostsflowd").strip())


def status_of(c: bk.Container, pid: int) -> dict[str, int]:
    return privileges_in(c.exec("cat", f"/proc/{pid}/status"))


def wait_journal(c: bk.Container, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        journal = c.journal("hostsflowd")
        if text in journal:
            return journal
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in the journal: {journal[-3000:]}")
        time.sleep(0.3)


def test_packaged_unit_least_privilege_reload_and_status(booted):
    c, collector, port = booted
    wait_journal(c, "dropped_privileges")
    pid = main_pid(c)
    st = status_of(c, pid)
    print(f"\n  unit: /proc/{pid}/status uid {st['uid']} CapEff {st['CapEff']:016x} "
          f"CapBnd {st['CapBnd']:016x} NoNewPrivs {st['NoNewPrivs']} Seccomp {st['Seccomp']}: "
          f"{capability_names(st['CapEff'])}")
    # the container's own bounding set (nspawn's: no CAP_BPF) caps what the agent can keep
    want = capability_mask(EXPECTED) & status_of(c, 1)["CapBnd"]
    assert st["uid"] == 65534, st
    assert (st["CapEff"], st["CapPrm"], st["CapBnd"], st["CapAmb"]) == (want, want, want, 0), \
        capability_names(st["CapBnd"])
    assert st["NoNewPrivs"] == 1 and st["Seccomp"] == 2, st
    # Seccomp 2 is the unit's filter too: the agent's own is stacked on it
    assert '"seccomp": "on"' in c.journal("hostsflowd")

    # /run/hostsflow is nobody's, the status file is replaced there, and status reads it
    time.sleep(6)
    owners = c.exec("stat", "-c", "%U %n", "/run/hostsflow", "/run/hostsflow/status.json")
    assert owners.split() == ["nobody", "/run/hostsflow", "nobody",
                              "/run/hostsflow/status.json"], owners
    out = c.exec("hostsflow", "status")
    assert f"hostsflowd pid {pid}, running" in out and "config   /etc/hsflowd.conf" in out, out

    # reload after the drop: SIGHUP reaches the agent, the new config is in force
    c.write("/etc/hsflowd.conf", config(c, port, 1))
    c.systemctl("reload", "hostsflowd")
    wait_journal(c, "config_reloaded")
    assert c.systemctl("is-active", "hostsflowd", check=False).strip() == "active"
    assert main_pid(c) == pid
    journal = c.journal("hostsflowd")
    assert "Operation not permitted" not in journal and "reload_refused" not in journal
    assert "Traceback" not in journal and "module_error" not in journal, journal[-3000:]
    # polling = 1 now: host counter samples about every second
    t0 = time.time()
    time.sleep(5)
    host = [t for t, d in collector.timed() if t >= t0]
    assert len(host) >= 4, len(host)
