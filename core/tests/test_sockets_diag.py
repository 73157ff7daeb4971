"""The sock_diag codec against the kernel and against pyroute2's independent definitions."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest
from hostsflow.sockets import diag
from hostsflow.sockets.channel import read_buffer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroute2.netlink.diag import inet_diag_msg, inet_diag_req


def _roundtrip(req: bytes) -> bytes:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, diag.NETLINK_SOCK_DIAG)
    try:
        s.send(req)
        return s.recv(65536)
    finally:
        s.close()


@pytest.fixture(scope="module")
def conn():
    """A loopback TCP connection with some data sent, and the raw reply for its client side."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    c = socket.create_connection(lst.getsockname())
    a, _ = lst.accept()
    c.sendall(b"x" * 200_000)
    got = 0
    while got < 200_000:
        got += len(a.recv(1 << 20))
    req = diag.build_request(
        77, socket.AF_INET, 6, "127.0.0.1", c.getsockname()[1], "127.0.0.1", lst.getsockname()[1]
    )
    raw = _roundtrip(req)
    yield c, a, lst, req, raw
    for s in (c, a, lst):
        s.close()


def test_request_layout_matches_pyroute2():
    req = diag.build_request(5, socket.AF_INET6, 6, "fd00::1", 1234, "fd00::2", 80, ext=2, states=0x2)
    assert len(req) == 16 + 56
    ln, typ, flags, seq, pid = struct.unpack_from("=IHHII", req)
    assert (ln, typ, flags, seq, pid) == (72, 20, 1, 5, 0)
    p = inet_diag_req()
    p["sdiag_family"], p["sdiag_protocol"], p["idiag_ext"] = socket.AF_INET6, 6, 2
    p["idiag_states"], p["idiag_sport"], p["idiag_dport"] = 0x2, 1234, 80
    p["idiag_src"] = struct.unpack(">4I", socket.inet_pton(socket.AF_INET6, "fd00::1"))
    p["idiag_dst"] = struct.unpack(">4I", socket.inet_pton(socket.AF_INET6, "fd00::2"))
    p["idiag_if"], p["idiag_cookie"] = 0, diag.NOCOOKIE
    p.encode()
    assert req[16:] == bytes(p.data)[16:]


def test_reply_parse_matches_pyroute2(conn):
    c, a, lst, req, raw = conn
    (reply,) = list(diag.iter_replies(raw))
    assert reply.seq == 77 and reply.errno == 0
    s = reply.sock
    assert s.inode == os.fstat(c.fileno()).st_ino
    assert (s.src, s.sport, s.dst, s.dport) == ("127.0.0.1", c.getsockname()[1], "127.0.0.1",
                                                lst.getsockname()[1])
    m = inet_diag_msg(raw)
    m.decode()
    assert m["idiag_inode"] == s.inode and m["idiag_uid"] == s.uid
    assert m["idiag_sport"] == s.sport and m["idiag_dst"] == s.dst
    assert m.get_attr("INET_DIAG_CGROUP_ID") == s.cgroup_id
    ti = m.get_attr("INET_DIAG_INFO")
    ours = s.tcp_info
    for field in ("snd_mss", "rcv_mss", "unacked", "lost", "total_retrans", "pmtu", "rtt",
                  "rttvar", "snd_cwnd", "reordering", "min_rtt"):
        assert ti["tcpi_" + field] == getattr(ours, field), field
    assert ours.rtt > 0 and ours.snd_mss > 0 and ours.pmtu == 65535


def test_not_found_is_enoent():
    req = diag.build_request(9, socket.AF_INET, 6, "127.0.0.1", 1, "127.0.0.1", 1)
    (r,) = list(diag.iter_replies(_roundtrip(req)))
    assert r.sock is None and r.errno == errno.ENOENT and r.seq == 9


def test_short_tcp_info_zero_fills_min_rtt():
    info = struct.pack("=8B24I", *([0] * 8 + list(range(1, 25))))
    ti = diag.parse_tcp_info(info)
    # u32 number k lies at offset 8 + 4 * (k - 1): the fields at their linux/tcp.h offsets
    assert ti == diag.TcpInfo(snd_mss=3, rcv_mss=4, unacked=5, lost=7, total_retrans=24,
                              pmtu=14, rtt=16, rttvar=17, snd_cwnd=19, reordering=21, min_rtt=0)
    with pytest.raises(diag.MalformedReply):
        diag.parse_tcp_info(info[:100])
    full = info + struct.pack("=12I", *range(25, 37))  # 152 bytes: tcpi_min_rtt at 148
    assert diag.parse_tcp_info(full).min_rtt == 36
    # the same struct inside a larger buffer, read in place
    assert diag.parse_tcp_info(b"\0" * 5 + full, 5, len(full)) == diag.parse_tcp_info(full)


def test_tcp_info_fields_in_the_record_order():
    """The module builds ExtendedTcpInfo(dir, *tcp_info): the orders must agree."""
    import attrs
    from hostsflow.sflow.records import ExtendedTcpInfo

    names = [f.name for f in attrs.fields(ExtendedTcpInfo)]
    assert names[0] == "dir"
    assert [n.replace("total_retrans", "retrans") for n in diag.TcpInfo._fields] == names[1:]


def test_every_truncation_is_counted_not_raised(conn):
    raw = conn[4]
    for cut in range(1, len(raw)):
        replies, bad = read_buffer(raw[:cut])
        # a cut inside the message is malformed; the seq is recovered once the header is whole
        assert bad == 1 and all(r.sock is None for r in replies), cut


def _flip(raw: bytes, pos: int, val: int) -> bytes:
    b = bytearray(raw)
    b[pos % len(b)] = val
    return bytes(b)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_reader_never_raises_on_garbage(conn, data):
    raw = conn[4]
    how = data.draw(st.sampled_from(["random", "mutate", "concat"]))
    if how == "random":
        buf = data.draw(st.binary(max_size=600))
    elif how == "mutate":
        buf = raw
        for _ in range(data.draw(st.integers(1, 6))):
            buf = _flip(buf, data.draw(st.integers(0, 10_000)), data.draw(st.integers(0, 255)))
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    else:
        buf = raw + data.draw(st.binary(max_size=80))
    replies, bad = read_buffer(buf)
    assert bad in (0, 1)
    for r in replies:
        assert isinstance(r, diag.Reply)
        if r.sock is not None and r.sock.tcp_info is not None:
            assert all(0 <= v < 2**32 for v in r.sock.tcp_info)


def test_bad_attribute_length_is_malformed(conn):
    raw = bytearray(conn[4])
    # first attribute header sits right after nlmsghdr + inet_diag_msg
    struct.pack_into("=H", raw, 16 + 72, 0xFFF0)
    replies, bad = read_buffer(bytes(raw))
    assert bad == 1
    assert [r.errno for r in replies] == [errno.EBADMSG] and replies[0].seq == 77
