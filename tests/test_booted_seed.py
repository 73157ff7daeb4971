"""The seed's scenario on a booted systemd: a Debian 12 container with systemd as PID 1, nginx,
ssh and bird running, hostsflow installed as a host installs it (scripts/install-agent.sh) and
run as packaging/hostsflowd.service with the seed's config:

    sflow {
      collector { ip = <this host's end of the veth> }
      pcap { dev = host0 }
      systemd { markTraffic = on }
      tcp { }
    }

(plus ``sampling`` on the tap, ``polling`` and the collector's port, so a test of seconds has
samples to judge).  From this host, across the container's veth, real traffic as hosts have it:
HTTP/1.0 GETs (nginx closes first), keep-alive sessions the client closes, long sessions,
ssh connections that read the banner, BGP connections to bird.  A decoder here reads what the
agent sends; every service must be a data source, every port's samples marked on the right
side, no sample marked with a wrong service, no listener's zeros as tcp_info, and
extended_tcp_info on the samples of connections that are certainly alive.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from hostsflow.sflow.datagram import decode_datagram
from hostsflow.sflow.records import ExtendedEntities, ExtendedTcpInfo
from hostsflow.testing import UdpCollector

from . import booted_kit as bk
from .marking_kit import l4_payload, services_by_index, tcp_udp_samples

pytestmark = [pytest.mark.root, pytest.mark.slow]

SAMPLING = 4
TRAFFIC_SECONDS = 20
ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "booted-seed.json"
PORTS = {80: "nginx", 22: "ssh", 179: "bird"}
MID = 100_000  # the long sessions' file


def seed_config(c: bk.Container, port: int) -> str:
    return f"""sflow {{
  collector {{ ip = {c.host_ip} udpport = {port} }}
  polling = 5
  pcap {{ dev = host0 sampling = {SAMPLING} }}
  systemd {{ markTraffic = on }}
  tcp {{ }}
}}
"""


@pytest.fixture(scope="module")
def seed_host():
    why = bk.why_not()
    if why:
        pytest.skip(why)
    c = bk.Container()
    figures: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        c.prepare()
        figures["rootfs_s"] = round(time.monotonic() - t0, 1)
        figures["install_s"] = round(c.install_hostsflow(), 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))  # a free port number (the collector's, after boot)
            port = probe.getsockname()[1]
        c.write("/etc/hsflowd.conf", seed_config(c, port))
        c.write("/etc/bird/bird.conf", f"""router id {c.ip};
protocol device {{ }}
protocol bgp host {{
  local {c.ip} as 65001;
  neighbor {c.host_ip} as 65002;
  passive on;
  ipv4 {{ import none; export none; }};
}}
""")
        (c.root / "var/www/html/mid.bin").write_bytes(b"m" * MID)
        c.enable("hostsflowd.service")
        figures["boot_s"] = round(c.boot(), 1)
        # the collector listens only now (the veth is made at boot): the agent's first
        # datagrams may have found nobody, which it survives
        with UdpCollector(c.host_ip, port=port) as collector:
            yield c, collector, figures
    finally:
        c.stop()


# ---------------------------------------------------------------- traffic from this host


def http(c: bk.Container, request: bytes, stop: threading.Event, mine: set[int],
         requests: int = 1) -> None:
    """GETs on new connections: ``requests`` per connection, the client closing after the last
    (HTTP/1.0: nginx closes first)."""
    while not stop.is_set():
        try:
            with socket.create_connection((c.ip, 80), timeout=5) as s:
                mine.add(s.getsockname()[1])
                for _ in range(requests):
                    s.sendall(request)
                    if b"HTTP/1.0" in request:
                        while s.recv(65536):
                            pass
                    else:
                        s.recv(65536)
        except OSError:
            time.sleep(0.1)
        time.sleep(0.005)


def long_sessions(c: bk.Container, stop: threading.Event, mine: set[int]) -> None:
    """Keep-alive sessions that stay open for a second or more: 40 GETs of a 100 kB file,
    20 ms apart, then the client closes (their connections are alive when sampled)."""
    while not stop.is_set():
        try:
            with socket.create_connection((c.ip, 80), timeout=5) as s:
                mine.add(s.getsockname()[1])
                for _ in range(40):
                    s.sendall(b"GET /mid.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                    read_response(s)
                    time.sleep(0.02)
        except OSError:
            time.sleep(0.1)


def read_response(s: socket.socket) -> None:
    """One HTTP/1.1 response: headers, then Content-Length bytes."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            return
        buf += data
    head, body = buf.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        data = s.recv(65536)
        if not data:
            return
        body += data


