"""Helpers for the collector-tool tests: datagrams made with the agent's own encoder (floods of
service names, plain traffic), a real ``hostsflow view`` / ``top`` / ``decode`` process, and
what the kernel says about a process (CPU time, open descriptors, memory)."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from hostsflow.samples import DataSource
from hostsflow.sflow.datagram import DatagramHeader, encode_datagram
from hostsflow.sflow.records import ExtendedEntities, ExtendedTcpInfo
from hostsflow.testing import (
    encoded_flow_sample,
    encoded_names_sample,
    end_process,
    ethernet_frame,
)

TOOLS = "import sys; from hostsflow.cli import tools_main; sys.exit(tools_main())"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def datagram(samples: list[bytes], agent: str = "192.0.2.1", seq: int = 1) -> bytes:
    return encode_datagram(DatagramHeader(agent, 0, seq, 1000), samples)


def names_sample(index: int, name: str) -> bytes:
    """A counter sample naming service ``3:index`` ``name``."""
    return encoded_names_sample(DataSource(3, index), name)


def host_sample(hostname: str = "web1") -> bytes:
    return encoded_names_sample(DataSource(2, 1), hostname)


def flow(frame: bytes, rate: int, src: tuple[int, int] = (0, 0), dst: tuple[int, int] = (0, 0),
         tcp: ExtendedTcpInfo | None = None) -> bytes:
    recs: list[Any] = []
    if src != (0, 0) or dst != (0, 0):
        recs.append(ExtendedEntities(src[0], src[1], dst[0], dst[1]))
    if tcp is not None:
        recs.append(tcp)
    return encoded_flow_sample(frame, rate, *recs)


def name_flood(total: int = 15_000, datagrams: int = 30, agent: str = "192.0.2.66",
               prefix: str = "spoof", spread: bool = False) -> list[bytes]:
    """``datagrams`` datagrams carrying ``total`` distinct made-up service names between them
    (each also with one flow sample naming one of them, as an agent's would), all from
    ``agent`` or, with ``spread``, each from another made-up agent address."""
    per = total // datagrams
    frame = ethernet_frame(udp=("198.51.100.9", 5000, "192.0.2.66", 53), payload=bytes(60))
    out = []
    for d in range(datagrams):
        samples = [names_sample(1000 + d * per + i, f"{prefix}-{d * per + i}.service")
                   for i in range(per)]
        samples.append(flow(frame, 10, dst=(3, 1000 + d * per)))
        out.append(datagram(samples, agent=f"198.18.0.{d + 1}" if spread else agent, seq=d + 1))
    return out


def send_all(addr: tuple[str, int], datagrams: list[bytes], pause: float = 0.0) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, addr)
            if pause:
                time.sleep(pause)


def raise_fd_limit(n: int) -> None:
    """Let this (root) process open ``n`` descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(hard, n)))


class ToolProcess:
    """A ``hostsflow ARGS...`` process (stdout and stderr to files in ``workdir``); ``nofile``
    sets its descriptor limit."""

    def __init__(self, args: list[str], workdir: Path, nofile: int | None = None,
                 **popen: Any) -> None:
        self.out = workdir / f"{args[0]}-{os.getpid()}-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([sys.executable, "-c", TOOLS, *args],
                                     stdout=open(self.out, "wb"), stderr=open(self.err, "wb"),
                                     preexec_fn=limit, **popen)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stderr_bytes(self) -> int:
        return self.err.stat().st_size

    def text(self) -> str:
        return (self.out.read_text(errors="replace") + self.err.read_text(errors="replace"))

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 10 s); the exit status."""
        return end_process(self.proc, timeout=10)


def start_view(workdir: Path, window: int = 5, extra: list[str] | None = None,
               nofile: int | None = None, sflow_ip: str = "127.0.0.1",
               ) -> tuple[ToolProcess, tuple[str, int], str]:
    """A real view on free ports, its page on loopback, its sFlow port on ``sflow_ip``:
    (process, sFlow address, base URL), once it answers."""
    sflow, http = free_port(socket.SOCK_DGRAM), free_port()
    view = ToolProcess(["view", "--listen-sflow", f"{sflow_ip}:{sflow}", "--http",
                        f"127.0.0.1:{http}", "--window", str(window), *(extra or [])],
                       workdir, nofile=nofile)
    base = f"http://127.0.0.1:{http}/"
    deadline = time.monotonic() + 20
    while True:
        try:
            get_json(base + "api/snapshot")
            break
        except OSError:
            if view.proc.poll() is not None or time.monotonic() > deadline:
                view.stop()
                raise AssertionError(f"view did not start: {view.text()[-2000:]}") from None
            time.sleep(0.1)
    return view, (sflow_ip, sflow), base


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def timed_get(url: str, timeout: float = 5) -> tuple[float, bytes, dict[str, str]]:
    """(seconds, body, headers) of one GET."""
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
        headers = dict(r.headers.items())
    return time.monotonic() - t0, body, headers
