"""The fleet collector: edges joined from several agents' samples, the JSON API, the Prometheus
exposition and its series bound.

A generated three-tier fleet: a client with no agent -> nginx on ``web`` -> app.service on
``app`` -> postgresql on ``db``, each host's agent sampling its own interface 1-in-N at random
(as the kernel does), so a packet between two monitored hosts is sampled by both agents, each
marking only its own end.  The edges must name both ends, count each packet once and come back
within a few per cent of the generated traffic."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

import pytest
from hostsflow.samples import DataSource, FlowSample
from hostsflow.sflow.datagram import DatagramHeader, encode_datagram, encode_flow_sample
from hostsflow.testing import ethernet_frame, load_file_module
from hostsflow.tools.exposition import Registry
from hostsflow.tools.fleet import FleetAggregator

TESTS = Path(__file__).resolve().parents[2] / "tests"
kit = load_file_module("hostsflow_tests_fleet_kit", TESTS / "fleet_kit.py")
bounds = load_file_module("hostsflow_tests_sampling_bounds", TESTS / "sampling_bounds.py")
CLIENT, WEB, APP, DB, APPSVC = kit.CLIENT, kit.WEB, kit.APP, kit.DB, kit.APPSVC
T0 = 2_000_000.0


def feed_second(agg: FleetAggregator, fleet: kit.FleetTraffic, sec: int) -> None:
    """1000 requests on every tier; each agent's datagrams (counters every other second)."""
    fleet.requests(1000)
    for agent in fleet.agents:
        for dgram in fleet.datagrams(agent, with_counters=sec % 2 == 0, cpu_ms=1000 * sec):
            agg.feed(dgram, now=T0 + sec + 0.5)


def run(agents: tuple[str, ...] = (WEB, APP, DB), seconds: int = 8,
        agg: FleetAggregator | None = None) -> tuple[FleetAggregator, kit.FleetTraffic]:
    agg = agg if agg is not None else FleetAggregator(window=5)
    fleet = kit.FleetTraffic(agents)
    for sec in range(seconds):
        feed_second(agg, fleet, sec)
    return agg, fleet


def close(got: float, want: float, samples: int) -> bool:
    """Within the 99.9 % sFlow bound (3.29 sigma) of an estimate from ``samples`` samples."""
    return abs(got - want) <= bounds.sflow_bound_pct(samples, bounds.Z_999) / 100 * want


def test_three_tiers_joined_into_named_edges_counted_once():
    agg, fleet = run()
    snap = agg.edges.snapshot(now=T0 + 8.0)
    assert snap.span == 5
    want = {k: v * 8 / 8 for k, v in fleet.truth.items()}  # bits/s over the 8 s
    front = snap.edge(CLIENT, "nginx.service@web")
    middle = snap.edge("nginx.service@web", "app.service@app")
    back = snap.edge("app.service@app", "postgresql@15-main.service@db")
    assert front and middle and back, [(e.src.label, e.dst.label) for e in snap.edges]
    for edge, key in ((front, ("client", "nginx")), (middle, ("nginx", "app")),
                      (back, ("app", "db"))):
        # counted once (from the server's side), not twice
        assert edge.side == "server"
        assert close(edge.bps, want[key], edge.samples), (edge, want[key])
        assert edge.connections > 100 and edge.samples > 500
        assert edge.rtt_ms == pytest.approx(0.8) and edge.retrans == 2
    assert middle.observers == ["app"] and middle.port == 8080 and middle.protocol == "tcp"
    assert len(snap.edges) == 3
    labels = {n.label for n in snap.nodes}
    assert labels == {CLIENT, "nginx.service@web", "app.service@app",
                      "postgresql@15-main.service@db"}
    doc = json.loads(json.dumps(snap.to_dict()))
    assert {(e["src"], e["dst"]) for e in doc["edges"]} == {
        (CLIENT, "nginx.service@web"), ("nginx.service@web", "app.service@app"),
        ("app.service@app", "postgresql@15-main.service@db")}


def test_an_end_nobody_reports_stays_an_address_and_is_counted_from_the_client():
    agg, fleet = run(agents=(WEB, APP))  # db's agent is not heard
    snap = agg.edges.snapshot(now=T0 + 8.0)
    back = snap.edge("app.service@app", f"{DB}:5432")
    assert back is not None, [(e.src.label, e.dst.label) for e in snap.edges]
    assert back.side == "client" and back.observers == ["app"]
    assert close(back.bps, fleet.truth[("app", "db")] * 8 / 8, back.samples)
    # and web's end alone: app's agent missing, the middle edge counted at web, app an address
    agg2, fleet2 = run(agents=(WEB,))
    mid = agg2.edges.snapshot(now=T0 + 8.0).edge("nginx.service@web", f"{APP}:8080")
    assert mid is not None and mid.side == "client"
    assert close(mid.bps, fleet2.truth[("nginx", "app")] * 8 / 8, mid.samples)


