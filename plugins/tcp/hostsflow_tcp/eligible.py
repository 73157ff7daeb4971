"""Which sampled packets get a socket lookup, and for which local socket (hsflowd section 6.1).

A sample qualifies when its header decodes to IPv4/IPv6 TCP (or UDP with ``udp = on``) with
ports, and exactly one end is local.  "Local" is decided by the agent's interface addresses
when the sample was seen in the agent's own namespace; for a sample from another namespace
(``sample.netns`` set) those addresses say nothing, so the capture plugin's
``sample.direction`` decides (sent: the source is local; received: the destination is).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from hostsflow.samples import DIRECTION_RECEIVED, DIRECTION_SENT, FlowSample
from hostsflow.sflow.records import TCP_DIR_RECEIVED, TCP_DIR_SENT

from .lookup import IPPROTO_TCP, IPPROTO_UDP, FlowKey, flow_key


def _canonical(addr: str) -> str | None:
    addr = addr.split("%", 1)[0].split("/", 1)[0]
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(fam, socket.inet_pton(fam, addr))
        except OSError:
            continue
    return None


class LocalAddresses:
    """The agent's own addresses, rebuilt only when ``agent.interfaces`` is a new table."""

    __slots__ = ("_table", "addresses")

    def __init__(self) -> None:
        self._table: Any = None
        self.addresses: frozenset[str] = frozenset()

    def update(self, table: Iterable[Any]) -> frozenset[str]:
        if table is not self._table:
            self._table = table
            found = set()
            for intf in table:
                for a in getattr(intf, "addresses", ()):
                    c = _canonical(a)
                    if c:
                        found.add(c)
                        if "." in c:
                            found.add("::ffff:" + c)
            self.addresses = frozenset(found)
        return self.addresses


def classify(
    sample: FlowSample, local: frozenset[str], udp: bool
) -> tuple[FlowKey, int] | None:
    """The local socket's :class:`FlowKey` and the extended_tcp_info direction (1 received,
    2 sent) for a sample, or None when it does not qualify."""
    pkt = sample.packet
    if pkt is None:
        return None
    proto = pkt.protocol
    if proto != IPPROTO_TCP and not (udp and proto == IPPROTO_UDP):
        return None
    if not pkt.src_port or not pkt.dst_port:
        return None
    if sample.netns is None:
        local_src = pkt.src_ip in local
        local_dst = pkt.dst_ip in local
        if local_src == local_dst:
            return None
    elif sample.direction == DIRECTION_SENT:
        local_src = True
    elif sample.direction == DIRECTION_RECEIVED:
        local_src = False
    else:
        return None
    try:
        if local_src:
            key = flow_key(proto, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
        else:
            key = flow_key(proto, pkt.dst_ip, pkt.dst_port, pkt.src_ip, pkt.src_port)
    except ValueError:
        return None
    return key, (TCP_DIR_SENT if local_src else TCP_DIR_RECEIVED)
