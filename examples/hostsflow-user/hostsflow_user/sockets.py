"""Who owns a local TCP/UDP socket: a table read from /proc/net/{tcp,tcp6,udp,udp6}.

Called on: the packet path (phase 2), once or twice per sampled packet; the table is re-read
at most once per ``max_age`` seconds (default 1 s) and only while samples ask, so an idle agent
reads nothing.  Lookups are dict lookups on text addresses as :class:`hostsflow.packet.PacketInfo`
writes them.  The table describes the network namespace of the reading process (the agent's).

Matching, most specific first:

1. a connected socket with exactly this local and remote address and port;
2. a socket bound to this local address and port (listening TCP, unconnected UDP);
3. a socket bound to the wildcard address (``0.0.0.0`` / ``::``) on this port, only if the
   address is one of this host's (``is_local``), so a passing packet is never attributed to a
   local listener that merely shares a port number.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Callable, Iterable

PROTO_TCP, PROTO_UDP = 6, 17
_FILES = (("tcp", PROTO_TCP, 4), ("tcp6", PROTO_TCP, 6), ("udp", PROTO_UDP, 4),
          ("udp6", PROTO_UDP, 6))
#: TCP states whose uid is not the owner's (TIME_WAIT and CLOSE sockets report uid 0)
_SKIP_TCP_STATES = frozenset(("06", "07"))
_WILDCARDS = ("0.0.0.0", "::")
_MAPPED = "::ffff:"

Key5 = tuple[int, str, int, str, int]
Key3 = tuple[int, str, int]


def canonical(addr: str) -> str:
    """``::ffff:a.b.c.d`` -> ``a.b.c.d`` (a dual-stack socket serving IPv4), else unchanged."""
    if addr.startswith(_MAPPED) and "." in addr:
        return addr[len(_MAPPED):]
    return addr


def parse_hex_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080).  The kernel prints the address as 32-bit
    words in host byte order; raises ValueError on anything malformed."""
    hexaddr, _, hexport = text.partition(":")
    raw = bytes.fromhex(hexaddr)
    if len(raw) not in (4, 16) or not hexport:
        raise ValueError(f"bad address {text!r}")
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return canonical(socket.inet_ntop(family, raw)), int(hexport, 16)


class SocketOwners:
    """uid of local sockets by address, re-read from procfs at most once per ``max_age``.

    :param root: the directory holding tcp, tcp6, udp, udp6 (tests may point elsewhere).
    :param clock: monotonic seconds (pass ``agent.now`` so the testing kit drives it).
    """

    def __init__(self, root: str = "/proc/net", max_age: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.max_age = max_age
        self.clock = clock
        self.built = float("-inf")
        self.exact: dict[Key5, int] = {}
        self.bound: dict[Key3, int] = {}
        self.wild: dict[Key3, int] = {}  # (proto, family "4"/"6" wildcard text, port)
        self.reads = 0  #: how many times the table was read (for tests and status)
        self.bad_lines = 0  #: malformed lines skipped

    # ------------------------------------------------------------ reading

    def refresh(self) -> None:
        """Re-read every table now."""
        exact: dict[Key5, int] = {}
        bound: dict[Key3, int] = {}
        wild: dict[Key3, int] = {}
        for name, proto, _family in _FILES:
            try:
                with open(f"{self.root}/{name}", encoding="ascii", errors="replace") as f:
                    lines = f.readlines()
            except OSError:  # no IPv6, or no such protocol in this kernel
                continue
            self._index(lines[1:], proto, exact, bound, wild)
        self.exact, self.bound, self.wild = exact, bound, wild
        self.built = self.clock()
        self.reads += 1

    def _index(self, lines: Iterable[str], proto: int, exact: dict[Key5, int],
               bound: dict[Key3, int], wild: dict[Key3, int]) -> None:
        for line in lines:
            cols = line.split()
            try:
                if proto == PROTO_TCP and cols[3] in _SKIP_TCP_STATES:
                    continue
                lip, lport = parse_hex_address(cols[1])
                rip, rport = parse_hex_address(cols[2])
                uid = int(cols[7])
            except (IndexError, ValueError):
                self.bad_lines += 1
                continue
            if rport:
                exact.setdefault((proto, lip, lport, rip, rport), uid)
            elif lip in _WILDCARDS:
                wild.setdefault((proto, lip, lport), uid)
            else:
                bound.setdefault((proto, lip, lport), uid)

    # ------------------------------------------------------------ lookups

    def owner(self, proto: int, local_ip: str, local_port: int, remote_ip: str,
              remote_port: int, is_local: Callable[[str], bool] = lambda a: False) -> int | None:
        """The uid owning the local socket ``local_ip:local_port`` talking to
        ``remote_ip:remote_port`` (``proto`` 6 or 17), or None if there is none."""
        if self.clock() - self.built >= self.max_age:
            self.refresh()
        local_ip, remote_ip = canonical(local_ip), canonical(remote_ip)
        uid = self.exact.get((proto, local_ip, local_port, remote_ip, remote_port))
        if uid is not None:
            return uid
        uid = self.bound.get((proto, local_ip, local_port))
        if uid is not None:
            return uid
        if not is_local(local_ip):
            return None
        if ":" not in local_ip:
            uid = self.wild.get((proto, "0.0.0.0", local_port))
            if uid is not None:
                return uid
        return self.wild.get((proto, "::", local_port))  # dual-stack sockets serve IPv4 too
