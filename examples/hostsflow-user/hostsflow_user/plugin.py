"""The user module: for each sampled TCP/UDP packet whose socket is on this host, add
extended_user (0:1004) naming the user that owns it.

Where the uid comes from, in order:

1. ``sample.stash[SOCKET_UID]`` when another module (the tcp module's sock_diag lookup) filled
   it in phase 1 -- which is why this module works in phase 2, ``sflow_flow_sample_released``,
   after every hold on the sample was released;
2. its own lookup in /proc/net/{tcp,udp}{,6} (:class:`~hostsflow_user.sockets.SocketOwners`),
   unless ``proc = off``.

The uid becomes a name with :mod:`pwd` (cached; an unknown uid is sent as its number), or stays
a number with ``numeric = on``.  Samples from another network namespace (``sample.netns`` set)
are only enriched from the stash: /proc/net describes the agent's own namespace.
"""

from __future__ import annotations

import pwd
from typing import Any

import hostsflow
from hostsflow.samples import DIRECTION_RECEIVED, DIRECTION_SENT, SOCKET_UID, FlowSample

from .config import UserConfig
from .record import CHARSET_UNKNOWN, CHARSET_UTF8, MAX_USER, ExtendedUser
from .sockets import PROTO_TCP, PROTO_UDP, SocketOwners, canonical

NAME = "user"  #: the entry-point name, which is also the config block name
_PROTOCOLS = frozenset((PROTO_TCP, PROTO_UDP))
_NAME_CACHE_MAX = 4096


class UserPlugin:
    """hostsflow module ``user``: one instance per agent, made by the core with no arguments."""

    def __init__(self) -> None:
        self.config = UserConfig()
        self.owners: SocketOwners | None = None
        self.names: dict[int, str] = {}
        self._local: frozenset[str] = frozenset()
        self._local_version = -1

    # ------------------------------------------------------------ set-up (poll path)

    @hostsflow.hookimpl
    def sflow_declare_config(self, registry: Any) -> None:
        registry.block(NAME, UserConfig,
                       help="extended_user: the local user owning a sampled packet's socket")

    @hostsflow.hookimpl
    def sflow_configure(self, agent: Any) -> None:
        self._apply(agent)
        agent.logger(NAME).info("user_configured", numeric=self.config.numeric,
                                proc=self.config.proc)

    @hostsflow.hookimpl
    def sflow_config_changed(self, agent: Any) -> None:
        self._apply(agent)

    def _apply(self, agent: Any) -> None:
        self.config = agent.module_config(NAME) or UserConfig()
        self.owners = SocketOwners(clock=agent.now) if self.config.proc else None
        self.names.clear()

    # ------------------------------------------------------------ packet path, phase 2

    @hostsflow.hookimpl
    def sflow_flow_sample_released(self, agent: Any, sample: FlowSample) -> None:
        pkt = sample.packet
        if pkt is None or pkt.protocol not in _PROTOCOLS or not pkt.src_port or not pkt.dst_port:
            return
        src_uid = dst_uid = None
        uid = sample.stash.get(SOCKET_UID)
        if uid is not None:
            side = self._local_side(agent, sample, pkt.src_ip, pkt.dst_ip)
            if side == "src":
                src_uid = uid
            elif side == "dst":
                dst_uid = uid
        owners = self.owners
        if owners is not None and sample.netns is None:
            is_local = self._is_local_fn(agent)
            p = pkt.protocol
            if src_uid is None:
                src_uid = owners.owner(p, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port,
                                       is_local)
            if dst_uid is None:
                dst_uid = owners.owner(p, pkt.dst_ip, pkt.dst_port, pkt.src_ip, pkt.src_port,
                                       is_local)
            if owners.bad_lines:
                agent.warn_once("user:proc", "user_proc_lines_skipped", skipped=owners.bad_lines)
        if src_uid is None and dst_uid is None:
            return
        src, dst = self._name(src_uid), self._name(dst_uid)
        sample.add(ExtendedUser(
            CHARSET_UTF8 if src else CHARSET_UNKNOWN, src,
            CHARSET_UTF8 if dst else CHARSET_UNKNOWN, dst,
        ))
        agent.count("user.records")

    # ------------------------------------------------------------ helpers

    def _name(self, uid: int | None) -> str:
        """The user name for ``uid`` (cached), its decimal text if it has none or
        ``numeric = on``, "" for None."""
        if uid is None:
            return ""
        if self.config.numeric:
            return str(uid)
        name = self.names.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name[:MAX_USER]
            except (KeyError, OverflowError):
                name = str(uid)
            if len(self.names) >= _NAME_CACHE_MAX:
                self.names.clear()
            self.names[uid] = name
        return name

    def _local_addresses(self, agent: Any) -> frozenset[str]:
        """This host's addresses, rebuilt only when the agent's interface table changed."""
        version = getattr(agent, "interfaces_version", 0)
        if version != self._local_version:
            self._local_version = version
            self._local = frozenset(
                canonical(a.split("/", 1)[0].split("%", 1)[0])
                for intf in agent.interfaces for a in getattr(intf, "addresses", ())
            )
        return self._local

    def _is_local_fn(self, agent: Any) -> Any:
        local = self._local_addresses(agent)

        def is_local(addr: str) -> bool:
            return addr in local or addr.startswith("127.") or addr == "::1"

        return is_local

    def _local_side(self, agent: Any, sample: FlowSample, src: str, dst: str) -> str | None:
        """Which end of the packet the stash's socket is: by direction when the capture
        plugin knows it, else by which address is this host's (None when both or neither)."""
        if sample.direction == DIRECTION_SENT:
            return "src"
        if sample.direction == DIRECTION_RECEIVED:
            return "dst"
        is_local = self._is_local_fn(agent)
        s, d = is_local(canonical(src)), is_local(canonical(dst))
        if s != d:
            return "src" if s else "dst"
        return None
