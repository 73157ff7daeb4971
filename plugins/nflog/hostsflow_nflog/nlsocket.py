"""The nfnetlink_log socket: open, bind a group, configure it, read batches, unbind.

Called on: ``sflow_configure`` (open + bind while root), every readable event (``recv``), a
tick retry after a failed bind, and ``sflow_final`` (unbind + close).
"""

from __future__ import annotations

import errno
import os
import socket
import time

from .protocol import (
    NETLINK_NETFILTER,
    ack_errno,
    bind_request,
    mode_request,
    unbind_request,
)

RCVBUF_BYTES = 8_000_000  # hsflowd's receive buffer
RECV_BYTES = 1 << 17  # one recv() returns one kernel batch (at most nlbufsiz, 8 KiB by default)
ACK_WAIT_SECONDS = 1.0


class NflogBindError(OSError):
    """The kernel refused a config request for ``group`` (EPERM: another socket in this
    network namespace has the group)."""

    def __init__(self, err: int, group: int, what: str) -> None:
        super().__init__(err, f"nfnetlink_log {what} of group {group}: {os.strerror(err)}")
        self.group = group


def _open_raw(netns: str | None) -> socket.socket:
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    # nfnetlink_log instances belong to a network namespace: make the socket there.  setns()
    # moves only this thread, and only for the socket() call; a namespace that does not exist
    # raises instead of silently leaving us where we are.
    from pyroute2 import netns as pr_netns

    path = netns if "/" in netns else os.path.join(pr_netns.NETNS_RUN_DIR, netns)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such network namespace", netns)
    pr_netns.pushns(path)
    try:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    finally:
        pr_netns.popns()


class NflogSocket:
    """One nfnetlink_log socket bound to one group.

    :param group: the NFLOG group (the rule's ``log group G`` / ``--nflog-group G``).
    :param copy_range: bytes of each packet to copy (from the IP header on).
    :param qthreshold: messages per kernel batch (a rule's own threshold wins).
    :param timeout_cs: flush a partial batch after this many 1/100 s.
    :param netns: a network namespace name or path to open the socket in (None = ours).
    """

    def __init__(self, group: int, copy_range: int, qthreshold: int, timeout_cs: int,
                 netns: str | None = None, rcvbuf: int = RCVBUF_BYTES) -> None:
        self.group = group
        self.copy_range = copy_range
        self.qthreshold = qthreshold
        self.timeout_cs = timeout_cs
        self.netns = netns
        self.rcvbuf = rcvbuf
        self.sock: socket.socket | None = None
        self._seq = 0

    def open(self) -> None:
        """Create, bind and configure; raises :class:`NflogBindError` or ``OSError``."""
        sock = _open_raw(self.netns)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, self.rcvbuf)  # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.bind((0, 0))
            self.sock = sock
            self._request(bind_request, "bind")
            self._request(lambda g, seq: mode_request(
                g, self.copy_range, self.qthreshold, self.timeout_cs, seq), "configuration")
            sock.setblocking(False)
        except BaseException:
            self.sock = None
            sock.close()
            raise

    def _request(self, build, what: str) -> None:  # type: ignore[no-untyped-def]
        assert self.sock is not None
        self._seq += 1
        self.sock.settimeout(ACK_WAIT_SECONDS)
        self.sock.send(build(self.group, self._seq))
        deadline = time.monotonic() + ACK_WAIT_SECONDS
        while time.monotonic() < deadline:
            err = ack_errno(self.sock.recv(RECV_BYTES))
            if err is None:
                continue  # a packet batch that arrived before the ack
            if err:
                raise NflogBindError(err, self.group, what)
            return
        raise NflogBindError(errno.ETIMEDOUT, self.group, what)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def recv(self) -> bytes:
        """One kernel batch; raises BlockingIOError when empty, OSError(ENOBUFS) on overrun."""
        assert self.sock is not None
        return self.sock.recv(RECV_BYTES)

    def close(self) -> None:
        """Unbind the group (so another process may take it) and close; never raises."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        try:
            sock.setblocking(True)
            sock.settimeout(0.2)
            self._seq += 1
            sock.send(unbind_request(self.group, self._seq))
        except OSError:
            pass
        finally:
            sock.close()
