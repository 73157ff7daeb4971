#!/usr/bin/env python3
"""CPU of one counter polling round with N services as data sources (real cgroups).

Creates ``hfpoll-PID.slice/svcK.service`` cgroups (the cgroup2 hierarchy and every v1 hierarchy
systemd uses here: name=systemd, cpuacct, memory, blkio), each with one real process in it, and
an in-process agent with the host poller and the systemd module whose service table is fed the
N units as its D-Bus watcher would.  Then times ``poll_counters(force=True)`` plus the flush
(every data source due: host, interfaces, N services) with process CPU time, ``--rounds``
times.  Everything it created is removed at the end.  Prints JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any
from result_file import emit  # bench/, the script's own folder

V1 = ("systemd", "cpuacct", "memory", "blkio", "cpu,cpuacct")


def hierarchies() -> list[str]:
    """cgroup roots to create each service in: cgroup2 first, then the v1 ones present."""
    roots = []
    for line in open("/proc/self/mountinfo"):
        parts = line.split(" - ")
        if len(parts) != 2:
            continue
        mnt = line.split()[4]
        fstype, _, opts = parts[1].split()[:3]
        if fstype == "cgroup2":
            roots.append(mnt)
        elif fstype == "cgroup" and any(o in V1 or o == "name=systemd" for o in opts.split(",")):
            roots.append(mnt)
    return sorted(set(roots), key=roots.index)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("poll_cost.py: needs root (cgroups)")

    from hostsflow.testing import AgentHarness
    from hostsflow_systemd.module import SystemdModule

    slice_ = f"hfpoll{os.getpid()}.slice"
    roots = hierarchies()
    procs: list[subprocess.Popen[bytes]] = []
    made: list[str] = []
    h = None
    try:
        units: dict[str, str] = {}
        for k in range(a.services):
            rel = f"{slice_}/svc{k}.service"
            p = subprocess.Popen(["sleep", "3600"])
            procs.append(p)
            for root in roots:
                d = os.path.join(root, rel)
                os.makedirs(d, exist_ok=True)
                if d not in made:
                    made.append(d)
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write(str(p.pid))
            units[f"svc{k}.service"] = "/" + rel
        plugin = SystemdModule()
        h = AgentHarness(f"sflow {{ collector {{ ip = 127.0.0.1 }} polling = 30 "
                         f"systemd {{ slice = {slice_} }} }}",
                         modules={"systemd": plugin}, host_poller=True)
        h.start()
        t0 = time.process_time()
        plugin._on_units(units)
        sync_ms = (time.process_time() - t0) * 1e3
        assert plugin.table is not None and len(plugin.table) == a.services, len(plugin.table or ())
        rounds = []
        for _ in range(a.rounds):
            h.sink.datagrams.clear()
            t0 = time.process_time()
            h.agent.poll_counters(force=True)
            h.agent.exporter.flush()
            rounds.append((time.process_time() - t0) * 1e3)
        decoded = h.datagrams
        result: dict[str, Any] = {
            "services": a.services,
            "hierarchies": roots,
            "counter_samples_per_round": sum(len(d.counter_samples) for d in decoded),
            "datagrams_per_round": len(decoded),
            "round_cpu_ms_median": round(statistics.median(rounds), 1),
            "round_cpu_ms_all": [round(x, 1) for x in rounds],
            "unit_sync_cpu_ms": round(sync_ms, 1),
            "sources_used": plugin.table.sources_used,
        }
    finally:
        if h is not None:
            h.stop()
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        for d in reversed(made):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # the killed process is still leaving the group
        for root in roots:
            try:
                os.rmdir(os.path.join(root, slice_))
            except OSError:
                pass
    emit(result, a.out)


if __name__ == "__main__":
    main()
