"""The ``tcp`` module: extended_tcp_info (2209) and socket identity for sampled packets.

Packet path: ``sflow_flow_sample`` decides whether the sample belongs to a local socket
(:mod:`.eligible`), holds it, and sends one non-blocking sock_diag request (samples of the same
socket that arrive while a request is outstanding join it).  The netlink socket's reader
matches replies to requests by ``nlmsg_seq``, adds the record, fills the stash and releases the
holds.  A socket that is gone (ENOENT) releases the sample without a record; a lost reply is
left to the core's hold timeout (``agent.hold_timeout``, 0.4 s as hsflowd).
"""

from __future__ import annotations

import errno as errno_mod
from typing import Any

import attrs
from hostsflow.hookspecs import hookimpl
from hostsflow.samples import (
    SOCKET_CGROUP_ID,
    SOCKET_INODE,
    SOCKET_LOCAL_SRC,
    SOCKET_LOOKED_UP,
    SOCKET_UID,
    FlowSample,
    Hold,
)
from hostsflow.sflow.records import ExtendedTcpInfo

from .config import TcpConfig
from .diag import Reply, SockInfo
from .eligible import LocalAddresses, classify
from .lookup import IPPROTO_TCP, DiagChannel, FlowKey, netns_identity

NAME = "tcp"
#: a namespace channel unused this long is closed (hsflowd: 60 s)
IDLE_CHANNEL_SECONDS = 60.0
#: pending requests older than this many hold timeouts are forgotten (their holds already ran out)
STALE_FACTOR = 2.0


@attrs.define(eq=False)
class _Pending:
    """One outstanding request and the samples waiting for it."""

    channel: DiagChannel
    seq: int
    key: FlowKey
    sent: float
    waiters: list[tuple[FlowSample, Hold, int]] = attrs.Factory(list)


