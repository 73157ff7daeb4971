"""Fixtures for hostsflow-user's tests: real sockets owned by another user.

``foreign_sockets`` forks a child that becomes user ``nobody`` and opens a listening TCP
socket and a bound UDP socket on 127.0.0.1 and prints their ports; it needs root (to start a
process as another user) and skips without it.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
from typing import Iterator

import attrs
import pytest



@attrs.frozen
class ForeignSockets:
    """Sockets owned by ``user`` (uid ``uid``) on 127.0.0.1."""

    user: str
    uid: int
    tcp_port: int
    udp_port: int


@pytest.fixture
def foreign_sockets() -> Iterator[ForeignSockets]:
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as user nobody")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, open the sockets, serve until killed
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            _serve(wfd)
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        with os.fdopen(rfd) as f:
            tcp_port, udp_port = map(int, f.readline().split())
        yield ForeignSockets("nobody", nobody.pw_uid, tcp_port, udp_port)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _serve(wfd: int) -> None:
    t = socket.socket()
    t.bind(("127.0.0.1", 0))
    t.listen(8)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    os.write(wfd, f"{t.getsockname()[1]} {u.getsockname()[1]}\n".encode())
    os.close(wfd)
    conns = []
    while True:
        c, _ = t.accept()
        conns.append(c)
        c.sendall(b"hello from nobody")
