"""A collector that refused datagrams (nothing listening yet) is tried again RETRY_SECONDS
after the refusal even while the agent keeps sending: ``hostsflow view``/``decode`` started a
moment after the agent must still get its datagrams."""

from __future__ import annotations

import socket
import time

from hostsflow.sflow.exporter import Collector, UdpSender


def test_refused_collector_is_retried_while_sending_continuously():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    now = [0.0]
    sender = UdpSender([Collector("127.0.0.1", port)], clock=lambda: now[0])
    sender.send(b"first")
    time.sleep(0.05)  # the ICMP port unreachable comes back
    sender.send(b"refused")
    assert sender.errors == 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", port))
        collector.settimeout(2)
        while now[0] < UdpSender.RETRY_SECONDS - 0.5:  # a datagram every 100 ms
            now[0] += 0.1
            sender.send(b"early")
        for _ in range(10):
            now[0] += 0.1
            sender.send(b"late")
        assert collector.recv(100) == b"late"
    sender.close()
