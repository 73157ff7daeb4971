"""``--allow CIDR``: take sFlow only from senders in the listed networks.

The collector tools listen on UDP without authentication; with ``--allow`` (repeatable) a
datagram whose sender address is outside every listed network is dropped before it is decoded
(and counted by the caller).  An IPv4 sender seen on an IPv6 socket (``::ffff:a.b.c.d``) is
matched as IPv4.  Decisions are cached per sender address (bounded), so a datagram costs one
dict lookup."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Iterable

CACHE = 4096  # sender addresses whose decision is remembered


class SourceFilter:
    """The networks datagrams are accepted from."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = [parse_network(n) for n in networks]
        if not self.networks:
            raise ValueError("--allow: no network given")
        self._cache: dict[str, bool] = {}

    def allows(self, address: str) -> bool:
        """Whether a datagram from ``address`` (text, as a socket reports it) is taken."""
        got = self._cache.get(address)
        if got is None:
            got = self._decide(address)
            if len(self._cache) >= CACHE:
                self._cache.clear()
            self._cache[address] = got
        return got

    def _decide(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self.networks)

    def __str__(self) -> str:
        return ", ".join(str(n) for n in self.networks)


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``10.0.0.0/8``, ``192.0.2.7`` (one address) or ``2001:db8::/32``; ValueError (naming
    the text) otherwise.  Host bits set are refused (``10.0.0.1/8`` is a typo or a mistake)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"--allow {text!r}: {exc}") from exc


def network_arg(text: str) -> str:
    """argparse ``type=`` for ``--allow``: checks the text, keeps it as given."""
    try:
        parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def add_allow_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--allow CIDR`` option (repeatable) of decode, view and top."""
    parser.add_argument("--allow", action="append", default=None, metavar="CIDR",
                        type=network_arg,
                        help="take sFlow only from senders in this network (repeatable; "
                             "default: from anyone); refusals are counted")


def source_filter(allow: list[str] | None) -> SourceFilter | None:
    """The filter for the ``--allow`` values, or None when none were given."""
    return SourceFilter(allow) if allow else None
