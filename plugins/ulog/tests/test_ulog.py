"""ULOG: kernel-format byte fixtures through the real reading code, and the refusal on this kernel.

Why no kernel: the ULOG target (ipt_ULOG, netlink protocol NETLINK_NFLOG = 5) was removed
from Linux in 3.17.  On this kernel ``socket(AF_NETLINK, SOCK_RAW, 5)`` fails with
EPROTONOSUPPORT and ``iptables -j ULOG`` has no target, so no kernel here can produce a ULOG
message.  The fixtures below are therefore laid out byte by byte from the kernel's own struct
(include/uapi/linux/netfilter_ipv4/ipt_ULOG.h and net/ipv4/netfilter/ipt_ULOG.c of 3.16,
x86-64 offsets), including the batching quirks (the last message of a batch is re-typed
NLMSG_DONE and keeps its packet; nlmsg_seq is the position in the batch), and are delivered
through a real datagram socket to the same ``on_readable`` -> ``UlogReader`` path the
netlink socket feeds.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from pathlib import Path

import pytest
import structlog
from hostsflow.packet import decode_sampled_header
from hostsflow.samples import DIRECTION_RECEIVED, DIRECTION_SENT
from hostsflow.sflow.records import INTERNAL_IFINDEX
from hostsflow.testing import AgentHarness, ethernet_frame
from hostsflow_ulog import UlogModule
from hostsflow_ulog import protocol as p
from hostsflow.firewall_log import reconcile_rate
from hostsflow_ulog.reader import ReadStats, UlogReader
from hypothesis import given, settings
from hypothesis import strategies as st

LP64 = struct.calcsize("l") == 8 and struct.calcsize("P") == 8
needs_lp64 = pytest.mark.skipif(not LP64, reason="fixtures use the LP64 (x86-64) layout")

# offsets of ulog_packet_msg_t on LP64, from the C declaration
OFF_MARK, OFF_SEC, OFF_USEC, OFF_HOOK = 0, 8, 16, 24
OFF_INDEV, OFF_OUTDEV, OFF_DATA_LEN, OFF_PREFIX = 28, 44, 64, 72
OFF_MAC_LEN, OFF_MAC, OFF_PAYLOAD, SIZEOF = 104, 105, 185, 192
ULOG_NL_EVENT, NLMSG_DONE, NLM_F_MULTI = 111, 3, 2

FRAME = ethernet_frame(udp=("192.0.2.10", 40000, "192.0.2.20", 53), payload=b"d" * 300,
                       src_mac=b"\x02\x11\x22\x33\x44\x55", dst_mac=b"\x02\x66\x77\x88\x99\xaa")


def ne(value: int, size: int) -> bytes:
    return value.to_bytes(size, sys.byteorder)


def ulog_message(*, hook: int, indev: str = "", outdev: str = "", mac: bytes = b"",
                 payload: bytes, mark: int = 0, prefix: bytes = b"SFLOW", seq: int = 0,
                 mtype: int = ULOG_NL_EVENT, flags: int = 0) -> bytes:
    """One netlink message as ipt_ULOG_packet() builds it: nlmsg_put(skb, 0, qlen,
    ULOG_NL_EVENT, sizeof(*pm) + copy_len), memset(pm, 0, sizeof(*pm)), fields, payload at
    pm->payload (offset 185, inside the 192-byte struct's tail padding)."""
    pm = bytearray(SIZEOF + len(payload))
    pm[OFF_MARK:OFF_MARK + 8] = ne(mark, 8)
    pm[OFF_SEC:OFF_SEC + 8] = ne(1_700_000_000, 8)
    pm[OFF_USEC:OFF_USEC + 8] = ne(250_000, 8)
    pm[OFF_HOOK:OFF_HOOK + 4] = ne(hook, 4)
    pm[OFF_INDEV:OFF_INDEV + len(indev)] = indev.encode()
    pm[OFF_OUTDEV:OFF_OUTDEV + len(outdev)] = outdev.encode()
    pm[OFF_DATA_LEN:OFF_DATA_LEN + 8] = ne(len(payload), 8)
    pm[OFF_PREFIX:OFF_PREFIX + len(prefix)] = prefix
    pm[OFF_MAC_LEN] = len(mac)
    pm[OFF_MAC:OFF_MAC + len(mac)] = mac
    pm[OFF_PAYLOAD:OFF_PAYLOAD + len(payload)] = payload
    length = 16 + len(pm)
    hdr = ne(length, 4) + ne(mtype, 2) + ne(flags, 2) + ne(seq, 4) + ne(0, 4)
    return hdr + bytes(pm) + b"\0" * (-length % 4)


def batch(*msgs: dict) -> bytes:  # type: ignore[type-arg]
    """A kernel batch: NLM_F_MULTI on every message when there are several, seq = position,
    the last message re-typed NLMSG_DONE (ulog_send)."""
    out = []
    for i, m in enumerate(msgs):
        last = i == len(msgs) - 1
        multi = len(msgs) > 1
        out.append(ulog_message(**m, seq=i, flags=NLM_F_MULTI if multi else 0,
                                mtype=NLMSG_DONE if multi and last else ULOG_NL_EVENT))
    return b"".join(out)


IFINDEX = {"eth0": 2, "eth1": 3}
AGENT_MAIN = "import sys; from hostsflow.cli import agent_main; sys.exit(agent_main())"


def reader(sampling: int = 400, probability: float = 0.0025) -> UlogReader:
    return UlogReader(reconcile_rate(sampling, probability), 128,
                      lambda name: IFINDEX.get(name, 0))


@needs_lp64
def test_struct_layout_matches_kernel() -> None:
    assert p.PAYLOAD_OFFSET == OFF_PAYLOAD
    fields = p.PACKET_MSG.unpack(bytes(range(185)))
    assert fields[3] == int.from_bytes(bytes(range(24, 28)), sys.byteorder)  # hook @24
    assert fields[4] == bytes(range(28, 44)) and fields[5] == bytes(range(44, 60))
    assert fields[6] == int.from_bytes(bytes(range(64, 72)), sys.byteorder)  # data_len @64
    assert fields[8] == 104 and fields[9] == bytes(range(105, 185))


@needs_lp64
def test_received_packet_with_mac() -> None:
    data = batch(dict(hook=1, indev="eth0", mac=FRAME[:14], payload=FRAME[14:]))
    (s,) = reader().process(data)
    assert (s.source.ds_index, s.input, s.output) == (2, 2, INTERNAL_IFINDEX)
    assert s.direction == DIRECTION_RECEIVED and (s.sampling_rate, s.sample_pool) == (400, 400)
    h = s.header
    assert h is not None and (h.protocol, h.frame_length, h.stripped) == (1, len(FRAME) + 4, 4)
    assert h.header == FRAME[:128]
    info = decode_sampled_header(h)
    assert info is not None
    assert (info.src_mac, info.src_ip, info.dst_ip, info.dst_port) == (
        b"\x02\x11\x22\x33\x44\x55", "192.0.2.10", "192.0.2.20", 53)


@needs_lp64
def test_batch_with_done_typed_last_message_and_sent_packet() -> None:
    """Three messages, the last typed NLMSG_DONE: all three are packets."""
    data = batch(dict(hook=1, indev="eth0", mac=FRAME[:14], payload=FRAME[14:]),
                 dict(hook=3, outdev="eth1", payload=FRAME[14:100]),  # copy range 86
                 dict(hook=2, indev="eth0", outdev="eth1", mac=FRAME[:14], payload=FRAME[14:]))
    out = reader(sampling=400, probability=0.0025).process(data)
    assert len(out) == 3
    sent = out[1]
    assert sent.direction == DIRECTION_SENT
    assert (sent.source.ds_index, sent.input, sent.output) == (3, INTERNAL_IFINDEX, 3)
    h = sent.header
    assert h is not None and (h.protocol, h.frame_length) == (11, len(FRAME) - 14)
    assert h.header == FRAME[14:100]  # truncated copy; length from the IP header
    fwd = out[2]
    assert (fwd.source.ds_index, fwd.input, fwd.output) == (2, 2, 3)
    assert out[2].sample_pool == 800  # two messages on eth0 x K=400


@needs_lp64
def test_unknown_device_and_zero_mac() -> None:
    st_ = ReadStats()
    data = batch(dict(hook=1, indev="gone0", payload=FRAME[14:]),
                 dict(hook=1, indev="eth0", mac=b"\0" * 12 + b"\x08\0", payload=FRAME[14:]))
    out = reader().process(data, st_)
    assert st_.no_source == 1 and len(out) == 1
    assert out[0].header is not None and out[0].header.protocol == 11  # loopback-style MAC


@needs_lp64
def test_malformed_messages_are_counted_and_skipped() -> None:
    good = ulog_message(hook=1, indev="eth0", payload=FRAME[14:])
    bad_len = bytearray(ulog_message(hook=1, indev="eth0", payload=FRAME[14:60]))
    bad_len[16 + OFF_DATA_LEN:16 + OFF_DATA_LEN + 8] = ne(10_000, 8)
    bad_mac = bytearray(good)
    bad_mac[16 + OFF_MAC_LEN] = 200
    short = ne(16 + 50, 4) + ne(ULOG_NL_EVENT, 2) + ne(0, 6 + 4) + b"\0" * 52
    st_ = ReadStats()
    out = reader().process(bytes(bad_len) + bytes(bad_mac) + short + good, st_)
    assert len(out) == 1 and st_.malformed == 3
    assert "data_len" in (st_.first_error or "")


@needs_lp64
@given(st.lists(st.fixed_dictionaries({
    "hook": st.integers(0, 4),
    "indev": st.sampled_from(["", "eth0", "eth1", "x" * 15]),
    "outdev": st.sampled_from(["", "eth0", "eth1"]),
    "mac": st.one_of(st.just(b""), st.binary(min_size=14, max_size=80)),
    "payload": st.binary(max_size=200),
    "mark": st.integers(0, 2**64 - 1),
    "prefix": st.binary(max_size=31).map(lambda b: b.replace(b"\0", b"p")),
}), min_size=1, max_size=6))
@settings(max_examples=300)
def test_fixture_round_trip(msgs) -> None:  # type: ignore[no-untyped-def]
    res = p.read_messages(batch(*msgs))
    assert res.malformed == 0 and len(res.packets) == len(msgs)
    for pkt, m in zip(res.packets, msgs):
        assert (pkt.hook, pkt.indev, pkt.outdev, pkt.mac, pkt.payload, pkt.mark, pkt.prefix) \
            == (m["hook"], m["indev"], m["outdev"], m["mac"], m["payload"], m["mark"],
                m["prefix"])


@given(st.binary(max_size=700))
@settings(max_examples=400)
def test_garbage_never_raises(data: bytes) -> None:
    st_ = ReadStats()
    out = reader().process(data, st_)
    assert len(out) <= st_.messages


@needs_lp64
def test_socket_path_delivers_samples() -> None:
    """Fixtures through a real datagram socket into the module's own read loop (the kernel's
    netlink socket replaced by a socketpair, nothing else)."""
    plugin = UlogModule()
    h = AgentHarness("sflow { collector { ip = 127.0.0.1 } sampling = 400 polling = 0 "
                     "ulog { group = 1 probability = 0.0025 } }", modules={"ulog": plugin})
    kernel_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    agent_end.setblocking(False)
    lo = socket.if_nametoindex("lo")
    payload = FRAME[14:]
    try:
        h.start()
        plugin.attach(h.agent, agent_end)
        for i in range(5):
            kernel_end.send(batch(*[dict(hook=1, indev="lo", payload=payload)] * 4))
        kernel_end.send(ne(16, 4) + ne(999, 2) + ne(0, 10))  # a message of unknown type
        h.run_loop(0.3)
        h.tick()
        samples = h.flow_samples()
        assert len(samples) == 20
        assert {(s.source.ds_index, s.input, s.sampling_rate) for s in samples} == {
            (lo, (0, lo), 400)}
        assert [s.sample_pool for s in samples] == [400 * (i + 1) for i in range(20)]
        assert h.agent.health.snapshot().get("ulog.malformed") == 1
    finally:
        kernel_end.close()
        h.stop()


def test_refused_on_this_kernel_once_and_agent_carries_on() -> None:
    """Real kernel: NETLINK_NFLOG is gone; one clear error, the agent keeps going."""
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, p.NETLINK_NFLOG).close()
        pytest.skip("this kernel still has ULOG (< 3.17): the refusal cannot happen")
    except OSError as exc:
        if exc.errno != errno.EPROTONOSUPPORT:
            pytest.skip(f"cannot probe NETLINK_NFLOG here: {exc}")
    h = AgentHarness("sflow { collector { ip = 127.0.0.1 } polling = 1 "
                     "ulog { group = 3 probability = 0.01 } }", modules={"ulog": UlogModule()},
                     host_poller=True)
    try:
        with structlog.testing.capture_logs() as logs:
            h.start()
            h.tick(3)
        mine = [e for e in logs if e.get("module") == "ulog" or "ulog" in e["event"]]
        assert [e["event"] for e in mine] == ["ulog_unavailable"]
        reason = mine[0]["reason"]
        assert "3.17" in reason and "nflog { group = 3 probability = 0.01 }" in reason
        assert mine[0]["log_level"] == "error"
        assert "ulog" in h.host.states and not h.host.states["ulog"].quarantined
        assert h.counter_samples(), "the agent stopped polling counters"
    finally:
        h.stop()


