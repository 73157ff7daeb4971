#!/usr/bin/env python3
"""Profile the agent's per-sample path on the perf rig with py-spy (sampling profiler).

The rig must be up (bench/run.sh does it; namespaces from RIG_NS_A / RIG_NS_B).  Starts the
collector (sfcount) and the agent in namespace B on CPU 1, drives the generator at full speed
from namespace A, records the agent with ``py-spy record --format raw`` (collapsed stacks,
C functions hidden) and writes the top functions by own time and by inclusive time as JSON.

  profile_agent.py --bin-dir bench/out --conf bench/out/hostsflowd-n1.conf --out profile.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

NS_A = os.environ.get("RIG_NS_A", "sfA")
NS_B = os.environ.get("RIG_NS_B", "sfB")


def child_python(pid: int) -> int:
    """The python process under ``ip netns exec ... taskset ...`` (exec keeps the pid)."""
    return pid


def frame_name(frame: str) -> str:
    """``func (path/file.py:line)`` -> ``func (file.py)``, without the line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def summarize(raw_path: str, top: int) -> dict:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    idle = 0
    with open(raw_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            n = int(count)
            frames = [frame_name(x) for x in stack.split(";") if x]
            total += n
            if not frames:
                continue
            leaf = frames[-1]
            if leaf.startswith("select (") or leaf.startswith("poll ("):
                idle += n
            own[leaf] += n
            for fr in set(frames):
                incl[fr] += n
    busy = max(1, total - idle)
    return {
        "stacks_total": total,
        "stacks_idle_in_select": idle,
        "own": [(k, round(100 * v / busy, 1)) for k, v in own.most_common(top)
                if not (k.startswith("select (") or k.startswith("poll ("))],
        "inclusive": [(k, round(100 * v / busy, 1)) for k, v in incl.most_common(top * 2)][: top * 2],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--conf", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rate", type=int, default=0, help="generator pps (0 = as fast as it goes)")
    ap.add_argument("--seconds", type=int, default=12)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        sys.exit("py-spy is not installed (pip install py-spy)")
    tmp = tempfile.mkdtemp(prefix="hf-prof-")
    mac = subprocess.run(["ip", "netns", "exec", NS_B, "cat", "/sys/class/net/vethB/address"],
                         check=True, capture_output=True, text=True).stdout.strip()
    coll = subprocess.Popen(["ip", "netns", "exec", NS_B, "taskset", "-c", "1",
                             os.path.join(a.bin_dir, "sfcount")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agent = subprocess.Popen(["ip", "netns", "exec", NS_B, "taskset", "-c", "1", a.python, "-m",
                              "hostsflow", "-f", a.conf, "--status-file", ""],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gen = None
    try:
        time.sleep(4)
        gen = subprocess.Popen(
            ["ip", "netns", "exec", NS_A, "taskset", "-c", "0",
             os.path.join(a.bin_dir, "udpgen"), "-m", "packet", "-i", "vethA", "-M", mac,
             "-S", "10.77.0.1", "-d", "10.77.0.2", "-p", "9", "-l", "64",
             "-r", str(a.rate), "-t", str(a.seconds + 4)], stdout=subprocess.DEVNULL)
        time.sleep(2)
        raw = os.path.join(tmp, "stacks.txt")
        subprocess.run([pyspy, "record", "--pid", str(child_python(agent.pid)), "--format", "raw",
                        "--rate", "250", "--duration", str(a.seconds), "--nonblocking",
                        "--output", raw], check=True, capture_output=True)
        result = summarize(raw, a.top)
        result.update({"rate": a.rate or "generator max", "seconds": a.seconds,
                       "conf": open(a.conf).read()})
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
        for k, v in result["own"]:
            print(f"{v:5.1f}%  {k}")
    finally:
        if gen is not None:
            gen.wait(30)
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
        coll.terminate()
        coll.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
