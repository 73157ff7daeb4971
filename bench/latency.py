#!/usr/bin/env python3
"""Latency from packet to datagram: how long after a packet crosses the tapped interface does
its flow sample reach the collector?

Runs inside the rig's namespace B (bench/run.sh does ``ip netns exec $RIG_NS_B``): starts the
agent with ``pcap { dev = vethB sampling = 1 }`` exporting to a collector socket on 127.0.0.1,
sends UDP packets out of vethB towards 10.77.0.1:9 carrying a marker and a number, and matches
every sampled header at the collector back to its send time.  Two loads: ``sparse`` (20 packets
a second: a datagram waits for the once-a-second flush) and ``busy`` (2,000 a second: datagrams
fill up).  Prints one JSON object: median, 99th percentile and max seconds per load.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

from hostsflow.sflow.datagram import decode_datagram
from hostsflow.sflow.records import SampledHeader
from hostsflow.testing import UdpCollector, load_file_module
from result_file import emit  # bench/, the script's own folder

AgentProcess = load_file_module(  # the repository's end-to-end runner
    "hostsflow_tests_agent_process",
    Path(__file__).resolve().parent.parent / "tests" / "agent_process.py").AgentProcess

MARK = b"HFLAT"
ID = struct.Struct("!Q")


def send_train(pps: int, seconds: float, first_id: int) -> dict[int, float]:
    """Send ``pps`` marked packets a second for ``seconds``; return id -> send time."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent: dict[int, float] = {}
    n = int(pps * seconds)
    t0 = time.monotonic()
    for i in range(n):
        due = t0 + i / pps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pid = first_id + i
        sent[pid] = time.time()
        s.sendto(MARK + ID.pack(pid), ("10.77.0.1", 9))
    s.close()
    return sent


def latencies(col: UdpCollector, sent: dict[int, float]) -> list[float]:
    """Seconds from send to arrival per packet (the ICMP errors that quote a packet are
    sampled too: the first arrival of each number counts)."""
    out: dict[int, float] = {}
    for raw, at in zip(list(col.raw), list(col.received_at)):
        for fs in decode_datagram(raw).flow_samples:
            for rec in fs.records:
                if isinstance(rec, SampledHeader):
                    i = rec.header.find(MARK)
                    if i >= 0 and len(rec.header) >= i + len(MARK) + 8:
                        (pid,) = ID.unpack_from(rec.header, i + len(MARK))
                        if pid in sent and pid not in out:
                            out[pid] = at - sent[pid]
    return list(out.values())


def stats(values: list[float], sent: int) -> dict[str, float | int]:
    if not values:
        return {"sent": sent, "matched": 0}
    values = sorted(values)
    return {
        "sent": sent, "matched": len(values),
        "median_s": round(statistics.median(values), 4),
        "p99_s": round(values[min(len(values) - 1, int(0.99 * len(values)))], 4),
        "max_s": round(values[-1], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    result: dict[str, object] = {}
    with UdpCollector() as col, tempfile.TemporaryDirectory() as tmp:
        conf = (f"sflow {{ collector {{ ip = 127.0.0.1 udpport = {col.port} }}\n"
                "  polling = 20\n  pcap { dev = vethB sampling = 1 }\n}\n")
        with AgentProcess(conf, tmp) as agent:
            time.sleep(4)
            if agent.proc.poll() is not None:
                sys.exit("agent exited:\n" + agent.log())
            next_id = 1
            for name, pps in (("sparse", 20), ("busy", 2000)):
                col.raw.clear()
                col.received_at.clear()
                sent = send_train(pps, a.seconds, next_id)
                next_id += len(sent)
                time.sleep(2.5)  # the last samples wait for a flush
                result[name] = {"pps": pps, **stats(latencies(col, sent), len(sent))}
    result["config"] = "pcap { dev = vethB sampling = 1 }, datagram flush once a second"
    emit(result, a.out)


if __name__ == "__main__":
    main()
