"""The quick start's demo under a real systemd: a Debian 12 container with systemd as PID 1
(tests/booted_kit.py), hostsflow installed as a host installs it, the demo started inside with
the quick start's defaults (``hostsflow-demo``, ``hfdemo0``, 10.213.77.0/29), the agent run as
packaging/hostsflowd.service on the config scripts/quickstart-config.sh writes there for
``--view``, and a real ``hostsflow view`` on this host.  The view's chart names the demo's two
services (``hostsflow-demo-web.service``, ``hostsflow-demo-poller.service``, transient units
made by ``systemd-run``), its TCP table has their connections with an RTT, and the demo's
``stop`` leaves no unit, process, device or namespace in the container."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from . import booted_kit as bk
from . import chromium
from . import demo_kit as dk
from .collector_kit import start_view

pytestmark = [pytest.mark.root, pytest.mark.slow]

SRC = "/usr/src/hostsflow/scripts"
WEB, POLLER = "hostsflow-demo-web.service", "hostsflow-demo-poller.service"
SHOT = Path(__file__).resolve().parent / "artifacts" / "view-quickstart-demo.png"


@pytest.fixture
def booted():
    why = bk.why_not()
    if why:
        pytest.skip(why)
    with bk.booted("hsfq") as c:
        yield c


def leftovers_inside(c: bk.Container) -> list[str]:
    out = []
    if c.exec("ip", "netns", "list").strip():
        out.append("namespaces: " + c.exec("ip", "netns", "list").strip())
    if c.exec("ip", "link", "show", "hfdemo0", check=False).strip():
        out.append("device hfdemo0")
    units = c.systemctl("list-units", "--all", "--plain", "--no-legend", "hostsflow-demo*")
    if units.strip():
        out.append("units: " + units.strip())
    procs = c.exec("pgrep", "-af", "demo_traffic.py role", check=False)
    if procs.strip():
        out.append("processes: " + procs.strip())
    if c.exec("ls", "/run", check=False).split().count("hostsflow-demo"):
        out.append("/run/hostsflow-demo")
    return out


def page_shows_the_demo(base: str) -> None:
    """The page, as a person sees it: both services in the chart's legend, the TCP table with
    rows of both (a screenshot under tests/artifacts/)."""
    driver = chromium.browser(tempfile.mkdtemp(prefix="hostsflow-demo-chromium-"))
    try:
        driver.get(base)
        time.sleep(7)  # a window of points in the chart
        text = driver.execute_script("return document.body.innerText")
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#connections tbody tr')]"
            ".map(tr => [...tr.cells].map(td => td.textContent));")
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOT))
    finally:
        driver.quit()
    print(f"  page: {len(rows)} TCP rows, e.g. {rows[:3]}; screenshot {SHOT}")
    assert WEB in text and POLLER in text, text[:2000]
    assert any(WEB in " ".join(r) for r in rows) and any(POLLER in " ".join(r) for r in rows), \
        rows


def test_demo_services_are_named_in_the_view(booted, tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium: never look for drivers on the network
    c = booted
    names = dk.DemoNames("hostsflow-demo", "hfdemo0", "10.213.77.0/29")
    assert not c.subnet.startswith("10.213.77"), "the container's own network is the demo's"
    # the agent's status file is in the container: none here to read for hints
    view, sflow, base = start_view(tmp_path, window=5, sflow_ip=c.host_ip,
                                   extra=["--status-file", str(tmp_path / "no-status.json")])
    try:
        out = c.exec("python3", f"{SRC}/demo_traffic.py", "start", "--duration", "150")
        assert f"as systemd units {WEB}, {POLLER}" in out, out
        conf = dk.quickstart_config(
            "view", f"{sflow[0]}:{sflow[1]}", "hfdemo0",
            run=lambda args: c.exec("bash", f"{SRC}/quickstart-config.sh", *args[1:]))
        assert "pcap { dev = hfdemo0 sampling = 10 }" in conf, conf
        c.write("/etc/hsflowd.conf", conf)
        c.systemctl("start", "hostsflowd")

        def named():
            seen = dk.demo_seen(base, names)
            by_service = {c["service"] for c in seen.connections if c["rtt_ms"] > 0}
            ok = ({WEB, POLLER} <= set(seen.services) and {WEB, POLLER} <= by_service
                  and seen.short_get_bps and seen.download_bps and seen.udp_bps
                  and seen.poller_bps)
            return seen if ok else None

        seen = dk.wait_for(named, 60, "both services in the chart and TCP table, each kind of flow")
        rtts = seen.rtts_ms()
        rows = {}
        for conn in seen.connections:
            rows[conn["service"]] = rows.get(conn["service"], 0) + 1
        print(f"\n  booted: services {seen.services}; TCP table rows by service {rows}, RTT ms "
              f"{rtts[0]:.3f}..{rtts[-1]:.3f}; flows bit/s: short GETs "
              f"{seen.short_get_bps:.0f}, downloads {seen.download_bps:.0f}, UDP "
              f"{seen.udp_bps:.0f}, poller {seen.poller_bps:.0f}")
        by_name = {g["key"][0]: round(g["bps"]) for g in dk.flows(base, "service")}
        print(f"  flows bit/s by service: {by_name}")
        assert by_name.get(WEB, 0) > 0 and by_name.get(POLLER, 0) > 0, by_name
        if chromium.why_not() is None:
            page_shows_the_demo(base)
        else:
            print(f"  no page check: {chromium.why_not()}")
        journal = c.journal("hostsflowd")
        assert "Traceback" not in journal and "module_error" not in journal, journal[-3000:]
    finally:
        stopped = c.exec("python3", f"{SRC}/demo_traffic.py", "stop", check=False)
        view.stop()
    assert WEB in stopped and POLLER in stopped and "namespace hostsflow-demo" in stopped, stopped
    assert leftovers_inside(c) == []
