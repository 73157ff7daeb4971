"""The view's page in a real headless Chromium, fed with the test's own datagrams (no agent):
what a person reads when the numbers need explaining, and names chosen to break a page.

* the local agent's status file says it runs without the systemd module and only unmarked
  traffic arrives: the page says that the systemd module is missing (not "needs
  markTraffic");
* services named ``toString``, ``__proto__``, ``constructor`` and ``other``: each is a legend
  row of its own, with its own rate, apart from "other (no service)";
* "Break down other" lists the unmarked traffic by protocol, addresses and port;
* the chart's time axis has short labels (``12:05:30``) at least 60 px apart, not run together;
* the browser logs no error (the page runs under its Content-Security-Policy).

Screenshots are kept under ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from hostsflow.testing import ethernet_frame, load_file_module

from . import chromium
from .test_view_browser import ARTIFACTS, _why_not

kit = load_file_module("hostsflow_tests_collector_kit", Path(__file__).with_name("collector_kit.py"))

pytestmark = [pytest.mark.slow]

HOSTILE = {11: "toString", 12: "__proto__", 13: "constructor", 14: "other"}
UNMARKED = ethernet_frame(udp=("198.51.100.9", 5353, "192.0.2.1", 53), payload=bytes(200))


class Sender:
    """Sends ``datagrams()`` to the view five times a second until stopped."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.addr = addr
        self.marked = False
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def datagrams(self) -> list[bytes]:
        samples = [kit.host_sample("web1"), kit.flow(UNMARKED, 10)]
        if self.marked:
            for index, name in HOSTILE.items():
                frame = ethernet_frame(tcp=("198.51.100.7", 40000 + index, "192.0.2.1", 8000 + index),
                                       payload=bytes(100 * (index - 10)))
                samples += [kit.names_sample(index, name), kit.flow(frame, 10, dst=(3, index))]
        return [kit.datagram(samples)]

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                kit.send_all(self.addr, self.datagrams())
            except Exception as exc:  # noqa: BLE001 - shown by the test's assertion
                self.error = exc
                raise

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _poll(get, timeout: float, what: str):
    """The first true value of ``get()`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said}: not within {timeout} s (last: {value!r})")
        time.sleep(0.2)


def legend(driver) -> dict[str, dict[str, float]]:
    """The service rows of the legend (read as a list: a JavaScript object keyed by these
    names would itself be broken by ``__proto__``)."""
    rows = driver.execute_script("""
        return [...document.querySelectorAll('#legend li[data-service]')].map(li =>
          [li.dataset.service, parseFloat(li.dataset.bps), li.querySelector('.rate').textContent,
           li.querySelector('.name').textContent]);""")
    return {name: {"bps": bps, "text": text, "shown": shown} for name, bps, text, shown in rows}


def _texts(driver, selector: str) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent);", selector)


def test_page_explains_itself_and_keeps_hostile_names_apart(tmp_path, capsys, monkeypatch):
    why = _why_not(("aiohttp", "selenium"))
    if why:
        pytest.skip(why)
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"time": time.time(), "pid": os.getpid(), "counters": {},
                                  "modules": {"pcap": {"errors": 0}}}))
    view, sflow, base = kit.start_view(tmp_path, window=2, extra=["--status-file", str(status)])
    sender = Sender(sflow)
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium: never look for drivers on the network
    driver = chromium.browser(str(tmp_path / "profile"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(base)
        # only unmarked traffic, an agent without the systemd module: the page says so
        hints = _poll(lambda: [t for t in _texts(driver, "#notices p")
                               if "without the systemd module" in t], 20,
                      f"the no-systemd hint (shown: {_texts(driver, '#notices p')})")
        assert not any("needs systemd { markTraffic" in t for t in _texts(driver, "#notices p"))
        driver.save_screenshot(str(ARTIFACTS / "view-no-systemd-module.png"))

        # hostile names: one legend row each, apart from the unmarked traffic
        sender.marked = True
        rows = _poll(lambda: (lambda got: got if len(got) == len(HOSTILE) else None)(
            legend(driver)), 20, lambda: "a legend row for each hostile name "
            f"(sender: {sender.error!r}, legend: {legend(driver)}, snapshot: {kit.get_json(base + 'api/snapshot')})")
        assert set(rows) == set(HOSTILE.values()), rows
        assert all(r["shown"] == name and r["bps"] > 0 for name, r in rows.items()), rows
        by_rate = sorted(rows, key=lambda n: rows[n]["bps"])
        assert by_rate == [HOSTILE[i] for i in sorted(HOSTILE)]  # payload grows with the index
        other = driver.execute_script(
            "const li = document.querySelector('#legend li[data-kind=other]');"
            "return [li.querySelector('.name').textContent, parseFloat(li.dataset.bps)];")
        assert other[0] == "other (no service)" and other[1] > 0
        driver.save_screenshot(str(ARTIFACTS / "view-hostile-names.png"))

        # "other" broken down: the unmarked DNS traffic by protocol, addresses and port
        driver.find_element("id", "flow-other").click()
        cells = _poll(lambda: (lambda c: c if c and len(c[0]) == 6 else None)(
            driver.execute_script(
                "return [...document.querySelectorAll('#flows tbody tr')]"
                ".map(tr => [...tr.cells].map(td => td.textContent));")), 20,
            "the breakdown of other")
        assert cells[0][:4] == ["udp", "198.51.100.9", "192.0.2.1", "53"], cells
        driver.save_screenshot(str(ARTIFACTS / "view-other-broken-down.png"))
        # the chart's time axis: short labels, far enough apart not to run together
        axis = _poll(lambda: driver.execute_script("""
            const u = state.plot, a = u && u.axes[0];
            if (!a || !a._values || a._values.length < 2) return null;
            return a._splits.map((t, i) => [String(a._values[i]), u.valToPos(t, "x")]);"""),
            30, "two labelled ticks on the chart's time axis")
        labels = [text for text, _ in axis]
        assert all(len(t) <= 8 and t.count(":") in (1, 2) for t in labels), labels
        gaps = [b[1] - a[1] for a, b in zip(axis, axis[1:])]
        assert min(gaps) >= 60, (labels, gaps)  # a label is ~50 px wide
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors
        with capsys.disabled():
            print(f"\npage: hint {hints[0][:70]!r}...; legend {sorted(rows)}; other broken "
                  f"down: {cells[0]}; time axis {labels}, {min(gaps):.0f} px apart at least")
    finally:
        driver.quit()
        sender.stop()
        view.stop()