def test_real_agent_refuses_once_and_keeps_sending(tmp_path: Path) -> None:
    """The real ``hostsflowd`` with a ulog block on this kernel: one error line, and host
    counter samples still reach a collector on loopback."""
    import subprocess
    import time

    from hostsflow.sflow.datagram import decode_datagram

    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, p.NETLINK_NFLOG).close()
        pytest.skip("this kernel still has ULOG (< 3.17)")
    except OSError as exc:
        if exc.errno != errno.EPROTONOSUPPORT:
            pytest.skip(f"cannot probe NETLINK_NFLOG here: {exc}")
    col = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    col.bind(("127.0.0.1", 0))
    col.settimeout(0.2)
    conf = tmp_path / "hsflowd.conf"
    conf.write_text(f"sflow {{ polling = 1 collector {{ ip = 127.0.0.1 "
                    f"udpport = {col.getsockname()[1]} }} ulog {{ group = 2 }} }}\n")
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_MAIN, "-f", str(conf), "--status-file", ""],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    datagrams = []
    try:
        end = time.monotonic() + 4
        while time.monotonic() < end:
            try:
                datagrams.append(decode_datagram(col.recv(65536)))
            except (TimeoutError, OSError):
                pass
        assert agent.poll() is None, "the agent exited"
    finally:
        agent.terminate()
        out, _ = agent.communicate(timeout=10)
        col.close()
    assert out.count("ulog_unavailable") == 1, out
    assert "3.17" in out and "nflog" in out
    assert any(not hasattr(s, "sampling_rate") for d in datagrams for s in d.samples), \
        "no counter samples: the agent did not carry on"
