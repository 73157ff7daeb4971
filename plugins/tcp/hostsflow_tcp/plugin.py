"""The ``tcp`` module: extended_tcp_info (2209) and socket identity for sampled packets.

Packet path: ``sflow_flow_sample`` decides whether the sample belongs to a local socket
(:mod:`.eligible`) and sends one exact sock_diag request on a non-blocking netlink socket.  The
kernel answers an exact lookup inside ``send()``, so the reply is read at once
(:meth:`~.lookup.DiagChannel.request_now`): the record is added and the stash filled before the
hook returns, without a hold.  The answer is reused for further samples of the same socket
for :data:`REUSE_SECONDS`.  When another module registered a :mod:`.companion` (the systemd
module's marking, for the other local end of the connection), its request goes out in the
same ``send()`` and its reply is handed to it at once.  Should the reply not be queued yet,
the sample is held; the netlink socket's reader matches the reply by ``nlmsg_seq`` later and
releases the hold (samples of the same socket that arrive meanwhile join that request).  A
socket that is gone (ENOENT) gives no record; a lost reply is left to the core's hold timeout
(``agent.hold_timeout``, 0.4 s as hsflowd).
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
from hostsflow.sflow.records import TCP_DIR_SENT, ExtendedTcpInfo

from .companion import Companion, companion_for
from .config import TcpConfig
from .diag import Reply, SockInfo
from .eligible import LocalAddresses, classify
from .lookup import IPPROTO_TCP, DiagChannel, FlowKey, netns_identity

NAME = "tcp"
#: a namespace channel unused this long is closed (hsflowd: 60 s)
IDLE_CHANNEL_SECONDS = 60.0
#: pending requests older than this many hold timeouts are forgotten (their holds already ran out)
STALE_FACTOR = 2.0
#: a socket's answer (tcp_info, identity) is reused for samples of the same socket this long
REUSE_SECONDS = 0.1
#: at most this many reused answers are kept (all are dropped when full; expired ones each tick)
REUSE_MAX = 16384


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
        #: (id(channel), key) -> (reuse until, the socket found): answers reused for
        #: REUSE_SECONDS
        self.recent: dict[tuple[int, FlowKey], tuple[float, SockInfo]] = {}
        self.stats = {"requests": 0, "found": 0, "not_found": 0, "malformed": 0, "errors": 0,
                      "joined": 0, "reused": 0, "held": 0, "send_failed": 0, "stale": 0,
                      "netns_failed": 0}
        self._reported: dict[str, int] = {}
        #: another module's lookups that ride with ours (set at sflow_start)
        self.companion: Companion | None = None

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
        self.companion = companion_for(agent)
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
        ck = (id(ch), key)
        hit = self.recent.get(ck)
        if hit is not None and hit[0] > now:
            self.stats["reused"] += 1
            self._fill(sample, hit[1], dirn, key)
            return
        pend = self.by_key.get(ck)
        if pend is not None:  # a request for this socket is still out: wait for it too
            self.stats["joined"] += 1
            pend.waiters.append((sample, sample.hold(NAME), dirn))
            return
        companion = self.companion if sample.netns is None else None
        extra = companion.also_wanted(sample, key) if companion is not None else None
        try:
            if extra is None:
                seq, reply = ch.request_now(key)
            else:  # both requests in one send()
                (seq, reply), (_, other) = ch.request_many([(key, True), (extra, False)])
                companion.answered(extra, other)  # type: ignore[union-attr]
        except OSError as exc:
            self.stats["send_failed"] += 1
            agent.warn_once("tcp:send", "sock_diag_send_failed", error=str(exc))
            return
        self.stats["requests"] += 1
        if ch.has_held:  # replies to earlier requests, read on the way
            self._on_readable(ch)
        if reply is not None:
            self._answer(sample, dirn, key, reply, ck, now)
            return
        self.stats["held"] += 1
        pend = _Pending(ch, seq, key, now)
        self.pending[(id(ch), seq)] = pend
        self.by_key[ck] = pend
        pend.waiters.append((sample, sample.hold(NAME), dirn))

    def _answer(self, sample: FlowSample, dirn: int, key: FlowKey, r: Reply,
                ck: tuple[int, FlowKey], now: float) -> None:
        """A reply read at once: count it, remember a found socket, fill the sample."""
        sock = self._outcome(r)
        if r.errno == errno_mod.EBADMSG:
            return  # a damaged reply: the sample goes out as it is
        if sock is not None:
            if len(self.recent) >= REUSE_MAX:
                self.recent.clear()
            self.recent[ck] = (now + REUSE_SECONDS, sock)
        self._fill(sample, sock, dirn, key)

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

    def _outcome(self, r: Reply) -> SockInfo | None:
        """Count a reply; the socket it found, or None."""
        if r.sock is not None:
            self.stats["found"] += 1
        elif r.errno == errno_mod.ENOENT:
            self.stats["not_found"] += 1
        elif r.errno == errno_mod.EBADMSG:
            pass  # counted as malformed by the reader
        elif r.errno:
            self.stats["errors"] += 1
            self.agent.warn_once("tcp:errno", "sock_diag_error", errno=r.errno)
        return r.sock

    def _finish(self, p: _Pending, r: Reply | None) -> None:
        """A held request is answered (``r``) or given up (None): annotate and release its
        samples."""
        self.pending.pop((id(p.channel), p.seq), None)
        if self.by_key.get((id(p.channel), p.key)) is p:
            del self.by_key[(id(p.channel), p.key)]
        sock = self._outcome(r) if r is not None else None
        looked_up = r is not None and r.errno != errno_mod.EBADMSG
        for sample, hold, dirn in p.waiters:
            if looked_up and not hold.done:
                self._fill(sample, sock, dirn, p.key)
            hold.release()

    @staticmethod
    def _fill(sample: FlowSample, sock: SockInfo | None, dirn: int, key: FlowKey) -> None:
        """Stash keys and record for a sample whose local socket was looked up (``sock`` None:
        there is no such socket).  SOCKET_LOCAL_SRC names the end that was looked up, found or
        not, so another module need not look that end up again."""
        st = sample.stash
        st[SOCKET_LOOKED_UP] = True
        st[SOCKET_LOCAL_SRC] = dirn == TCP_DIR_SENT
        if sock is None:
            return
        if sock.inode:  # 0 for mini-sockets (TIME_WAIT, SYN_RECV) and closed (orphaned) ones
            st[SOCKET_INODE] = sock.inode
            st[SOCKET_UID] = sock.uid
        if sock.cgroup_id is not None:  # an orphaned socket still has its creator's cgroup
            st[SOCKET_CGROUP_ID] = sock.cgroup_id
        ti = sock.tcp_info
        if ti is not None and key.protocol == IPPROTO_TCP:
            sample.add(ExtendedTcpInfo(dirn, *ti))  # TcpInfo has the record's field order

    def _expire(self, now: float) -> None:
        """Forget expired answers, and requests whose reply never came (the core already
        released their samples)."""
        if self.recent:
            self.recent = {k: v for k, v in self.recent.items() if v[0] > now}
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
        self.recent = {k: v for k, v in self.recent.items() if k[0] != id(ch)}
        if self.agent is not None:
            self.agent.remove_reader(ch.fileno())
        ch.close()
