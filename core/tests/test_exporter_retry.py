"""A collector that refuses datagrams (nothing listening: ICMP port unreachable) is probed, not
fed at full rate, and fed again as soon as it is back: ``hostsflow view``/``decode`` started a
moment after the agent, or a collector restarted, must get its datagrams within a fraction of a
second.  Real sockets on loopback; the sender's clock is the test's."""

from __future__ import annotations

import socket
import time

from hostsflow.sflow.exporter import PROBE_SECONDS, Collector, UdpSender


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def send_for(sender: UdpSender, now: list[float], seconds: float, payload: bytes,
             step: float = 0.01) -> None:
    """A datagram every ``step`` of sender time (and a little real time, for the ICMP
    error to come back between sends)."""
    end = now[0] + seconds
    while now[0] < end:
        now[0] += step
        sender.send(payload)
        time.sleep(0.0005)


def test_refused_collector_is_probed_then_fed_again_within_three_probes():
    port = closed_port()
    now = [0.0]
    sender = UdpSender([Collector("127.0.0.1", port)], clock=lambda: now[0])
    send_for(sender, now, 0.05, b"first")
    assert sender.errors >= 1 and sender.refusing == 1
    # refused for 3 s at 100 datagrams a second: only the probes go out
    sent0 = sender.sent
    send_for(sender, now, 3.0, b"early")
    probes = sender.sent - sent0
    assert 3.0 / PROBE_SECONDS - 2 <= probes <= 3.0 / PROBE_SECONDS + 2, probes
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", port))
        collector.settimeout(0)
        back = now[0]
        got: list[float] = []
        while now[0] < back + 1.0:
            now[0] += 0.01
            sender.send(b"late")
            time.sleep(0.0005)
            try:
                while collector.recv(100):
                    got.append(now[0])
            except BlockingIOError:
                pass
        assert got and got[0] - back <= PROBE_SECONDS + 0.02, got[:3]
        # full rate again from the third probe on (two in a row not refused)
        full = [t for t in got if t > back + 3 * PROBE_SECONDS + 0.02]
        assert len(full) >= (1.0 - 3 * PROBE_SECONDS - 0.02) / 0.01 - 3, len(full)
        assert sender.refusing == 0
    sender.close()


def test_one_second_collector_restart_loses_under_1_5_s(capsys):
    """Real time: a datagram every 5 ms, the collector away for 1 s; the longest stretch of
    sent datagrams that never arrived."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
        first.bind(("127.0.0.1", 0))
        port = first.getsockname()[1]
        first.settimeout(0)
        sender = UdpSender([Collector("127.0.0.1", port)], clock=time.monotonic)
        received: list[float] = []

        def drain(sock: socket.socket) -> None:
            try:
                while True:
                    received.append(float(sock.recv(100)))
            except BlockingIOError:
                pass

        def run(seconds: float, sock: socket.socket | None) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sender.send(repr(time.monotonic()).encode())
                if sock is not None:
                    drain(sock)
                time.sleep(0.005)

        run(1.0, first)
    t_down = time.monotonic()
    run(1.0, None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        second.bind(("127.0.0.1", port))
        second.settimeout(0)
        t_up = time.monotonic()
        run(2.0, second)
        t_end = time.monotonic()
    sender.close()
    stamps = [*received, t_end]  # nothing since the last one counts as lost too
    gap = max(b - a for a, b in zip(stamps, stamps[1:]))
    after = [t - t_up for t in received if t > t_up]
    with capsys.disabled():
        print(f"\nFIGURES 1 s collector restart: {gap:.2f} s of datagrams lost "
              f"(first after the return {after[0] if after else float('nan'):.2f} s after it)")
    assert t_up - t_down >= 1.0
    assert gap < 1.5, gap
