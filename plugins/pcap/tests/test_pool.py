"""The sample pool: the interface's real packet counters, interpolated per sample."""

from __future__ import annotations

import socket

from hostsflow_pcap.pool import PacketCounter, SamplePool


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


def test_samples_are_spread_over_the_interval_by_rank() -> None:
    assert SamplePool.spread(100, 500, 3) == [200, 300, 400]
    assert SamplePool.spread(0, 10, 1) == [5]
    spread = SamplePool.spread(0, 1000, 9)
    assert spread == sorted(spread) and spread[-1] < 1000


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
