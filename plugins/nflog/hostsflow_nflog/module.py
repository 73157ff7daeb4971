"""The ``nflog { }`` module: flow samples from packets a firewall rule logs to an NFLOG group.

Lifecycle: ``sflow_configure`` opens and binds the group while still root; ``sflow_start``
registers the socket with the loop; each readable event drains the socket and hands one batch
of samples to the core; ``sflow_tick`` retries a failed bind with exponential backoff;
``sflow_config_changed`` re-reconciles rates (and re-binds if socket settings changed);
``sflow_final`` unbinds.
"""

from __future__ import annotations

import errno
from typing import Any

import attrs
from hostsflow import AgentAPI, hookimpl
from hostsflow.config import integer, option, real, string
from hostsflow.firewall_log import (
    FirewallLogModule,
    WatchedSocket,
    drain_log_socket,
    reconcile_rate,
    rule_probability,
)

from .nlsocket import NflogSocket
from .reader import NflogReader

MODULE = "nflog"
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
DEFAULT_QTHRESHOLD = 100  # kernel NFULNL_QTHRESH_DEFAULT
DEFAULT_TIMEOUT = 1.0  # kernel NFULNL_TIMEOUT_DEFAULT (100 x 1/100 s)


@attrs.frozen
class NflogConfig:
    """``nflog { group = 5 probability = 0.01 }``."""

    group: int = option(help="NFLOG group the firewall rule logs to (log group G / "
                             "--nflog-group G)", converter=integer(1, 65535, suffixes=""),
                        example="5")
    probability: float = rule_probability("the rule's sampling probability (numgen random mod "
                                          "N 0 -> 1/N; -m statistic --probability P)")
    snaplen: int | None = option(None, help="bytes copied per packet from the IP header on "
                                            "(default: headerBytes)",
                                 converter=integer(16, 65535, suffixes=""))
    qthreshold: int = option(DEFAULT_QTHRESHOLD, help="packets per kernel batch (a rule's own "
                                                      "queue-threshold wins)",
                             converter=integer(1, 65535, suffixes=""))
    timeout: float = option(DEFAULT_TIMEOUT, help="seconds before a partial batch is flushed",
                            converter=real(0.01, 60.0))
    netns: str | None = option(None, help="network namespace (name or path) whose rules to "
                                          "listen to; default: the agent's own",
                               converter=string(r"[^\s]{1,255}", "namespace name or path"))


def _netns_path(netns: str | None) -> str | None:
    if netns is None:
        return None
    return netns if "/" in netns else f"/var/run/netns/{netns}"


