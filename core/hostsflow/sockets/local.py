"""``agent.sockets``: the local socket at either end of a sampled packet, and who owns it.

Modules ask per sample and per end (:data:`SRC`, :data:`DST`):

* :meth:`LocalSockets.connection` – the connection's own live socket (uid, inode, cgroup id,
  tcp_info), never a listener answering for a connection that is gone;
* :meth:`LocalSockets.owner` – who owned that end (a cgroup id and/or a socket inode), even
  when the socket closed before the sample was looked up: from the owner log
  (:mod:`.owner_log`, when a module asked for it with :meth:`LocalSockets.record_owners`),
  else the live socket, else the listening (or bound UDP) socket of that local port.

One sock_diag exact lookup answers both questions for an end; the answer serves every module
and every sample of the same socket for :data:`ANSWER_SECONDS`.  The kernel answers exact
lookups inside ``send()``, so nothing waits: a reply that is not there at once is counted
(``sockets.late``), that end goes without an answer, and the reply, read later by the
channel's reader, serves the next samples.

Which ends are local: in the agent's namespace, the addresses of ``agent.interfaces``
(loopback included); for a sample seen in another namespace (``sample.netns``) the capture
module's ``sample.direction`` (sent: the source; received: the destination).  Lookups for such
a sample go through a sock_diag socket made in that namespace (needs CAP_SYS_ADMIN to enter
it; closed after :data:`IDLE_CHANNEL_SECONDS` unused).
"""

from __future__ import annotations

import errno as errno_mod
import socket
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ..health import Tally
from ..samples import DIRECTION_RECEIVED, DIRECTION_SENT, FlowSample
from .channel import IPPROTO_TCP, IPPROTO_UDP, DiagChannel, FlowKey, flow_key, netns_identity
from .diag import Reply, SockInfo

SRC, DST = 0, 1  #: the packet's source end, its destination end
#: a sock_diag answer (found or not) serves further samples of the same socket this long
ANSWER_SECONDS = 0.1
#: at most this many answers are kept (all are dropped when full; expired ones every second)
ANSWERS_MAX = 16384
#: a server port's owner (its listener, or that it has none) is kept this long
PORT_SECONDS = 1.0
#: a namespace's sock_diag socket unused this long is closed (hsflowd: 60 s)
IDLE_CHANNEL_SECONDS = 60.0
#: a late reply not read within this many seconds is forgotten
LATE_SECONDS = 2.0
#: clock slack between a capture timestamp and the owner log's time of writing
CLOCK_SLACK = 0.002
#: how long the owner log must keep an entry: capture to lookup is well under a second
LOG_HISTORY_SECONDS = 2.0

TCP_LISTEN = 10

VIA_LOG, VIA_SOCKET, VIA_LISTENER = "log", "socket", "listener"
#: why :meth:`LocalSockets.owner` found nobody: no live socket, nothing logged, no listener
NO_SOCKET = "no_socket"
#: why: the lookup failed (a netlink or bpf error, a damaged reply, a reply not there at once)
LOOKUP_FAILED = "lookup_failed"
#: why: the owner log shows the 5-tuple changed hands after the packet was captured
CHANGED_HANDS = "changed_hands"


class Owner(NamedTuple):
    """Who owned one local end: ``cgroup_id`` (cgroup v2 id of the socket's creator; 0 when
    unknown) and ``inode`` (of the socket, or of the listener for ``via`` "listener"; 0 when
    unknown); ``via`` says where it came from: "log" (the owner log), "socket" (the live
    socket), "listener" (the listening or bound socket of the local port)."""

    cgroup_id: int
    inode: int
    via: str


_new = tuple.__new__
_ANY = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


