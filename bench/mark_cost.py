#!/usr/bin/env python3
"""What the tcp plugin and systemd's markTraffic add per sampled TCP packet, with 10,000
sockets open.

Creates a network namespace (unique name, removed at the end) and re-runs itself inside it
(``nsenter --net``: the cgroup mounts stay visible).
There it moves itself into a fresh cgroup ``hfbench-PID.slice/bench.service`` (so its sockets
carry that cgroup id, as a service's would), opens 5,000 loopback TCP connections (10,001
sockets: 127.0.0.1 clients, a 127.0.0.2 listener), and feeds one sample at a time, for 1,500 of
those connections, to three in-process agents: no plugins, ``tcp``, ``tcp`` + ``systemd {
markTraffic = on }`` (its service table fed the unit as the D-Bus watcher would).  Each sample
is driven to the end as the agent loop would: phase 1, the sock_diag replies read by the
plugins' reader callbacks, phase 2, encode.  CPU = thread time (the kernel's sock_diag work
included, the wait for the reply excluded).  Prints JSON: median and p90 CPU us per sample and
the added cost over the no-plugin agent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

N_CONN = 5000
N_SAMPLES = 1500


def outer(a: argparse.Namespace) -> None:
    ns = f"hfmark{os.getpid()}{random.randint(100, 999)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # nsenter, not `ip netns exec`: that remounts /sys, and the cgroup mounts with it
        r = subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, __file__,
                            "--inner", "--out", a.out], check=False)
        sys.exit(r.returncode)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


class Cgroup:
    """A cgroup this process moves into (v2 and the v1 name=systemd hierarchy if present),
    and out of again on close."""

    ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")

    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.dirs: list[tuple[str, str]] = []
        seen = set()
        for root in self.ROOTS:
            if not os.path.exists(os.path.join(root, "cgroup.procs")) or root in seen:
                continue
            if root == "/sys/fs/cgroup" and self.dirs:
                continue  # a hybrid host: the two above are the ones systemd uses
            d = os.path.join(root, rel.strip("/"))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            self.dirs.append((root, d))
            seen.add(root)

    def close(self) -> None:
        for root, d in self.dirs:
            try:
                with open(os.path.join(root, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            except OSError:
                pass
            while d != root:
                try:
                    os.rmdir(d)
                except OSError:
                    break
                d = os.path.dirname(d)


def connections(n: int) -> list[socket.socket]:
    lst = socket.socket()
    lst.bind(("127.0.0.2", 0))
    lst.listen(4096)
    socks = [lst]
    for _ in range(n):
        c = socket.socket()
        c.bind(("127.0.0.1", 0))
        c.connect(lst.getsockname())
        socks += [c, lst.accept()[0]]
    return socks


def drive(h: Any, samples: list[Any]) -> list[float]:
    """CPU us per sample, one sample at a time through the whole pipeline."""
    agent, loop = h.agent, h.loop
    poller = select.poll()
    for fd in agent._readers:
        poller.register(fd, select.POLLIN)
    readers = {fd: loop._selector.get_key(fd).data[0] for fd in agent._readers}
    out = []
    for s in samples:
        t0 = time.thread_time()
        h.feed(s)
        while s.held:
            ready = poller.poll(1000)
            if not ready:
                raise SystemExit("no sock_diag reply within 1 s")
            for fd, _ in ready:
                readers[fd]._run()
        out.append((time.thread_time() - t0) * 1e6)
        if len(agent.exporter.pending) >= 50:
            agent.exporter.flush()
            h.sink.datagrams.clear()
    return out


def inner(a: argparse.Namespace) -> None:
    from hostsflow.host.interfaces import Interface, InterfaceTable
    from hostsflow.sflow.records import ExtendedEntities, ExtendedTcpInfo
    from hostsflow.testing import AgentHarness
    from hostsflow_systemd.plugin import SystemdPlugin
    from hostsflow_tcp.plugin import TcpPlugin

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * N_CONN + 200:
        sys.exit(f"mark_cost.py: the open-files hard limit is {hard}; need {2 * N_CONN + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    slice_ = f"hfbench{os.getpid()}.slice"
    cg = Cgroup(f"/{slice_}/bench.service")
    socks: list[socket.socket] = []
    harnesses = []
    try:
        socks = connections(N_CONN)
        clients = [socks[1 + 2 * i] for i in range(0, N_CONN, 3)][:N_SAMPLES]
        tuples = [(c.getsockname()[0], c.getsockname()[1], c.getpeername()[0],
                   c.getpeername()[1]) for c in clients]
        table = InterfaceTable([Interface("lo", 1, addresses=["127.0.0.1"])])
        conf = "sflow { collector { ip = 127.0.0.1 } %s }"
        variants = [
            ("none", conf % "", {}),
            ("tcp", conf % "tcp { }", {"tcp": TcpPlugin()}),
            ("tcp+systemd", conf % f"tcp {{ }} systemd {{ markTraffic = on slice = {slice_} }}",
             {"tcp": TcpPlugin(), "systemd": SystemdPlugin()}),
        ]
        result: dict[str, Any] = {"sockets_open": len(socks)}
        for name, text, plugins in variants:
            h = AgentHarness(text, plugins=plugins, interfaces=table)
            harnesses.append(h)
            h.start()
            sd = plugins.get("systemd")
            if sd is not None:
                sd._on_units({"bench.service": f"/{slice_}/bench.service"})
                assert len(sd.table) == 1, "the bench service was not taken up"
            samples = []
            for t in tuples:
                s = h.make_sample(tcp=t, direction=2)
                samples.append(s)
            drive(h, samples[:50])  # warm-up: first channel use, caches of code paths
            cpu = drive(h, samples[50:])
            h.flush()
            tcp_recs = sum(isinstance(r, ExtendedTcpInfo) for s in samples for r in s.records)
            ent_recs = sum(isinstance(r, ExtendedEntities) for s in samples for r in s.records)
            cpu.sort()
            result[name] = {
                "samples": len(cpu), "median_us": round(statistics.median(cpu), 2),
                "p90_us": round(cpu[int(0.9 * len(cpu))], 2),
                "extended_tcp_info": tcp_recs, "extended_entities": ent_recs,
            }
        base = result["none"]["median_us"]
        for name in ("tcp", "tcp+systemd"):
            result[name]["added_median_us"] = round(result[name]["median_us"] - base, 2)
    finally:
        for h in harnesses:
            h.stop()
        for s in socks:
            s.close()
        cg.close()
    text = json.dumps(result)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("mark_cost.py: needs root (a network namespace, a cgroup)")
    inner(a) if a.inner else outer(a)


if __name__ == "__main__":
    main()
