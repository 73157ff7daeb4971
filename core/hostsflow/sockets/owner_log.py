"""The owner log: the kernel writes down which cgroup owns each connection as it sends.

A sampled packet is looked up a few milliseconds after the kernel saw it (the capture ring's
block timeout, the agent's batch).  Short connections are gone by then: a service calling out
closes its socket before its samples are read, a UDP query's fresh socket lives for one round
trip, and a server that closes first leaves only a TIME_WAIT mini-socket that names nobody.
sock_diag cannot help after the fact (its destroy notifications carry no owner), so the owner
is recorded at packet time instead:

a ``BPF_PROG_TYPE_CGROUP_SKB`` program on the egress hook of the cgroups whose sockets matter
(the systemd module: its slices) reads each packet's 5-tuple from its IP and TCP/UDP headers
and the sending socket's cgroup (``bpf_skb_cgroup_id``: the cgroup2 id INET_DIAG_CGROUP_ID
reports), and keeps ``(netns cookie, protocol, local end, remote end) -> (cgroup id, since)``
in an LRU hash map.  It writes only when the owner is new: a TCP packet with SYN (a new
connection; SYN-ACKs carry the listener's cgroup) or data (a connection older than the log),
never a pure ACK, FIN or RST (TIME_WAIT mini-sockets and the kernel's reset socket send those
in no service's name); a UDP packet whenever its socket's cgroup differs from the one logged.
``since`` (CLOCK_MONOTONIC ns) is when that owner was written, so a 5-tuple that changed
hands after a packet was captured is not blamed on the new owner.  The program returns 1:
it never changes a packet's fate.  It is attached through BPF links, which the kernel
detaches when the agent's descriptors close (also when it is killed): nothing outlives it.

The same programs count each covered cgroup's traffic (bytes and packets its sockets send, on
egress, and receive, on a second program on the ingress hook) in a hash map keyed by cgroup id:
the systemd module's per-service virt_net_io.

Cost: in the kernel, per packet a covered socket sends, the counter update (one hash lookup,
two atomic adds), two header reads and one hash lookup; per packet it receives, the counter
update (bench/mark_churn.py measures the whole); in the agent, one bpf(2) lookup per sample
end that is not a server port.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterable

from . import bpf
from .bpf import FP, R0, R1, R2, R3, R4, R6, R8, R9, Asm

#: entries kept (least recently used go first); at 2,000 new connections a second this is
#: half a minute of history, and the agent looks a sample up within a second of capture
CAPACITY = 65536
KEY = struct.Struct("=QBBHHH16s16s")  # netns cookie, family, protocol, ports, pad, addresses
VALUE = struct.Struct("=QQ")  # cgroup id, since (CLOCK_MONOTONIC ns)
assert KEY.size == 48 and VALUE.size == 16
_KEY_INTO, _VALUE_FROM = KEY.pack_into, VALUE.unpack_from
_U64_INTO = struct.Struct("=Q").pack_into
_AF_INET, _htons = socket.AF_INET, socket.htons

# helper functions (enum bpf_func_id)
_MAP_LOOKUP, _MAP_UPDATE, _KTIME_GET_NS, _SKB_LOAD_BYTES = 1, 2, 5, 26
_SKB_CGROUP_ID, _GET_NETNS_COOKIE = 79, 122
_SKB_LEN, _SKB_PROTOCOL = 0, 16  # offsetof(struct __sk_buff, len), (..., protocol)
_ETH_P_IP, _ETH_P_IPV6 = 0x0008, 0xDD86  # htons(0x0800), htons(0x86DD), read little-endian
# stack layout (offsets from the frame pointer)
_KEY, _VAL, _IPH, _L4, _LEN, _IDX = -48, -64, -104, -120, -128, -132
_CG, _TRAFFIC = -144, -176  # the packet's socket's cgroup id; a zeroed traffic value
#: the traffic map's value: bytes and packets received, bytes and packets sent
TRAFFIC = struct.Struct("=QQQQ")
_RX, _TX = 0, 16  # offsets of the received and the sent pair in it
TRAFFIC_CGROUPS = 16384  #: cgroups whose traffic is counted at most (services, not sockets)
_K_FAMILY, _K_PROTO, _K_LPORT, _K_RPORT, _K_LADDR, _K_RADDR = (
    _KEY + 8, _KEY + 9, _KEY + 10, _KEY + 12, _KEY + 16, _KEY + 32)


def map_call(a: Asm, helper: int, fd: int, key: int, value: int | None = None,
             flags: int | None = None) -> None:
    """Call a map helper on map ``fd`` with the key at stack offset ``key`` (and, for an
    update, the value at ``value`` and ``flags``); the result is in r0."""
    a.map_fd(R1, fd)
    a.mov(R2, FP)
    a.alu(R2, "+", key)
    if value is not None:
        a.mov(R3, FP)
        a.alu(R3, "+", value)
        a.alu(R4, "=", flags or 0)
    a.call(helper)


def count_traffic(a: Asm, traffic_fd: int, pair: int) -> None:
    """Add the packet (its length, one packet) to its socket's cgroup's counters in
    ``traffic_fd`` at ``pair`` (_RX or _TX); leaves the cgroup id at _CG (0: none)."""
    a.mov(R1, R6)
    a.call(_SKB_CGROUP_ID)
    a.store(FP, _CG, R0, 8)
    a.jump("==", R0, 0, "counted")
    map_call(a, _MAP_LOOKUP, traffic_fd, _CG)
    a.jump("!=", R0, 0, "count")
    for off in range(_TRAFFIC, _TRAFFIC + TRAFFIC.size, 8):
        a.store_imm(FP, off, 0, 8)
    map_call(a, _MAP_UPDATE, traffic_fd, _CG, _TRAFFIC, bpf.NOEXIST)
    map_call(a, _MAP_LOOKUP, traffic_fd, _CG)
    a.jump("==", R0, 0, "counted")
    a.label("count")
    a.load(R2, R6, _SKB_LEN, 4)
    a.atomic_add(R0, pair, R2, 8)
    a.alu(R2, "=", 1)
    a.atomic_add(R0, pair + 8, R2, 8)
    a.label("counted")


def ingress_program(traffic_fd: int) -> bytes:
    """The ingress program: counts what each covered cgroup's sockets receive."""
    a = Asm()
    a.mov(R6, R1)
    count_traffic(a, traffic_fd, _RX)
    a.alu(R0, "=", 1)  # let the packet in: this only counts
    a.exit()
    return a.code()


