"""markTraffic on every kind of connection a host has, end to end.

Real services under a real ``systemd --user`` (plugins/systemd/tests/conftest.py), a real
hostsflowd (pcap on lo and on a veth with 1 ms of delay each way, ``systemd {
markTraffic = on }``, ``tcp { }``), real traffic from tests/roles_traffic.py in every role:

* an HTTP/1.0 server (it closes first: its side ends in TIME_WAIT);
* a server whose clients close first;
* a service polling an outside HTTP server with short connections (a service as client);
* a service sending UDP queries, a fresh socket each (as a resolver does);
* two services talking over loopback (both ends are services);
* the outside parties, plain processes in no service (their ends must never be marked).

Each party logs the endpoints the kernel gave it, so every end of every sample is judged:
right (its own service, or nothing for a plain process), unmarked, or wrong (a service that
never used that end: must never happen).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

import pytest
from hostsflow.testing import UdpCollector, load_file_module

from . import marking_kit as mk
from .faults_kit import user_manager_class, why_not

AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                Path(__file__).with_name("agent_process.py")).AgentProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]

TRAFFIC_SECONDS = 12
SAMPLING = 3
ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "marking-roles.json"


def wait_ready(party: mk.Party, timeout: float = 10) -> None:
    """Until a TCP server accepts (a UDP server gets a moment to bind)."""
    proto, addr, port = party.endpoint
    if proto != 6:
        time.sleep(0.3)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((addr, port), 1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{party.name}: nothing listening on {addr}:{port}")
            time.sleep(0.1)


def free_port(addr: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def um():
    conftest = user_manager_class()
    why = why_not("ethtool") or conftest._why_not()
    if why:
        pytest.skip(why)
    manager = conftest.UserManager()
    try:
        manager.start()
        yield manager
    finally:
        manager.stop()


@pytest.fixture(scope="module")
def veth():
    v = mk.DelayedVeth()
    try:
        yield v
    finally:
        v.close()


def lo_parties(logs: Path) -> tuple[list[mk.Party], list[mk.Party]]:
    """(servers, clients) on loopback: every role, the outside world as plain processes."""
    # an address of 127/8 of this run's own: other loopback traffic on the host (other tests,
    # other agents' datagrams) never shares an endpoint with the parties
    lo = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    web, cc, out_http, s2s = (free_port(lo) for _ in range(4))
    out_udp = free_port(lo, kind=socket.SOCK_DGRAM)
    servers = [
        mk.server("web10", "http10-server", lo, web, service="mk-web10"),
        mk.server("ccsrv", "cc-server", lo, cc, service="mk-ccsrv"),
        mk.server("s2s-server", "http10-server", lo, s2s, service="mk-s2s-server"),
        mk.server("outside-http", "http10-server", lo, out_http),
        mk.server("outside-udp", "udp-server", lo, out_udp, proto="udp"),
    ]
    clients = [
        mk.client("poller", "http-client", lo, out_http, logs / "poller", 0.01, bind=lo,
                  service="mk-poller"),
        mk.client("resolver", "udp-client", lo, out_udp, logs / "resolver", 0.005, bind=lo,
                  service="mk-resolver"),
        mk.client("s2s-client", "http-client", lo, s2s, logs / "s2s-client", 0.01, bind=lo,
                  service="mk-s2s-client"),
        mk.client("web10-client", "http-client", lo, web, logs / "web10-client", 0.01, bind=lo),
        mk.client("ccsrv-client", "cc-client", lo, cc, logs / "ccsrv-client", 0.01, "3",
                  bind=lo),
    ]
    return servers, clients


def veth_parties(v: mk.DelayedVeth, logs: Path) -> tuple[list[tuple[mk.Party, str | None]],
                                                        list[tuple[mk.Party, str | None]]]:
    """(servers, clients) across the delayed veth, each with the namespace it runs in
    (None: the agent's): services on this host, the outside world in the peer namespace."""
    h, p = v.host_ip, v.peer_ip
    web, cc, out_http, out_udp = 21080, 21081, 21082, 21083
    servers = [
        (mk.server("v-web10", "http10-server", h, web, service="mk-v-web10"), None),
        (mk.server("v-ccsrv", "cc-server", h, cc, service="mk-v-ccsrv"), None),
        (mk.server("v-outside-http", "http10-server", p, out_http), v.ns),
        (mk.server("v-outside-udp", "udp-server", p, out_udp, proto="udp"), v.ns),
    ]
    clients = [
        (mk.client("v-poller", "http-client", p, out_http, logs / "v-poller", 0.01, bind=h,
                   service="mk-v-poller"), None),
        (mk.client("v-resolver", "udp-client", p, out_udp, logs / "v-resolver", 0.005, bind=h,
                   service="mk-v-resolver"), None),
        (mk.client("v-web10-client", "http-client", h, web, logs / "v-web10-client", 0.01,
                   bind=p), v.ns),
        (mk.client("v-ccsrv-client", "cc-client", h, cc, logs / "v-ccsrv-client", 0.01, "3",
                   bind=p), v.ns),
        # long sessions (100 requests, 20 ms apart): their connections are alive when sampled
        (mk.client("v-long-client", "cc-client", h, cc, logs / "v-long-client", 0.02, "100",
                   bind=p), v.ns),
    ]
    return servers, clients


def agent_config(um, collector: UdpCollector, veth: mk.DelayedVeth) -> str:
    return f"""
sflow {{
  collector {{ ip = 127.0.0.1 udpport = {collector.port} }}
  sampling = {SAMPLING}
  polling = 2
  pcap {{ dev = lo sampling = {SAMPLING} }}
  pcap {{ dev = {veth.host_dev} sampling = {SAMPLING} }}
  systemd {{
    slice = app.slice
    bus = "{um.address}"
    markTraffic = on
  }}
  tcp {{ }}
}}
"""


@pytest.fixture(scope="module")
def run(um, veth, tmp_path_factory):
    """All roles at once for TRAFFIC_SECONDS under one agent; what the collector got."""
    work = tmp_path_factory.mktemp("roles")
    logs = work / "logs"
    logs.mkdir()
    os.chmod(work, 0o755)
    scenario = mk.Scenario(um)
    lo_servers, lo_clients = lo_parties(logs)
    v_servers, v_clients = veth_parties(veth, logs)
    with UdpCollector() as collector:
        agent = AgentProcess(agent_config(um, collector, veth), work)
        try:
            for party, ns in [(p, None) for p in lo_servers] + v_servers:
                wait_ready(scenario.start(party, ns))
            # the agent has the servers' services as data sources before the clients start
            wanted = {p.service for p, _ in [(p, None) for p in lo_servers] + v_servers
                      if p.service}
            collector.wait_for(
                lambda dgs: wanted <= set(mk.services_by_index(dgs).values()), timeout=20)
            t0 = time.time()
            for party in lo_clients:
                scenario.start(party)
            for party, ns in v_clients:
                scenario.start(party, ns)
            time.sleep(TRAFFIC_SECONDS)
        finally:
            scenario.stop()
            time.sleep(1.5)  # the last samples leave the agent
            status = agent.status_path
            code = agent.stop()
            log = agent.log()
        raw = [d for t, d in collector.timed() if t >= t0]
    assert code == 0, log[-3000:]
    truth = mk.Truth(scenario.parties)
    judged, names = mk.judge(raw, truth)
    try:
        health = json.loads(Path(status).read_text())
    except (OSError, ValueError):
        health = {}
    return {"judged": judged, "names": names, "parties": scenario.parties, "health": health,
            "log": log}


def test_every_role_is_marked_on_its_side(run):
    figs = mk.figures(run["judged"], run["parties"])
    table = {name: {"service": f.service, "ends": f.ends, "right": f.right,
                    "unmarked": f.unmarked, "wrong": f.wrong, "right_pct": round(f.right_pct, 1)}
             for name, f in figs.items()}
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps({"sampling": SAMPLING, "parties": table,
                                    "health": run["health"]}, indent=1))
    print()
    for name, row in table.items():
        print(f"  {name:16} {str(row['service']):16} ends {row['ends']:6} right "
              f"{row['right_pct']:5.1f} %  unmarked {row['unmarked']:5}  wrong {row['wrong']}")
    thin = {n: r["ends"] for n, r in table.items() if r["ends"] < 100}
    assert not thin, f"too few samples to judge: {thin}"
    low = {n: r["right_pct"] for n, r in table.items() if r["right_pct"] < 95.0}
    assert not low, f"marked right on less than 95 % of their ends: {low}"


