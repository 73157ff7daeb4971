"""Several collectors, one Prometheus: the fleet's picture from ``/metrics``.

Two real ``hostsflow view`` processes on loopback, each fed by part of a generated three-tier
fleet (tests/fleet_kit.py: web and app's agents to one, db's agent to the other), send their
datagrams over UDP, paced 20 times a second for a steady rate; Debian's real ``prometheus``
(started here on loopback, its own config and storage in a temporary directory) scrapes both
every second.  Then PromQL:

* the edge app.service@app -> postgresql@15-main.service@db is sampled by app's agent (first
  collector) and by db's (second): counted at its server's side, whose collector knows the
  client only by address, and named by joining ``hostsflow_client_info`` from the other
  collector.  Its rate must agree with the generated traffic within the sFlow bound (99.9 %,
  3.29 sigma: two estimates are asserted one by one) of the samples behind it
  (``hostsflow_edge_samples_total``);
* nginx.service@web -> app.service@app, both ends on the first collector, likewise;
* without the side rule, summing both sides would count the edge twice (so the rule is what
  makes the picture right, and the test can fail).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from hostsflow.testing import load_file_module

HERE = Path(__file__).resolve().parent
kit = load_file_module("hostsflow_tests_fleet_kit", HERE / "fleet_kit.py")
bounds = load_file_module("hostsflow_tests_sampling_bounds", HERE / "sampling_bounds.py")

SECONDS = 30  # of steady traffic
RANGE = 20  # seconds PromQL's rate() looks back over
REQUESTS = 400  # a second per tier, in 20 batches
BATCHES = 20


@pytest.fixture
def rig(tmp_path):
    if not os.path.exists(kit.PROMETHEUS):
        pytest.skip(f"{kit.PROMETHEUS} is missing (apt-get install prometheus)")
    started: list[Any] = []
    try:
        front = kit.Collector(tmp_path, "front")  # web and app's agents
        started.append(front)
        back = kit.Collector(tmp_path, "back")  # db's agent
        started.append(back)
        prom = kit.Prometheus(tmp_path / "prom",
                              [f"127.0.0.1:{front.http}", f"127.0.0.1:{back.http}"])
        started.append(prom)
        kit.wait_for("both collectors scraped", lambda: prom.targets_up() == 2, 20)
        yield front, back, prom
    except BaseException:
        for thing in started:
            print(f"--- {thing.log}\n{thing.log.read_text(errors='replace')[-2000:]}")
        raise
    finally:
        for thing in reversed(started):
            thing.stop()
        shutil.rmtree(tmp_path / "prom", ignore_errors=True)


def test_one_prometheus_scraping_two_collectors_gives_the_fleets_edges(rig, capsys):
    front, back, prom = rig
    seed = random.randrange(1 << 30)  # each run its own draws (printed, to replay one)
    fleet = kit.FleetTraffic((kit.WEB, kit.APP, kit.DB), rate=10, seed=seed)
    route = {kit.WEB: front.sflow, kit.APP: front.sflow, kit.DB: back.sflow}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.time()
    batch = 0
    steady: dict[tuple[str, str], int] = {}
    try:
        while batch < SECONDS * BATCHES:
            time.sleep(max(0.0, t0 + batch / BATCHES - time.time()))
            if batch == (SECONDS - RANGE - 2) * BATCHES:
                steady = dict(fleet.truth)  # the truth when the query's range begins
                t_start = time.time()
            fleet.requests(REQUESTS // BATCHES)
            for agent, port in route.items():
                for dgram in fleet.datagrams(agent, with_counters=batch % (2 * BATCHES) == 0):
                    sock.sendto(dgram, ("127.0.0.1", port))
            batch += 1
    finally:
        sock.close()
    t_end = time.time()
    sent_rate = {k: (fleet.truth[k] - steady[k]) / (t_end - t_start) for k in fleet.truth}
    time.sleep(2.5)  # the last scrapes
    at = t_end  # the query's range ends as the traffic does
    rates = prom.query(kit.FLEET_EDGE_QUERY.format(what="bytes", range=RANGE), at)
    samples = prom.query(
        kit.FLEET_EDGE_QUERY.format(what="samples", range=RANGE) + f" * {RANGE}", at)
    naive = prom.query(f"sum by (dst) (rate(hostsflow_edge_bytes_total[{RANGE}s]))", at)
    shown = {}
    checks = {}
    for key in (("nginx", "app"), ("app", "db")):
        src, dst = kit.LABELS[key]
        got = kit.value(rates, src=src, dst=dst)
        n = kit.value(samples, src=src, dst=dst)
        shown[key] = (got, n)
        checks[key] = (n, got, sent_rate[key])
    with capsys.disabled():
        print(f"\n  seed {seed}")
        for key, (got, n) in shown.items():
            err = 100 * (got / sent_rate[key] - 1)
            print(f"  PromQL {kit.LABELS[key][0]} -> {kit.LABELS[key][1]}: {got:.0f} B/s, sent "
                  f"{sent_rate[key]:.0f} B/s, error {err:+.2f}% (bound "
                  f"{bounds.sflow_bound_pct(int(n), bounds.Z_999):.2f}% for {n:.0f} samples)")
    for key, (n, got, want) in checks.items():
        bound = bounds.sflow_bound_pct(int(n), bounds.Z_999)
        # a rate over a range of scrapes adds up to a batch's worth of error on each end
        slack = 100 * 2 / (RANGE * BATCHES)
        assert n > 1000, (key, n)
        assert abs(100 * (got / want - 1)) <= bound + slack, (key, got, want, bound)
    # both sides summed would count the edge twice: the side label is what makes it right
    twice = (kit.value(naive, dst="postgresql@15-main.service@db")
             + kit.value(naive, dst=f"{kit.DB}:5432"))
    assert twice > 1.6 * sent_rate[("app", "db")], (twice, naive)
    # the per-service counters reach Prometheus too
    mem = prom.query('hostsflow_service_memory_bytes{service="postgresql@15-main.service"}', at)
    assert kit.value(mem, host="db") == 50_000_000 + kit.PG
