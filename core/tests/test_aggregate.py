"""The traffic-by-service aggregator (``hostsflow view``/``top``) against known traffic.

Datagrams are made with the agent's own encoder from a generated packet stream: every packet
is sampled 1-in-N at random (as the kernel does), so the estimates must come back within a few
per cent of the traffic that was generated.  Also: service names from counter samples, the
sliding window, TCP connections, malformed input, the view's HTTP API and top's screen."""

from __future__ import annotations

import asyncio
import io
import json
import random
import socket
import urllib.request

import pytest
from hostsflow.samples import DataSource, FlowSample
from hostsflow.sflow.datagram import (
    DatagramHeader,
    encode_counter_sample,
    encode_datagram,
    encode_flow_sample,
)
from hostsflow.sflow.records import ExtendedEntities, ExtendedTcpInfo, HostDescr, SampledHeader
from hostsflow.testing import ethernet_frame
from hostsflow.tools.aggregate import Aggregator, format_rate

AGENT = "192.0.2.1"
HTTPD, SSHD, BIRD = 100001, 100002, 100003
HOST_IP, PEER_A, PEER_B = "192.0.2.1", "198.51.100.7", "198.51.100.8"


def counters(names: dict[int, str], host: str = "web1") -> list[bytes]:
    out = [encode_counter_sample(1, DataSource(2, 1), [HostDescr(hostname=host, uuid=bytes(16))])]
    for idx, name in names.items():
        out.append(encode_counter_sample(1, DataSource(3, idx),
                                         [HostDescr(hostname=name, uuid=bytes(16))]))
    return out


def datagram(samples: list[bytes], agent: str = AGENT, seq: int = 1) -> bytes:
    return encode_datagram(DatagramHeader(agent, 0, seq, 1000), samples)


def flow(frame: bytes, rate: int, src: tuple[int, int] = (0, 0), dst: tuple[int, int] = (0, 0),
         tcp: ExtendedTcpInfo | None = None) -> bytes:
    recs: list = [SampledHeader(1, len(frame) + 4, 4, frame[:128])]
    if src != (0, 0) or dst != (0, 0):
        recs.append(ExtendedEntities(src[0], src[1], dst[0], dst[1]))
    if tcp is not None:
        recs.append(tcp)
    return encode_flow_sample(1, FlowSample(DataSource(0, 2), rate, recs))


class Traffic:
    """A generated packet stream, sampled 1-in-``rate`` at random, with its true totals."""

    def __init__(self, rate: int, seed: int = 7) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.true_bytes: dict[str, int] = {}
        self.true_pkts: dict[str, int] = {}

    def packets(self, key: str, count: int, make: callable) -> list[bytes]:
        """``count`` packets from ``make(rng)`` -> (frame, flow kwargs); returns the samples."""
        out = []
        for _ in range(count):
            frame, kw = make(self.rng)
            self.true_bytes[key] = self.true_bytes.get(key, 0) + len(frame) + 4
            self.true_pkts[key] = self.true_pkts.get(key, 0) + 1
            if self.rng.randrange(self.rate) == 0:
                out.append(flow(frame, self.rate, **kw))
        return out


def to_httpd(rng: random.Random) -> tuple[bytes, dict]:
    size = rng.randrange(100, 1400)
    peer = rng.choice((PEER_A, PEER_B))
    return (ethernet_frame(tcp=(peer, 50000, HOST_IP, 80), payload=bytes(size)),
            {"dst": (3, HTTPD)})


def from_sshd(rng: random.Random) -> tuple[bytes, dict]:
    return (ethernet_frame(tcp=(HOST_IP, 22, PEER_A, 40000), payload=bytes(600)),
            {"src": (3, SSHD), "tcp": ExtendedTcpInfo(dir=2, rtt=1500, rttvar=200, min_rtt=900,
                                                       retrans=3, lost=1, snd_cwnd=10)})


def bird_to_httpd(rng: random.Random) -> tuple[bytes, dict]:
    return (ethernet_frame(udp=(HOST_IP, 179, HOST_IP, 8080), payload=bytes(300)),
            {"src": (3, BIRD), "dst": (3, HTTPD)})


def unmarked(rng: random.Random) -> tuple[bytes, dict]:
    return ethernet_frame(udp=(PEER_B, 53, HOST_IP, 33333), payload=bytes(80)), {}


