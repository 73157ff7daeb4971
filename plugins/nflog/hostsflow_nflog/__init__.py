"""hostsflow module ``nflog``: sFlow flow samples from packets that an nftables or iptables
rule logs, at random, to an NFLOG (nfnetlink_log) group."""

from .plugin import NflogConfig, NflogPlugin

__all__ = ["NflogConfig", "NflogPlugin"]
