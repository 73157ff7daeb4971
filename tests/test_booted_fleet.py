"""The service dependency map of a fleet of booted systemd hosts.

Three Debian 12 containers booted from one cached tree (systemd as PID 1, overlays on it and on
one layer with hostsflow installed by scripts/install-agent.sh), on one bridge, each running
hostsflowd as the packaged unit with ``pcap``, ``tcp`` and ``systemd { markTraffic = on }``:

* ``web``: nginx proxying every request to app;
* ``app``: app.service, a small HTTP service under systemd that queries the database on every
  request (psycopg2, one connection);
* ``db``: PostgreSQL (Debian's postgresql@15-main.service).

From this host, paced HTTP requests to web.  Every agent sends to one collector here (a real
``hostsflow view``), and to one of two more: web and app's agents to ``front``, db's to
``back``; a real Prometheus scrapes those two.  The truth: every frame of each tier counted on
the bridge port of its server (tests/frame_counter.py), per second.

The collector must show the edges ``<this host> -> nginx.service@web -> app.service@app ->
postgresql@15-main.service@db`` in its JSON API and on its map page read in headless Chromium
(screenshot kept in tests/artifacts/fleet-map.png), each edge's rate within the sFlow bound
(99.9 %, 3.29 sigma) of what was sent over the same seconds; and a PromQL query joining the two
collectors' series must give the fleet's rate of app.service@app ->
postgresql@15-main.service@db within that bound too.  On the traffic page the agent picker
offers all three agents (and all), and with db's picked the legend holds only db's services
(tests/artifacts/fleet-traffic-db.png).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hostsflow.testing import load_file_module

from . import booted_kit as bk
from . import chromium
from .frame_counter import FrameCounter

HERE = Path(__file__).resolve().parent
kit = load_file_module("hostsflow_tests_fleet_kit", HERE / "fleet_kit.py")
bounds = load_file_module("hostsflow_tests_sampling_bounds", HERE / "sampling_bounds.py")

pytestmark = [pytest.mark.root, pytest.mark.slow]

SAMPLING = 4
WINDOW = 10  # seconds the collector averages over
REQUESTS_PER_S = 80
CLIENTS = 4
ARTIFACTS = HERE / "artifacts"
PG_UNIT = "postgresql@15-main.service"
EDGES = (("client", "nginx.service@web", 80), ("nginx.service@web", "app.service@app", 8080),
         ("app.service@app", f"{PG_UNIT}@db", 5432))

APP_PY = '''
import http.server, sys, time
import psycopg2

DB = sys.argv[1]


def connect():
    while True:
        try:
            conn = psycopg2.connect(host=DB, user="postgres", dbname="postgres",
                                    connect_timeout=3)
            conn.autocommit = True
            return conn
        except psycopg2.OperationalError:
            time.sleep(0.5)


conn = connect()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global conn
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT repeat('x', 1500), now()")
                row = cur.fetchone()
        except psycopg2.Error:
            conn = connect()
            self.send_error(503)
            return
        body = (row[0] + " " + str(row[1])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
'''


def agent_config(c: bk.Container, ports: tuple[int, ...]) -> str:
    collectors = "\n".join(f"  collector {{ ip = {c.host_ip} udpport = {p} }}" for p in ports)
    return f"""sflow {{
{collectors}
  polling = 5
  pcap {{ dev = host0 sampling = {SAMPLING} }}
  systemd {{ markTraffic = on }}
  tcp {{ }}
}}
"""


def set_up_roles(web: bk.Container, app: bk.Container, db: bk.Container) -> None:
    web.write("/etc/nginx/sites-enabled/default", f"""server {{
  listen 80 default_server;
  location / {{ proxy_pass http://{app.ip}:8080; }}
}}
""")
    app.write("/opt/app/app.py", APP_PY)
    app.write("/etc/systemd/system/app.service", f"""[Unit]
Description=the fleet test's app: HTTP on 8080, one database query a request
After=network-online.target
[Service]
ExecStart=/usr/bin/python3 /opt/app/app.py {db.ip}
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
""")
    app.enable("app.service")
    db.write("/etc/postgresql/15/main/conf.d/fleet.conf", "listen_addresses = '*'\n")
    hba = db.root / "etc/postgresql/15/main/pg_hba.conf"
    hba.write_text(hba.read_text() + f"host all all {db.subnet}.0/24 trust\n")
    for c, keep in ((web, {"nginx"}), (app, set()), (db, {"postgresql"})):
        c.mask("bird.service", "ssh.service")
        if "nginx" not in keep:
            c.mask("nginx.service")
        if "postgresql" not in keep:
            c.mask("postgresql.service", PG_UNIT)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    why = bk.why_not()
    if why:
        pytest.skip(why)
    why = chromium.why_not() or (None if os.path.exists(kit.PROMETHEUS) else
                                 f"{kit.PROMETHEUS} is missing (apt-get install prometheus)")
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("fleet")
    figures: dict[str, float] = {}
    bridge = bk.Bridge("fleetbr")
    layer: Path | None = None
    hosts: list[bk.Container] = []
    procs: list[Any] = []
    try:
        t0 = time.monotonic()
        layer = bk.hostsflow_layer(bk.PACKAGES_DB, "fleetl")
        figures["rootfs_and_install_s"] = round(time.monotonic() - t0, 1)
        main = kit.Collector(tmp, "main", bridge.host_ip, window=WINDOW)
        procs.append(main)
        front = kit.Collector(tmp, "front", bridge.host_ip, window=WINDOW)
        procs.append(front)
        back = kit.Collector(tmp, "back", bridge.host_ip, window=WINDOW)
        procs.append(back)
        for prefix, name in (("fleetw", "web"), ("fleeta", "app"), ("fleetd", "db")):
            hosts.append(bk.Container(prefix, bk.PACKAGES_DB, [layer], bridge, name).prepare())
        web, app, db = hosts
        set_up_roles(web, app, db)
        for c, part in ((web, front), (app, front), (db, back)):
            c.write("/etc/hsflowd.conf", agent_config(c, (main.sflow, part.sflow)))
            c.enable("hostsflowd.service")
        t0 = time.monotonic()
        for c in (db, app, web):
            c.boot(timeout=120)
        figures["boot_s"] = round(time.monotonic() - t0, 1)
        prom = kit.Prometheus(tmp / "prom", [f"127.0.0.1:{front.http}",
                                             f"127.0.0.1:{back.http}"])
        procs.append(prom)
        yield web, app, db, main, prom, figures
    except BaseException:
        for p in procs:
            print(f"--- {p.log}\n{p.log.read_text(errors='replace')[-2000:]}")
        for c in hosts:
            if c.proc is not None:
                print(f"--- {c.hostname}: hostsflowd\n{c.journal('hostsflowd')[-2000:]}")
        raise
    finally:
        for p in reversed(procs):
            p.stop()
        for c in hosts:
            c.stop()
        bridge.remove()
        if layer is not None:
            shutil.rmtree(layer, ignore_errors=True)


class Clients:
    """``CLIENTS`` keep-alive HTTP clients here, paced to ``REQUESTS_PER_S`` GETs in all."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.stop = threading.Event()
        self.ok = 0
        self.failed = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        every = CLIENTS / REQUESTS_PER_S
        due = time.monotonic()
        conn = http.client.HTTPConnection(self.host, 80, timeout=5)
        while not self.stop.is_set():
            due += every
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
            except (OSError, http.client.HTTPException):
                self.failed += 1
                conn.close()
                conn = http.client.HTTPConnection(self.host, 80, timeout=5)
        conn.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def page_edges(driver: Any) -> dict[tuple[str, str], float]:
    rows = driver.execute_script("""
        return [...document.querySelectorAll('#edges tbody tr')].map(
          tr => [tr.dataset.src, tr.dataset.dst, parseFloat(tr.dataset.bps)]);""")
    return {(s, d): b for s, d, b in rows}


def pick_agent(driver: Any, base: str, address: str) -> dict[str, Any]:
    """The traffic page's agent picker: its options, then the legend with ``address`` picked."""
    from selenium.webdriver.support.ui import Select

    driver.get(base)
    kit.wait_for("the agent picker", lambda: driver.execute_script(
        "return !document.getElementById('agent-box').hidden && "
        "document.querySelectorAll('#agent-pick option').length >= 4"), 20)
    options = driver.execute_script(
        "return [...document.querySelectorAll('#agent-pick option')].map(o => o.value)")
    every = driver.execute_script(
        "return [...document.querySelectorAll('#legend li[data-service]')]"
        ".map(li => li.dataset.service)")
    Select(driver.find_element("id", "agent-pick")).select_by_value(address)
    picked = driver.execute_script(
        "return [...document.querySelectorAll('#legend li.svc:not(.other)')]"
        ".map(li => li.dataset.service)")
    return {"options": options, "all": every, "picked": picked}


def within(got_bps: float, want_bytes_s: float, samples: int, slack_pct: float = 3.0) -> tuple[
        bool, float, float]:
    """(inside, error %, bound %): the 99.9 % sFlow bound of ``samples`` plus ``slack_pct`` for
    the agent's export lag (the collector files a sample under the second it arrives)."""
    bound = bounds.sflow_bound_pct(samples, bounds.Z_999) + slack_pct
    err = 100 * (got_bps / 8 / want_bytes_s - 1) if want_bytes_s else math.inf
    return abs(err) <= bound, round(err, 2), round(bound, 2)


def test_fleet_map_of_three_booted_tiers(fleet, monkeypatch, capsys):
    web, app, db, main, prom, figures = fleet
    monkeypatch.setenv("SE_OFFLINE", "true")
    for c in (web, app, db):
        assert c.systemctl("is-active", "hostsflowd", check=False).strip() == "active", \
            c.journal("hostsflowd")[-3000:]
    kit.wait_for("app answers through nginx", lambda: _get_ok(web.ip), 60)
    kit.wait_for("both collectors scraped", lambda: prom.targets_up() == 2, 30)
    client_label = web.host_ip  # this host, which runs no agent: an address
    edges_wanted = [(client_label if s == "client" else s, d, p) for s, d, p in EDGES]
    counters = {name: FrameCounter(c.host_dev, {port: name}) for c, name, port in (
        (web, "front", 80), (app, "middle", 8080), (db, "back", 5432))}
    names = dict(zip(("front", "middle", "back"), edges_wanted))
    profile = tempfile.mkdtemp(prefix="hostsflow-fleet-chromium-")
    driver = None
    clients = None
    try:
        for fc in counters.values():
            fc.counting = True
        clients = Clients(web.ip)
        driver = chromium.browser(profile, "1300,900")
        driver.get(main.base + "map")
        # the window full of steady traffic, the agents' counters (names) in, Prometheus's range
        time.sleep(WINDOW + 8)
        snap = json.loads(kit.get(main.base + "api/edges"))
        shown = page_edges(driver)
        at = time.time()
        prom_rate = prom.query(kit.FLEET_EDGE_QUERY.format(what="bytes", range=WINDOW), at)
        prom_samples = prom.query(
            kit.FLEET_EDGE_QUERY.format(what="samples", range=WINDOW) + f" * {WINDOW}", at)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "fleet-map.png"
        driver.save_screenshot(str(shot))
        picker = pick_agent(driver, main.base, db.ip)
        driver.save_screenshot(str(ARTIFACTS / "fleet-traffic-db.png"))
        end = int(snap["time"])
        start = end - int(snap["span"])
        truth = {n: fc.rate(n, start, end) for n, fc in counters.items()}
        prom_truth = {n: fc.rate(n, int(at) - WINDOW, int(at)) for n, fc in counters.items()}
    finally:
        if clients is not None:
            clients.close()
        for fc in counters.values():
            fc.close()
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

    by_pair = {(e["src"], e["dst"]): e for e in snap["edges"]}
    report: dict[str, Any] = {"figures": figures, "sampling": SAMPLING, "window": WINDOW,
                              "requests": {"ok": clients.ok, "failed": clients.failed},
                              "edges": {}, "screenshot": str(shot)}
    failures = []
    for key, (src, dst, port) in names.items():
        edge = by_pair.get((src, dst))
        row: dict[str, Any] = {"src": src, "dst": dst, "sent_Bps": round(truth[key], 1)}
        if edge is None:
            failures.append(f"no edge {src} -> {dst} in the API: {sorted(by_pair)}")
        else:
            ok, err, bound = within(edge["bps"], truth[key], edge["samples"])
            row.update(api_bps=edge["bps"], samples=edge["samples"], error_pct=err,
                       bound_pct=bound, connections=edge["connections"], rtt_ms=edge["rtt_ms"],
                       side=edge["side"], observers=edge["observers"], port=edge["port"])
            if not ok:
                failures.append(f"API {src} -> {dst}: error {err}% outside {bound}%")
            if edge["port"] != port:
                failures.append(f"{src} -> {dst} on port {edge['port']}, not {port}")
            page = shown.get((src, dst))
            row["page_bps"] = page
            if page is None:
                failures.append(f"no edge {src} -> {dst} on the map page: {sorted(shown)}")
            else:
                ok, err, bound = within(page, truth[key], edge["samples"], slack_pct=5.0)
                row["page_error_pct"] = err
                if not ok:
                    failures.append(f"page {src} -> {dst}: error {err}% outside {bound}%")
        report["edges"][key] = row
    report["picker"] = picker
    if sorted(picker["options"]) != sorted(["", web.ip, app.ip, db.ip]):
        failures.append(f"agent picker offers {picker['options']}")
    if not picker["picked"] or any(not p.startswith(db.ip + "/") for p in picker["picked"]) \
            or f"{db.ip}/{PG_UNIT}" not in picker["picked"]:
        failures.append(f"db picked, the legend shows {picker['picked']}")
    if not any(p.startswith(web.ip + "/") for p in picker["all"]):
        failures.append(f"all agents, the legend shows {picker['all']}")
    src, dst, _port = names["back"]
    try:
        got = kit.value(prom_rate, src=src, dst=dst) * 8
        n = int(kit.value(prom_samples, src=src, dst=dst))
        ok, err, bound = within(got, prom_truth["back"], n)
        report["promql"] = {"edge": f"{src} -> {dst}", "bps": round(got, 1), "samples": n,
                            "sent_Bps": round(prom_truth["back"], 1), "error_pct": err,
                            "bound_pct": bound}
        if not ok:
            failures.append(f"PromQL {src} -> {dst}: error {err}% outside {bound}%")
    except AssertionError as exc:
        failures.append(f"PromQL: no single row for {src} -> {dst}: {exc}")
    for c in (web, app, db):  # each agent's health counters (the tcp module's among them)
        (ARTIFACTS / f"booted-fleet-status-{c.hostname}.txt").write_text(
            c.exec("/usr/local/bin/hostsflow", "status", check=False) + "\n" +
            c.journal("hostsflowd")[-6000:])
    (ARTIFACTS / "booted-fleet.json").write_text(json.dumps(report, indent=1))
    with capsys.disabled():
        print(f"\n  steps: {figures}; requests {clients.ok} ok, {clients.failed} failed")
        for key, row in report["edges"].items():
            print(f"  {key}: {row}")
        print(f"  promql: {report.get('promql')}\n  screenshot: {shot}")
    assert clients.ok > 0.8 * REQUESTS_PER_S * (WINDOW + 8), (clients.ok, clients.failed)
    assert not failures, failures
    middle = report["edges"]["middle"]
    assert middle["side"] == "server" and middle["observers"] == ["app"], middle
    # nginx opens a connection to app for every request (a few ms long): many connections;
    # whether the agent's socket lookup still finds one open (and so has an RTT) is a race
    assert middle["connections"] > 10, middle
    # the client's keep-alive connections and app's one database connection live on: their
    # samples carry extended_tcp_info, so those edges have an RTT
    for key in ("front", "back"):
        assert report["edges"][key]["rtt_ms"], report["edges"][key]


def _get_ok(host: str) -> bool:
    conn = http.client.HTTPConnection(host, 80, timeout=3)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status == 200 and b"xxxx" in resp.read()
    except http.client.HTTPException:
        return False
    finally:
        conn.close()