def run_traffic(agg: Aggregator, seconds: int, per_second: dict[str, tuple[int, object]],
                rate: int, t0: float = 1_000_000.0) -> Traffic:
    """Feed ``seconds`` seconds of traffic, 4 datagrams a second, into ``agg``."""
    tr = Traffic(rate)
    for sec in range(seconds):
        for quarter in range(4):
            samples: list[bytes] = []
            for key, (pps, make) in per_second.items():
                samples += tr.packets(key, pps // 4, make)
            if quarter == 0:
                samples += counters({HTTPD: "httpd.service", SSHD: "sshd.service",
                                     BIRD: "bird.service"})
            for i in range(0, max(len(samples), 1), 50):
                agg.feed(datagram(samples[i:i + 50]), now=t0 + sec + quarter / 4 + 0.01)
    return tr


def test_estimates_match_known_traffic_per_service_and_direction():
    agg = Aggregator(window=5)
    streams = {"httpd_in": (4000, to_httpd), "sshd_out": (2000, from_sshd),
               "bird": (1000, bird_to_httpd), "other": (800, unmarked)}
    t0 = 1_000_000.0
    tr = run_traffic(agg, 12, streams, rate=8, t0=t0)
    snap = agg.snapshot(now=t0 + 12.0)
    assert snap.span == 5
    per_sec = {k: b * 8 / 12 for k, b in tr.true_bytes.items()}  # true bits/s
    pps = {k: n / 12 for k, n in tr.true_pkts.items()}

    def close(got: float, want: float, tol: float = 0.06) -> None:
        assert abs(got - want) <= tol * want, (got, want)

    httpd, sshd, bird = (snap.service(n) for n in ("httpd.service", "sshd.service",
                                                    "bird.service"))
    assert httpd and sshd and bird
    close(httpd.inbound.bps, per_sec["httpd_in"] + per_sec["bird"])  # bird -> httpd counts too
    close(httpd.inbound.pps, pps["httpd_in"] + pps["bird"])
    assert httpd.outbound.bps == 0
    close(sshd.outbound.bps, per_sec["sshd_out"])
    assert sshd.inbound.bps == 0
    close(bird.outbound.bps, per_sec["bird"])
    close(snap.other.bps, per_sec["other"], 0.1)
    close(snap.total.bps, sum(per_sec.values()))
    assert snap.services[0].label == "httpd.service"  # highest first

    protos = {(p.service, p.direction, p.key): p.bps for p in snap.protocols}
    close(protos[("httpd.service", "in", "tcp/80")], per_sec["httpd_in"])
    close(protos[("httpd.service", "in", "udp/8080")], per_sec["bird"])
    close(protos[("sshd.service", "out", "tcp/22")], per_sec["sshd_out"])
    remotes = {(p.service, p.direction, p.key): p.bps for p in snap.remotes}
    close(remotes[("httpd.service", "in", PEER_A)] + remotes[("httpd.service", "in", PEER_B)],
          per_sec["httpd_in"])
    assert 0.35 < remotes[("httpd.service", "in", PEER_A)] / per_sec["httpd_in"] < 0.65
    assert snap.agents == {AGENT: "web1"}


def test_every_packet_sampled_gives_exact_rates():
    agg = Aggregator(window=4)
    t0 = 5000.0
    frame = ethernet_frame(udp=(PEER_A, 1000, HOST_IP, 53), payload=bytes(458))  # 500 + 4 bytes
    assert len(frame) + 4 == 504
    for sec in range(6):
        agg.feed(datagram(counters({BIRD: "bird.service"}) +
                          [flow(frame, 1, dst=(3, BIRD))] * 100), now=t0 + sec + 0.5)
    snap = agg.snapshot(now=t0 + 6.0)
    bird = snap.service("bird.service")
    assert bird.inbound.bps == 100 * 504 * 8
    assert bird.inbound.pps == 100
    # sampling rate scales both
    agg2 = Aggregator(window=4)
    for sec in range(6):
        agg2.feed(datagram([flow(frame, 50, dst=(3, BIRD))] * 2), now=t0 + sec + 0.5)
    assert agg2.snapshot(now=t0 + 6.0).services[0].inbound.bps == 100 * 504 * 8


def test_names_arrive_later_window_slides_and_span_grows():
    agg = Aggregator(window=5)
    t0 = 100.0
    frame = ethernet_frame(tcp=(PEER_A, 5555, HOST_IP, 80), payload=bytes(996))
    for sec in range(3):
        agg.feed(datagram([flow(frame, 10, dst=(3, HTTPD))] * 10), now=t0 + sec + 0.1)
    snap = agg.snapshot(now=t0 + 3.0)
    assert [s.label for s in snap.services] == [f"3:{HTTPD}"]  # no counters yet
    assert snap.span == 3  # only 3 seconds heard so far: not diluted over 5
    assert snap.services[0].inbound.pps == pytest.approx(100)
    agg.feed(datagram(counters({HTTPD: "httpd.service"})), now=t0 + 3.2)
    snap = agg.snapshot(now=t0 + 4.0)
    assert [s.label for s in snap.services] == ["httpd.service"]
    assert snap.span == 4 and snap.services[0].inbound.pps == pytest.approx(75)
    # traffic stops: the window empties after 5 s, the service stays listed at zero
    assert agg.snapshot(now=t0 + 7.5).services[0].inbound.pps == pytest.approx(20)
    late = agg.snapshot(now=t0 + 9.0)
    assert late.services[0].label == "httpd.service" and late.services[0].bps == 0


def test_tcp_connections_keep_latest_state_and_rate():
    agg = Aggregator(window=2)
    t0 = 50.0
    frame = ethernet_frame(tcp=(HOST_IP, 22, PEER_A, 40000), payload=bytes(600))
    for sec in range(2):
        for i in range(5):
            info = ExtendedTcpInfo(dir=2, rtt=1000 + 100 * i, rttvar=50, min_rtt=800, retrans=i,
                                   lost=0, snd_cwnd=20)
            agg.feed(datagram([flow(frame, 4, src=(3, SSHD), tcp=info)]),
                     now=t0 + sec + i / 10)
    # a received-direction record: local is the destination
    back = ethernet_frame(tcp=(PEER_B, 40001, HOST_IP, 22))
    agg.feed(datagram([flow(back, 4, dst=(3, SSHD), tcp=ExtendedTcpInfo(dir=1, rtt=300))]),
             now=t0 + 1.5)
    agg.feed(datagram(counters({SSHD: "sshd.service"})), now=t0 + 1.6)
    snap = agg.snapshot(now=t0 + 2.0)
    c = snap.connections[0]
    assert (c.service, c.local, c.remote) == ("sshd.service", f"{HOST_IP}:22", f"{PEER_A}:40000")
    assert c.rtt_ms == pytest.approx(1.4) and c.min_rtt_ms == pytest.approx(0.8)
    assert c.retrans == 4 and c.snd_cwnd == 20
    assert c.bps == pytest.approx(10 * 4 * (len(frame) + 4) * 8 / 2)
    other = snap.connections[1]
    assert (other.local, other.remote) == (f"{HOST_IP}:22", f"{PEER_B}:40001")
    assert other.rtt_ms == pytest.approx(0.3)


def test_malformed_datagrams_are_counted_not_raised():
    agg = Aggregator()
    good = datagram(counters({SSHD: "sshd.service"}))
    assert agg.feed(b"\x00\x00\x00\x05garbage") is False
    assert agg.feed(good[:-3]) is False
    assert agg.feed(b"") is False
    assert agg.feed(good) is True
    s = agg.snapshot().stats
    assert (s.datagrams, s.malformed, s.counter_samples) == (4, 3, 2)


def test_two_agents_are_told_apart():
    agg = Aggregator(window=2)
    frame = ethernet_frame(udp=(PEER_A, 1, HOST_IP, 2), payload=bytes(100))
    for agent, name in (("192.0.2.1", "web.service"), ("192.0.2.2", "web.service")):
        agg.feed(datagram(counters({HTTPD: name}) + [flow(frame, 1, dst=(3, HTTPD))],
                          agent=agent), now=10.5)
    labels = sorted(s.label for s in agg.snapshot(now=12.0).services)
    assert labels == ["192.0.2.1/web.service", "192.0.2.2/web.service"]


def test_tick_records_history_points():
    agg = Aggregator(window=2, history=3)
    frame = ethernet_frame(udp=(PEER_A, 1, HOST_IP, 2), payload=bytes(100))
    for sec in range(5):
        agg.feed(datagram(counters({BIRD: "bird.service"}) + [flow(frame, 2, dst=(3, BIRD))]),
                 now=20 + sec + 0.5)
        agg.tick(now=20 + sec + 1.0)
    assert len(agg.history) == 3
    assert agg.history[-1]["bps"] == {"bird.service": pytest.approx(2 * 146 * 8)}
    json.dumps(agg.snapshot(now=25.0).to_dict())


def test_a_service_keeps_its_key_when_its_counters_name_it():
    """Flow samples before the service's counters: the chart point labels it ``3:INDEX``; once
    named, the label changes and the key (what the page colours it by) does not."""
    agg = Aggregator(window=2)
    frame = ethernet_frame(udp=(PEER_A, 1, HOST_IP, 2), payload=bytes(100))
    agg.feed(datagram([flow(frame, 2, dst=(3, BIRD))]), now=20.5)
    _, before = agg.tick(now=21.0)
    agg.feed(datagram(counters({BIRD: "bird.service"}) + [flow(frame, 2, dst=(3, BIRD))]),
             now=21.5)
    _, after = agg.tick(now=22.0)
    assert list(before["bps"]) == [f"3:{BIRD}"] and list(after["bps"]) == ["bird.service"]
    assert before["ids"][f"3:{BIRD}"] == after["ids"]["bird.service"]
    agent = agg.snapshot(now=22.0).services[0].agent
    assert after["ids"]["bird.service"] == f"{agent}#{BIRD}"


def test_format_rate():
    assert format_rate(0) == "0 b/s"
    assert format_rate(1500) == "1.5 kb/s"
    assert format_rate(12_340_000) == "12.3 Mb/s"
    assert format_rate(250e6) == "250 Mb/s"
    assert format_rate(2e9) == "2 Gb/s"


def test_top_screen_shows_services_and_connections():
    pytest.importorskip("rich")
    from hostsflow.tools.top import render
    from rich.console import Console

    agg = Aggregator(window=2)
    frame = ethernet_frame(tcp=(HOST_IP, 22, PEER_A, 40000), payload=bytes(600))
    info = ExtendedTcpInfo(dir=2, rtt=2500, min_rtt=1200, retrans=7, snd_cwnd=10)
    for sec in range(2):
        agg.feed(datagram(counters({SSHD: "sshd.service"}) +
                          [flow(frame, 100, src=(3, SSHD), tcp=info)]), now=30 + sec + 0.5)
    console = Console(file=io.StringIO(), width=140, record=True)
    console.print(render(agg.snapshot(now=32.0)))
    text = console.export_text()
    assert "sshd.service" in text and "tcp/22" in text
    rate = format_rate(100 * (len(frame) + 4) * 8)
    assert rate in text and "2.500" in text and f"{PEER_A}:40000" in text


def test_view_server_api_over_real_sockets():
    pytest.importorskip("aiohttp")
    from hostsflow.tools.view.server import ViewServer

    async def main() -> tuple[dict, str, str, bytes]:
        server = ViewServer(Aggregator(window=2), "127.0.0.1:0", "127.0.0.1:0")
        await server.start()
        try:
            frame = ethernet_frame(udp=(PEER_A, 1, HOST_IP, 2), payload=bytes(100))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(datagram(counters({BIRD: "bird.service"}) +
                                  [flow(frame, 10, dst=(3, BIRD))]), server.sflow_address)
                s.sendto(b"not sflow", server.sflow_address)
            await asyncio.sleep(0.2)
            loop = asyncio.get_running_loop()

            def get(path: str, n: int | None = None) -> bytes:
                with urllib.request.urlopen(server.url + path.lstrip("/"), timeout=5) as r:
                    return r.read(n) if n else r.read()

            snap = json.loads(await loop.run_in_executor(None, get, "/api/snapshot"))
            page = (await loop.run_in_executor(None, get, "/")).decode()
            lib = (await loop.run_in_executor(None, get,
                                              "/static/vendor/uplot/uPlot.iife.min.js", 200))
            events = await loop.run_in_executor(None, get, "/api/events", 40)
            return snap, page, lib.decode(), events
        finally:
            await server.stop()

    snap, page, lib, events = asyncio.run(main())
    assert [s["label"] for s in snap["services"]] == ["bird.service"]
    assert snap["stats"]["malformed"] == 1 and snap["stats"]["datagrams"] == 2
    assert "uPlot.iife.min.js" in page and 'id="legend"' in page
    assert "uPlot" in lib
    assert events.startswith(b"event: history\ndata: {")


def test_running_window_sums_equal_a_fresh_sum_at_every_snapshot():
    """The window's running totals (each second added once, taken off as it leaves) give what
    summing the window afresh gives: snapshots every quarter second, a silent gap, the clock
    of the snapshots stepping back once."""
    rng = random.Random(5)
    makers = (to_httpd, from_sshd, bird_to_httpd, unmarked)
    steady = Aggregator(window=4)
    t0 = 1_000_000.0
    fed: list[tuple[bytes, float]] = []
    times = [t0 + q / 4 for q in range(48) if not 20 <= q < 32]  # seconds 5-7 silent
    for when in times:
        samples = counters({HTTPD: "httpd.service", SSHD: "sshd.service"}) if when == t0 else []
        for _ in range(rng.randrange(1, 30)):
            frame, kw = rng.choice(makers)(rng)
            samples.append(flow(frame, rng.choice((1, 10)), **kw))
        fed.append((datagram(samples), when + 0.01))

    def view(snap):
        d = snap.to_dict()
        return {k: d[k] for k in ("services", "protocols", "remotes", "other", "total", "span")}

    checks = 0
    for i, (data, when) in enumerate(fed):
        steady.feed(data, now=when)
        at = when + 0.1 if i != 30 else when - 2.0  # once: a snapshot of an earlier time
        got = view(steady.snapshot(now=at))
        fresh = Aggregator(window=4)
        for d, w in fed[:i + 1]:
            fresh.feed(d, now=w)
        assert got == view(fresh.snapshot(now=at)), (i, at)
        checks += got["total"]["bps"] > 0
    assert checks > 20
