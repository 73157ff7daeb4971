#!/usr/bin/env python3
"""Idle cost of the agent: counters only (or every in-repo module with --all), no traffic.

``--all`` enables pcap (on lo), nflog, ulog, tcp and systemd (markTraffic on) with the
agent's own defaults: the RSS figure with every in-repo module loaded.

Starts ``hostsflowd`` sending to a local socket, waits for it to settle, then reads
/proc/PID/stat (utime+stime) and /proc/PID/status (VmRSS) over ``--seconds``.  Prints one
JSON line: cpu_percent of one core, rss_kb at start and end, datagrams received, and (at the
end) where the RSS is: anonymous memory (Python objects, heap) and each file mapped (the
interpreter, shared libraries, extension modules), from /proc/PID/smaps."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from hostsflow.testing import UdpCollector, load_file_module

AgentProcess = load_file_module(  # the repository's end-to-end runner
    "hostsflow_tests_agent_process",
    Path(__file__).resolve().parent.parent / "tests" / "agent_process.py").AgentProcess

CLK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def runtime_ms(pid: int) -> float:
    """CPU time in ms of all the process's threads (scheduler accounting, finer than ticks)."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{tid}/sched"):
                if line.startswith("se.sum_exec_runtime"):
                    total += float(line.split(":")[1])
                    break
        except OSError:
            pass
    return total


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _mapping_name(path: str) -> str:
    if path.startswith("/"):
        return os.path.basename(path)  # the interpreter, a shared library, an extension
    if path.startswith("socket:"):
        return "[socket]"  # a packet socket's ring (pcap)
    return path or "[anon]"  # [heap], [stack]...; "[anon]": pymalloc arenas, thread stacks


def rss_by_mapping(pid: int, top: int = 12) -> dict[str, int]:
    """RSS in kB by what is mapped (see :func:`_mapping_name`), the ``top`` largest, then
    "other" for the rest."""
    sizes: dict[str, int] = {}
    name = "[anon]"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(maxsplit=6)
            if "-" in first[0] and ":" not in first[0]:  # a mapping's header line
                path = first[5].strip() if len(first) > 5 else ""
                name = _mapping_name(path)
            elif first[0] == "Rss:":
                sizes[name] = sizes.get(name, 0) + int(first[1])
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])
    out = dict(ranked[:top])
    out["other"] = sum(kb for _, kb in ranked[top:])
    return out


def python_pid(pid: int) -> int:
    """The agent's own pid (under `ip netns exec` it is a child)."""
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return pid
    return int(children[0]) if children else pid


def _modules(log: str) -> list[str]:
    """The modules the agent says it started with (its JSON "started" log line)."""
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "started":
            return list(entry.get("modules", []))
    return []


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--settle", type=float, default=5)
    p.add_argument("--polling", type=int, default=30)
    p.add_argument("--extra", default="", help="extra config lines (module blocks)")
    p.add_argument("--all", action="store_true", help="enable every in-repo module")
    args = p.parse_args()
    if args.all:
        args.extra += ("\n  pcap { dev = lo }\n  nflog { group = 5 }\n  ulog { group = 1 }\n"
                       "  tcp { }\n  systemd { markTraffic = on }\n")
    with UdpCollector() as col, tempfile.TemporaryDirectory() as tmp:
        conf = (f"sflow {{ collector {{ ip = 127.0.0.1 udpport = {col.port} }}\n"
                f"  polling = {args.polling}\n{args.extra}\n}}\n")
        with AgentProcess(conf, tmp) as agent:
            time.sleep(args.settle)
            pid = python_pid(agent.pid)
            t0, c0, r0, m0 = time.monotonic(), cpu_ticks(pid), rss_kb(pid), runtime_ms(pid)
            time.sleep(args.seconds)
            t1, c1, r1, m1 = time.monotonic(), cpu_ticks(pid), rss_kb(pid), runtime_ms(pid)
            mappings = rss_by_mapping(pid)
            alive = agent.proc.poll() is None
            log = agent.log()
        result = {
            "seconds": round(t1 - t0, 1),
            "cpu_seconds": (c1 - c0) / CLK,
            "cpu_percent_of_core": round(100 * (c1 - c0) / CLK / (t1 - t0), 4),
            "cpu_percent_of_core_precise": round(100 * (m1 - m0) / 1000 / (t1 - t0), 4),
            "rss_kb_start": r0,
            "rss_kb_end": r1,
            "rss_kb_by_mapping": mappings,
            "datagrams": len(col.raw),
            "modules": _modules(log),
            "alive": alive,
            "config": conf.replace(str(col.port), "PORT"),
        }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