class NflogModule(FirewallLogModule):
    """hostsflow module ``nflog`` (entry point ``hostsflow_nflog.module:NflogModule``)."""

    name = MODULE
    config_class = NflogConfig
    help = "sample packets that an nftables/iptables rule logs to NFLOG"

    def __init__(self) -> None:
        self.cfg: NflogConfig | None = None
        self.socket = WatchedSocket()  # its sock: the NflogSocket while bound
        self.reader: NflogReader | None = None
        self.log: Any = None
        self.started = False
        self.retry_at: float | None = None
        self.backoff = RETRY_FIRST
        self.bind_failing = False

    # ------------------------------------------------------------ hooks

    @hookimpl
    def sflow_configure(self, agent: AgentAPI) -> None:
        rates = self.configured_rates(agent)
        if rates is None:
            return
        self.reader = NflogReader(rates, agent.config.header_bytes,
                                  netns=_netns_path(self.cfg.netns), rng=agent.rng)
        self.log.info("nflog_rates", group=self.cfg.group, probability=self.cfg.probability,
                      sampling=agent.config.sampling, kernel_rate=rates.kernel,
                      sub_sampling=rates.sub, reported_rate=rates.actual)
        # Binding (a retry after a failed bind, a reload that changes the group or its
        # settings) is an nfnetlink request: CAP_NET_ADMIN.  A socket in another namespace is
        # made there with setns(): CAP_SYS_ADMIN.
        caps = ["CAP_NET_ADMIN"] + (["CAP_SYS_ADMIN"] if self.cfg.netns else [])
        agent.retain_capabilities(
            *caps, reason=f"nflog: (re)bind NFLOG group {self.cfg.group} after start-up")
        self._open(agent)

    @hookimpl
    def sflow_start(self, agent: AgentAPI) -> None:
        self.started = True
        self._register(agent)

    @hookimpl
    def sflow_tick(self, agent: AgentAPI, now: float) -> None:
        if self.cfg is None or self.socket.sock is not None or self.retry_at is None:
            return
        if now >= self.retry_at and self._open(agent):
            self._register(agent)

    @hookimpl
    def sflow_config_changed(self, agent: AgentAPI, old: Any, new: Any) -> None:
        cfg = agent.module_config(MODULE)
        if cfg is None:
            self.socket.close(agent)
            self.cfg = None
            return
        if self.log is None:
            self.log = agent.logger(MODULE)
        rates = reconcile_rate(new.sampling, cfg.probability)
        if self.reader is None:
            self.reader = NflogReader(rates, new.header_bytes, netns=_netns_path(cfg.netns),
                                      rng=agent.rng)
        else:
            self.reader.set_rates(rates, new.header_bytes)
        socket_changed = (self.cfg is None or self._socket_args(self.cfg, old)
                          != self._socket_args(cfg, new))
        self.cfg = cfg
        if socket_changed:
            self.socket.close(agent)
            self.reader.netns = _netns_path(cfg.netns)
            if self._open(agent):
                self._register(agent)

    @hookimpl
    def sflow_final(self, agent: AgentAPI) -> None:
        self.socket.close(agent)
        self.started = False

    # ------------------------------------------------------------ socket

    @staticmethod
    def _socket_args(cfg: NflogConfig, config: Any) -> tuple[Any, ...]:
        return (cfg.group, cfg.snaplen or config.header_bytes, cfg.qthreshold, cfg.timeout,
                cfg.netns)

    def _open(self, agent: AgentAPI) -> bool:
        """Open and bind; on failure log once (naming the group), schedule a retry, False."""
        cfg = self.cfg
        assert cfg is not None and self.reader is not None
        sock = NflogSocket(cfg.group, cfg.snaplen or agent.config.header_bytes,
                           cfg.qthreshold, max(1, round(cfg.timeout * 100)), netns=cfg.netns)
        try:
            sock.open()
        except Exception as exc:  # noqa: BLE001 - any failure: log, retry later
            self._failed(agent, exc)
            return False
        self.socket.sock = sock
        self.reader.reset_sequence()
        self.retry_at = None
        self.backoff = RETRY_FIRST
        self.bind_failing = False
        self.log.info("nflog_bound", group=cfg.group, netns=cfg.netns,
                      copy_range=sock.copy_range, qthreshold=cfg.qthreshold)
        return True

    def _failed(self, agent: AgentAPI, exc: Exception) -> None:
        cfg = self.cfg
        assert cfg is not None
        agent.count("nflog.bind_failures")
        err = getattr(exc, "errno", None)
        if err == errno.EPERM:
            why = (f"NFLOG group {cfg.group} is already bound by another process in this "
                   f"network namespace (or the agent lacks CAP_NET_ADMIN)")
        elif err == errno.ENOENT and cfg.netns:
            why = f"network namespace {cfg.netns} does not exist"
        else:
            why = f"cannot bind NFLOG group {cfg.group}: {exc}"
        if not self.bind_failing:  # one error per failure streak, not one per retry
            self.log.error("nflog_bind_failed", group=cfg.group, reason=why,
                           retry_in=self.backoff, error=str(exc))
        self.bind_failing = True
        self.retry_at = agent.now() + self.backoff
        self.backoff = min(RETRY_MAX, self.backoff * 2)

    def _register(self, agent: AgentAPI) -> None:
        if self.started:
            self.socket.watch(agent, lambda: self._on_readable(agent))

    # ------------------------------------------------------------ packet path

    def _on_readable(self, agent: AgentAPI) -> None:
        """Drain the socket (up to 64 kernel batches) and hand the samples over in one batch."""
        sock, reader = self.socket.sock, self.reader
        if sock is not None and reader is not None:
            drain_log_socket(agent, MODULE, sock.recv, reader)
