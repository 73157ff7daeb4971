"""The user module in an in-process agent (hostsflow.testing.AgentHarness): real sockets on
loopback, samples built from their real addresses, records read back from the datagrams the
agent would have sent."""

from __future__ import annotations

import os
import pwd
import socket
from typing import Any, Iterator

import pytest

from hostsflow.testing import AgentHarness
from hostsflow_user import ExtendedUser, UserModule

CONF = "sflow {{ collector {{ ip = 127.0.0.1 }} user {{ {} }} }}"
ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection on loopback owned by this process: (client, accepted)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    acc, _ = srv.accept()
    try:
        yield cli, acc
    finally:
        for s in (cli, acc, srv):
            s.close()


def four_tuple(s: socket.socket) -> tuple[str, int, str, int]:
    (a, p), (b, q) = s.getsockname()[:2], s.getpeername()[:2]
    return a, p, b, q


def users(h: AgentHarness) -> list[tuple[str, str]]:
    return [(r.src_user, r.dst_user) for r in h.records(ExtendedUser)]


def test_both_ends_of_a_local_connection_are_named(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    cli, _ = connection
    with AgentHarness(CONF.format(""), modules={"user": UserModule}) as h:
        h.feed(h.make_sample(tcp=four_tuple(cli)))
        h.tick()
        (rec,) = h.records(ExtendedUser)
        assert (rec.src_charset, rec.src_user, rec.dst_charset, rec.dst_user) == (
            106, ME, 106, ME)
        assert h.agent.health.snapshot().get("user.records") == 1


def test_a_socket_of_another_user(foreign_sockets: Any) -> None:
    fs = foreign_sockets
    cli = socket.create_connection(("127.0.0.1", fs.tcp_port))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        cli.recv(100)  # the connection is established on both sides
        with AgentHarness(CONF.format(""), modules={"user": UserModule}) as h:
            h.feed(h.make_sample(tcp=four_tuple(cli)),
                   h.make_sample(udp=("127.0.0.1", udp.getsockname()[1], "127.0.0.1",
                                      fs.udp_port)))
            h.tick()
            assert users(h) == [(ME, fs.user), (ME, fs.user)]
        with AgentHarness(CONF.format("numeric = on"), modules={"user": UserModule}) as h:
            h.feed(h.make_sample(tcp=four_tuple(cli)))
            h.tick()
            assert users(h) == [(str(os.geteuid()), str(fs.uid))]
    finally:
        cli.close()
        udp.close()


def test_packets_of_other_hosts_and_of_no_socket_get_no_record() -> None:
    s = socket.socket()
    s.bind(("0.0.0.0", 0))  # a local wildcard listener on the same port must not match
    s.listen()
    try:
        port = s.getsockname()[1]
        with AgentHarness(CONF.format(""), modules={"user": UserModule}) as h:
            h.feed(h.make_sample(tcp=("198.51.100.1", port, "198.51.100.2", 40000)),
                   h.make_sample(tcp=("198.51.100.2", 40000, "198.51.100.1", port)))
            # local, but no such connection: the port's listener is not its socket
            h.feed(h.make_sample(tcp=("127.0.0.1", 40000, "127.0.0.1", port)))
            h.tick()
            assert len(h.flow_samples()) == 3
            assert users(h) == []
    finally:
        s.close()


def test_config_mistakes_name_file_and_line() -> None:
    from hostsflow.config import ConfigError

    with pytest.raises(ConfigError) as err:
        AgentHarness("sflow {\n collector { ip = 127.0.0.1 }\n user {\n numeric = maybe\n }\n}",
                     modules={"user": UserModule}, filename="t.conf")
    assert str(err.value).startswith("t.conf:4:") and "on' or 'off" in str(err.value)


def test_one_lookup_per_socket_for_many_samples(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    """The core answers every sample of a socket from one lookup (for 100 ms)."""
    cli, _ = connection
    with AgentHarness(CONF.format(""), modules={"user": UserModule}) as h:
        h.feed(*[h.make_sample(tcp=four_tuple(cli)) for _ in range(100)])
        h.tick()
        assert len(h.records(ExtendedUser)) == 100
        assert h.agent.sockets.stats["lookups"] == 2  # the two ends