class TcpPlugin:
    """hsflowd's mod_tcp: look up the local socket of sampled TCP (and optionally UDP) packets."""

    def __init__(self) -> None:
        self.agent: Any = None
        self.log: Any = None
        self.udp = False
        self.local = LocalAddresses()
        #: None -> the agent's namespace; (st_dev, st_ino) -> a namespace channel
        self.channels: dict[Any, DiagChannel] = {}
        self.pending: dict[tuple[int, int], _Pending] = {}  # (id(channel), seq)
        self.by_key: dict[tuple[int, FlowKey], _Pending] = {}  # (id(channel), key)
        self.stats = {"requests": 0, "found": 0, "not_found": 0, "malformed": 0, "errors": 0,
                      "joined": 0, "send_failed": 0, "stale": 0, "netns_failed": 0}
        self._reported: dict[str, int] = {}

    # ------------------------------------------------------------ life cycle

    @hookimpl
    def sflow_declare_config(self, registry: Any) -> None:
        registry.block(NAME, TcpConfig, help="add extended_tcp_info to sampled packets of local TCP sockets")

    @hookimpl
    def sflow_configure(self, agent: Any) -> None:
        self.agent = agent
        self.log = agent.logger(NAME)
        self._apply(agent.module_config(NAME))
        self.channels[None] = DiagChannel()

    @hookimpl
    def sflow_start(self, agent: Any) -> None:
        for ch in self.channels.values():
            self._watch(ch)

    @hookimpl
    def sflow_config_changed(self, agent: Any, new: Any) -> None:
        self._apply(agent.module_config(NAME))

    @hookimpl
    def sflow_tick(self, agent: Any, now: float) -> None:
        self._expire(now)
        for k, v in self.stats.items():  # health counters, once a second (not per sample)
            d = v - self._reported.get(k, 0)
            if d:
                agent.count(f"tcp.{k}", d)
                self._reported[k] = v
        for ident, ch in list(self.channels.items()):
            if ident is not None and now - ch.last_used > IDLE_CHANNEL_SECONDS and not any(
                p.channel is ch for p in self.pending.values()
            ):
                self._close(ident)

    @hookimpl
    def sflow_final(self, agent: Any) -> None:
        for p in list(self.pending.values()):
            self._finish(p, None)
        for ident in list(self.channels):
            self._close(ident)

    def _apply(self, cfg: TcpConfig | None) -> None:
        self.udp = bool(cfg.udp) if cfg is not None else False

    # ------------------------------------------------------------ packet path

    @hookimpl
    def sflow_flow_sample(self, agent: Any, sample: FlowSample) -> None:
        local = self.local.update(agent.interfaces) if sample.netns is None else frozenset()
        found = classify(sample, local, self.udp)
        if found is None:
            return
        key, dirn = found
        ch = self._channel(sample.netns)
        if ch is None:
            return
        now = agent.now()
        ch.last_used = now
        pend = self.by_key.get((id(ch), key))
        if pend is None:
            try:
                seq = ch.send(key)
            except OSError as exc:
                self.stats["send_failed"] += 1
                agent.warn_once("tcp:send", "sock_diag_send_failed", error=str(exc))
                return
            ch.last_used = now
            self.stats["requests"] += 1
            pend = _Pending(ch, seq, key, now)
            self.pending[(id(ch), seq)] = pend
            self.by_key[(id(ch), key)] = pend
        else:
            self.stats["joined"] += 1
        pend.waiters.append((sample, sample.hold(NAME), dirn))

    def _on_readable(self, ch: DiagChannel) -> None:
        """The reader callback of one channel: match replies to pending requests by seq."""
        try:
            replies, bad = ch.read()
        except OSError as exc:
            self.stats["errors"] += 1
            self.agent.warn_once("tcp:recv", "sock_diag_recv_failed", error=str(exc))
            return
        if bad:
            self.stats["malformed"] += bad
            self.agent.warn_once("tcp:malformed", "sock_diag_reply_malformed", count=bad)
        for r in replies:
            p = self.pending.get((id(ch), r.seq))
            if p is not None:
                self._finish(p, r)

    def _finish(self, p: _Pending, r: Reply | None) -> None:
        self.pending.pop((id(p.channel), p.seq), None)
        if self.by_key.get((id(p.channel), p.key)) is p:
            del self.by_key[(id(p.channel), p.key)]
        sock: SockInfo | None = None
        if r is not None:
            if r.sock is not None:
                sock = r.sock
                self.stats["found"] += 1
            elif r.errno == errno_mod.ENOENT:
                self.stats["not_found"] += 1
            elif r.errno == errno_mod.EBADMSG:
                pass  # counted as malformed by the reader
            elif r.errno:
                self.stats["errors"] += 1
                self.agent.warn_once("tcp:errno", "sock_diag_error", errno=r.errno)
        for sample, hold, dirn in p.waiters:
            if not hold.done:
                if r is not None and r.errno != errno_mod.EBADMSG:
                    sample.stash[SOCKET_LOOKED_UP] = True
                if sock is not None:
                    self._annotate(sample, sock, dirn, p.key)
            hold.release()

    def _annotate(self, sample: FlowSample, sock: SockInfo, dirn: int, key: FlowKey) -> None:
        st = sample.stash
        if sock.inode:  # 0 for TIME_WAIT / SYN_RECV mini-sockets: no owner, no cgroup
            st[SOCKET_INODE] = sock.inode
            st[SOCKET_UID] = sock.uid
            st[SOCKET_LOCAL_SRC] = dirn == 2
            if sock.cgroup_id is not None:
                st[SOCKET_CGROUP_ID] = sock.cgroup_id
        ti = sock.tcp_info
        if ti is not None and key.protocol == IPPROTO_TCP:
            sample.add(
                ExtendedTcpInfo(
                    dir=dirn,
                    snd_mss=ti.snd_mss,
                    rcv_mss=ti.rcv_mss,
                    unacked=ti.unacked,
                    lost=ti.lost,
                    retrans=ti.total_retrans,
                    pmtu=ti.pmtu,
                    rtt=ti.rtt,
                    rttvar=ti.rttvar,
                    snd_cwnd=ti.snd_cwnd,
                    reordering=ti.reordering,
                    min_rtt=ti.min_rtt,
                )
            )

    def _expire(self, now: float) -> None:
        """Forget requests whose reply never came (the core already released their samples)."""
        limit = now - STALE_FACTOR * max(self.agent.hold_timeout, 0.1)
        for p in [p for p in self.pending.values() if p.sent < limit]:
            self.stats["stale"] += 1
            self._finish(p, None)

    # ------------------------------------------------------------ channels

    def _channel(self, netns: str | None) -> DiagChannel | None:
        if netns is None:
            return self.channels.get(None)
        try:
            ident: Any = netns_identity(netns)
        except OSError as exc:
            self.stats["netns_failed"] += 1
            self.agent.warn_once(f"tcp:netns:{netns}", "netns_unavailable", netns=netns,
                                 error=str(exc))
            return None
        ch = self.channels.get(ident)
        if ch is None:
            try:
                ch = DiagChannel(netns)
            except OSError as exc:
                self.stats["netns_failed"] += 1
                self.agent.warn_once(f"tcp:netns:{netns}", "netns_diag_socket_failed",
                                     netns=netns, error=str(exc))
                return None
            self.channels[ident] = ch
            self._watch(ch)
        return ch

    def _watch(self, ch: DiagChannel) -> None:
        if self.agent is not None and getattr(self.agent, "loop", None) is not None:
            self.agent.add_reader(ch.fileno(), lambda ch=ch: self._on_readable(ch))

    def _close(self, ident: Any) -> None:
        ch = self.channels.pop(ident, None)
        if ch is None:
            return
        for p in [p for p in self.pending.values() if p.channel is ch]:
            self._finish(p, None)
        if self.agent is not None:
            self.agent.remove_reader(ch.fileno())
        ch.close()
