#!/usr/bin/env python3
"""What the tcp module and systemd's markTraffic add per sampled TCP packet, with 10,000
sockets open.

Creates a network namespace (unique name, removed at the end) and re-runs itself inside it
(``nsenter --net``: the cgroup mounts stay visible).
There it moves itself into a fresh cgroup ``hfbench-PID.slice/bench.service`` (so its sockets
carry that cgroup id, as a service's would), opens 5,000 loopback TCP connections (10,001
sockets: 127.0.0.1 clients, a 127.0.0.2 listener), and feeds samples to three in-process
agents: no plugins, ``tcp``, ``tcp`` + ``systemd { markTraffic = on }`` (its service table fed
the unit as the D-Bus watcher would).  Each capture batch is driven to the end as the agent
loop would: phase 1, what the plugins scheduled with call_soon, the sock_diag replies read by
the plugins' reader callbacks, phase 2, encode.  CPU = thread time (the kernel's sock_diag work
included, the wait for a late reply excluded), per batch divided by its size.

Three cases:

* worst case, one sample at a time (top-level keys ``none`` / ``tcp`` / ``tcp+systemd``): 1,500
  samples, each of another connection, so no answer can be reused: one sock_diag lookup per
  sample, which the core shares between tcp and systemd; systemd asks the owner log first
  (one bpf(2) map lookup).  Samples are tagged with this namespace and sent (the client's end
  is the local one), as a NIC's traffic would be;
* worst case in batches (``batched``): the same, ``BATCH`` samples per capture batch;
* realistic traffic (``realistic``): a traffic process in the same cgroup runs bulk transfers
  (``BULK`` connections, 16 KB writes paced to ~``BULK_RATE`` a second each) and short
  request/response connections (~``RR_RATE`` a second: connect, 200 bytes up, 2,000 down,
  close) from 127.0.0.1 to 127.0.0.2 while the 10,001 idle sockets stay open; the packets are
  captured (AF_PACKET on lo, received copies), sampled 1 in ``SAMPLING`` at random, grouped into
  capture batches of ``WINDOW`` seconds, and replayed through each agent with the agent clock
  following the capture times (so answers are reused as they would be live).  The traffic is
  paused (SIGSTOP) during the replay: its sockets stay as they were, short connections
  included (closed ones are in TIME_WAIT or gone: a lookup that finds no tcp_info).

Prints JSON (and writes it to ``--out``): per case and agent the median and p90 CPU us per
sample, the records the samples got, and ``added_median_us`` (median minus the no-plugin
agent's median).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any
from own_netns import rerun_inside  # bench/, the script's own folder
from result_file import emit

N_CONN = 5000
N_SAMPLES = 1500
#: samples per capture batch in the batched worst case
BATCH = 16
#: realistic traffic: bulk connections, 16 KB writes per second on each, short
#: request/response connections per second, capture seconds, 1-in-N sampling, capture batch
BULK, BULK_RATE, RR_RATE = 8, 400, 60
CAPTURE_SECONDS, SAMPLING, WINDOW = 4.0, 10, 0.02
#: each case is run this many times per agent (interleaved, fresh agents), figures pooled
ROUNDS = 3


def outer(a: argparse.Namespace) -> None:
    rerun_inside("hfmark", __file__, ["--out", a.out])


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


def run_ready(loop: Any) -> None:
    """Run the callbacks the loop has ready (what its next iteration would do before it
    selects): the tcp and systemd modules' batch flush, scheduled with call_soon during
    phase 1."""
    ready = loop._ready
    while ready:
        ready.popleft()._run()


def drive(h: Any, batches: list[list[Any]], at: list[float] | None = None) -> list[float]:
    """CPU us per sample of each capture batch (its CPU time divided by its size, once per
    sample) through the whole pipeline: phase 1 for the batch, what the modules scheduled
    with call_soon, the replies, phase 2 and the encoder.  ``at``: the capture time of each
    batch; the agent clock is moved along with it (outside the timing)."""
    agent, loop = h.agent, h.loop
    poller = select.poll()
    for fd in agent._readers:
        poller.register(fd, select.POLLIN)
    readers = {fd: loop._selector.get_key(fd).data[0] for fd in agent._readers}
    out = []
    for i, group in enumerate(batches):
        if at is not None and i:
            h.clock.advance(at[i] - at[i - 1])
        t0 = time.thread_time()
        h.feed(*group)
        run_ready(loop)
        while any(s.held for s in group):
            ready = poller.poll(1000)
            if not ready:
                raise SystemExit("no sock_diag reply within 1 s")
            for fd, _ in ready:
                readers[fd]._run()
        out += [(time.thread_time() - t0) * 1e6 / len(group)] * len(group)
        if len(agent.exporter.pending) >= 50:
            agent.exporter.flush()
            h.sink.datagrams.clear()
    return out


def singles(samples: list[Any]) -> list[list[Any]]:
    return [[s] for s in samples]


def batched(samples: list[Any], n: int) -> list[list[Any]]:
    return [samples[i:i + n] for i in range(0, len(samples), n)]


def client_tuples(socks: list[socket.socket], offset: int) -> list[tuple[str, int, str, int]]:
    """(local, lport, remote, rport) of the client sockets of every third connection, from
    ``offset``, N_SAMPLES at most."""
    clients = [socks[1 + 2 * i] for i in range(offset, len(socks) // 2, 3)][:N_SAMPLES]
    return [(*c.getsockname(), *c.getpeername()) for c in clients]


def summary(cpu: list[float], samples: list[Any]) -> dict[str, Any]:
    """Median and p90 of the per-sample CPU figures, and the records the samples got (per
    round)."""
    from hostsflow.sflow.records import ExtendedEntities, ExtendedTcpInfo

    cpu = sorted(cpu)
    return {
        "samples": len(samples) // ROUNDS, "median_us": round(statistics.median(cpu), 2),
        "p90_us": round(cpu[int(0.9 * len(cpu))], 2),
        "extended_tcp_info": sum(isinstance(r, ExtendedTcpInfo) for s in samples
                                 for r in s.records) // ROUNDS,
        "extended_entities": sum(isinstance(r, ExtendedEntities) for s in samples
                                 for r in s.records) // ROUNDS,
    }


def capture(seconds: float, sampling: int, window: float
            ) -> tuple[list[float], list[list[tuple[bytes, float]]], int]:
    """Capture the packets on lo for ``seconds`` (the received copy of each: lo shows every
    packet twice), sample 1 in ``sampling`` at random, and group the samples into capture
    batches of ``window`` seconds.  Returns (batch capture times, batches of (frame: the first
    128 bytes, wall-clock capture time), packets seen)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind(("lo", 0))
    sock.settimeout(0.05)
    rng = random.Random(1)
    times: list[float] = []
    batches: list[list[tuple[bytes, float]]] = []
    seen = 0
    start = time.monotonic()
    try:
        while (now := time.monotonic()) - start < seconds:
            try:
                frame, addr = sock.recvfrom(128, socket.MSG_TRUNC)
            except TimeoutError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            seen += 1
            if rng.randrange(sampling):
                continue
            if not times or now - times[-1] >= window:
                times.append(now)
                batches.append([])
            batches[-1].append((frame, time.time()))
    finally:
        sock.close()
    return times, batches, seen


