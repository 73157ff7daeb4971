"""Run a benchmark script again inside a network namespace of its own (loopback only, a
unique name, removed at the end), keeping the host's mounts: ``nsenter --net``, not
``ip netns exec``, which remounts /sys and the cgroup hierarchies with it."""

from __future__ import annotations

import os
import random
import subprocess
import sys


def rerun_inside(prefix: str, script: str, args: list[str]) -> None:
    """Run ``python script --inner ARGS`` in a fresh namespace (its name in the environment
    variable HOSTSFLOW_BENCH_NETNS) and exit with its status.  /sys there is still the
    host's: a program that reads the namespace's interfaces from /sys must be started with
    ``ip netns exec`` (tests/faults_kit.py NsAgent keeps the cgroup mounts too)."""
    ns = f"{prefix}{os.getpid()}{random.randint(100, 999)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        r = subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, script,
                            "--inner", *args], check=False,
                           env=dict(os.environ, HOSTSFLOW_BENCH_NETNS=ns))
        sys.exit(r.returncode)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