def program(log_fd: int, count_fd: int, traffic_fd: int) -> bytes:
    """The egress program: counts what each covered cgroup's sockets send in ``traffic_fd``,
    writes owners to map ``log_fd`` and counts those writes in the one-slot array
    ``count_fd``."""
    a = Asm()
    a.mov(R6, R1)  # r6 = skb for the whole program (r6-r9 survive helper calls)
    count_traffic(a, traffic_fd, _TX)
    for off in range(_VAL, 0, 8):
        a.store_imm(FP, off, 0, 8)  # the key and value start zeroed
    a.store_imm(FP, _IDX, 0, 4)
    a.load(R2, R6, _SKB_PROTOCOL, 4)
    a.jump("==", R2, _ETH_P_IP, "ipv4")
    a.jump("==", R2, _ETH_P_IPV6, "ipv6")
    a.jump("goto", 0, 0, "out")

    def load_bytes(offset_reg: int | None, offset: int, to: int, n: int) -> None:
        a.mov(R1, R6)
        if offset_reg is None:
            a.alu(R2, "=", offset)
        else:
            a.mov(R2, offset_reg)
        a.mov(R3, FP)
        a.alu(R3, "+", to)
        a.alu(R4, "=", n)
        a.call(_SKB_LOAD_BYTES)
        a.jump("!=", R0, 0, "out")

    a.label("ipv4")
    load_bytes(None, 0, _IPH, 20)
    a.load(R8, FP, _IPH, 1)  # version and header length
    a.alu(R8, "&", 0x0F)
    a.alu(R8, "<<", 2)  # r8 = offset of the transport header
    a.jump("<", R8, 20, "out")
    a.load(R9, FP, _IPH + 9, 1)  # r9 = protocol
    a.load(R2, FP, _IPH + 6, 2)
    a.alu(R2, "&", 0xFF1F)  # fragment offset (network order, read little-endian)
    a.jump("!=", R2, 0, "out")  # a later fragment has no ports
    a.load(R2, FP, _IPH + 2, 2)
    a.to_be16(R2)
    a.store(FP, _LEN, R2, 8)  # the IP packet's length
    a.store_imm(FP, _K_FAMILY, 4, 1)
    a.load(R2, FP, _IPH + 12, 4)
    a.store(FP, _K_LADDR, R2, 4)
    a.load(R2, FP, _IPH + 16, 4)
    a.store(FP, _K_RADDR, R2, 4)
    a.jump("goto", 0, 0, "l4")

    a.label("ipv6")
    load_bytes(None, 0, _IPH, 40)
    a.load(R9, FP, _IPH + 6, 1)  # next header: TCP/UDP right after the fixed header only
    a.alu(R8, "=", 40)
    a.load(R2, FP, _IPH + 4, 2)
    a.to_be16(R2)
    a.alu(R2, "+", 40)
    a.store(FP, _LEN, R2, 8)
    a.store_imm(FP, _K_FAMILY, 6, 1)
    for i in range(0, 16, 4):
        a.load(R2, FP, _IPH + 8 + i, 4)
        a.store(FP, _K_LADDR + i, R2, 4)
        a.load(R2, FP, _IPH + 24 + i, 4)
        a.store(FP, _K_RADDR + i, R2, 4)

    a.label("l4")
    a.store(FP, _K_PROTO, R9, 1)
    a.jump("==", R9, 17, "udp")
    a.jump("!=", R9, 6, "out")
    load_bytes(R8, 0, _L4, 14)
    a.load(R2, FP, _L4 + 13, 1)  # TCP flags
    a.mov(R3, R2)
    a.alu(R3, "&", 0x04)
    a.jump("!=", R3, 0, "out")  # RST: often the kernel's, never an owner's word
    a.alu(R2, "&", 0x02)
    a.jump("!=", R2, 0, "ports")  # SYN, SYN-ACK: a new connection
    a.load(R3, FP, _L4 + 12, 1)
    a.alu(R3, ">>", 4)
    a.alu(R3, "<<", 2)  # TCP header length
    a.load(R4, FP, _LEN, 8)
    a.alu(R4, "-", R8, reg=True)
    a.alu(R4, "-", R3, reg=True)
    a.jump("s<=", R4, 0, "out")  # no data: pure ACK or FIN (TIME_WAIT sends those)
    a.jump("goto", 0, 0, "ports")

    a.label("udp")
    load_bytes(R8, 0, _L4, 4)

    a.label("ports")
    a.load(R2, FP, _L4, 2)
    a.store(FP, _K_LPORT, R2, 2)  # ports stay in network order
    a.load(R2, FP, _L4 + 2, 2)
    a.store(FP, _K_RPORT, R2, 2)
    a.load(R0, FP, _CG, 8)
    a.jump("==", R0, 0, "out")  # no full socket behind the packet
    a.store(FP, _VAL, R0, 8)
    a.mov(R1, R6)
    a.call(_GET_NETNS_COOKIE)
    a.store(FP, _KEY, R0, 8)
    map_call(a, _MAP_LOOKUP, log_fd, _KEY)
    a.jump("==", R0, 0, "write")
    a.load(R2, R0, 0, 8)
    a.load(R3, FP, _VAL, 8)
    a.jump("==", R2, R3, "out", reg=True)  # the owner logged already
    a.jump("==", R9, 17, "write")  # UDP: the port changed hands
    a.load(R2, FP, _L4 + 13, 1)
    a.alu(R2, "&", 0x02)
    a.jump("==", R2, 0, "out")  # TCP data of a logged connection: the first owner stays

    a.label("write")
    a.call(_KTIME_GET_NS)
    a.store(FP, _VAL + 8, R0, 8)
    map_call(a, _MAP_UPDATE, log_fd, _KEY, _VAL, bpf.ANY)
    map_call(a, _MAP_LOOKUP, count_fd, _IDX)
    a.jump("==", R0, 0, "out")
    a.alu(R2, "=", 1)
    a.atomic_add(R0, 0, R2, 8)

    a.label("out")
    a.alu(R0, "=", 1)  # let the packet go: the log only watches
    a.exit()
    return a.code()


