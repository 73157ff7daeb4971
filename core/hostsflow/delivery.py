"""Where the datagrams go: the exporter that packs the encoded samples, the sink that sends
them (UDP to every collector, or a recording sink for ``--test`` and the testing kit), and
the delivery figures of the health counters, kept across a change of collectors."""

from __future__ import annotations

from typing import Any, Callable

from .health import Health
from .sflow.exporter import Collector, Exporter, Sink, UdpSender


def _collectors(config: Any) -> list[tuple[Any, ...]]:
    return [(c.ip, c.udpport, c.dev) for c in config.collectors]


class Delivery:
    """The exporter and its sink for one agent.

    :param sink: where datagrams go instead of UDP to the config's collectors.
    """

    def __init__(self, config: Any, address: str, clock: Callable[[], float],
                 sink: Sink | None = None) -> None:
        self.clock = clock
        self.sink: Sink = sink if sink is not None else self._udp_sender(config)
        self.exporter = Exporter(self.sink, address, config.sub_agent_id,
                                 config.datagram_bytes, clock)
        self._base = (0, 0, 0)  # (delivered, undelivered, datagrams) of replaced senders

    def reconfigure(self, old: Any, new: Any, health: Health) -> None:
        """A reloaded config: new collectors get a new sender (the figures of the old one
        are kept), and the datagram size and sub-agent id apply from the next datagram."""
        self.exporter.flush()
        if _collectors(old) != _collectors(new) and isinstance(self.sink, UdpSender):
            self.record(health)
            self._base = (health.counters["datagrams_delivered"],
                          health.counters["dropped.undelivered"], self.exporter.datagrams)
            old_sender = self.sink
            self.sink = self._udp_sender(new, old_sender.collectors)
            old_sender.close(keep=self.sink.collectors)
            self.exporter.sink = self.sink
        self.exporter.max_bytes = new.datagram_bytes
        self.exporter.sub_agent_id = new.sub_agent_id

    def tick(self) -> None:
        """Once a second: collector name lookups due, sockets of the lookups done."""
        if isinstance(self.sink, UdpSender):
            self.sink.tick()

    def record(self, health: Health) -> None:
        """Refresh the delivery figures (once a second, cheap): datagrams, their copies
        delivered or not, and the collectors not fed now (name unresolved, sends refused)."""
        health.set("datagrams", self.exporter.datagrams)
        delivered0, undelivered0, datagrams0 = self._base
        sink = self.sink
        if isinstance(sink, UdpSender):
            sent = sink.sent
            health.set("collectors.unresolved", sink.unresolved)
            health.set("collectors.refusing", sink.refusing)
            copies = (self.exporter.datagrams - datagrams0) * len(sink.collectors)
            health.set("dropped.undelivered", undelivered0 + max(0, copies - sent))
        else:
            sent = len(getattr(sink, "datagrams", ())) or getattr(sink, "sent", 0)
        health.set("datagrams_delivered", delivered0 + sent)

    def close(self) -> None:
        self.exporter.flush()
        self.sink.close()

    def _udp_sender(self, config: Any, reuse: Any = ()) -> UdpSender:
        """A sender for the config's collectors; those in ``reuse`` with the same address,
        port and device are taken over as they are (socket open, no new lookup)."""
        spare = {(c.host, c.port, c.dev): c for c in reuse}
        return UdpSender([spare.pop((c.ip, c.udpport, c.dev), None) or
                          Collector(c.ip, c.udpport, c.dev) for c in config.collectors],
                         self.clock)
