#!/usr/bin/env python3
"""The per-sample path in one process, without the kernel: ring batch -> FlowSample -> hooks ->
encode -> datagram -> UDP send to a local socket.  For comparing code changes quickly (the rig
numbers are the real ones, but they move with the machine's load).

Opens a real tap on lo with a keep-nothing filter, builds ``--batch`` frames laid out as pcapy's ``next_batch`` returns them (one data buffer and
16-byte (sec, usec, offset, caplen) records), runs the pcap tap's ``_build`` on them, hands the
batch to a real :class:`~hostsflow.agent.Agent` (no modules, or ``--noop-hooks`` modules
implementing both per-sample hooks) whose exporter sends to a UDP socket on 127.0.0.1, and
prints CPU microseconds per sample (process time, best of ``--repeat``).  ``--profile FILE``
writes a cProfile of one run instead.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import socket
import struct
import time
from typing import Any

from hostsflow import hookimpl
from hostsflow.agent import Agent
from hostsflow.run_loop import settle_gc
from hostsflow.bootstrap import load
from hostsflow.testing import ethernet_frame
from hostsflow_pcap.tap import Tap

META = struct.Struct("=IIII")


class NoopEnricher:
    """A module with both per-sample hooks doing nothing (the cost of dispatch alone)."""

    @hookimpl
    def sflow_flow_sample(self, agent: Any, sample: Any) -> None:
        pass

    @hookimpl
    def sflow_flow_sample_released(self, agent: Any, sample: Any) -> None:
        pass


def idle_tap() -> Tap:
    """A real tap on lo whose kernel filter keeps nothing: ``_build`` gets our batches only
    (needs CAP_NET_RAW)."""
    return Tap("lo", socket.if_nametoindex("lo"), bytes.fromhex("020000000002"), 0,
               loopback=True)


def ring_batch(n: int) -> tuple[bytes, bytes]:
    frame = ethernet_frame(udp=("10.77.0.1", 40000, "10.77.0.2", 9), payload=bytes(64))
    now = time.time()
    data, meta = bytearray(), bytearray()
    for i in range(n):
        meta += META.pack(int(now), i, len(data), len(frame))
        data += frame
    return bytes(data), bytes(meta)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--noop-hooks", action="store_true")
    ap.add_argument("--profile", default="")
    a = ap.parse_args()

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    # nobody reads it: a full receive queue drops datagrams without failing the sender
    port = sink.getsockname()[1]
    modules = {"noop": NoopEnricher()} if a.noop_hooks else {}
    loaded = load(f"sflow {{ collector {{ ip = 127.0.0.1 udpport = {port} }} }}", "<bench>",
                  modules=modules)
    agent = Agent(loaded.config, loaded.host)
    tap = idle_tap()
    tap.rate = 1  # what the samples report; the filter still keeps nothing
    chunks = [ring_batch(a.batch)]

    def run() -> None:
        for _ in range(a.batches):
            agent.take_batch(tap._build(chunks))
        agent.exporter.flush()

    run()  # warm up
    settle_gc()  # as the running agent does after start-up
    if a.profile:
        prof = cProfile.Profile()
        prof.runcall(run)
        prof.dump_stats(a.profile)
        pstats.Stats(a.profile).sort_stats("tottime").print_stats(12)
        return
    per = []
    for _ in range(a.repeat):
        t0 = time.process_time()
        run()
        per.append(1e6 * (time.process_time() - t0) / (a.batch * a.batches))
    print(json.dumps({"us_per_sample_best": round(min(per), 3),
                      "us_per_sample_all": [round(x, 3) for x in per],
                      "noop_hooks": a.noop_hooks, "batch": a.batch}))


if __name__ == "__main__":
    main()
