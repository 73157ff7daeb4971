#!/usr/bin/env python3
"""What the fleet collector (``hostsflow view``: the aggregator, the edge joiner and the
Prometheus metrics) costs at 100 agents x 500 samples a second, against pmacct's sfacctd
aggregating the same replayed stream in the same run.

The stream: ``--agents`` agents (each its own agent address, three services marked with
extended_entities, calling services of other agents and called by clients without an agent,
a few hundred connections each), ``--rate`` flow samples a second per agent with 128-byte
sampled headers, packed 8 to a datagram as agents pack them, and each agent's counter samples
(host_descr and the services' virt_* records) every 5 s.  Two seconds of datagrams are encoded
first, then replayed over UDP on loopback, paced in 10 ms batches, for ``--seconds`` to one
collector and then to the other:

* ``hostsflow view`` on loopback ports of its own;
* ``sfacctd`` (print plugin, JSON) aggregating by src/dst host, ports and protocol, with the
  same 4 MiB receive buffer as the view and an 8 MiB pipe to its print plugin (with its
  defaults it dropped half the stream at 5 % of a core: the pipe, not its CPU); the plugin is
  a child process: the CPU and RSS of both are added.

For each: CPU (utime + stime of the process tree, /proc), as cores and per sample received;
RSS sampled every second; samples the collector counted (hostsflow: its ``/api/snapshot``
stats; sfacctd: the packets of its printed aggregates) against samples sent.

Prints JSON (and writes it to ``--out``).  Targets: the collector under one core while it
keeps up (under 1 % lost), and its memory bounded: the view keeps 300 s of per-second history,
so its RSS grows for that long by design; from then on the second half's largest RSS must be
within 5 % of the first half's.  The default run (390 s each) is long enough to judge it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hostsflow.testing import end_process
from hostsflow.tools.aggregate import DEFAULT_HISTORY
from hostsflow.tools.decode import RECEIVE_BUFFER
from result_file import emit

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SFACCTD = "/usr/sbin/sfacctd"
PER_DATAGRAM = 8
VIEW_MAIN = "import sys; from hostsflow.cli import tools_main; sys.exit(tools_main())"
BATCH_S = 0.01
LOOP_S = 2  # seconds of distinct datagrams, replayed in a loop
PRINT_S = 5  # sfacctd's print interval
FILLED_S = DEFAULT_HISTORY + 10  # seconds until the view's history (and its memory) is full
JUDGED_S = 60  # seconds after that to judge that its memory stays where it is
SERVICES = ((80, "nginx.service"), (8080, "app.service"), (5432, "postgresql@15-main.service"))


def make_stream(agents: int, rate: int, seed: int = 11) -> tuple[list[list[bytes]], int]:
    """Datagrams per 10 ms batch for LOOP_S seconds, and the flow samples in them."""
    from hostsflow.samples import DataSource
    from hostsflow.sflow.datagram import DatagramHeader, encode_datagram
    from hostsflow.sflow.records import ExtendedEntities, VirtCpu, VirtMemory, VirtNetIo
    from hostsflow.testing import encoded_flow_sample, encoded_names_sample, ethernet_frame

    rng = random.Random(seed)
    addrs = [f"10.{200 + i // 250}.{i % 250}.{1 + i % 200}" for i in range(agents)]
    batches_per_s = round(1 / BATCH_S)
    batches: list[list[bytes]] = [[] for _ in range(LOOP_S * batches_per_s)]
    total = 0
    seq = 0
    for a, addr in enumerate(addrs):
        counters = [encoded_names_sample(DataSource(2, 1), f"host{a}")]
        for idx, (_port, name) in enumerate(SERVICES, 1):
            counters.append(encoded_names_sample(
                DataSource(3, idx), name, VirtCpu(cpuTime=1000 * idx),
                VirtMemory(memory=10_000_000, maxMemory=0),
                VirtNetIo(bytes_in=5000, bytes_out=7000)))
        pending: list[bytes] = []
        per_batch = rate * BATCH_S
        for b in range(len(batches)):
            due = round((b + 1) * per_batch) - round(b * per_batch)
            for _ in range(due):
                idx = rng.randrange(len(SERVICES))
                port = SERVICES[idx][0]
                if rng.random() < 0.5:  # called by a client: another agent or an outsider
                    peer = addrs[rng.randrange(agents)] if rng.random() < 0.5 else \
                        f"192.0.2.{rng.randrange(1, 250)}"
                    cport = 33000 + rng.randrange(300)
                    inbound = rng.random() < 0.5
                    tcp = (peer, cport, addr, port) if inbound else (addr, port, peer, cport)
                    ent = ExtendedEntities(0, 0, 3, idx + 1) if inbound else \
                        ExtendedEntities(3, idx + 1, 0, 0)
                else:  # calling the next tier on another agent
                    peer = addrs[rng.randrange(agents)]
                    cport = 40000 + rng.randrange(300)
                    outbound = rng.random() < 0.5
                    nport = SERVICES[(idx + 1) % len(SERVICES)][0]
                    tcp = (addr, cport, peer, nport) if outbound else (peer, nport, addr, cport)
                    ent = ExtendedEntities(3, idx + 1, 0, 0) if outbound else \
                        ExtendedEntities(0, 0, 3, idx + 1)
                frame = ethernet_frame(tcp=tcp, payload=bytes(rng.randrange(60, 1400)))
                pending.append(encoded_flow_sample(frame, 100, ent))
                total += 1
            if b % (5 * batches_per_s) == 0:
                pending = counters + pending
            while len(pending) >= PER_DATAGRAM or (pending and b == len(batches) - 1):
                seq += 1
                batches[b].append(encode_datagram(DatagramHeader(addr, 0, seq, 1000),
                                                  pending[:PER_DATAGRAM]))
                pending = pending[PER_DATAGRAM:]
    for batch in batches:
        rng.shuffle(batch)
    return batches, total


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """``pid`` and its children (one level: sfacctd's plugins)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except OSError:
                pass
    return [pid, *kids]


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at the IPv4 UDP socket bound to ``port`` (its receive
    queue full: the collector did not keep up), from /proc/net/udp."""
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                return int(fields[-1])
    return 0


def replay(port: int, batches: list[list[bytes]], seconds: float, pids: list[int]) -> dict:
    """Send the stream to ``port`` for ``seconds``; CPU and RSS of ``pids`` while it runs,
    datagrams the socket dropped."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dest = ("127.0.0.1", port)
    drops0 = udp_drops(port)
    cpu0 = cpu_seconds(pids)
    t0 = time.monotonic()
    rss: list[float] = []
    drops_seen: list[int] = []  # the socket's drops so far, each second
    sent = 0
    n = 0
    next_rss = t0 + 1
    while True:
        due = t0 + n * BATCH_S
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        for dgram in batches[n % len(batches)]:
            try:
                sock.sendto(dgram, dest)
                sent += 1
            except OSError:
                pass
        n += 1
        if time.monotonic() >= next_rss:
            rss.append(rss_mb(pids))
            drops_seen.append(udp_drops(port) - drops0)
            next_rss += 1
    elapsed = time.monotonic() - t0
    time.sleep(1.0)  # the receive queue drains
    cpu = cpu_seconds(pids) - cpu0
    drops = udp_drops(port) - drops0
    sock.close()
    return {"seconds": round(elapsed, 2), "datagrams_sent": sent, "batches": n,
            "datagrams_dropped_by_socket": drops,
            # when they were dropped: in each 30 s of the run
            "drops_every_30s": [b - a for a, b in zip([0, *drops_seen[29::30]],
                                                       drops_seen[29::30])],
            "cpu_s": round(cpu, 2), "cores": round(cpu / elapsed, 3),
            "rss_mb_max": round(max(rss), 1) if rss else None,
            **memory_after_filling(rss)}


def memory_after_filling(rss: list[float]) -> dict:
    """RSS once the collector's tables are full, in two halves.

    The view keeps ``DEFAULT_HISTORY`` seconds of per-second points and flow keys, so its
    memory grows for that long by design; whether it is bounded shows only after that.  The
    seconds from FILLED_S on are split in two; ``rss_mb_first_half_max`` and
    ``rss_mb_second_half_max`` are the largest of each (None when the run was too short to
    judge: fewer than JUDGED_S seconds after filling).  ``rss_mb_every_30s`` is the curve."""
    after = rss[FILLED_S:]
    half = len(after) // 2
    judged = len(after) >= JUDGED_S
    return {"rss_mb_every_30s": [round(x, 1) for x in rss[29::30]],
            "rss_mb_filled_after_s": FILLED_S,
            "rss_mb_first_half_max": round(max(after[:half]), 1) if judged else None,
            "rss_mb_second_half_max": round(max(after[half:]), 1) if judged else None}


def samples_sent(batches: list[list[bytes]], n_batches: int, per_loop: int) -> int:
    loops, rest = divmod(n_batches, len(batches))
    from hostsflow.sflow.datagram import DecodedFlowSample, decode_datagram

    extra = sum(sum(isinstance(s, DecodedFlowSample) for s in decode_datagram(d).samples)
                for b in batches[:rest] for d in b)
    return loops * per_loop + extra


def run_hostsflow(batches: list[list[bytes]], per_loop: int, seconds: float,
                  work: Path) -> dict:
    sflow, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    log = open(work / "view.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", VIEW_MAIN, "view", "--listen-sflow", f"127.0.0.1:{sflow}",
         "--http", f"127.0.0.1:{http}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}/"

    def stats() -> dict:
        with urllib.request.urlopen(base + "api/snapshot", timeout=10) as r:
            return json.loads(r.read())["stats"]

    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                before = stats()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("hostsflow view did not start")
                time.sleep(0.2)
        out = replay(sflow, batches, seconds, [proc.pid])
        after = stats()
        with urllib.request.urlopen(base + "api/edges", timeout=10) as r:
            edges = json.loads(r.read())
        with urllib.request.urlopen(base + "metrics", timeout=10) as r:
            metrics = r.read().decode()
        sent = samples_sent(batches, out["batches"], per_loop)
        got = after["flow_samples"] - before["flow_samples"]
        out.update(samples_sent=sent, samples_counted=got,
                   loss_pct=round(100 * (1 - got / sent), 2) if sent else None,
                   us_per_sample=round(1e6 * out["cpu_s"] / got, 2) if got else None,
                   edges=len(edges["edges"]),
                   metric_series=sum(1 for line in metrics.splitlines()
                                     if line and not line.startswith("#")))
        return out
    finally:
        end_process(proc, signal.SIGINT)
        log.close()


def run_sfacctd(batches: list[list[bytes]], per_loop: int, seconds: float, work: Path) -> dict:
    port = free_port(socket.SOCK_DGRAM)
    out_path = work / "sfacctd.json"
    conf = work / "sfacctd.conf"
    # the same receive buffer as hostsflow view asks for (4 MiB), and room between its core
    # process and the print plugin, so that a drop is its CPU's and not a small default's
    conf.write_text(f"sfacctd_ip: 127.0.0.1\nsfacctd_port: {port}\nplugins: print\n"
                    f"print_output: json\nprint_refresh_time: {PRINT_S}\n"
                    "aggregate: src_host,dst_host,src_port,dst_port,proto\n"
                    f"sfacctd_pipe_size: {RECEIVE_BUFFER}\nplugin_pipe_size: 8388608\n"
                    "plugin_buffer_size: 65536\n")
    proc = subprocess.Popen(
        [SFACCTD, "-f", str(conf)],
        stdout=open(out_path, "wb"), stderr=open(work / "sfacctd.log", "wb"))
    try:
        time.sleep(1.0)  # its plugin forked, the socket bound
        if proc.poll() is not None:
            raise RuntimeError(f"sfacctd exited: {(work / 'sfacctd.log').read_text()[-500:]}")
        pids = tree(proc.pid)
        out = replay(port, batches, seconds, pids)
        time.sleep(PRINT_S + 1)  # its last interval printed (SIGINT does not print it)
    finally:
        end_process(proc, signal.SIGINT, timeout=15)
    got = 0
    for line in out_path.read_text(errors="replace").splitlines():
        try:
            got += int(json.loads(line).get("packets", 0))
        except ValueError:
            pass
    sent = samples_sent(batches, out["batches"], per_loop)
    out.update(samples_sent=sent, samples_counted=got,
               loss_pct=round(100 * (1 - got / sent), 2) if sent else None,
               us_per_sample=round(1e6 * out["cpu_s"] / got, 2) if got else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rate", type=int, default=500, help="flow samples a second per agent")
    ap.add_argument("--seconds", type=float, default=FILLED_S + JUDGED_S + 20,
                    help="of replay, each collector (memory is judged only past "
                         f"{FILLED_S + JUDGED_S} s)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t0 = time.monotonic()
    batches, per_loop = make_stream(a.agents, a.rate)
    build_s = time.monotonic() - t0
    with tempfile.TemporaryDirectory(prefix="hostsflow-collector-cost-") as tmp:
        work = Path(tmp)
        ours = run_hostsflow(batches, per_loop, a.seconds, work)
        peer = run_sfacctd(batches, per_loop, a.seconds, work) if os.path.exists(SFACCTD) \
            else {"error": f"{SFACCTD} missing"}
    ratio = (ours["us_per_sample"] / peer["us_per_sample"]
             if ours.get("us_per_sample") and peer.get("us_per_sample") else None)
    first, second = ours.get("rss_mb_first_half_max"), ours.get("rss_mb_second_half_max")
    emit({"agents": a.agents, "samples_per_agent_s": a.rate,
          "offered_samples_s": a.agents * a.rate, "seconds": a.seconds,
          "stream_build_s": round(build_s, 1), "per_datagram": PER_DATAGRAM,
          "hostsflow": ours, "sfacctd": peer,
          "ratio_us_per_sample": round(ratio, 2) if ratio else None,
          # under one core while keeping up: a collector starved of CPU also shows < 1 core
          "target_under_one_core": ours["cores"] < 1.0 and (ours.get("loss_pct") or 0) < 1.0,
          # None: the run ended before the tables were full and could not judge it
          "target_bounded_memory": None if first is None or second is None
          else second <= 1.05 * first}, a.out)


if __name__ == "__main__":
    main()
