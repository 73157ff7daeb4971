"""The /proc/net socket-owner table: address parsing, matching rules, the once-a-second cache,
malformed lines.  Uses real sockets in this process and real /proc."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from hostsflow_user.sockets import PROTO_TCP, PROTO_UDP, SocketOwners, parse_hex_address


def test_parse_hex_addresses() -> None:
    assert parse_hex_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert parse_hex_address("00000000000000000000000001000000:0016") == ("::1", 22)
    assert parse_hex_address("0000000000000000FFFF00000100007F:0050") == ("127.0.0.1", 80)
    for bad in ("XYZ:0016", "0100007F", "01007F:0016"):
        with pytest.raises(ValueError):
            parse_hex_address(bad)


def test_finds_this_process_sockets_in_real_proc() -> None:
    clock = [0.0]
    owners = SocketOwners(clock=lambda: clock[0])
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    acc, _ = srv.accept()
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.bind(("::", 0))
    try:
        sport, cport = srv.getsockname()[1], cli.getsockname()[1]
        me = os.geteuid()
        # the connected sockets, matched exactly
        assert owners.owner(PROTO_TCP, "127.0.0.1", cport, "127.0.0.1", sport) == me
        assert owners.owner(PROTO_TCP, "127.0.0.1", sport, "127.0.0.1", cport) == me
        # a SYN to the listener from an unknown peer: the bound listener
        assert owners.owner(PROTO_TCP, "127.0.0.1", sport, "127.0.0.1", 1) == me
        # the wildcard UDP6 socket, only for addresses said to be local
        uport = udp6.getsockname()[1]
        assert owners.owner(PROTO_UDP, "::1", uport, "::1", 9) is None
        assert owners.owner(PROTO_UDP, "::1", uport, "::1", 9, lambda a: True) == me
        assert owners.owner(PROTO_UDP, "127.0.0.1", uport, "127.0.0.1", 9, lambda a: True) == me
        # nothing there
        assert owners.owner(PROTO_TCP, "192.0.2.1", 80, "192.0.2.2", 1234, lambda a: True) is None
        assert owners.reads == 1  # all of this within one clock second: one read
    finally:
        for s in (srv, cli, acc, udp6):
            s.close()


def test_table_is_reread_once_per_second() -> None:
    clock = [100.0]
    owners = SocketOwners(clock=lambda: clock[0])
    for _ in range(50):
        owners.owner(PROTO_TCP, "127.0.0.1", 1, "127.0.0.1", 2)
    assert owners.reads == 1
    clock[0] += 0.5
    owners.owner(PROTO_TCP, "127.0.0.1", 1, "127.0.0.1", 2)
    assert owners.reads == 1
    clock[0] += 0.5
    owners.owner(PROTO_TCP, "127.0.0.1", 1, "127.0.0.1", 2)
    assert owners.reads == 2


def test_socket_opened_after_a_read_is_found_a_second_later() -> None:
    clock = [0.0]
    owners = SocketOwners(clock=lambda: clock[0])
    owners.refresh()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        assert owners.owner(PROTO_TCP, "127.0.0.1", port, "127.0.0.1", 5) is None  # cached
        clock[0] += 1.0
        assert owners.owner(PROTO_TCP, "127.0.0.1", port, "127.0.0.1", 5) == os.geteuid()
    finally:
        s.close()


def test_malformed_and_time_wait_lines_are_skipped(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    (tmp_path / "tcp").write_text(
        header
        + "   0: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000\n"
        + "   1: garbage\n"
        + "   2: 0100007F:0051 0100007F:9C40 06 00000000:00000000 03:00000C74 00000000     0\n"
        + "   3: 0100007F:0052 0100007F:9C41 01 00000000:00000000 00:00000000 00000000  notanint\n"
    )
    owners = SocketOwners(root=str(tmp_path), clock=lambda: 0.0)
    assert owners.owner(PROTO_TCP, "127.0.0.1", 80, "127.0.0.1", 7) == 1000
    assert owners.owner(PROTO_TCP, "127.0.0.1", 81, "127.0.0.1", 40000) is None  # TIME_WAIT
    assert owners.bad_lines == 2
