"""The NFLOG message reader against hand-laid kernel messages, pyroute2's decoder and garbage;
the config requests against the kernel layout and pyroute2's encoder.

The messages are built attribute by attribute as nfnetlink_log's __build_packet_message lays
them out (nlmsghdr, nfgenmsg, then 4-byte aligned attributes in network byte order).
"""

from __future__ import annotations

import struct

from hostsflow_nflog import protocol as p
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink import nla
from pyroute2.netlink.nfnetlink import nfgen_msg

U32 = st.integers(0, 2**32 - 1)


class NflogConfigMsg(nfgen_msg):
    """NFULNL_MSG_CONFIG request as a pyroute2 message class.  ``res_id`` is the group."""

    nla_map = (
        ("NFULA_CFG_UNSPEC", "none"),
        ("NFULA_CFG_CMD", "cfg_cmd"),
        ("NFULA_CFG_MODE", "cfg_mode"),
        ("NFULA_CFG_NLBUFSIZ", "be32"),
        ("NFULA_CFG_TIMEOUT", "be32"),
        ("NFULA_CFG_QTHRESH", "be32"),
        ("NFULA_CFG_FLAGS", "be16"),
    )

    class cfg_cmd(nla):
        fields = (("command", "B"),)

    class cfg_mode(nla):
        fields = (("copy_range", ">I"), ("copy_mode", "B"), ("_pad", "B"))


class NflogPacketMsg(nfgen_msg):
    """NFULNL_MSG_PACKET as a pyroute2 message class: what the kernel sends per logged packet."""

    nla_map = (
        ("NFULA_UNSPEC", "none"),
        ("NFULA_PACKET_HDR", "packet_hdr"),
        ("NFULA_MARK", "be32"),
        ("NFULA_TIMESTAMP", "timestamp"),
        ("NFULA_IFINDEX_INDEV", "be32"),
        ("NFULA_IFINDEX_OUTDEV", "be32"),
        ("NFULA_IFINDEX_PHYSINDEV", "be32"),
        ("NFULA_IFINDEX_PHYSOUTDEV", "be32"),
        ("NFULA_HWADDR", "hex"),
        ("NFULA_PAYLOAD", "cdata"),
        ("NFULA_PREFIX", "asciiz"),
        ("NFULA_UID", "be32"),
        ("NFULA_SEQ", "be32"),
        ("NFULA_SEQ_GLOBAL", "be32"),
        ("NFULA_GID", "be32"),
        ("NFULA_HWTYPE", "be16"),
        ("NFULA_HWHEADER", "cdata"),
        ("NFULA_HWLEN", "be16"),
        ("NFULA_CT", "hex"),
        ("NFULA_CT_INFO", "be32"),
        ("NFULA_VLAN", "hex"),
        ("NFULA_L2HDR", "cdata"),
    )

    class packet_hdr(nla):
        fields = (("hw_protocol", ">H"), ("hook", "B"), ("_pad", "B"))

    class timestamp(nla):
        fields = (("sec", ">Q"), ("usec", ">Q"))


def pyroute2_config_request(group: int, attributes: list[tuple[str, object]], seq: int) -> bytes:
    """The same request as :func:`protocol.config_request`, encoded by pyroute2."""
    msg = NflogConfigMsg()
    msg["header"]["type"] = p.MSG_CONFIG
    msg["header"]["flags"] = p.NLM_F_REQUEST | p.NLM_F_ACK
    msg["header"]["sequence_number"] = seq
    msg["nfgen_family"] = 0
    msg["version"] = 0
    msg["res_id"] = group
    msg["attrs"] = attributes
    msg.encode()
    return bytes(msg.data)


def be32(n: int) -> bytes:
    return struct.pack("!I", n)


