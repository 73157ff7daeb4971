"""The local socket at either end of a sampled packet, and who owned it (``agent.sockets``).

What more than one module needs of sockets lives here, in the core, so modules never import
each other: the sock_diag codec (:mod:`.diag`), its non-blocking channel and a one-shot lookup
(:mod:`.channel`), the owner log that traces a closed socket to its cgroup (:mod:`.owner_log`,
on the small bpf(2) layer :mod:`.bpf`), and :class:`LocalSockets`, the per-agent service
modules call on the packet path (:mod:`.local`).  See docs/plugins.md, "Sockets".
"""

from .channel import IPPROTO_TCP, IPPROTO_UDP, DiagChannel, FlowKey, flow_key, lookup_socket
from .diag import SockInfo, TcpInfo
from .local import (
    CHANGED_HANDS, DST, LOOKUP_FAILED, NO_SOCKET, SRC, VIA_LISTENER, VIA_LOG, VIA_SOCKET,
    LocalSockets, Owner,
)

__all__ = [
    "CHANGED_HANDS", "DST", "IPPROTO_TCP", "IPPROTO_UDP", "LOOKUP_FAILED", "NO_SOCKET", "SRC",
    "VIA_LISTENER", "VIA_LOG", "VIA_SOCKET", "DiagChannel", "FlowKey", "LocalSockets", "Owner",
    "SockInfo", "TcpInfo", "flow_key", "lookup_socket",
]
