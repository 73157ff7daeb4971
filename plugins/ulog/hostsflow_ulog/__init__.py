"""hostsflow module ``ulog``: sFlow flow samples from packets the legacy iptables ULOG target
logs (NETLINK_NFLOG; Linux < 3.17).  On current kernels it says so once and stays idle."""

from .module import UlogConfig, UlogModule

__all__ = ["UlogConfig", "UlogModule"]
