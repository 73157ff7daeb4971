"""The ``ulog { }`` module: flow samples from packets the legacy iptables ULOG target logs.

Lifecycle: ``sflow_configure`` opens the NETLINK_NFLOG socket and joins the group while root.
On kernels without ULOG (removed in Linux 3.17; every current kernel) ``socket()`` fails with
EPROTONOSUPPORT: the module logs one error saying so and suggesting ``nflog { }``, and stays
idle; the agent and its other modules carry on.  Otherwise ``sflow_start`` registers the
socket, each readable event drains it and hands one batch of samples to the core.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import attrs
from hostsflow import AgentAPI, hookimpl
from hostsflow.config import integer, option
from hostsflow.firewall_log import (
    FirewallLogModule,
    WatchedSocket,
    drain_log_socket,
    reconcile_rate,
    rule_probability,
)

from .protocol import NETLINK_NFLOG
from .reader import UlogReader

MODULE = "ulog"
RCVBUF_BYTES = 8_000_000  # hsflowd's receive buffer
RECV_BYTES = 1 << 17

UNSUPPORTED = ("this kernel has no ULOG netlink protocol (NETLINK_NFLOG=5): the iptables ULOG "
               "target was removed in Linux 3.17. Use an NFLOG rule and "
               "'nflog {{ group = {group} probability = {probability} }}' instead "
               "(hostsflow-nflog); the ulog module stays idle")


@attrs.frozen
class UlogConfig:
    """``ulog { group = 1 probability = 0.0025 }``."""

    group: int = option(help="ULOG netlink group of the rule (--ulog-nlgroup, 1..32)",
                        converter=integer(1, 32, suffixes=""), example="1")
    probability: float = rule_probability("the rule's sampling probability "
                                          "(-m statistic --probability P)")


def open_ulog_socket(group: int) -> socket.socket:
    """A NETLINK_NFLOG socket joined to ULOG ``group``; raises OSError (EPROTONOSUPPORT on
    kernels >= 3.17)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NFLOG)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF_BYTES)  # SO_RCVBUFFORCE (root)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.bind((0, 1 << (group - 1)))  # the kernel picks our port id
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class UlogModule(FirewallLogModule):
    """hostsflow module ``ulog`` (entry point ``hostsflow_ulog.module:UlogModule``)."""

    name = MODULE
    config_class = UlogConfig
    help = "sample packets the legacy iptables ULOG target logs (Linux < 3.17)"

    def __init__(self) -> None:
        self.cfg: UlogConfig | None = None
        self.socket = WatchedSocket()
        self.reader: UlogReader | None = None
        self.log: Any = None

    @hookimpl
    def sflow_configure(self, agent: AgentAPI) -> None:
        rates = self.configured_rates(agent)
        if rates is None:
            return
        self.reader = UlogReader(rates, agent.config.header_bytes,
                                 lambda name: _ifindex(agent, name), rng=agent.rng)
        try:
            self.socket.sock = open_ulog_socket(self.cfg.group)
        except OSError as exc:
            agent.count("ulog.open_failures")
            if exc.errno == errno.EPROTONOSUPPORT:
                self.log.error("ulog_unavailable", group=self.cfg.group,
                               reason=UNSUPPORTED.format(group=self.cfg.group,
                                                         probability=self.cfg.probability))
            else:
                self.log.error("ulog_open_failed", group=self.cfg.group, error=str(exc))
            return
        self.log.info("ulog_bound", group=self.cfg.group, kernel_rate=rates.kernel,
                      sub_sampling=rates.sub, reported_rate=rates.actual)

    @hookimpl
    def sflow_start(self, agent: AgentAPI) -> None:
        if self.socket.sock is not None:
            self.attach(agent, self.socket.sock)

    @hookimpl
    def sflow_config_changed(self, agent: AgentAPI, old: Any, new: Any) -> None:
        cfg = agent.module_config(MODULE)
        if cfg is not None and self.reader is not None:
            self.reader.set_rates(reconcile_rate(new.sampling, cfg.probability),
                                  new.header_bytes)
            if self.cfg is not None and cfg.group != self.cfg.group and self.socket.sock is not None:
                self.log.warning("ulog_group_change_needs_restart", old=self.cfg.group,
                                 new=cfg.group)
        self.cfg = cfg or self.cfg

    @hookimpl
    def sflow_final(self, agent: AgentAPI) -> None:
        self.socket.close(agent)

    # ------------------------------------------------------------ packet path

    def attach(self, agent: AgentAPI, sock: Any) -> None:
        """Read ULOG datagrams from ``sock`` (any non-blocking datagram socket) on the loop."""
        self.socket.sock = sock
        self.socket.watch(agent, lambda: self.on_readable(agent))

    def on_readable(self, agent: AgentAPI) -> None:
        """Drain the socket and hand the samples to the core in one batch."""
        sock, reader = self.socket.sock, self.reader
        if sock is not None and reader is not None:
            # ULOG has no sequence numbers: each overrun lost at least one batch
            drain_log_socket(agent, MODULE, lambda: sock.recv(RECV_BYTES), reader,
                             overruns_lose=True)


def _ifindex(agent: AgentAPI, name: str) -> int:
    """ifIndex of a device name: the agent's interface table, else the kernel; 0 if gone."""
    intf = agent.interfaces.by_name(name)
    if intf is not None:
        return int(intf.ifindex)
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0