def test_server_end_told_by_syn_and_remembered_over_port_order():
    agg = FleetAggregator(window=2)
    # a server on a high port (50000) called from a low client port (1000): only the SYN
    # tells; later packets follow what it taught
    syn = bytearray(ethernet_frame(tcp=(CLIENT, 1000, WEB, 50000)))
    syn[14 + 20 + 13] = 0x02
    data = ethernet_frame(tcp=(WEB, 50000, CLIENT, 1000), payload=bytes(100))
    dgram = encode_datagram(DatagramHeader(WEB, 0, 1, 1), [
        kit.flow_sample(bytes(syn), 10, dst=kit.NGINX), kit.flow_sample(data, 10, src=kit.NGINX)]
        + kit.counters(WEB))
    agg.feed(dgram, now=T0 + 0.5)
    snap = agg.edges.snapshot(now=T0 + 1.0)
    assert [(e.src.label, e.dst.label, e.port) for e in snap.edges] == [
        (CLIENT, "nginx.service@web", 50000)]


def test_unplaced_and_portless_samples_are_counted_not_raised():
    agg = FleetAggregator(window=2)
    transit = ethernet_frame(udp=("192.0.2.5", 40000, "192.0.2.6", 53), payload=bytes(10))
    agg.feed(encode_datagram(DatagramHeader(WEB, 0, 1, 1), [
        kit.flow_sample(transit, 10), encode_flow_sample(1, FlowSample(DataSource(0, 2), 5, []))]),
        now=T0 + 0.2)
    assert agg.feed(b"\0\0\0\5garbage", now=T0 + 0.3) is False
    st = agg.edges.stats
    assert (st.samples, st.unplaced, st.portless, st.placed) == (2, 1, 1, 0)
    assert "hostsflow_malformed_datagrams_total 1" in agg.metrics.render()


def test_a_marked_sample_without_ports_still_counts_as_its_service_traffic():
    agg = FleetAggregator(window=2)
    portless = ethernet_frame(udp=(WEB, 0, "192.0.2.6", 53), payload=bytes(100))
    agg.feed(encode_datagram(DatagramHeader(WEB, 0, 1, 1), [
        kit.flow_sample(portless, 10, src=2), kit.flow_sample(portless, 10)]), now=T0 + 0.2)
    assert (agg.edges.stats.portless, agg.edges.stats.placed) == (2, 0)
    m = parse_metrics(agg.metrics.render())
    out = [v for (n, labels), v in m.items()
           if n == "hostsflow_service_bytes_total" and ("direction", "out") in labels]
    assert out == [10 * (len(portless) + 4)]
    assert not [k for k in m if k[0] == "hostsflow_service_bytes_total" and
                ("direction", "in") in k[1]]


