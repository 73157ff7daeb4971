"""Knowing at once when interfaces or their addresses change, without polling /sys.

A NETLINK_ROUTE socket subscribed to the link and address notification groups: the kernel sends
a message for every interface added, removed, brought up or down, renamed, or re-addressed.  Only
*that* something changed matters here (the agent then rescans /sys), so the messages are drained,
not decoded; pyroute2 would decode them, which this does not need.
"""

from __future__ import annotations

import errno
import socket

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
NETLINK_ROUTE = 0


class LinkWatch:
    """A non-blocking rtnetlink listener; :meth:`drain` on readable, :meth:`take` once a second."""

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            NETLINK_ROUTE,
        )
        try:
            self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        except OSError:
            self.sock.close()
            raise
        self.changed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        """Read every queued notification; an overrun (ENOBUFS) means changes were missed, so
        it counts as a change too."""
        while True:
            try:
                if not self.sock.recv(65536):
                    return
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
            self.changed = True

    def take(self) -> bool:
        """Whether anything changed since the last call."""
        changed, self.changed = self.changed, False
        return changed

    def close(self) -> None:
        self.sock.close()
