"""The nfnetlink_log (NFLOG) wire protocol: config requests out, packet messages in.

Plain ``struct`` code both ways, no pyroute2 at import time (importing any part of pyroute2
imports the whole package, about 9 MB of RSS, for a few constants and the config requests):

* :func:`bind_request`, :func:`mode_request`, :func:`unbind_request` encode the
  NFULNL_MSG_CONFIG requests (a handful per bind).
* :func:`read_messages` is the fast reader the socket path uses for every ``recv()`` buffer,
  several times faster than pyroute2's generic decoder (see the README for the figures),
  which matters because it runs once per logged packet.

The tests check both against pyroute2 message classes with the same attribute maps (in
``tests/test_protocol.py``), an independent encoder and decoder.

Attribute numbers and layouts are those of linux ``include/uapi/linux/netfilter/nfnetlink_log.h``.
"""

from __future__ import annotations

import struct

import attrs
from hostsflow.firewall_log import ReadResult

# netlink (linux/netlink.h) and nfnetlink (linux/netfilter/nfnetlink.h)
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFNL_SUBSYS_ULOG = 4

NETLINK_NETFILTER = 12
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
MSG_PACKET = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
MSG_CONFIG = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG

# config attributes and values
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ = 1, 2, 3
NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH, NFULA_CFG_FLAGS = 4, 5, 6
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_NONE, NFULNL_COPY_META, NFULNL_COPY_PACKET = 0, 1, 2
NFULNL_CFG_F_SEQ, NFULNL_CFG_F_SEQ_GLOBAL, NFULNL_CFG_F_CONNTRACK = 1, 2, 4

# packet attributes
NFULA_PACKET_HDR, NFULA_MARK, NFULA_TIMESTAMP = 1, 2, 3
NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV = 4, 5
NFULA_IFINDEX_PHYSINDEV, NFULA_IFINDEX_PHYSOUTDEV = 6, 7
NFULA_HWADDR, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_UID, NFULA_SEQ = 8, 9, 10, 11, 12
NFULA_SEQ_GLOBAL, NFULA_GID, NFULA_HWTYPE, NFULA_HWHEADER, NFULA_HWLEN = 13, 14, 15, 16, 17
NFULA_CT, NFULA_CT_INFO, NFULA_VLAN, NFULA_L2HDR = 18, 19, 20, 21
NLA_TYPE_MASK = 0x3FFF  # strip NLA_F_NESTED / NLA_F_NET_BYTEORDER

#: netfilter protocol families seen in nfgenmsg.nfgen_family
NFPROTO_INET, NFPROTO_IPV4, NFPROTO_ARP, NFPROTO_NETDEV = 1, 2, 3, 5
NFPROTO_BRIDGE, NFPROTO_IPV6 = 7, 10


_NLMSGHDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_PKTHDR = struct.Struct("!HB")
_ERRNO = struct.Struct("=i")


def nla_bytes(atype: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    n = 4 + len(value)
    return _NLA.pack(n, atype) + value + b"\0" * (-n % 4)


def nfnl_message(mtype: int, flags: int, family: int, res_id: int,
                 attributes: list[tuple[int, bytes]], seq: int = 0) -> bytes:
    """One whole nfnetlink message: nlmsghdr, nfgenmsg (family, version 0, ``res_id`` in
    network order), then the (type, value) attributes, each padded to 4 bytes."""
    body = struct.pack("!BBH", family, 0, res_id)
    body += b"".join(nla_bytes(t, v) for t, v in attributes)
    return _NLMSGHDR.pack(16 + len(body), mtype, flags, seq, 0) + body


def config_request(group: int, attributes: list[tuple[int, bytes]], seq: int = 0) -> bytes:
    """One NFULNL_MSG_CONFIG request (REQUEST|ACK) for ``group``."""
    return nfnl_message(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, 0, group, attributes, seq)


def bind_request(group: int, seq: int = 0) -> bytes:
    return config_request(group, [(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))], seq=seq)


def unbind_request(group: int, seq: int = 0) -> bytes:
    return config_request(group, [(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND]))], seq=seq)


def mode_request(group: int, copy_range: int, qthreshold: int, timeout_cs: int,
                 seq: int = 0) -> bytes:
    """Copy-packet mode with ``copy_range`` bytes, queue threshold, flush timeout (1/100 s)
    and per-instance sequence numbers (NFULA_SEQ, used to count lost messages)."""
    return config_request(group, [
        # struct nfulnl_msg_config_mode: __be32 copy_range, __u8 copy_mode, __u8 _pad
        (NFULA_CFG_MODE, struct.pack("!IBx", copy_range, NFULNL_COPY_PACKET)),
        (NFULA_CFG_QTHRESH, _BE32.pack(qthreshold)),
        (NFULA_CFG_TIMEOUT, _BE32.pack(timeout_cs)),
        (NFULA_CFG_FLAGS, _BE16.pack(NFULNL_CFG_F_SEQ)),
    ], seq=seq)


