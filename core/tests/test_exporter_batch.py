"""Datagrams kept back during a capture batch and sent with sendmmsg: all arrive, in order, at
every collector; a refusing collector is a fault of its own (counted, retried), not of the
others; without a batch the exporter sends at once as before."""

from __future__ import annotations

import socket

import pytest

from hostsflow.sflow import mmsg
from hostsflow.sflow.exporter import Collector, Exporter, RecordingSink, UdpSender
from hostsflow.testing import ManualClock


def _receiver() -> socket.socket:
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    r.settimeout(2)
    return r


def _closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.skipif(not mmsg.AVAILABLE, reason="libc has no sendmmsg")
def test_sendmmsg_sends_every_datagram_in_order() -> None:
    r = _receiver()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(r.getsockname())
    data = [bytes([i]) * (50 + i) for i in range(200)]
    assert mmsg.sendmmsg(s.fileno(), data) == 200
    assert [r.recv(4096) for _ in data] == data
    s.close()
    r.close()


def test_batch_reaches_every_collector_and_a_refusal_stays_local() -> None:
    good1, good2 = _receiver(), _receiver()
    clock = ManualClock()
    sender = UdpSender([Collector("127.0.0.1", good1.getsockname()[1]),
                        Collector("127.0.0.1", _closed_port()),
                        Collector("127.0.0.1", good2.getsockname()[1])], clock)
    exp = Exporter(sender, "192.0.2.1", 0, 200, clock)
    for rnd in range(3):
        exp.hold_sends()
        for i in range(40):
            exp.add(bytes([rnd, i]) * 50)  # 100 bytes: one sample per datagram
        exp.release_sends()
    n = 3 * 40 - 1  # the last sample is still pending
    got1 = [good1.recv(4096) for _ in range(n)]
    got2 = [good2.recv(4096) for _ in range(n)]
    assert got1 == got2
    seqs = [int.from_bytes(d[16:20], "big") for d in got1]  # IPv4 header: sequence at 16
    assert seqs == list(range(1, n + 1))  # every datagram, in order
    assert sender.errors == 1  # the closed port refused (ICMP), counted once, then waits 7 s
    assert 2 * n <= sender.sent < 2 * n + 40
    for s in (good1, good2):
        s.close()
    sender.close()


def test_without_a_batch_datagrams_go_at_once() -> None:
    sink = RecordingSink()
    exp = Exporter(sink, "192.0.2.1", 0, 200, ManualClock())
    for i in range(3):
        exp.add(bytes([i]) * 100)
    assert len(sink.datagrams) == 2  # the third sample is still pending
    exp.hold_sends()
    exp.add(b"x" * 100)
    assert len(sink.datagrams) == 2  # the full datagram is kept back...
    exp.release_sends()
    assert len(sink.datagrams) == 3  # ...and sent on release, in order