@st.composite
def packets(draw):  # type: ignore[no-untyped-def]
    """(fields, message bytes) for one realistic packet message."""
    f = {
        "family": draw(st.sampled_from([p.NFPROTO_IPV4, p.NFPROTO_IPV6, p.NFPROTO_BRIDGE])),
        "hw_protocol": draw(st.sampled_from([0x0800, 0x86DD, 0x0806])),
        "hook": draw(st.integers(0, 4)),
        "indev": draw(st.one_of(st.just(0), U32)),
        "outdev": draw(st.one_of(st.just(0), U32)),
        "physindev": draw(st.one_of(st.just(0), U32)),
        "mark": draw(st.one_of(st.just(0), U32)),
        "seq": draw(st.one_of(st.none(), U32)),
        "hwheader": draw(st.one_of(st.none(), st.binary(min_size=14, max_size=18))),
        "payload": draw(st.binary(min_size=0, max_size=300)),
        "prefix": draw(st.binary(max_size=20).map(lambda b: b.replace(b"\0", b"a"))),
    }
    attrs = [(p.NFULA_PACKET_HDR, struct.pack("!HBx", f["hw_protocol"], f["hook"]))]
    if f["mark"]:
        attrs.append((p.NFULA_MARK, be32(f["mark"])))
    attrs.append((p.NFULA_TIMESTAMP, struct.pack("!QQ", 1, 2)))
    attrs.append((p.NFULA_PREFIX, f["prefix"] + b"\0"))
    for key, t in (("indev", p.NFULA_IFINDEX_INDEV), ("outdev", p.NFULA_IFINDEX_OUTDEV),
                   ("physindev", p.NFULA_IFINDEX_PHYSINDEV)):
        if f[key]:
            attrs.append((t, be32(f[key])))
    if f["hwheader"] is not None:
        attrs += [(p.NFULA_HWTYPE, struct.pack("!H", 1)),
                  (p.NFULA_HWLEN, struct.pack("!H", len(f["hwheader"]))),
                  (p.NFULA_HWHEADER, f["hwheader"])]
    attrs.append((p.NFULA_UID, be32(0)))
    if f["seq"] is not None:
        attrs.append((p.NFULA_SEQ, be32(f["seq"])))
    attrs.append((p.NFULA_PAYLOAD, f["payload"]))
    order = draw(st.permutations(range(len(attrs))))
    msg = p.packet_message([attrs[i] for i in order], family=f["family"], group=5)
    return f, msg


def check(pkt: p.NflogPacket, f: dict) -> None:  # type: ignore[type-arg]
    assert pkt.family == f["family"]
    assert (pkt.hw_protocol, pkt.hook) == (f["hw_protocol"], f["hook"])
    assert (pkt.indev, pkt.outdev, pkt.physindev) == (f["indev"], f["outdev"], f["physindev"])
    assert pkt.mark == f["mark"]
    assert pkt.seq == f["seq"]
    assert pkt.hwheader == f["hwheader"]
    assert pkt.payload == f["payload"]
    assert pkt.prefix == f["prefix"]


@given(st.lists(packets(), min_size=1, max_size=8))
@settings(max_examples=300)
def test_batches_round_trip(batch) -> None:  # type: ignore[no-untyped-def]
    res = p.read_messages(b"".join(m for _, m in batch))
    assert res.malformed == 0, res.first_error
    assert len(res.packets) == len(batch)
    for pkt, (f, _) in zip(res.packets, batch):
        check(pkt, f)


@given(packets())
@settings(max_examples=200)
def test_agrees_with_pyroute2_decoder(case) -> None:  # type: ignore[no-untyped-def]
    """pyroute2's generic decoder with our NflogPacketMsg nla_map is the independent oracle."""
    _, msg = case
    m = NflogPacketMsg(msg)
    m.decode()
    (pkt,) = p.read_messages(msg).packets
    assert m["nfgen_family"] == pkt.family and m["res_id"] == 5
    assert m.get_attr("NFULA_PACKET_HDR")["hook"] == pkt.hook
    assert bytes(m.get_attr("NFULA_PAYLOAD")) == pkt.payload
    assert (m.get_attr("NFULA_IFINDEX_INDEV") or 0) == pkt.indev
    assert (m.get_attr("NFULA_IFINDEX_OUTDEV") or 0) == pkt.outdev
    assert m.get_attr("NFULA_SEQ") == pkt.seq
    hw = m.get_attr("NFULA_HWHEADER")
    assert (bytes(hw) if hw is not None else None) == pkt.hwheader


@given(st.binary(max_size=600))
@settings(max_examples=500)
def test_garbage_never_raises(data: bytes) -> None:
    res = p.read_messages(data)
    assert all(isinstance(pkt, p.NflogPacket) for pkt in res.packets)
    if 0 < len(data) < 16:
        assert res.malformed == 1 and not res.packets


