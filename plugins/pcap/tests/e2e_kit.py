"""Helpers for the end-to-end tests: a collector socket inside a namespace and the two Debian
decoders (sfcapd + nfdump, sfacctd) run as collectors in the same namespace.  The agent itself
runs as tests/agent_process.py's AgentProcess with ``netns=``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from hostsflow.sflow.datagram import DecodedFlowSample, decode_datagram

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def udp_socket_in_netns(ns: str, port: int = 0, host: str = "127.0.0.1",
                        rcvbuf: int = 64 << 20) -> socket.socket:
    """A UDP socket bound to host:port inside namespace ``ns`` (this thread steps in and
    back out; the socket stays in ``ns``).  ``rcvbuf`` is forced as its receive buffer (0:
    the default, for sockets that only listen so that no ICMP error answers the traffic)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
            s.bind((host, port))
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    return s


def free_port(ns: str) -> int:
    s = udp_socket_in_netns(ns)
    port = s.getsockname()[1]
    s.close()
    return port


class Collector:
    """Receives datagrams in a thread; keeps (arrival time, raw bytes)."""

    def __init__(self, ns: str) -> None:
        self.sock = udp_socket_in_netns(ns)
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.raw: list[tuple[float, bytes]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.raw.append((time.monotonic(), data))

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()

    def flow_samples(self, since: float = 0.0) -> list[tuple[float, DecodedFlowSample]]:
        """(arrival time, sample) of every flow sample decoded so far, in arrival order."""
        out = []
        for t, data in list(self.raw):
            if t < since:
                continue
            for s in decode_datagram(data).samples:
                if isinstance(s, DecodedFlowSample):
                    out.append((t, s))
        return out

    def datagram_gaps(self) -> int:
        """Datagram sequence numbers missing at this collector (lost datagrams)."""
        seqs = sorted(decode_datagram(d).sequence for _, d in self.raw)
        return sum(b - a - 1 for a, b in zip(seqs, seqs[1:]) if b > a + 1)


class Sfcapd:
    """nfdump's sfcapd collecting into a directory; ``records()`` runs nfdump after stopping."""

    def __init__(self, ns: str, workdir: Path) -> None:
        self.ns = ns
        self.dir = workdir / "flows"
        self.dir.mkdir()
        self.port = free_port(ns)
        self.err = open(workdir / "sfcapd.err", "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "sfcapd", "-b", "127.0.0.1", "-p", str(self.port),
             "-w", str(self.dir), "-t", "3600", "-B", str(8 << 20)],
            stdout=subprocess.DEVNULL, stderr=self.err,
        )
        self.errpath = workdir / "sfcapd.err"

    def records(self) -> tuple[list[dict[str, Any]], str]:
        """Stop sfcapd, then (the JSON records nfdump reads back, sfcapd's stderr)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        self.err.close()
        out = subprocess.run(["nfdump", "-R", str(self.dir), "-o", "json"],
                             capture_output=True, text=True, timeout=120)
        text = out.stdout.strip()
        recs = json.loads(text) if text.startswith("[") else []
        return recs, self.errpath.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


SFACCTD_KEYS = "src_host,dst_host,src_port,dst_port,proto,in_iface,out_iface,sampling_rate"


class Sfacctd:
    """pmacct's sfacctd printing JSON aggregates every second; ``aggregates()`` stops it."""

    def __init__(self, ns: str, workdir: Path) -> None:
        self.port = free_port(ns)
        self.outpath = workdir / "sfacctd.out"
        self.out = open(self.outpath, "w")
        self.errpath = workdir / "sfacctd.err"
        self.err = open(self.errpath, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "sfacctd", "-L", "127.0.0.1", "-l", str(self.port),
             "-P", "print", "-O", "json", "-r", "1", "-c", SFACCTD_KEYS],
            stdout=self.out, stderr=self.err,
        )

    def aggregates(self) -> list[dict[str, Any]]:
        """Stop sfacctd (SIGINT purges its cache) and return every JSON line it printed."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        self.err.close()
        lines = []
        for line in self.outpath.read_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
