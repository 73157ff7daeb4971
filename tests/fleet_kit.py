"""A generated three-tier fleet for the collector's tests: a client with no agent -> nginx on
``web`` -> app.service on ``app`` -> postgresql on ``db``.

Each host's agent samples its own interface 1-in-``rate`` at random (as the kernel does), so a
packet between two monitored hosts is sampled by both agents, each marking (extended_entities)
only its own end, as hostsflow's ``systemd { markTraffic = on }`` does.  ``truth`` holds the
bytes (frame + 4 for the FCS) generated on each edge.  Loaded by the tests with
``hostsflow.testing.load_file_module``."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from hostsflow.samples import DataSource
from hostsflow.sflow.datagram import DatagramHeader, encode_datagram
from hostsflow.sflow.records import ExtendedEntities, ExtendedTcpInfo, VirtCpu, VirtMemory
from hostsflow.testing import (
    encoded_flow_sample,
    encoded_names_sample,
    end_process,
    ethernet_frame,
)

CLIENT, WEB, APP, DB = "10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4"
NGINX, APPSVC, PG = 101, 202, 303
HOSTS = {WEB: ("web", {NGINX: "nginx.service"}), APP: ("app", {APPSVC: "app.service"}),
         DB: ("db", {PG: "postgresql@15-main.service"})}
#: edge -> (client end, server end, request bytes, response bytes); an end is (ip, port, svc),
#: a client port 0 is drawn from the ephemeral range for each request
TIERS = {
    ("client", "nginx"): ((CLIENT, 0, 0), (WEB, 80, NGINX), 80, 900),
    ("nginx", "app"): ((WEB, 0, NGINX), (APP, 8080, APPSVC), 120, 700),
    ("app", "db"): ((APP, 0, APPSVC), (DB, 5432, PG), 60, 300),
}
LABELS = {("client", "nginx"): (CLIENT, "nginx.service@web"),
          ("nginx", "app"): ("nginx.service@web", "app.service@app"),
          ("app", "db"): ("app.service@app", "postgresql@15-main.service@db")}


def counters(agent: str, cpu_ms: int = 0) -> list[bytes]:
    """The counter samples of ``agent``: host_descr of the host and each service, with
    virt_cpu (``cpu_ms``) and virt_memory (50 MB + the service's index)."""
    host, services = HOSTS[agent]
    out = [encoded_names_sample(DataSource(2, 1), host)]
    for idx, name in services.items():
        out.append(encoded_names_sample(DataSource(3, idx), name, VirtCpu(cpuTime=cpu_ms),
                                        VirtMemory(memory=50_000_000 + idx, maxMemory=0)))
    return out


def flow_sample(frame: bytes, rate: int, src: int = 0, dst: int = 0, rtt: int = 0) -> bytes:
    """A flow sample of ``frame``: services ``src``/``dst`` marked, extended_tcp_info (received)
    with ``rtt`` microseconds and 2 retransmissions when ``rtt`` is set."""
    recs: list = []
    if src or dst:
        recs.append(ExtendedEntities(3 if src else 0, src, 3 if dst else 0, dst))
    if rtt:
        recs.append(ExtendedTcpInfo(dir=1, rtt=rtt, retrans=2, snd_mss=1448, pmtu=1500))
    return encoded_flow_sample(frame, rate, *recs)


class FleetTraffic:
    """Generated requests on every tier, sampled by the agents in ``agents``."""

    def __init__(self, agents: tuple[str, ...] = (WEB, APP, DB), rate: int = 10,
                 seed: int = 3) -> None:
        self.agents = agents
        self.rate = rate
        self.rng = random.Random(seed)
        self.pending: dict[str, list[bytes]] = {a: [] for a in agents}
        self.truth: dict[tuple[str, str], int] = {k: 0 for k in TIERS}
        self.seq = 0

    def _packet(self, edge: tuple[str, str], client: tuple[str, int, int],
                server: tuple[str, int, int], size: int, to_server: bool) -> None:
        (cip, cport, csvc), (sip, sport, ssvc) = client, server
        tcp = (cip, cport, sip, sport) if to_server else (sip, sport, cip, cport)
        frame = ethernet_frame(tcp=tcp, payload=bytes(size))
        self.truth[edge] += len(frame) + 4
        for host, svc in ((cip, csvc), (sip, ssvc)):
            if host in self.pending and self.rng.randrange(self.rate) == 0:
                src, dst = (svc, 0) if (host == cip) == to_server else (0, svc)
                self.pending[host].append(flow_sample(frame, self.rate, src, dst,
                                                      rtt=800 if svc else 0))

    def requests(self, count: int) -> None:
        """``count`` requests (and their responses) on every tier."""
        for _ in range(count):
            for edge, ((cip, _p, csvc), server, req, resp) in TIERS.items():
                client = (cip, self.rng.randrange(32768, 61000), csvc)
                self._packet(edge, client, server, req, True)
                self._packet(edge, client, server, resp, False)

    def datagrams(self, agent: str, with_counters: bool = False, cpu_ms: int = 0,
                  per_datagram: int = 40) -> list[bytes]:
        """The datagrams ``agent`` sends for its samples so far (and its counters)."""
        samples = self.pending[agent]
        self.pending[agent] = []
        if with_counters:
            samples = counters(agent, cpu_ms) + samples
        out = []
        for i in range(0, len(samples), per_datagram):
            self.seq += 1
            out.append(encode_datagram(DatagramHeader(agent, 0, self.seq, 1000),
                                       samples[i:i + per_datagram]))
        return out


# ---------------------------------------------------------------- collectors and Prometheus

PROMETHEUS = "/usr/bin/prometheus"
VIEW_MAIN = "import sys; from hostsflow.cli import tools_main; sys.exit(tools_main())"
#: the fleet's rate of every edge whose client end some collector's agents name: the server
#: side's series (format with what= bytes, packets or samples and range= seconds), the client
#: named by joining hostsflow_client_info on the flow's addresses
FLEET_EDGE_QUERY = """
sum by (src, dst) (
  sum by (proto, src_addr, dst_addr, dst_port, dst)
    (rate(hostsflow_edge_{what}_total{{side="server"}}[{range}s]))
  * on (proto, src_addr, dst_addr, dst_port) group_left(src)
  max by (proto, src_addr, dst_addr, dst_port, src) (hostsflow_client_info)
)"""


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
            if got:
                return got
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class Collector:
    """A ``hostsflow view`` process: sFlow on ``sflow_host`` and the page on loopback, ports
    of its own."""

    def __init__(self, tmp: Path, name: str, sflow_host: str = "127.0.0.1",
                 window: int = 5) -> None:
        self.sflow, self.http = free_port(socket.SOCK_DGRAM, sflow_host), free_port()
        self.log = tmp / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", VIEW_MAIN, "view",
             "--listen-sflow", f"{sflow_host}:{self.sflow}",
             "--http", f"127.0.0.1:{self.http}", "--window", str(window)],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.http}/"
        wait_for(f"collector {name}", lambda: get(self.base + "metrics"), 15)

    def stop(self) -> None:
        end_process(self.proc)


class Prometheus:
    """Debian's prometheus on a loopback port, scraping ``targets`` every second."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        conf = tmp / "prometheus.yml"
        conf.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "hostsflow", "scrape_interval": "1s",
                                "static_configs": [{"targets": targets}]}]}))
        self.log = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}/"
        wait_for("prometheus ready", lambda: get(self.base + "-/ready"), 30)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        args = {"query": promql}
        if at is not None:
            args["time"] = f"{at:.3f}"
        doc = json.loads(get(self.base + "api/v1/query?" + urllib.parse.urlencode(args)))
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def targets_up(self) -> int:
        return sum(float(r["value"][1]) for r in self.query("up"))

    def stop(self) -> None:
        end_process(self.proc, timeout=15)


def value(result: list[dict[str, Any]], **labels: str) -> float:
    """The value of the one row of a PromQL ``result`` with ``labels``."""
    rows = [r for r in result if all(r["metric"].get(k) == v for k, v in labels.items())]
    assert len(rows) == 1, (labels, result)
    return float(rows[0]["value"][1])
