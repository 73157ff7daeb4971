"""The ``tcp`` module: extended_tcp_info (2209) for sampled packets of local TCP connections.

Packet path, ``sflow_flow_sample``: a TCP sample with exactly one local end (hsflowd's rule;
the core's ``agent.sockets.local_ends`` says which) gets the tcp_info of that end's socket,
looked up by the core (``agent.sockets.connection``: one sock_diag exact lookup, answered
inside ``send()``, shared with every other module and reused for further samples of the same
socket for 100 ms).  Only the connection's own socket gives a record: when the connection is
gone, the kernel answers with the port's listening socket, whose tcp_info (mss 0, rtt 0,
pmtu 0) says nothing of the connection, and a TIME_WAIT mini-socket has no tcp_info; such
samples go out without the record.
"""

from __future__ import annotations

from typing import Any

from hostsflow import AgentAPI, hookimpl
from hostsflow.health import Tally
from hostsflow.samples import FlowSample
from hostsflow.sflow.records import TCP_DIR_RECEIVED, TCP_DIR_SENT, ExtendedTcpInfo
from hostsflow.sockets import DST, IPPROTO_TCP, SRC

from .config import TcpConfig

NAME = "tcp"


class TcpModule:
    """hsflowd's mod_tcp: extended_tcp_info from the local socket of sampled TCP packets."""

    def __init__(self) -> None:
        #: eligible: TCP samples with one local end; records: 2209 added; no_connection: the
        #: connection's socket is gone (or only a listener or mini-socket answered)
        self.stats = Tally(NAME, ("eligible", "records", "no_connection"))

    @hookimpl
    def sflow_declare_config(self, registry: Any) -> None:
        registry.block(NAME, TcpConfig, help="add extended_tcp_info to sampled packets of local TCP sockets")

    @hookimpl
    def sflow_tick(self, agent: AgentAPI) -> None:
        self.stats.push(agent.count)  # health counters once a second, not per sample

    @hookimpl
    def sflow_final(self, agent: AgentAPI) -> None:
        self.stats.push(agent.count)

    @hookimpl
    def sflow_flow_sample(self, agent: AgentAPI, sample: FlowSample) -> None:
        pkt = sample.packet
        if pkt is None or pkt.protocol != IPPROTO_TCP:
            return
        sockets = agent.sockets
        src_local, dst_local = sockets.local_ends(sample)
        if src_local == dst_local:
            return
        self.stats["eligible"] += 1
        sock = sockets.connection(sample, SRC if src_local else DST, with_info=True)
        if sock is None or sock.tcp_info is None:
            self.stats["no_connection"] += 1
            return
        self.stats["records"] += 1
        # TcpInfo has the record's field order
        sample.add(ExtendedTcpInfo(TCP_DIR_SENT if src_local else TCP_DIR_RECEIVED,
                                   *sock.tcp_info))
