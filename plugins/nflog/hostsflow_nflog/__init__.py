"""hostsflow module ``nflog``: sFlow flow samples from packets that an nftables or iptables
rule logs, at random, to an NFLOG (nfnetlink_log) group."""

from .module import NflogConfig, NflogModule

__all__ = ["NflogConfig", "NflogModule"]