class LocalSockets:
    """Socket lookups for every module of one agent (``agent.sockets``)."""

    def __init__(self, agent: Any) -> None:
        self._agent = agent
        #: namespace identity (None: the agent's) -> its sock_diag socket
        self._channels: dict[Any, DiagChannel] = {}
        #: (namespace identity, key) -> (until, reply, with tcp_info)
        self._answers: dict[tuple[Any, FlowKey], tuple[float, Reply, bool]] = {}
        #: (namespace, protocol, local address, port) -> (until, its server socket's Owner or
        #: None): ports outside the ephemeral range
        self._ports: dict[tuple[Any, ...], tuple[float, Owner | None]] = {}
        #: (namespace identity, seq) -> (key, with_info, sent at): replies not there at once
        self._late: dict[tuple[Any, int], tuple[FlowKey, bool, float]] = {}
        self._log: Any = None  #: the owner log, once a module asked for it
        #: namespace path -> its identity, worked out again each second (a path such as
        #: /var/run/netns/NAME may name a new namespace once the old one is gone)
        self._idents: dict[str, Any] = {}
        self._wall_offset = 0.0
        self._log_writes = 0
        #: the ephemeral port range (ip_local_port_range), read again every minute
        self._low, self._high = ephemeral_ports()
        self.stats = Tally("sockets", (
            "lookups", "found", "not_found", "listener", "late", "errors", "malformed",
            "overruns", "netns_failed", "log_found", "log_missed", "log_changed_hands",
            "log_errors", "log_writes", "log_overflow"))

    # ------------------------------------------------------------ which ends

    def local_ends(self, sample: FlowSample) -> tuple[bool, bool]:
        """(source is local, destination is local) for a TCP/UDP sample."""
        pkt = sample.packet
        if pkt is None:
            return False, False
        if sample.netns is None:
            local = self._agent.interfaces.is_local
            return local(pkt.src_ip), local(pkt.dst_ip)
        return sample.direction == DIRECTION_SENT, sample.direction == DIRECTION_RECEIVED

    @staticmethod
    def end_key(sample: FlowSample, side: int) -> FlowKey | None:
        """The connection seen from ``side``'s socket (protocol, that end, the other end), or
        None for a packet that is not TCP/UDP with ports (or mixes address families)."""
        pkt = sample.packet
        if pkt is None or (pkt.protocol != IPPROTO_TCP and pkt.protocol != IPPROTO_UDP):
            return None
        if not pkt.src_port or not pkt.dst_port:
            return None
        try:
            if side == SRC:
                return flow_key(pkt.protocol, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
            return flow_key(pkt.protocol, pkt.dst_ip, pkt.dst_port, pkt.src_ip, pkt.src_port)
        except ValueError:
            return None

    # ------------------------------------------------------------ the two questions

    def connection(self, sample: FlowSample, side: int, *, with_info: bool = False
                   ) -> SockInfo | None:
        """The live socket of the sampled connection at local end ``side`` (with its
        tcp_info when ``with_info`` and TCP), or None: no such socket, a listener answering
        for a connection that is gone, or the lookup failed.  A TIME_WAIT or SYN_RECV
        mini-socket is returned (inode 0, no tcp_info)."""
        key = self.end_key(sample, side)
        if key is None:
            return None
        reply = self._lookup(sample.netns, key, with_info)
        sock = reply.sock if reply is not None else None
        if sock is None or not _is_connection(sock, key):
            return None
        return sock

    def owner(self, sample: FlowSample, side: int,
              accept: Callable[[Owner], bool] | None = None) -> Owner | str:
        """Who owned local end ``side`` of the sampled connection, or why that is not known
        (:data:`NO_SOCKET`, :data:`LOOKUP_FAILED`, :data:`CHANGED_HANDS`).

        A local port outside the ephemeral range (``ip_local_port_range``) that has a
        listening TCP socket, or a bound unconnected UDP socket, is a server's: that socket
        owns every connection on the port (accepted sockets are the listener's; the kernel
        never gives a connecting socket a port a listener holds).  Its answer is kept per
        port for :data:`PORT_SECONDS`.  Any other end: the owner log's entry, else the live
        socket.  ``accept`` may refuse the log's answer to see the live socket's (for example
        a socket systemd made, whose cgroup is systemd's, to find its holder by inode); when
        it refuses every answer, the first is returned."""
        key = self.end_key(sample, side)
        if key is None:
            return NO_SOCKET
        netns = sample.netns
        if not self._low <= key.lport <= self._high:
            server = self._server(netns, key)
            if server is not None:
                return server
        first: Owner | None = None
        if self._log is not None:
            logged = self._logged(netns, sample.timestamp, key)
            if logged is not None:
                if logged.__class__ is str:
                    return logged  # CHANGED_HANDS: the live socket is not the sample's either
                if accept is None or accept(logged):
                    return logged
                first = logged
        reply = self._lookup(netns, key, False)
        if reply is None:
            return first or LOOKUP_FAILED
        sock = reply.sock
        if sock is not None and sock.state != TCP_LISTEN and (sock.inode or sock.cgroup_id):
            found = _new(Owner, (sock.cgroup_id or 0, sock.inode, VIA_SOCKET))
            return found if accept is None or accept(found) else (first or found)
        return first or NO_SOCKET

    def _server(self, netns: str | None, key: FlowKey) -> Owner | None:
        """The listening (TCP) or bound unconnected (UDP) socket on ``key``'s local address
        and port, as an Owner; None when there is none.  Kept per port for PORT_SECONDS."""
        pk = (netns, key.protocol, key.local, key.lport)
        now = self._agent.now()
        hit = self._ports.get(pk)
        if hit is not None and hit[0] > now:
            return hit[1]
        reply = self._lookup(netns, _new(FlowKey, (key.protocol, key.local, key.lport,
                                                   _ANY[key.family], 0)), False)
        if reply is None:
            return None
        sock = reply.sock
        owner = None
        if sock is not None and (sock.inode or sock.cgroup_id) and (
                sock.state == TCP_LISTEN if key.protocol == IPPROTO_TCP else sock.dport == 0):
            self.stats["listener"] += 1
            owner = _new(Owner, (sock.cgroup_id or 0, sock.inode, VIA_LISTENER))
        if len(self._ports) >= ANSWERS_MAX:
            self._ports.clear()
        self._ports[pk] = (now + PORT_SECONDS, owner)
        return owner

    def record_owners(self, directories: Iterable[str], capacity: int | None = None) -> bool:
        """Log the owner of every connection that sockets created in these cgroup2
        directories (or below) send on, so :meth:`owner` knows it after the socket is gone.

        Call with the full current set whenever it changes: new directories are covered,
        dropped ones released.  The first call loads the kernel program, which needs root (or
        CAP_BPF and CAP_NET_ADMIN): make it from ``sflow_configure``; covering directories
        later needs CAP_BPF and CAP_NET_ADMIN still.  ``capacity``: how many connections the
        log keeps (at the first call; default 65,536).  Returns False (and logs it once) when
        it cannot be done; :meth:`owner` then works from live sockets alone."""
        agent = self._agent
        if self._log is None:
            from .owner_log import CAPACITY, OwnerLog, monotonic_to_wall

            try:
                self._log = OwnerLog(capacity or CAPACITY)
            except OSError as exc:
                agent.warn_once("sockets:owner_log", "owner_log_unavailable", error=str(exc),
                                effect="closed sockets are not traced to their owner")
                return False
            self._wall_offset = monotonic_to_wall()
            agent.log.info("owner_log_loaded", capacity=self._log.capacity)
        failed = self._log.cover(directories)
        for path, exc in failed:
            agent.warn_once(f"sockets:owner_log:{path}", "owner_log_attach_failed", cgroup=path,
                            error=str(exc))
        return not failed

    # ------------------------------------------------------------ the agent's side

    def tick(self, now: float) -> None:
        """Once a second: expire answers, close idle namespace sockets, push counters."""
        self._idents.clear()
        if int(now) % 60 == 0:
            self._low, self._high = ephemeral_ports()
        if self._answers:
            self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
        if self._late:
            self._late = {k: v for k, v in self._late.items() if v[2] > now - LATE_SECONDS}
        if self._ports:
            self._ports = {k: v for k, v in self._ports.items() if v[0] > now}
        for ident, ch in list(self._channels.items()):
            self.stats["overruns"] += ch.overruns
            ch.overruns = 0
            if ident is not None and now - ch.last_used > IDLE_CHANNEL_SECONDS:
                self._close(ident)
        if self._log is not None:
            from .owner_log import monotonic_to_wall

            self._wall_offset = monotonic_to_wall()
            self._check_log()
        self.stats.push(self._agent.count)

    def close(self) -> None:
        for ident in list(self._channels):
            self._close(ident)
        if self._log is not None:
            self._log.close()
            self._log = None

    def cgroup_traffic(self, cgroup_id: int) -> tuple[int, int, int, int] | None:
        """(bytes in, packets in, bytes out, packets out) the sockets of cgroup ``cgroup_id``
        received and sent (IP packets; since the owner log first saw that cgroup's traffic),
        or None: no owner log, or the cgroup is not under the directories it covers, or it
        has had no traffic."""
        if self._log is None or not cgroup_id:
            return None
        try:
            return self._log.traffic(cgroup_id)
        except OSError as exc:
            self.stats["log_errors"] += 1
            self._agent.warn_once("sockets:owner_log_read", "owner_log_read_failed",
                                  error=str(exc))
            return None

    @property
    def recording(self) -> bool:
        """True while the owner log is loaded."""
        return self._log is not None

    # ------------------------------------------------------------ internals

    def _check_log(self) -> None:
        """The log's writes in the last second: more than it can hold for
        LOG_HISTORY_SECONDS means entries may be evicted before their samples are looked up
        (counted, logged once while it lasts)."""
        try:
            writes = self._log.writes()
        except OSError:
            self.stats["log_errors"] += 1
            return
        grown, self._log_writes = writes - self._log_writes, writes
        self.stats["log_writes"] += grown
        if grown * LOG_HISTORY_SECONDS > self._log.capacity:
            self.stats["log_overflow"] += 1
            self._agent.warn_once("sockets:owner_log_overflow", "owner_log_overflow",
                                  writes_per_second=grown, capacity=self._log.capacity)
        else:
            self._agent.clear_warning("sockets:owner_log_overflow")

    def _logged(self, netns: str | None, timestamp: float, key: FlowKey) -> Owner | str | None:
        """The owner log's entry for ``key``: an Owner, CHANGED_HANDS when it was written
        after the packet was captured, or None (nothing logged, or no log for this
        namespace)."""
        ch = self._channels.get(None) if netns is None else self._channel(netns)
        if ch is None:
            ch = self._channel(netns)
        cookie = ch.netns_cookie if ch is not None else None
        if cookie is None:
            return None
        local, remote = key.local, key.remote
        fam = _AF_INET6 if ":" in local else _AF_INET
        packed = _PACKED[fam]
        plocal, premote = packed.get(local), packed.get(remote)
        try:
            hit = self._log.owner(cookie, key.protocol, fam, plocal or _packed(fam, local),
                                  key.lport, premote or _packed(fam, remote), key.rport)
        except OSError as exc:
            self.stats["log_errors"] += 1
            self._agent.warn_once("sockets:owner_log_read", "owner_log_read_failed",
                                  error=str(exc))
            return None
        if hit is None:
            self.stats["log_missed"] += 1
            return None
        cgroup_id, since = hit
        if timestamp > 0 and since * 1e-9 + self._wall_offset > timestamp + CLOCK_SLACK:
            self.stats["log_changed_hands"] += 1
            return CHANGED_HANDS
        self.stats["log_found"] += 1
        return _new(Owner, (cgroup_id, 0, VIA_LOG))

    def _lookup(self, netns: str | None, key: FlowKey, with_info: bool) -> Reply | None:
        """The sock_diag answer for ``key`` (reused for ANSWER_SECONDS), or None when the
        lookup failed or its reply was not there at once."""
        ch = self._channel(netns)
        if ch is None:
            return None
        ident = None if netns is None else ch.ident
        ck = (ident, key)
        now = self._agent.now()
        hit = self._answers.get(ck)
        if hit is not None and hit[0] > now and (hit[2] or not with_info):
            return hit[1]
        ch.last_used = now
        self.stats["lookups"] += 1
        try:
            seq, reply = ch.request_now(key, with_info=with_info)
        except OSError as exc:
            self.stats["errors"] += 1
            self._agent.warn_once("sockets:send", "sock_diag_send_failed", error=str(exc))
            return None
        if ch.has_held:
            self._drain(ident, ch)
        if reply is None:
            self.stats["late"] += 1
            self._late[(ident, seq)] = (key, with_info, now)
            return None
        return self._answered(ck, reply, with_info, now)

    def _answered(self, ck: tuple[Any, FlowKey], reply: Reply, with_info: bool,
                  now: float) -> Reply | None:
        """Count a reply and keep it for ANSWER_SECONDS; None for a damaged one or an error."""
        if reply.sock is not None:
            self.stats["found"] += 1
        elif reply.errno == errno_mod.ENOENT:
            self.stats["not_found"] += 1
        else:
            if reply.errno != errno_mod.EBADMSG:  # damaged replies: counted as malformed
                self.stats["errors"] += 1
                self._agent.warn_once("sockets:errno", "sock_diag_error", errno=reply.errno)
            return None
        if len(self._answers) >= ANSWERS_MAX:
            self._answers.clear()
        self._answers[ck] = (now + ANSWER_SECONDS, reply, with_info)
        return reply

    def _drain(self, ident: Any, ch: DiagChannel) -> None:
        """Replies that came late (read on the way, or signalled): into the answers."""
        try:
            replies, bad = ch.read()
        except OSError as exc:
            self.stats["errors"] += 1
            self._agent.warn_once("sockets:recv", "sock_diag_recv_failed", error=str(exc))
            return
        if bad:
            self.stats["malformed"] += bad
            self._agent.warn_once("sockets:malformed", "sock_diag_reply_malformed", count=bad)
        now = self._agent.now()
        for r in replies:
            late = self._late.pop((ident, r.seq), None)
            if late is not None:
                self._answered((ident, late[0]), r, late[1], now)

    def _channel(self, netns: str | None) -> DiagChannel | None:
        """The sock_diag socket for the agent's namespace (None) or the one at path ``netns``,
        made on first use."""
        ident: Any = None
        if netns is not None:
            ident = self._idents.get(netns)
        if netns is not None and ident is None:
            try:
                ident = self._idents[netns] = netns_identity(netns)
            except OSError as exc:
                self.stats["netns_failed"] += 1
                self._agent.warn_once(f"sockets:netns:{netns}", "netns_unavailable", netns=netns,
                                      error=str(exc))
                return None
        ch = self._channels.get(ident)
        if ch is not None:
            return ch
        try:
            ch = DiagChannel(netns)
        except OSError as exc:
            self.stats["netns_failed" if netns else "errors"] += 1
            self._agent.warn_once(f"sockets:netns:{netns}", "sock_diag_socket_failed",
                                  netns=netns, error=str(exc))
            return None
        ch.ident = ident
        self._channels[ident] = ch
        if getattr(self._agent, "loop", None) is not None:
            self._agent.add_reader(ch.fileno(), lambda: self._drain(ident, ch))
        return ch

    def _close(self, ident: Any) -> None:
        ch = self._channels.pop(ident, None)
        if ch is None:
            return
        self._answers = {k: v for k, v in self._answers.items() if k[0] != ident}
        self._agent.remove_reader(ch.fileno())
        ch.close()


def ephemeral_ports(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The range connecting sockets get their ports from (the kernel's default when it
    cannot be read)."""
    try:
        with open(path) as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _is_connection(sock: SockInfo, key: FlowKey) -> bool:
    """True when the kernel's answer is the sampled connection's own socket: for TCP not a
    listener (the kernel answers with the port's listener when the connection is gone) and
    with the remote port asked for; for UDP any socket (a bound, unconnected socket serves
    every remote)."""
    if key.protocol != IPPROTO_TCP:
        return True
    return sock.state != TCP_LISTEN and sock.dport == key.rport and sock.sport == key.lport


#: family -> address text -> packed (flows repeat addresses; packing costs more than a lookup)
_PACKED: dict[int, dict[str, bytes]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def _packed(family: int, addr: str) -> bytes:
    cache = _PACKED[family]
    p = cache.get(addr)
    if p is None:
        p = socket.inet_pton(family, addr)
        if len(cache) >= 8192:
            cache.clear()
        cache[addr] = p
    return p