def ack_errno(data: bytes) -> int | None:
    """The errno of the first NLMSG_ERROR message in ``data`` (0 = ACK), None if there is none."""
    off = 0
    while off + 16 <= len(data):
        length, mtype = _NLMSGHDR.unpack_from(data, off)[:2]
        if length < 16:
            return None
        if mtype == NLMSG_ERROR and off + 20 <= len(data):
            return -_ERRNO.unpack_from(data, off + 16)[0]
        off += (length + 3) & ~3
    return None


@attrs.define(slots=True)
class NflogPacket:
    """One logged packet, the fields the agent uses (ifIndex 0 = absent)."""

    family: int
    hw_protocol: int
    hook: int
    indev: int = 0
    outdev: int = 0
    physindev: int = 0
    physoutdev: int = 0
    hwtype: int = 0
    hwheader: bytes | None = None
    payload: bytes = b""
    seq: int | None = None
    prefix: bytes = b""
    mark: int = 0


def read_messages(data: bytes) -> ReadResult:
    """Parse every netlink message in one ``recv()`` buffer.

    Never raises: a malformed message (bad length, attribute running past its message, a
    missing PACKET_HDR or PAYLOAD) is counted in ``malformed`` and skipped; if a netlink
    header's length cannot be trusted, the rest of the buffer is one malformed message.
    """
    res = ReadResult()
    data = bytes(data)
    end = len(data)
    off = 0
    unpack_hdr = _NLMSGHDR.unpack_from
    while off < end:
        if off + 16 > end:
            res.bad(f"truncated netlink header at offset {off}")
            break
        length, mtype = unpack_hdr(data, off)[:2]
        if length < 16 or off + length > end:
            res.bad(f"netlink length {length} at offset {off} does not fit the buffer")
            break
        if mtype == MSG_PACKET:
            pkt = _read_packet(data, off + 16, off + length, res)
            if pkt is not None:
                res.packets.append(pkt)
        elif mtype in (NLMSG_ERROR, NLMSG_DONE) or (mtype >> 8) == NFNL_SUBSYS_ULOG:
            res.other += 1
        else:
            res.bad(f"unexpected netlink message type {mtype:#x}")
        off += (length + 3) & ~3
    return res


def _read_packet(data: bytes, start: int, end: int, res: ReadResult) -> NflogPacket | None:
    if start + 4 > end:
        res.bad("packet message shorter than nfgenmsg")
        return None
    unpack_nla, unpack_be32 = _NLA.unpack_from, _BE32.unpack_from
    pos = start + 4
    hdr = payload = hwheader = seq = None
    indev = outdev = physin = physout = hwtype = mark = 0
    prefix = b""
    while pos + 4 <= end:
        alen, atype = unpack_nla(data, pos)
        vend = pos + alen
        if alen < 4 or vend > end:
            res.bad(f"attribute length {alen} runs past its message")
            return None
        atype &= NLA_TYPE_MASK
        v = pos + 4
        if atype == NFULA_PAYLOAD:
            payload = data[v:vend]
        elif atype == NFULA_PACKET_HDR:
            if alen < 7:
                res.bad("PACKET_HDR shorter than 3 bytes")
                return None
            hdr = _PKTHDR.unpack_from(data, v)
        elif atype == NFULA_HWHEADER:
            hwheader = data[v:vend]
        elif atype == NFULA_PREFIX:
            prefix = data[v:vend].rstrip(b"\0")
        elif atype == NFULA_HWTYPE:
            if alen < 6:
                res.bad("HWTYPE shorter than 2 bytes")
                return None
            hwtype = _BE16.unpack_from(data, v)[0]
        elif atype in _BE32_ATTRS:
            if alen < 8:
                res.bad(f"attribute {atype} shorter than 4 bytes")
                return None
            value = unpack_be32(data, v)[0]
            if atype == NFULA_IFINDEX_INDEV:
                indev = value
            elif atype == NFULA_IFINDEX_OUTDEV:
                outdev = value
            elif atype == NFULA_SEQ:
                seq = value
            elif atype == NFULA_IFINDEX_PHYSINDEV:
                physin = value
            elif atype == NFULA_IFINDEX_PHYSOUTDEV:
                physout = value
            else:
                mark = value
        pos = (vend + 3) & ~3
    if hdr is None or payload is None:
        res.bad("packet message without PACKET_HDR or PAYLOAD")
        return None
    return NflogPacket(data[start], hdr[0], hdr[1], indev, outdev, physin, physout, hwtype,
                       hwheader, payload, seq, prefix, mark)


_BE32_ATTRS = {
    NFULA_MARK: "mark",
    NFULA_IFINDEX_INDEV: "indev",
    NFULA_IFINDEX_OUTDEV: "outdev",
    NFULA_IFINDEX_PHYSINDEV: "physindev",
    NFULA_IFINDEX_PHYSOUTDEV: "physoutdev",
    NFULA_SEQ: "seq",
}


# ---------------------------------------------------------------- building (tests, docs)


def packet_message(attributes: list[tuple[int, bytes]], family: int = NFPROTO_IPV4,
                   group: int = 0, nlmsg_seq: int = 0) -> bytes:
    """A whole NFULNL_MSG_PACKET netlink message, laid out as the kernel builds it."""
    return nfnl_message(MSG_PACKET, 0, family, group, attributes, nlmsg_seq)
