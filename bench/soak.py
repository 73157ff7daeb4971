#!/usr/bin/env python3
"""Soak run (not a test): a real ``hostsflowd`` with pcap at about 2,000 samples/s, tcp and
systemd enabled, for 10 minutes; memory (RSS), CPU, errors and sample continuity.

Set-up (all real, all cleaned up):

* two network namespaces joined by a veth pair (tests/faults_kit.py); the agent runs in ``B``
  with ``pcap { dev = <veth> sampling = 4 }``, ``tcp { }`` and ``systemd { }``;
* paced UDP (about 7,600 packets/s) and one TCP connection (200 writes/s, plus its ACKs) from
  ``A`` to ``B``, so about 2,000 packets/s are sampled;
* a real ``systemd --user`` with a private D-Bus and three services (the systemd module's test
  fixture), polled every ``polling`` seconds as ``3:N`` data sources;
* a collector socket in ``B`` keeping every datagram.

Every 10 s the agent's VmRSS and CPU time are read from /proc.  At the end: SIGTERM, exit
status and time, then datagram and per-source sequence gaps, samples/s, log lines at warning
or error level, and the agent's own health counters.  Results go to stdout as JSON (and
``--out FILE``).

    sudo .venv/bin/python bench/soak.py --seconds 600 --out /tmp/soak.json

Needs root, iproute2, systemd and dbus (as the tests), and the in-repo modules installed.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def load_kit() -> Any:
    from hostsflow.testing import load_file_module

    return load_file_module("faults_kit", REPO / "tests" / "faults_kit.py")


def proc_figures(pid: int) -> dict[str, float]:
    """VmRSS (bytes) and CPU seconds (user + system) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return {"rss": rss, "cpu": (int(fields[11]) + int(fields[12])) / tck}


def analyse(raw: list[tuple[float, bytes]], decode: Any) -> dict[str, Any]:
    """Datagram and per-source sequence gaps, sample counts, samples per second."""
    dgs = [decode(d) for _, d in raw]
    seqs = [d.sequence for d in dgs]
    dgaps = sum(b - a - 1 for a, b in itertools.pairwise(seqs) if b > a + 1)
    out_of_order = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    flow_seq: dict[Any, list[int]] = collections.defaultdict(list)
    ctr_seq: dict[Any, list[int]] = collections.defaultdict(list)
    records: collections.Counter[str] = collections.Counter()
    for d in dgs:
        for s in d.flow_samples:
            flow_seq[(s.source.ds_class, s.source.ds_index)].append(s.sequence)
            for r in s.records:
                records[type(r).__name__] += 1
        for s in d.counter_samples:
            ctr_seq[(s.source.ds_class, s.source.ds_index)].append(s.sequence)

    def gaps(by: dict[Any, list[int]]) -> int:
        total = 0
        for v in by.values():
            v = sorted(v)
            total += (v[-1] - v[0] + 1) - len(set(v))
        return total

    flows = sum(len(v) for v in flow_seq.values())
    span = raw[-1][0] - raw[0][0] if len(raw) > 1 else 1.0
    return {
        "datagrams": len(dgs),
        "datagram_sequence_gaps": dgaps,
        "datagram_sequence_backwards": out_of_order,
        "flow_samples": flows,
        "flow_samples_per_second": round(flows / span, 1),
        "flow_sequence_gaps": gaps(flow_seq),
        "counter_samples": sum(len(v) for v in ctr_seq.values()),
        "counter_sources": sorted(f"{c}:{i}" for c, i in ctr_seq),
        "counter_sequence_gaps": gaps(ctr_seq),
        "flow_records": dict(records),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--pps", type=float, default=7600.0, help="UDP packets/s from A to B")
    p.add_argument("--sampling", type=int, default=4)
    p.add_argument("--polling", type=int, default=10)
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args()

    kit = load_kit()
    why = kit.why_not()
    fixtures = kit.user_manager_class()
    why = why or fixtures._why_not()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    from hostsflow.sflow.datagram import decode_datagram

    work = Path(tempfile.mkdtemp(prefix="hsf-soak-"))
    os.chmod(work, 0o755)
    pair = kit.NetPair()
    um = fixtures.UserManager()
    col = udp = tcp = agent = None
    series: list[dict[str, float]] = []
    result: dict[str, Any] = {}
    try:
        um.start()
        for i in range(3):
            um.add_service(f"soak{i}", [sys.executable, "-m", "http.server", "0", "--bind",
                                        "127.0.0.1"])
        col = kit.NsCollector(pair.ns_b)
        conf = (
            "sflow {\n"
            f"  collector {{ ip = 127.0.0.1 udpport = {col.port} }}\n"
            f"  polling = {args.polling}\n"
            f"  pcap {{ dev = {pair.dev_b} sampling = {args.sampling} }}\n"
            "  tcp { }\n"
            f"  systemd {{ slice = app.slice bus = \"{um.address}\" }}\n"
            "}\n"
        )
        agent = kit.NsAgent(conf, work, pair.ns_b)
        udp = kit.UdpStream(pair, pps=args.pps)
        tcp = kit.TcpStream(pair, rate=200)
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            if agent.proc.poll() is not None:
                raise RuntimeError(f"agent exited: {agent.log()[-2000:]}")
            fig = proc_figures(agent.pid)
            fig["t"] = round(time.monotonic() - t0, 1)
            series.append(fig)
            time.sleep(10.0)
        fig = proc_figures(agent.pid)
        fig["t"] = round(time.monotonic() - t0, 1)
        series.append(fig)
        udp.stop()
        tcp.stop()
        traffic = {"udp_sent": udp.sent, "udp_send_errors": udp.errors, "tcp_bytes": tcp.bytes}
        udp = tcp = None
        t_stop = time.monotonic()
        status = agent.stop()
        stop_seconds = time.monotonic() - t_stop
        time.sleep(0.5)
        log = agent.log()
        events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        bad = [e for e in events if e.get("level") in ("warning", "error", "critical")]
        health = [e for e in events if e.get("event") == "health"]
        stopped = next((e for e in events if e.get("event") == "stopped"), {})
        start = next(f for f in series if f["t"] >= 10) if len(series) > 1 else series[0]
        end = series[-1]
        result = {
            "seconds": round(end["t"], 1),
            "exit_status": status,
            "sigterm_to_exit_ms": round(stop_seconds * 1000),
            "rss_start_mb": round(start["rss"] / 2**20, 2),
            "rss_start_at_s": start["t"],
            "rss_end_mb": round(end["rss"] / 2**20, 2),
            "rss_growth_mb": round((end["rss"] - start["rss"]) / 2**20, 2),
            "rss_max_mb": round(max(f["rss"] for f in series) / 2**20, 2),
            "cpu_percent": round(100 * (end["cpu"] - series[0]["cpu"])
                                 / max(1e-9, end["t"] - series[0]["t"]), 1),
            **traffic,
            "log_warnings_errors": len(bad),
            "log_warning_events": collections.Counter(e.get("event") for e in bad),
            "tracebacks": log.count("Traceback"),
            "health_lines": len(health),
            "agent_counters": stopped,
            **analyse(col.timed(), decode_datagram),
            "rss_series_mb": [(f["t"], round(f["rss"] / 2**20, 2)) for f in series],
        }
    finally:
        for x in (udp, tcp):
            if x is not None:
                x.stop()
        if agent is not None and agent.proc.poll() is None:
            agent.stop()
        if col is not None:
            col.close()
        um.stop()
        pair.close()
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    ok = (result.get("exit_status") == 0 and result.get("rss_growth_mb", 99) < 5
          and result.get("tracebacks") == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
