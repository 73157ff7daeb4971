#!/usr/bin/env python3
"""What markTraffic costs with 2,000 new short connections a second, against the same traffic
without it, in the same run.

In its own network namespace (unique name, removed at the end) it starts a real
``systemd --user`` with a private bus (plugins/systemd/tests/conftest.py) and four copies of
bench/churn.c (built here): a service acting as a server (``churn-server.service``, closes
first) and a plain client calling it; a service acting as a client (``churn-client.service``)
and a plain server it calls; each client at RATE connections a second.  The plain peers run
in two placements, one after the other: **remote** (a peer namespace across a veth, as other
hosts are: each packet has one local end, the service's) and **local** (on loopback: both
ends are this host's, so the peers' ends are looked up too).  For each, in interleaved rounds,
a real hostsflowd (``pcap`` on the veth or lo at 1 in SAMPLING, ``systemd { }`` on the same
bus) with ``markTraffic = off`` and ``on``, each measured over WINDOW seconds after a warm-up:

* the agent's CPU (utime + stime from /proc/PID/stat), as % of one core;
* the traffic processes' CPU (their system time holds what the owner log's kernel programs
  cost per packet they send and receive), and the whole machine's busy time (/proc/stat);
* the samples taken and sent, and markTraffic's outcomes by reason (status file).

A last remote run with ``markTrafficHistory = 1024`` (far below two seconds of new
connections) shows the owner log overflowing: counted, logged once, and no sample lost.

Prints JSON (and writes it to ``--out``); the top-level figures are the remote placement's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from own_netns import rerun_inside  # bench/, the script's own folder
from result_file import emit

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RATE = 1000  #: new connections a second per client (two clients: 2,000 a second)
SAMPLING = 10
WARMUP, WINDOW = 4.0, 15.0
ROUNDS = 3
SMALL_HISTORY = 1024


def kit() -> Any:
    from hostsflow.testing import load_file_module

    return load_file_module("faults_kit", REPO / "tests" / "faults_kit.py")


def outer(a: argparse.Namespace) -> None:
    rerun_inside("hfchurn", __file__, ["--out", a.out, "--rate", str(a.rate), "--sampling", str(a.sampling),
                  "--rounds", str(a.rounds)])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its waited-for children), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def system_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """Seconds the whole machine's CPUs were busy (all but idle and iowait)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def config(um: Any, port: int, mark: bool, sampling: int, dev: str,
           history: int | None) -> str:
    extra = f"\n    markTrafficHistory = {history}" if history else ""
    return f"""
sflow {{
  collector {{ ip = 127.0.0.1 udpport = {port} }}
  sampling = {sampling}
  polling = 5
  pcap {{ dev = {dev} sampling = {sampling} }}
  systemd {{
    slice = app.slice
    bus = "{um.address}"
    markTraffic = {"on" if mark else "off"}{extra}
  }}
}}
"""