@given(st.lists(packets(), min_size=1, max_size=4), st.data())
@settings(max_examples=300)
def test_truncated_batch_keeps_whole_messages(batch, data) -> None:  # type: ignore[no-untyped-def]
    """A batch cut anywhere gives back every message before the cut, and one malformed."""
    msgs = [m for _, m in batch]
    buf = b"".join(msgs)
    cut = data.draw(st.integers(1, len(buf) - 1))
    res = p.read_messages(buf[:cut])
    whole, pos = 0, 0
    for m in msgs:
        if pos + len(m) > cut:
            break
        pos += len(m)
        whole += 1
    assert len(res.packets) == whole
    for pkt, (f, _) in zip(res.packets, batch):
        check(pkt, f)
    assert res.malformed == (1 if pos < cut else 0)


@given(st.lists(packets(), min_size=1, max_size=4), st.data())
@settings(max_examples=300)
def test_corrupted_batch_never_raises(batch, data) -> None:  # type: ignore[no-untyped-def]
    buf = bytearray(b"".join(m for _, m in batch))
    for _ in range(data.draw(st.integers(1, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    res = p.read_messages(bytes(buf))
    assert len(res.packets) + res.malformed + res.other >= 1


def test_missing_payload_is_malformed_and_skipped() -> None:
    good = p.packet_message([(p.NFULA_PACKET_HDR, struct.pack("!HBx", 0x800, 1)),
                             (p.NFULA_PAYLOAD, b"\x45" + b"\0" * 19)])
    bad = p.packet_message([(p.NFULA_PACKET_HDR, struct.pack("!HBx", 0x800, 1))])
    res = p.read_messages(bad + good + bad)
    assert res.malformed == 2 and len(res.packets) == 1
    assert "PAYLOAD" in (res.first_error or "")


def test_attribute_running_past_message_is_malformed() -> None:
    msg = bytearray(p.packet_message([(p.NFULA_PACKET_HDR, struct.pack("!HBx", 0x800, 1)),
                                      (p.NFULA_PAYLOAD, b"\x45" * 20)]))
    struct.pack_into("=H", msg, 20, 200)  # first attribute claims 200 bytes
    res = p.read_messages(bytes(msg))
    assert res.malformed == 1 and not res.packets


def test_config_requests_match_kernel_layout() -> None:
    """The requests are byte for byte what nfnetlink_log parses."""
    bind = p.bind_request(5, seq=7)
    assert bind == (struct.pack("=IHHII", 28, 0x0401, 1 | 4, 7, 0)
                    + bytes([0, 0]) + struct.pack("!H", 5)
                    + struct.pack("=HH", 5, 1) + b"\x01\0\0\0")
    mode = p.mode_request(300, copy_range=128, qthreshold=64, timeout_cs=10)
    body = (bytes([0, 0]) + struct.pack("!H", 300)
            + struct.pack("=HH", 10, 2) + struct.pack("!IBx", 128, 2) + b"\0\0"
            + struct.pack("=HH", 8, 5) + be32(64)
            + struct.pack("=HH", 8, 4) + be32(10)
            + struct.pack("=HH", 6, 6) + struct.pack("!H", 1) + b"\0\0")
    assert mode == struct.pack("=IHHII", 16 + len(body), 0x0401, 5, 0, 0) + body


U16 = st.integers(0, 2**16 - 1)


@given(group=U16, seq=U32, copy_range=U32, qthreshold=U32, timeout_cs=U32,
       bind=st.booleans())
def test_config_requests_agree_with_pyroute2_encoder(group: int, seq: int, copy_range: int,
                                                     qthreshold: int, timeout_cs: int,
                                                     bind: bool) -> None:
    """pyroute2's encoder with NflogConfigMsg's nla_map is the independent oracle."""
    command = p.NFULNL_CFG_CMD_BIND if bind else p.NFULNL_CFG_CMD_UNBIND
    ours = (p.bind_request if bind else p.unbind_request)(group, seq=seq)
    assert ours == pyroute2_config_request(group, [("NFULA_CFG_CMD", {"command": command})], seq)
    mode = p.mode_request(group, copy_range, qthreshold, timeout_cs, seq=seq)
    assert mode == pyroute2_config_request(group, [
        ("NFULA_CFG_MODE", {"copy_range": copy_range, "copy_mode": p.NFULNL_COPY_PACKET}),
        ("NFULA_CFG_QTHRESH", qthreshold),
        ("NFULA_CFG_TIMEOUT", timeout_cs),
        ("NFULA_CFG_FLAGS", p.NFULNL_CFG_F_SEQ),
    ], seq)


def test_ack_errno() -> None:
    ack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    assert p.ack_errno(ack) == 1
    ok = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + b"\0" * 16
    assert p.ack_errno(ok) == 0
    assert p.ack_errno(p.packet_message([])) is None
