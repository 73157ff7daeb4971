"""The sample pool: the interface's real packet counters, interpolated per sample."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostsflow.packet import decode_sampled_header
from hostsflow.sflow.records import SampledHeader
from hostsflow_pcap.pool import PacketCounter, SamplePool

from .conftest import NetPair
from .e2e_kit import udp_socket_in_netns

PROBE = Path(__file__).with_name("tap_probe.py")


class Readings:
    """Counter readings given in advance (for the arithmetic of the pool)."""

    def __init__(self, *values: int | None) -> None:
        self.values = list(values)
        self.source = "given"

    def read(self) -> int | None:
        return self.values.pop(0)

    def close(self) -> None:
        pass


def test_pool_counts_packets_since_open() -> None:
    pool = SamplePool(Readings(1000, 1100, 1500))  # type: ignore[arg-type]
    assert pool.update() == (0, 100)
    assert pool.update() == (100, 500)


def test_pool_starts_where_a_closed_tap_left_off() -> None:
    pool = SamplePool(Readings(1000, 1100), start=5000)  # type: ignore[arg-type]
    assert pool.update() == (5000, 5100)


def test_pool_survives_counter_reset_and_unreadable_counters() -> None:
    pool = SamplePool(Readings(1000, 1200, None, 50, 80))  # type: ignore[arg-type]
    assert pool.update() == (0, 200)
    assert pool.update() == (200, 200)  # unreadable: unchanged
    assert pool.update() == (200, 200)  # reset (device re-created): restart from 50
    assert pool.update() == (200, 230)


def test_loopback_counter_reads_real_kernel_counters() -> None:
    counter = PacketCounter("lo", socket.if_nametoindex("lo"), loopback=True)
    try:
        before = counter.read()
        assert before is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            rx.bind(("127.0.0.1", 0))
            for _ in range(50):
                tx.sendto(b"p", rx.getsockname())
        after = counter.read()
        assert after is not None and after - before >= 50
    finally:
        counter.close()


def test_wrong_namespace_sysfs_falls_back_to_procfs() -> None:
    # an ifindex sysfs does not show for this name: sysfs is not trusted, /proc/net/dev is used
    counter = PacketCounter("lo", 999999, loopback=True)
    try:
        assert counter.source == "procfs"
        assert counter.read() is not None
    finally:
        counter.close()
    missing = PacketCounter("nosuchdev0", 424242)
    assert missing.read() is None


@pytest.mark.root
def test_loopback_pool_counts_each_packet_once_on_a_private_lo(
    netpair: NetPair, udpsend: Path
) -> None:
    """A tap on the lo of a namespace of its own (nothing else uses it), at rate 1: every one
    of the datagrams sent is sampled once, and the pool is their count, not twice it (the
    loopback's rx counter only; its tx counter counts the same packets again)."""
    ns, port, count = netpair.ns_b, 5901, 2000
    sink = udp_socket_in_netns(ns, port, "127.0.0.1", rcvbuf=0)  # no ICMP unreachables
    probe = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(PROBE), "lo", "1", "-", "1", "128",
         "loopback"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert probe.stdout is not None
        assert probe.stdout.readline().startswith("ready")
        out = netpair.in_b(str(udpsend), "127.0.0.1", str(port), "5555", str(count), "100")
        assert f"sent={count} " in out, out
        time.sleep(0.5)  # the ring retires its last block within 50 ms
        result, _ = probe.communicate("", timeout=20)  # closing stdin ends the probe
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
        sink.close()
    report = json.loads(result.strip().splitlines()[-1])
    rows = report["samples"]
    assert report["stats"]["dropped"] == 0, report["stats"]
    ports = []
    for pool, drops, direction, inp, outp, rate, flen, header in rows:
        pkt = decode_sampled_header(SampledHeader(1, flen, 4, bytes.fromhex(header)))
        assert pkt is not None
        ports.append((pkt.src_ip, pkt.src_port, pkt.dst_port))
        assert (drops, rate, flen) == (0, 1, 100 + 42 + 4)
    assert ports == [("127.0.0.1", 5555, port)] * count
    # every packet on this lo was sampled: the i-th sample's pool is at least i (a pool never
    # holds fewer packets than the samples taken from it) and rises with every sample; a
    # reading also counts packets whose frames the ring gives in a later batch: those carry
    # over, so the last pool lands on the packets sent
    pools = [r[0] for r in rows]
    assert all(p >= i + 1 for i, p in enumerate(pools)), [
        (i + 1, p) for i, p in enumerate(pools) if p < i + 1][:10]
    assert all(a < b for a, b in zip(pools, pools[1:]))
    assert count - 2 <= pools[-1] <= count, pools[-5:]