def test_per_second_tables_hold_nothing_the_garbage_collector_walks():
    """The collector's per-second tables (the aggregator's, the flow history's, the joiner's
    and the metrics' pending sums) keep plain ints and tuples of ints and strings: a full
    collection walking 300 seconds of [bytes, packets] lists and 20,000 cells a second paused
    the view for ~0.4 s, long enough for the kernel to drop datagrams."""
    import gc

    agg, _ = run(seconds=4)
    agg.snapshot(now=T0 + 4.0)  # the window's running sums too
    # a collection untracks a tuple that holds only untracked items: nested tuples (a port
    # pair holds a cell key, which holds a flow and an agent) need one collection a level
    for _ in range(4):
        gc.collect()
    tables: list[dict] = [sec.flows for sec in agg.flows._seconds]
    for b in [*agg.seconds(), agg._sums.sums]:
        tables += [b.service, b.proto, b.remote, b.conn]
    for sec in agg.edges.seconds():
        tables += [sec.cells, sec.tcp, dict.fromkeys(sec.named), dict.fromkeys(sec.ports)]
    tables += [agg.metrics._traffic, agg.metrics._edges]
    entries = [(k, v) for t in tables for k, v in t.items()]
    assert len(entries) > 1000 and any(agg.edges.seconds()[-1].tcp.values())
    walked = [(k, v) for k, v in entries if gc.is_tracked(k) or gc.is_tracked(v)]
    assert not walked, walked[:3]


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-z_]+)(?:\{(.*)\})? (\S+)', line)
        assert m, line
        labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def test_metrics_traffic_edges_service_counters_and_client_info():
    agg, fleet = run()
    text = agg.metrics.render()
    m = parse_metrics(text)
    assert "# TYPE hostsflow_edge_bytes_total counter" in text

    def total(name: str, **want: str) -> float:
        return sum(v for (n, labels), v in m.items()
                   if n == name and set(want.items()) <= labels)

    # the fleet's rate of an edge: the server side's series; the client side's estimates too
    for key, dst in ((("nginx", "app"), "app.service@app"),
                     (("app", "db"), "postgresql@15-main.service@db")):
        got = total("hostsflow_edge_bytes_total", side="server", dst=dst)
        n = int(total("hostsflow_edge_samples_total", side="server", dst=dst))
        assert close(got, fleet.truth[key], n), (key, got, n)
        seen_by_client = total("hostsflow_edge_bytes_total", side="client", src=kit.LABELS[key][0])
        n = int(total("hostsflow_edge_samples_total", side="client", src=kit.LABELS[key][0]))
        assert close(seen_by_client, fleet.truth[key], n), (key, seen_by_client, n)
    assert total("hostsflow_client_info", src="app.service@app", dst_addr=DB,
                 dst_port="5432") == 1
    nginx_in = total("hostsflow_service_bytes_total", host="web", service="nginx.service",
                     direction="in")
    assert nginx_in > 0
    # 8 seconds, counters every other second at 1000 ms/s: the last raw value, 6 s
    assert total("hostsflow_service_cpu_seconds_total", host="db",
                 service="postgresql@15-main.service") == pytest.approx(6.0)
    assert total("hostsflow_service_memory_bytes", host="app") == 50_000_000 + APPSVC
    assert total("hostsflow_datagrams_total") == agg.stats.datagrams


def test_series_bound_folds_the_rest_into_one_counted_series():
    reg = Registry(max_series=3)
    fam = reg.counter("x_total", "test", ("k",))
    g = reg.gauge("y", "test", ("k",))
    for i in range(10):
        fam.inc((f"v{i}",), 2)
        fam.inc((f"v{i}",), 1)
        g.set((f"v{i}",), 10)
        g.set((f"v{i}",), i)
    m = parse_metrics(reg.render())
    kept = {dict(k[1])["k"]: v for k, v in m.items() if k[0] == "x_total"}
    assert kept == {"v0": 3, "v1": 3, "v2": 3, "_overflow": 21}  # 7 label sets x 3
    assert {dict(k[1])["k"]: v for k, v in m.items() if k[0] == "y"} == {
        "v0": 0, "v1": 1, "v2": 2, "_overflow": sum(range(3, 10))}
    assert m[("hostsflow_metrics_folded_series", frozenset({("family", "x_total")}))] == 7
    assert m[("hostsflow_metrics_series_limit", frozenset())] == 3
    with pytest.raises(ValueError):
        Registry(0)
    # the collector's own bound, from the command line's option
    agg, _ = run(agg=FleetAggregator(window=5, max_series=2), seconds=3)
    edges = [k for k in parse_metrics(agg.metrics.render()) if k[0] == "hostsflow_edge_bytes_total"]
    assert len(edges) == 3 and any(("src", "_overflow") in k[1] for k in edges)


def test_label_values_are_escaped():
    reg = Registry(10)
    reg.gauge("z", "t", ("k",)).set(('a"b\\c\nd',), 1)
    assert 'z{k="a\\"b\\\\c\\nd"} 1' in reg.render()


def test_view_serves_edges_metrics_and_the_map_page_over_real_sockets():
    from hostsflow.tools.view.server import ViewServer

    agg, _ = run(seconds=3)

    async def main() -> tuple[dict, str, str, str]:
        server = ViewServer(agg, "127.0.0.1:0", "127.0.0.1:0")
        await server.start()
        try:
            loop = asyncio.get_running_loop()

            def get(path: str) -> tuple[str, str]:
                with urllib.request.urlopen(server.url + path, timeout=5) as r:
                    return r.headers["Content-Type"], r.read().decode()

            _, edges = await loop.run_in_executor(None, get, "api/edges")
            ctype, metrics = await loop.run_in_executor(None, get, "metrics")
            _, page = await loop.run_in_executor(None, get, "map")
            return json.loads(edges), ctype, metrics, page
        finally:
            await server.stop()

    edges, ctype, metrics, page = asyncio.run(main())
    assert {"nodes", "edges", "window", "span", "stats"} <= set(edges)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert "hostsflow_edge_bytes_total{" in metrics
    assert "map" in page.lower() and "<svg" in page.lower()
