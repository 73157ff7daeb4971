"""The legacy ULOG netlink protocol (NETLINK_NFLOG = 5, ``ipt_ULOG``, removed in Linux 3.17).

Each netlink message carries one ``ulog_packet_msg_t`` (linux/netfilter_ipv4/ipt_ULOG.h),
native byte order and sizes::

    unsigned long mark;  long timestamp_sec;  long timestamp_usec;  unsigned int hook;
    char indev_name[16];  char outdev_name[16];  size_t data_len;  char prefix[32];
    unsigned char mac_len;  unsigned char mac[80];  unsigned char payload[0];

On x86-64 the payload starts at byte 185.  The kernel batches up to ``qthreshold`` messages in
one datagram: they have type ULOG_NL_EVENT (111), except that the last one of a multi-message
batch is re-typed NLMSG_DONE and still carries a packet.  ``nlmsg_seq`` is the position in the
batch, not a running count, so it cannot reveal lost messages (only ENOBUFS can).
"""

from __future__ import annotations

import struct

import attrs
from hostsflow.firewall_log import ReadResult

NETLINK_NFLOG = 5
ULOG_NL_EVENT = 111
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
ULOG_MAC_LEN = 80
ULOG_PREFIX_LEN = 32
IFNAMSIZ = 16

#: ulog_packet_msg_t without the payload, native alignment ("@")
PACKET_MSG = struct.Struct(f"@LllI{IFNAMSIZ}s{IFNAMSIZ}sN{ULOG_PREFIX_LEN}sB{ULOG_MAC_LEN}s")
PAYLOAD_OFFSET = PACKET_MSG.size  # 185 on LP64
_NLMSGHDR = struct.Struct("=IHHII")


@attrs.define(slots=True)
class UlogPacket:
    """One logged packet: hook, device names ('' if none), link header, L3 payload."""

    hook: int
    indev: str
    outdev: str
    mac: bytes
    payload: bytes
    mark: int = 0
    prefix: bytes = b""
    timestamp: float = 0.0


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def read_messages(data: bytes) -> ReadResult:
    """Parse one ``recv()`` buffer; never raises.  A malformed message (length that does not
    fit, ``data_len`` or ``mac_len`` past the message) is counted and skipped."""
    res = ReadResult()
    end = len(data)
    off = 0
    while off < end:
        if off + 16 > end:
            res.bad(f"truncated netlink header at offset {off}")
            break
        length, mtype = _NLMSGHDR.unpack_from(data, off)[:2]
        if length < 16 or off + length > end:
            res.bad(f"netlink length {length} at offset {off} does not fit the buffer")
            break
        body = off + 16
        if mtype == ULOG_NL_EVENT or (mtype == NLMSG_DONE and length - 16 >= PAYLOAD_OFFSET):
            pkt = _read_packet(data, body, off + length, res)
            if pkt is not None:
                res.packets.append(pkt)
        elif mtype in (NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE):
            res.other += 1
        else:
            res.bad(f"unexpected netlink message type {mtype}")
        off += (length + 3) & ~3
    return res


def _read_packet(data: bytes, start: int, end: int, res: ReadResult) -> UlogPacket | None:
    if end - start < PAYLOAD_OFFSET:
        res.bad(f"ULOG message of {end - start} bytes, shorter than ulog_packet_msg_t")
        return None
    (mark, sec, usec, hook, indev, outdev, data_len, prefix, mac_len,
     mac) = PACKET_MSG.unpack_from(data, start)
    p0 = start + PAYLOAD_OFFSET
    if data_len > end - p0:
        res.bad(f"data_len {data_len} runs past its message")
        return None
    if mac_len > ULOG_MAC_LEN:
        res.bad(f"mac_len {mac_len} larger than {ULOG_MAC_LEN}")
        return None
    return UlogPacket(
        hook=hook, indev=_name(indev), outdev=_name(outdev), mac=mac[:mac_len],
        payload=bytes(data[p0:p0 + data_len]), mark=mark, prefix=prefix.split(b"\0", 1)[0],
        timestamp=sec + usec / 1e6,
    )