class OwnerLog:
    """The loaded program and its maps; :meth:`cover` attaches it to cgroup2 directories.

    Loading needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN, so it is made before the agent
    drops root; :meth:`owner` then works with the descriptors already held."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._fds: list[int] = []
        #: cgroup2 directory -> its link descriptors (egress, ingress)
        self.links: dict[str, tuple[int, ...]] = {}
        try:
            self.log_fd = self._keep(bpf.map_create(bpf.MAP_TYPE_LRU_HASH, KEY.size, VALUE.size,
                                                    capacity, "hsf_owners"))
            self.count_fd = self._keep(bpf.map_create(bpf.MAP_TYPE_ARRAY, 4, 8, 1, "hsf_writes"))
            self.traffic_fd = self._keep(bpf.map_create(
                bpf.MAP_TYPE_HASH, 8, TRAFFIC.size, TRAFFIC_CGROUPS, "hsf_traffic"))
            self.prog_fd = self._keep(bpf.prog_load(
                bpf.PROG_TYPE_CGROUP_SKB,
                program(self.log_fd, self.count_fd, self.traffic_fd), "hsf_owner_log",
                expected_attach_type=bpf.CGROUP_INET_EGRESS))
            self.ingress_fd = self._keep(bpf.prog_load(
                bpf.PROG_TYPE_CGROUP_SKB, ingress_program(self.traffic_fd), "hsf_traffic_in",
                expected_attach_type=bpf.CGROUP_INET_INGRESS))
        except BaseException:
            self.close()
            raise
        self.capacity = capacity
        self._reader = bpf.MapReader(self.log_fd, KEY.size, VALUE.size)
        self._count = bpf.MapReader(self.count_fd, 4, 8)
        self._traffic = bpf.MapReader(self.traffic_fd, 8, TRAFFIC.size)

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def cover(self, directories: Iterable[str]) -> list[tuple[str, OSError]]:
        """Have exactly these cgroup2 directories (and everything below them) logged: new
        ones are attached, the others detached.  Returns the ones that failed, with why."""
        wanted = set(directories)
        for path in [p for p in self.links if p not in wanted]:
            for fd in self.links.pop(path):
                os.close(fd)
        failed = []
        for path in sorted(wanted - set(self.links)):
            try:
                dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                failed.append((path, exc))
                continue
            made: list[int] = []
            try:
                made.append(bpf.link_create(self.prog_fd, dfd, bpf.CGROUP_INET_EGRESS))
                made.append(bpf.link_create(self.ingress_fd, dfd, bpf.CGROUP_INET_INGRESS))
                self.links[path] = tuple(made)
            except OSError as exc:
                for fd in made:
                    os.close(fd)
                failed.append((path, exc))
            finally:
                os.close(dfd)
        return failed

    def owner(self, netns_cookie: int, protocol: int, family: int, local: bytes, lport: int,
              remote: bytes, rport: int) -> tuple[int, int] | None:
        """``(cgroup id, since)`` logged for the connection seen from its local end (packed
        addresses: 4 bytes for IPv4, 16 for IPv6), or None."""
        r = self._reader
        _KEY_INTO(r.key, 0, netns_cookie, 4 if family == _AF_INET else 6, protocol,
                  _htons(lport), _htons(rport), 0, local, remote)
        return _VALUE_FROM(r.value) if r.lookup() else None

    def traffic(self, cgroup_id: int) -> tuple[int, int, int, int] | None:
        """(bytes received, packets received, bytes sent, packets sent) by the sockets of
        cgroup ``cgroup_id`` since it was first seen (IP packets: their IP length), or None."""
        r = self._traffic
        _U64_INTO(r.key, 0, cgroup_id)
        return TRAFFIC.unpack_from(r.value) if r.lookup() else None

    def writes(self) -> int:
        """How many entries the program has written (new owners), since it was loaded."""
        value = self._count.get(b"\0\0\0\0")
        return int.from_bytes(value, "little") if value else 0

    def close(self) -> None:
        for fd in [f for fds in self.links.values() for f in fds] + self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.links = {}
        self._fds = []


def monotonic_to_wall() -> float:
    """Seconds to add to a CLOCK_MONOTONIC time to get the wall-clock (capture) time."""
    return time.time() - time.monotonic()