def test_no_sample_names_a_wrong_service(run):
    bad = mk.wrong_marks(run["judged"])
    assert not bad, f"{len(bad)} samples name a service at an end it does not own: {bad[:3]}"


def test_tcp_info_only_from_the_connection_itself(run):
    """Over the delayed veth every TCP sample has one local end, so the tcp module looks it
    up: a listening socket's tcp_info (mss 0, pmtu 0, rtt 0) must never be sent, every
    measured RTT includes the path's 2 ms (0 is a connection still in SYN_SENT, which has
    measured none), and samples of connections that are certainly alive (data in long
    sessions) carry the record."""
    records = [j.tcp_info for j in run["judged"] if j.tcp_info is not None]
    assert records, "no extended_tcp_info at all"
    zeros = [r for r in records if r.snd_mss == 0 or r.pmtu == 0]
    assert not zeros, f"{len(zeros)} of {len(records)} records are a listener's zeros: {zeros[:2]}"
    fast = [r for r in records if 0 < r.rtt < 1500]
    assert not fast, f"{len(fast)} records with an RTT below the path's 2 ms: {fast[:2]}"
    alive = [j for j in run["judged"] if j.protocol == 6 and j.payload > 0
             and not j.tcp_flags & 0x05  # no FIN, no RST
             and any(s.party == "v-long-client" for s in j.sides)]
    with_info = sum(1 for j in alive if j.tcp_info is not None)
    assert len(alive) >= 100, f"only {len(alive)} samples of long sessions"
    assert with_info >= 0.9 * len(alive), \
        f"extended_tcp_info on {with_info} of {len(alive)} samples of live connections"


def test_status_counts_every_sample_by_outcome(run):
    """``hostsflow status`` (the status file) says, per reason, how many samples were marked
    and how many were not; the reasons add up to every sample marking saw."""
    counters = run["health"]["counters"]
    outcomes = {k.removeprefix("systemd.marking."): v for k, v in counters.items()
                if k.startswith("systemd.marking.")}
    print("\n  outcomes:", outcomes)
    assert outcomes["marked"] > 0
    assert set(outcomes) <= {"marked", *(f"unmarked.{r}" for r in (
        "lookup_failed", "changed_hands", "socket_gone", "not_service", "not_local",
        "not_tcp_udp"))}
    # the final status is written after every module's last counts
    assert sum(outcomes.values()) == counters["flow_samples_taken"]
    assert counters.get("sockets.log_found", 0) > 0, "the owner log named the short connections"
