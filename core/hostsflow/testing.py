"""The testing kit: run an agent in-process with an explicit list of modules, drive its clock,
feed it flow samples, and read back what it would have sent, decoded.

No root, no entry-point scan, no sockets to collectors::

    from hostsflow.testing import AgentHarness

    def test_my_module():
        with AgentHarness("sflow { collector { ip = 127.0.0.1 } user { } }",
                          modules={"user": UserModule()}) as h:
            h.feed(h.make_sample(tcp=("10.0.0.1", 40000, "10.0.0.2", 80)))
            h.tick()
            (sample,) = h.flow_samples()
            assert any(r.format == 1004 for r in sample.records)

``tick()`` advances the agent clock by one second and runs one agent second: tick hooks,
counter polling, tock hooks, flush.  ``run_loop(seconds)`` runs the real asyncio loop (for
modules that register file descriptors) while the clock follows real time.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Iterable
from typing import Any

from .agent import Agent, recording_agent
from .bootstrap import load
from .host.interfaces import InterfaceTable
from .samples import DataSource, FlowSample
from .sflow.datagram import decode_datagram
from .sflow.records import SampledHeader

DEFAULT_CONFIG = "sflow { collector { ip = 127.0.0.1 } }"


class ManualClock:
    """A clock that moves only when told to (or follows real time while ``run_loop`` runs)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class AgentHarness:
    """An in-process agent for module tests.

    :param config_text: hsflowd.conf text; the blocks of ``modules`` must appear in it to be
        configured, as in real life.
    :param modules: module name -> module object (or class).  Only these are registered.
    :param host_poller: also register the core's host and interface poller.
    :param interfaces: an interface table to use instead of scanning this machine.
    :param seed: seed for the random polling phase, so tests are repeatable.
    """

    def __init__(
        self,
        config_text: str = DEFAULT_CONFIG,
        modules: dict[str, Any] | None = None,
        *,
        host_poller: bool = False,
        interfaces: InterfaceTable | None = None,
        seed: int = 0,
        filename: str = "<test>",
    ) -> None:
        loaded = load(config_text, filename, modules=modules or {}, host_poller=host_poller)
        self.config = loaded.config
        self.host = loaded.host
        self.registry = loaded.registry
        self.clock = ManualClock()
        kw: dict[str, Any] = {}
        if interfaces is not None:
            kw["scan"] = lambda: interfaces
        self.agent: Agent
        self.agent, self.sink = recording_agent(
            self.config, self.host, clock=self.clock, rng=random.Random(seed),
            **kw,
        )
        self.loop = asyncio.new_event_loop()
        self.started = False

    # ------------------------------------------------------------ driving

    def start(self) -> "AgentHarness":
        """Run sflow_configure and sflow_start, as the agent does at start-up."""
        if not self.started:
            asyncio.set_event_loop(self.loop)
            self.agent.start(self.loop)
            self.started = True
        return self

    def tick(self, n: int = 1) -> None:
        """Advance the clock one second at a time and run ``n`` agent seconds."""
        self.start()
        for _ in range(n):
            self.clock.advance(1.0)
            self.agent.second()

    def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds`` (less than a second, typically) without running an
        agent second, then release the holds whose deadline passed, as the agent's 100 ms hold
        timer does.  Samples released here are encoded but only sent at the next ``tick``."""
        self.start()
        self.clock.advance(seconds)
        self.agent.pipeline.expire_holds()

    def held(self) -> list[FlowSample]:
        """The samples still waiting for a hold to be released, oldest first."""
        return [s for _, s in self.agent.pipeline.held if s.held]

    def poll_now(self) -> None:
        """Poll every data source now (whatever its phase) and flush."""
        self.start()
        self.agent.poll_counters(force=True)
        self.agent.exporter.flush()

    def feed(self, *samples: FlowSample) -> None:
        """Hand flow samples to the agent as a capture module would (one batch)."""
        self.start()
        self.agent.take_samples(samples)

    def flush(self) -> None:
        """Release every hold now (as if the deadline passed) and send what is pending."""
        self.agent.pipeline.expire_holds(float("inf"))
        self.agent.exporter.flush()

    def run_loop(self, seconds: float) -> None:
        """Run the asyncio loop for ``seconds`` of real time, the clock following it, with an
        agent second every time a whole second has passed."""
        self.start()
        end = time.monotonic() + seconds
        last = time.monotonic()

        async def spin() -> None:
            nonlocal last
            while time.monotonic() < end:
                await asyncio.sleep(min(0.02, max(0.0, end - time.monotonic())))
                now = time.monotonic()
                self.clock.advance(now - last)
                last = now
                self.agent.pipeline.expire_holds()

        self.loop.run_until_complete(spin())

    def stop(self) -> None:
        """Run ``sflow_final`` and flush, as at shutdown (safe to call twice)."""
        if self.started:
            self.agent.stop()
            self.started = False
        if not self.loop.is_closed():
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    def __enter__(self) -> "AgentHarness":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ reading back

    @property
    def datagrams(self) -> list[Any]:
        """Every datagram sent so far, decoded."""
        return [decode_datagram(d) for d in self.sink.datagrams]

    def flow_samples(self) -> list[Any]:
        return [s for d in self.datagrams for s in d.flow_samples]

    def counter_samples(self, source: DataSource | None = None) -> list[Any]:
        out = [s for d in self.datagrams for s in d.counter_samples]
        if source is not None:
            out = [s for s in out if (s.source.ds_class, s.source.ds_index) ==
                   (source.ds_class, source.ds_index)]
        return out

    def records(self, cls: type) -> list[Any]:
        """Every record of class ``cls`` in everything sent so far."""
        return [r for d in self.datagrams for s in d.samples for r in s.records
                if isinstance(r, cls)]

    # ------------------------------------------------------------ building input

    @staticmethod
    def make_sample(
        tcp: tuple[str, int, str, int] | None = None,
        udp: tuple[str, int, str, int] | None = None,
        *,
        ifindex: int = 2,
        rate: int = 1,
        direction: int = 0,
        payload: bytes = b"",
        netns: str | None = None,
        timestamp: float = 0.0,
    ) -> FlowSample:
        """A flow sample with a real Ethernet/IPv4 (or IPv6) TCP or UDP header.

        ``tcp``/``udp`` = (src ip, src port, dst ip, dst port); ``direction`` one of
        ``hostsflow.samples.DIRECTION_*``; ``netns`` as a capture module in another network
        namespace would set it; ``timestamp`` the capture time (wall clock; 0 unknown)."""
        header = ethernet_frame(tcp=tcp, udp=udp, payload=payload)
        return FlowSample(
            source=DataSource(0, ifindex),
            sampling_rate=rate,
            records=[SampledHeader(1, len(header) + 4, 4, header[:128])],
            direction=direction,
            timestamp=timestamp,
            netns=netns,
        )


def _checksum_free_ip(src: str, dst: str, proto: int, l4: bytes) -> bytes:
    import ipaddress

    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0,
                           s.packed, d.packed) + l4
    return struct.pack(">IHBB16s16s", 6 << 28, len(l4), proto, 64, s.packed, d.packed) + l4


def ethernet_frame(
    tcp: tuple[str, int, str, int] | None = None,
    udp: tuple[str, int, str, int] | None = None,
    payload: bytes = b"",
    src_mac: bytes = b"\x02\0\0\0\0\x01",
    dst_mac: bytes = b"\x02\0\0\0\0\x02",
) -> bytes:
    """An Ethernet frame carrying one TCP (ACK) or UDP packet; checksums are left zero."""
    if tcp is not None:
        src, sport, dst, dport = tcp
        l4 = struct.pack(">HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x10, 65535, 0, 0) + payload
        proto = 6
    elif udp is not None:
        src, sport, dst, dport = udp
        l4 = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
        proto = 17
    else:
        raise ValueError("give tcp= or udp=")
    ip = _checksum_free_ip(src, dst, proto, l4)
    ethertype = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
    return dst_mac + src_mac + struct.pack(">H", ethertype) + ip


def _header(frame: bytes) -> SampledHeader:
    """``frame``'s sampled_header: Ethernet, 4 bytes of FCS counted, 128 bytes kept."""
    return SampledHeader(1, len(frame) + 4, 4, frame[:128])


