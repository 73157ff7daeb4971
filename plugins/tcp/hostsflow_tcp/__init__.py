"""hostsflow tcp module: extended_tcp_info via sock_diag (see README.md)."""

from .lookup import FlowKey, flow_key, lookup_socket
from .diag import SockInfo, TcpInfo

__all__ = ["FlowKey", "SockInfo", "TcpInfo", "flow_key", "lookup_socket"]