def flow_sample(frame: bytes, at: float) -> Any:
    """A flow sample of a frame captured at wall-clock time ``at``, as the pcap module builds
    it, seen in this namespace."""
    from hostsflow.samples import DIRECTION_RECEIVED, DIRECTION_SENT, DataSource, FlowSample
    from hostsflow.sflow.records import SampledHeader

    # 127.0.0.1 plays this host (the clients), 127.0.0.2 the remote end (the server)
    sent = frame[26:30] == b"\x7f\x00\x00\x01"
    return FlowSample(source=DataSource(0, 1), sampling_rate=SAMPLING,
                      records=[SampledHeader(1, len(frame) + 4, 4, frame[:128])],
                      direction=DIRECTION_SENT if sent else DIRECTION_RECEIVED, timestamp=at,
                      netns=HERE)


def traffic() -> None:
    """The realistic traffic (runs in its own process until killed): a server on 127.0.0.2,
    ``BULK`` paced bulk senders and a loop of short request/response connections from
    127.0.0.1.  Prints "ready" once everything runs."""
    import ctypes
    import threading

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the benchmark
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.2", 0))
    srv.listen(1024)
    addr = srv.getsockname()

    def serve(c: socket.socket) -> None:
        with c:
            first = c.recv(65536)
            if first.startswith(b"GET"):
                c.sendall(b"x" * 2000)
                while c.recv(65536):
                    pass
            else:
                while c.recv(1 << 20):
                    pass

    def accept() -> None:
        while True:
            c, _ = srv.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    def bulk() -> None:
        c = socket.socket()
        c.bind(("127.0.0.1", 0))
        c.connect(addr)
        chunk = b"b" * 16384
        while True:
            c.sendall(chunk)
            time.sleep(1 / BULK_RATE)

    def request_response() -> None:
        while True:
            with socket.socket() as c:
                c.bind(("127.0.0.1", 0))
                c.connect(addr)
                c.sendall(b"GET " + b"r" * 196)
                got = 0
                while got < 2000:
                    got += len(c.recv(65536))
            time.sleep(1 / RR_RATE)

    threading.Thread(target=accept, daemon=True).start()
    for _ in range(BULK):
        threading.Thread(target=bulk, daemon=True).start()
    threading.Thread(target=request_response, daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def requests(h: Any) -> int:
    """sock_diag requests made so far for every module (the core's ``agent.sockets``)."""
    return h.agent._sockets.stats["lookups"] if h.agent._sockets is not None else 0


#: samples carry the namespace they were captured in (this one), so which end is local is
#: the capture's direction (sent: the client's), as for a NIC's traffic, where exactly one
#: end is this host's; on loopback both would be, and the tcp module (hsflowd's rule) skips
#: those
HERE = f"/proc/{os.getpid()}/ns/net"


def inner(a: argparse.Namespace) -> None:
    from hostsflow.host.interfaces import Interface, InterfaceTable
    from hostsflow.testing import AgentHarness
    from hostsflow_systemd.module import SystemdModule
    from hostsflow_tcp.module import TcpModule

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * N_CONN + 200:
        sys.exit(f"mark_cost.py: the open-files hard limit is {hard}; need {2 * N_CONN + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    slice_ = f"hfbench{os.getpid()}.slice"
    cg = Cgroup(f"/{slice_}/bench.service")
    socks: list[socket.socket] = []
    harnesses = []
    gen: subprocess.Popen[bytes] | None = None
    try:
        socks = connections(N_CONN)
        # one-at-a-time samples from every third connection, batched ones from the next
        tuples = client_tuples(socks, 0)
        btuples = client_tuples(socks, 1)
        table = InterfaceTable([Interface("lo", 1, addresses=["127.0.0.1"])])
        conf = "sflow { collector { ip = 127.0.0.1 } %s }"
        variants = [
            ("none", conf % "", dict),
            ("tcp", conf % "tcp { }", lambda: {"tcp": TcpModule()}),
            ("tcp+systemd", conf % f"tcp {{ }} systemd {{ markTraffic = on slice = {slice_} }}",
             lambda: {"tcp": TcpModule(), "systemd": SystemdModule()}),
        ]
        gen = subprocess.Popen([sys.executable, __file__, "--traffic"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
        assert gen.stdout is not None
        gen.stdout.readline()  # "ready": the server listens, the clients run
        times, captured, seen = capture(CAPTURE_SECONDS, SAMPLING, WINDOW)
        gen.send_signal(signal.SIGSTOP)  # paused: its sockets stay as they are
        result: dict[str, Any] = {
            "sockets_open": len(socks), "rounds": ROUNDS, "batched": {"batch": BATCH},
            "realistic": {"packets_captured": seen, "sampling": SAMPLING, "window_s": WINDOW,
                          "batches": len(captured), "traffic": f"{BULK} bulk connections "
                          f"({BULK_RATE} x 16 KB/s each), {RR_RATE} request/response "
                          "connections/s, 127.0.0.1 <-> 127.0.0.2"}}
        # ROUNDS rounds, the agents interleaved, each round with fresh agents (so no answer
        # is cached from an earlier round); the figures of all rounds are pooled
        cpu: dict[tuple[str, str], list[float]] = {}
        done: dict[tuple[str, str], list[Any]] = {}
        sent: dict[str, int] = {}
        for _ in range(ROUNDS):
            for name, text, make in variants:
                plugins = make()
                h = AgentHarness(text, modules=plugins, interfaces=table)
                harnesses.append(h)
                h.start()
                sd = plugins.get("systemd")
                if sd is not None:
                    sd._on_units({"bench.service": f"/{slice_}/bench.service"})
                    assert len(sd.table) == 1, "the bench service was not taken up"
                def sample(t: tuple[str, int, str, int]) -> Any:
                    return h.make_sample(tcp=t, direction=2, netns=HERE)

                warm = [sample(t) for t in tuples[:50]]
                drive(h, singles(warm))  # warm-up: first channel use, code paths
                cases = {
                    "single": singles([sample(t) for t in tuples[50:]]),
                    "batched": batched([sample(t) for t in btuples], BATCH),
                    "realistic": [[flow_sample(frame, at) for frame, at in b] for b in captured],
                }
                for case, batches in cases.items():
                    before = requests(h)
                    cpu.setdefault((case, name), []).extend(
                        drive(h, batches, times if case == "realistic" else None))
                    done.setdefault((case, name), []).extend(s for b in batches for s in b)
                    if case == "realistic":
                        sent[name] = sent.get(name, 0) + requests(h) - before
                    h.flush()
                h.stop()
                harnesses.remove(h)
        for (case, name), figures in cpu.items():
            r = {"single": result, "batched": result["batched"],
                 "realistic": result["realistic"]}[case]
            r[name] = summary(figures, done[(case, name)])
            if case == "realistic":
                r[name]["sock_diag_requests"] = sent[name] // ROUNDS
        for r in (result, result["batched"], result["realistic"]):
            base = r["none"]["median_us"]
            for name in ("tcp", "tcp+systemd"):
                r[name]["added_median_us"] = round(r[name]["median_us"] - base, 2)
    finally:
        if gen is not None:
            gen.kill()
            gen.wait()
        for h in harnesses:
            h.stop()
        for s in socks:
            s.close()
        cg.close()
    emit(result, a.out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--traffic", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.traffic:
        traffic()
        return
    if os.geteuid() != 0:
        sys.exit("mark_cost.py: needs root (a network namespace, a cgroup)")
    inner(a) if a.inner else outer(a)


if __name__ == "__main__":
    main()
