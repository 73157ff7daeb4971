"""hostsflow tcp module: extended_tcp_info via sock_diag (see README.md)."""

from .diag import SockInfo, TcpInfo
from .lookup import FlowKey, flow_key, lookup_socket

__all__ = ["FlowKey", "SockInfo", "TcpInfo", "flow_key", "lookup_socket"]