def measure(um: Any, collector: Any, traffic: list[int], mark: bool, sampling: int, dev: str,
            history: int | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="hfchurn-"))
    os.chmod(work, 0o755)
    # started with `ip netns exec` (its /sys shows this namespace's interfaces), the cgroup
    # mounts kept (tests/faults_kit.py NsAgent)
    agent = kit().NsAgent(config(um, collector.port, mark, sampling, dev, history), work,
                          os.environ["HOSTSFLOW_BENCH_NETNS"])
    try:
        time.sleep(WARMUP)
        if agent.proc.poll() is not None:
            raise SystemExit(f"agent exited: {agent.log()[-2000:]}")
        a0, b0, t0 = cpu_seconds(agent.pid), busy_seconds(), time.monotonic()
        s0 = [system_seconds(p) for p in traffic]
        c0 = [cpu_seconds(p) for p in traffic]
        spy = None
        if os.environ.get("CHURN_PROFILE") and mark:
            spy = subprocess.Popen(["py-spy", "record", "-p", str(agent.pid), "-d", str(int(WINDOW) - 2),
                                    "-f", "raw", "-o", os.environ["CHURN_PROFILE"], "-r", "200"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(WINDOW)
        if spy is not None:
            spy.wait()
        a1, b1, t1 = cpu_seconds(agent.pid), busy_seconds(), time.monotonic()
        s1 = [system_seconds(p) for p in traffic]
        c1 = [cpu_seconds(p) for p in traffic]
    finally:
        code = agent.stop()
        log = agent.log()
    status = json.loads(Path(agent.status_path).read_text())
    shutil.rmtree(work, ignore_errors=True)
    counters = status["counters"]
    wall = t1 - t0
    return {
        "exit": code,
        "agent_cpu_pct": round(100 * (a1 - a0) / wall, 2),
        "traffic_cpu_pct": round(100 * (sum(c1) - sum(c0)) / wall, 2),
        "traffic_sys_pct": round(100 * (sum(s1) - sum(s0)) / wall, 2),
        "machine_busy_pct": round(100 * (b1 - b0) / wall, 2),
        "flow_samples_taken": counters.get("flow_samples_taken", 0),
        "flow_samples_sent": counters.get("flow_samples_sent", 0),
        "marking": {k.removeprefix("systemd.marking."): v for k, v in counters.items()
                    if k.startswith("systemd.marking.")},
        "sockets": {k.removeprefix("sockets."): v for k, v in counters.items()
                    if k.startswith("sockets.")},
        "log_tail": log[-1500:] if not counters.get("flow_samples_taken") else "",
        "overflow_logged": sum('"owner_log_overflow"' in line or "] owner_log_overflow" in line
                               for line in log.splitlines()),
    }


class Veth:
    """This namespace joined by a veth pair to a peer namespace (the remote hosts): host end
    ``dev`` (``here``), peer end in namespace ``ns`` (``there``); offloads off."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}"
        self.ns, self.dev, peer = f"hfchp{tag}", f"hfcha{tag}", f"hfchb{tag}"
        self.here, self.there = "10.77.0.1", "10.77.0.2"
        run = lambda *c: subprocess.run(c, check=True)  # noqa: E731
        run("ip", "netns", "add", self.ns)
        run("ip", "link", "add", self.dev, "type", "veth", "peer", "name", peer, "netns", self.ns)
        for pre, dev, ip in (((), self.dev, self.here), (("ip", "netns", "exec", self.ns), peer,
                                                          self.there)):
            run(*pre, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off")
            run(*pre, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            run(*pre, "ip", "link", "set", dev, "up")
        run("ip", "-n", self.ns, "link", "set", "lo", "up")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.dev], check=False)
        subprocess.run(["ip", "netns", "del", self.ns], check=False)


def placement(a: argparse.Namespace, um: Any, churn: Path, fixtures: Any, collector: Any,
              where: str) -> dict[str, Any]:
    """markTraffic off and on with the plain peers ``where``: "remote" (a peer namespace
    across a veth: the usual case, one local end per packet) or "local" (loopback: both ends
    are this host's, so the peers' ends are looked up too)."""
    veth = Veth() if where == "remote" else None
    here, there = (veth.here, veth.there) if veth else ("127.0.0.1", "127.0.0.1")
    dev = veth.dev if veth else "lo"
    peer = ["ip", "netns", "exec", veth.ns] if veth else []
    plain: list[subprocess.Popen[str]] = []
    svc_port, plain_port = 23080, 23081
    result: dict[str, Any] = {}
    try:
        um.add_service("churn-server", [str(churn), "server", here, str(svc_port)])
        plain.append(subprocess.Popen([*peer, str(churn), "server", there, str(plain_port)],
                                      stdout=subprocess.PIPE, text=True))
        assert plain[0].stdout is not None and plain[0].stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((here, svc_port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        um.add_service("churn-client", [str(churn), "client", there, str(plain_port),
                                        str(a.rate)])
        plain.append(subprocess.Popen([*peer, str(churn), "client", here, str(svc_port),
                                       str(a.rate)], stdout=subprocess.PIPE, text=True))
        traffic = [p.pid for p in plain] + um.pids("churn-server") + um.pids("churn-client")
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for _ in range(a.rounds):
            for name in ("off", "on"):
                runs[name].append(measure(um, collector, traffic, name == "on", a.sampling, dev))
        for name, rs in runs.items():
            result[name] = {"runs": rs, **{k: round(statistics.median(r[k] for r in rs), 2)
                                           for k in ("agent_cpu_pct", "traffic_cpu_pct",
                                                     "traffic_sys_pct", "machine_busy_pct")}}
        for k in ("agent_cpu_pct", "traffic_sys_pct", "machine_busy_pct"):
            result[f"added_{k}"] = round(result["on"][k] - result["off"][k], 2)
        if where == "remote":
            result["small_history"] = {"markTrafficHistory": SMALL_HISTORY, **measure(
                um, collector, traffic, True, a.sampling, dev, SMALL_HISTORY)}
        plain[1].terminate()  # the connections it made (it prints "done failed" every second)
        result["plain_client_last_report"] = (plain[1].communicate(timeout=5)[0].splitlines()
                                              or ["?"])[-1]
    finally:
        for p in plain:
            if p.poll() is None:
                p.terminate()
                p.wait(5)
        for unit in ("churn-server", "churn-client"):
            try:
                um.stop_unit(unit)
            except Exception:  # noqa: BLE001 - the manager's own stop kills what is left
                pass
        if veth is not None:
            veth.close()
    return result


def inner(a: argparse.Namespace) -> None:
    from hostsflow.testing import UdpCollector

    fk = kit()
    fixtures = fk.user_manager_class()
    why = fixtures._why_not()
    if why:
        raise SystemExit(f"mark_churn.py: {why}")
    build = Path(tempfile.mkdtemp(prefix="hfchurn-build-"))
    os.chmod(build, 0o755)
    churn = build / "churn"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(churn), str(BENCH / "churn.c")], check=True)
    um = fixtures.UserManager()
    result: dict[str, Any] = {"rate_per_client": a.rate, "clients": 2, "sampling": a.sampling,
                              "window_s": WINDOW, "rounds": a.rounds}
    try:
        um.start()
        with UdpCollector() as collector:
            for where in ("remote", "local"):
                result[where] = placement(a, um, churn, fixtures, collector, where)
    finally:
        um.stop()
        shutil.rmtree(build, ignore_errors=True)
    # the headline figures are the usual case's: peers on other hosts
    result.update({k: v for k, v in result["remote"].items() if k != "plain_client_last_report"})
    emit(result, a.out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--rate", type=int, default=RATE)
    ap.add_argument("--sampling", type=int, default=SAMPLING)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("mark_churn.py: needs root (a network namespace, cgroups, systemd --user)")
    inner(a) if a.inner else outer(a)


if __name__ == "__main__":
    main()