def banner(c: bk.Container, port: int, stop: threading.Event) -> None:
    """Connect, read what the server says first (ssh's banner, bird's BGP OPEN), close."""
    while not stop.is_set():
        try:
            with socket.create_connection((c.ip, port), timeout=5) as s:
                s.recv(4096)
        except OSError:
            time.sleep(0.1)
        time.sleep(0.02)


def run_traffic(c: bk.Container) -> set[int]:
    """All the roles at once for TRAFFIC_SECONDS; the client ports of the long sessions."""
    stop = threading.Event()
    long_ports: set[int] = set()
    short: set[int] = set()
    jobs = [
        (http, (c, b"GET / HTTP/1.0\r\n\r\n", stop, short)),
        (http, (c, b"GET / HTTP/1.0\r\n\r\n", stop, short)),
        (http, (c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", stop, short, 3)),
        (long_sessions, (c, stop, long_ports)),
        (banner, (c, 22, stop)),
        (banner, (c, 179, stop)),
    ]
    threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in jobs]
    for t in threads:
        t.start()
    time.sleep(TRAFFIC_SECONDS)
    stop.set()
    for t in threads:
        t.join(10)
    return long_ports


# ---------------------------------------------------------------- the checks


def test_seed_scenario_on_a_booted_systemd(seed_host):
    c, collector, figures = seed_host
    assert c.systemctl("is-active", "hostsflowd", check=False).strip() == "active", \
        c.journal("hostsflowd")[-3000:]
    t0 = time.time()
    t_traffic = time.monotonic()
    long_ports = run_traffic(c)
    figures["traffic_s"] = round(time.monotonic() - t_traffic, 1)
    time.sleep(6)  # a polling round and the last samples
    journal = c.journal("hostsflowd")
    dgs = [decode_datagram(d) for t, d in collector.timed() if t >= t0]
    names = services_by_index(dgs)
    ds_of = {v: k for k, v in names.items()}

    per: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
    wrong, zeros, alive, alive_info = [], [], 0, 0
    for fs, hdr, pkt in tcp_udp_samples(dgs):
        ent = fs.record(ExtendedEntities)
        marks = (ent.src_index if ent and ent.src_class else None,
                 ent.dst_index if ent and ent.dst_class else None)
        for side, (ip, port) in enumerate(((pkt.src_ip, pkt.src_port),
                                           (pkt.dst_ip, pkt.dst_port))):
            mark = names.get(marks[side]) if marks[side] else None
            if ip == c.host_ip and mark:
                wrong.append(("this host's end marked", pkt, mark))
            if ip == c.ip and port in PORTS and pkt.protocol == 6:
                key = (port, "out" if side == 0 else "in")
                per[key]["samples"] += 1
                want = PORTS[port]
                if mark == want:
                    per[key]["right"] += 1
                elif mark is None:
                    per[key]["unmarked"] += 1
                else:
                    per[key]["wrong"] += 1
                    wrong.append(("wrong service", pkt, mark))
        info = fs.record(ExtendedTcpInfo)
        if info is not None and (info.snd_mss == 0 or info.pmtu == 0):
            zeros.append(info)
        if (pkt.protocol == 6 and pkt.src_port == 80 and pkt.dst_port in long_ports
                and not pkt.tcp_flags & 0x05 and l4_payload(hdr.header, pkt) > 0):
            alive += 1
            alive_info += info is not None
    table = {f"{p}/{d}": {**dict(cnt), "right_pct": round(100 * cnt["right"] / cnt["samples"], 1)}
             for (p, d), cnt in sorted(per.items())}
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps({
        "figures": figures, "sampling": SAMPLING, "services": sorted(names.values()),
        "ports": table, "tcp_info": {"alive_samples": alive, "with_record": alive_info,
                                     "listener_zeros": len(zeros)},
        "wrong": len(wrong)}, indent=1))
    print(f"\n  steps: {figures}\n  services: {sorted(names.values())}")
    for k, v in table.items():
        print(f"  {k:8} {v}")
    print(f"  tcp_info on live sessions: {alive_info} of {alive}; listener zeros: {len(zeros)}")

    assert {"nginx", "ssh", "bird", "hostsflowd"} <= set(names.values()), names
    assert "module_disabled" not in journal and "module_error" not in journal, journal[-3000:]
    for port in PORTS:
        for d in ("in", "out"):
            row = table.get(f"{port}/{d}")
            assert row and row["samples"] >= 40, f"too few samples on port {port} {d}: {row}"
            assert row["right_pct"] >= 95.0, f"port {port} {d}: {row}"
    assert not wrong, wrong[:5]
    assert not zeros, zeros[:3]
    assert alive >= 50 and alive_info >= 0.9 * alive, (alive_info, alive)
    assert ds_of["nginx"] and ds_of["ssh"] and ds_of["bird"]