def samples_from(frames: Iterable[bytes], ifindex: int = 2, rate: int = 1) -> list[FlowSample]:
    """Flow samples for raw Ethernet frames (e.g. captured by a test)."""
    return [FlowSample(DataSource(0, ifindex), rate, [_header(f)]) for f in frames]


def encoded_flow_sample(frame: bytes, rate: int, *records: Any, ifindex: int = 2) -> bytes:
    """One flow sample as the bytes a collector receives: ``frame``'s sampled_header, then
    ``records``, from data source ``0:ifindex`` sampled 1 in ``rate`` (collector tests' input)."""
    from .sflow.datagram import encode_flow_sample

    return encode_flow_sample(1, FlowSample(DataSource(0, ifindex), rate,
                                            [_header(frame), *records]))


def encoded_names_sample(source: DataSource, name: str, *records: Any) -> bytes:
    """One counter sample as bytes whose host_descr names ``source`` (a host ``2:1`` or a
    service ``3:N``) ``name``, then ``records`` (collector tests' input)."""
    from .sflow.datagram import encode_counter_sample
    from .sflow.records import HostDescr

    return encode_counter_sample(1, source, [HostDescr(hostname=name, uuid=bytes(16)), *records])


# ================================================================ end-to-end helpers


class UdpCollector:
    """A collector socket on loopback that keeps every datagram it receives (in a thread).

    ``port`` is chosen by the kernel; ``wait_for(predicate, timeout)`` waits until the decoded
    datagrams satisfy ``predicate``."""

    def __init__(self, host: str = "127.0.0.1", sock: Any = None, port: int = 0) -> None:
        """:param sock: an unbound UDP socket to use instead of a new one, e.g. one made inside
            a network namespace where the agent runs.
        :param port: the port to listen on (0: one the kernel chooses)."""
        import socket
        import threading

        if sock is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock = sock
        try:  # a big buffer, so a burst is not lost here and blamed on the agent
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE (root)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.raw: list[bytes] = []
        self.received_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except OSError:
                continue
            self.received_at.append(time.time())
            self.raw.append(data)

    def timed(self) -> list[tuple[float, bytes]]:
        """(arrival wall-clock time, raw datagram) of everything received so far."""
        return list(zip(list(self.received_at), list(self.raw)))

    @property
    def datagrams(self) -> list[Any]:
        return [decode_datagram(d) for d in list(self.raw)]

    def wait_for(self, predicate: Any, timeout: float = 10.0, since: float = 0.0) -> list[Any]:
        """Wait until ``predicate(decoded datagrams)`` is true; return the datagrams.  With
        ``since`` (a ``time.time()``), only datagrams that arrived from then on count."""
        deadline = time.monotonic() + timeout
        while True:
            dgs = [decode_datagram(d) for t, d in self.timed() if t >= since]
            if predicate(dgs):
                return dgs
            if time.monotonic() > deadline:
                raise AssertionError(f"collector: condition not met in {timeout}s "
                                     f"({len(dgs)} datagrams)")
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()

    def __enter__(self) -> "UdpCollector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_file_module(name: str, path: Any) -> Any:
    """Import the Python file at ``path`` as module ``name`` (once; later calls return the same
    module).  For sharing helpers and fixtures between test folders, which pytest's importlib
    mode does not put on ``sys.path`` (e.g. another module's ``tests/conftest.py``)."""
    import importlib.util
    import sys

    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, str(path))
        assert spec is not None and spec.loader is not None, path
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


def end_process(proc: Any, sig: int | None = None, timeout: float = 10.0) -> int:
    """Stop a child process started by a test or bench: ``sig`` (SIGTERM by default), then
    SIGKILL if it has not exited within ``timeout`` seconds; returns its exit status."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM if sig is None else sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
