"""The user module: for each sampled TCP/UDP packet whose socket is on this host, add
extended_user (0:1004) naming the user that owns it.

Which ends are this host's, and the socket at each, come from the core
(``agent.sockets.local_ends`` and ``agent.sockets.connection``: one sock_diag lookup per
socket, shared with every other module that asks, in the agent's namespace or the one the
sample was captured in).  The uid becomes a name with :mod:`pwd` (cached; a uid without a
name is sent as its number), or stays a number with ``numeric = on``.
"""

from __future__ import annotations

import pwd
from typing import Any

import hostsflow
from hostsflow.samples import FlowSample
from hostsflow.sockets import DST, SRC

from .config import UserConfig
from .record import CHARSET_UNKNOWN, CHARSET_UTF8, MAX_USER, ExtendedUser

NAME = "user"  #: the entry-point name, which is also the config block name
_NAME_CACHE_MAX = 4096


class UserModule:
    """hostsflow module ``user``: one instance per agent, made by the core with no arguments."""

    def __init__(self) -> None:
        self.config = UserConfig()
        self.names: dict[int, str] = {}

    @hostsflow.hookimpl
    def sflow_declare_config(self, registry: Any) -> None:
        registry.block(NAME, UserConfig,
                       help="extended_user: the local user owning a sampled packet's socket")

    @hostsflow.hookimpl
    def sflow_configure(self, agent: hostsflow.AgentAPI) -> None:
        self._apply(agent)
        agent.logger(NAME).info("user_configured", numeric=self.config.numeric)

    @hostsflow.hookimpl
    def sflow_config_changed(self, agent: hostsflow.AgentAPI) -> None:
        self._apply(agent)

    def _apply(self, agent: hostsflow.AgentAPI) -> None:
        self.config = agent.module_config(NAME) or UserConfig()
        self.names.clear()

    # ------------------------------------------------------------ packet path

    @hostsflow.hookimpl
    def sflow_flow_sample(self, agent: hostsflow.AgentAPI, sample: FlowSample) -> None:
        sockets = agent.sockets
        src_local, dst_local = sockets.local_ends(sample)
        src_uid = self._uid(sockets, sample, SRC) if src_local else None
        dst_uid = self._uid(sockets, sample, DST) if dst_local else None
        if src_uid is None and dst_uid is None:
            return
        src, dst = self._name(src_uid), self._name(dst_uid)
        sample.add(ExtendedUser(
            CHARSET_UTF8 if src else CHARSET_UNKNOWN, src,
            CHARSET_UTF8 if dst else CHARSET_UNKNOWN, dst,
        ))
        agent.count("user.records")

    @staticmethod
    def _uid(sockets: Any, sample: FlowSample, side: int) -> int | None:
        sock = sockets.connection(sample, side)  # None: not a TCP/UDP socket of this host
        return sock.uid if sock is not None else None

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
