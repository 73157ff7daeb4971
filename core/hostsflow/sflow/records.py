"""sFlow v5 record classes, one attrs class per (enterprise, format), and their registry.

Every record a module returns is an instance of a class made with :func:`flow_record` or
:func:`counter_record`.  The class declares its fields with the XDR helpers from
:mod:`hostsflow.sflow.xdr`; the decorator compiles the codec once and registers the class so
that the decoder (``hostsflow decode``, the testing kit) can read it back.  Third-party modules
define their own records the same way (see docs/plugins.md).

Layouts are those of the public sFlow documents, field for field in wire order: "sFlow
Version 5" (sflow_version_5.txt: datagram, samples, sampled_header), "sFlow Host Structures"
(sflow_host.txt: 2000-2006, 2100-2104), "sFlow Host TCP/IP Counters" (sflow_host_ip.txt:
2007-2010); extended_tcp_info (2209) and extended_entities (2210) as hsflowd sends them.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, TypeVar

import attrs

from .xdr import (
    XDR, XdrError, compile_codec, compile_whole, f32, fixed_opaque, i32, opaque, string, u32,
    u64,
)

FLOW = "flow"
COUNTER = "counter"

#: (kind, enterprise, format) -> record class
REGISTRY: dict[tuple[str, int, int], type["Record"]] = {}

INTERNAL_IFINDEX = 0x3FFFFFFF  # "internal" interface value in flow samples


class Record:
    """Base of every sFlow record. Subclasses are attrs classes made by the decorators."""

    kind: ClassVar[str]
    enterprise: ClassVar[int]
    format: ClassVar[int]
    _encode: ClassVar[Any]
    _decode: ClassVar[Any]
    #: the whole record (tag, length, body) in one pack, for all-fixed-size classes; else None
    _encode_whole: ClassVar[Any] = None

    @classmethod
    def tag(cls) -> int:
        """The ``data_format`` word: enterprise << 12 | format."""
        return (cls.enterprise << 12) | cls.format

    def encode_body(self) -> bytes:
        """The record body in XDR, without the data_format and length words."""
        return self._encode(self)

    @classmethod
    def decode_body(cls, data: bytes) -> "Record":
        """Read a record body (the bytes after data_format and length)."""
        values = cls._decode(data)
        return cls(**values) if isinstance(values, _ByName) else cls(*values)

    def encode(self) -> bytes:
        """The whole record: data_format, length, body."""
        body = self.encode_body()
        return struct.pack(">II", self.tag(), len(body)) + body


R = TypeVar("R", bound=type)


def _positional(cls: type, decode: Any) -> Any:
    """``decode`` as the class's ``__init__`` takes it positionally: as it is when every field
    is an XDR field (all in-repo records), else the XDR values placed by name."""
    fields = attrs.fields(cls)
    xdr = tuple(f.name for f in fields if f.metadata.get(XDR) is not None)
    if xdr == tuple(f.name for f in fields if f.init):
        return decode
    return lambda data: _ByName(zip(xdr, decode(data)))


class _ByName(dict):  # type: ignore[type-arg]
    """Field values by name, for a record class with fields the codec does not carry."""


def _register(kind: str, enterprise: int, fmt: int, cls: type) -> type:
    cls = attrs.define(slots=True, eq=True)(cls)
    cls.kind, cls.enterprise, cls.format = kind, enterprise, fmt
    if "encode_body" not in cls.__dict__:
        enc, dec, _ = compile_codec(cls)
        cls._encode = staticmethod(enc)
        cls._decode = staticmethod(_positional(cls, dec))
    generic = cls.encode_body is Record.encode_body and cls.encode is Record.encode
    whole = compile_whole(cls, cls.tag()) if generic else None
    cls._encode_whole = None if whole is None else staticmethod(whole)
    key = (kind, enterprise, fmt)
    if key in REGISTRY and REGISTRY[key].__qualname__ != cls.__qualname__:
        raise ValueError(f"{kind} record {enterprise}:{fmt} is already {REGISTRY[key].__name__}")
    REGISTRY[key] = cls
    return cls


def flow_record(fmt: int, enterprise: int = 0):  # type: ignore[no-untyped-def]
    """Class decorator: make an attrs flow record class for (enterprise, format)."""
    return lambda cls: _register(FLOW, enterprise, fmt, cls)


def counter_record(fmt: int, enterprise: int = 0):  # type: ignore[no-untyped-def]
    """Class decorator: make an attrs counter record class for (enterprise, format)."""
    return lambda cls: _register(COUNTER, enterprise, fmt, cls)


@attrs.define(slots=True)
class UnknownRecord:
    """A record the decoder has no class for; kept whole so nothing is lost."""

    kind: str
    enterprise: int
    format: int
    data: bytes

    def tag(self) -> int:
        return (self.enterprise << 12) | self.format

    def encode(self) -> bytes:
        return struct.pack(">II", self.tag(), len(self.data)) + self.data


def decode_record(kind: str, tag: int, body: bytes) -> Record | UnknownRecord:
    """Decode one record body given its kind and data_format word."""
    enterprise, fmt = tag >> 12, tag & 0xFFF
    cls = REGISTRY.get((kind, enterprise, fmt))
    if cls is None:
        return UnknownRecord(kind, enterprise, fmt, bytes(body))
    try:
        return cls.decode_body(body)
    except (struct.error, UnicodeError, TypeError) as exc:
        raise XdrError(f"{cls.__name__}: {exc}") from exc


# ================================================================ flow records

HEADER_ETHERNET = 1
HEADER_IPV4 = 11
HEADER_IPV6 = 12


@flow_record(1)
class SampledHeader(Record):
    """sampled_header: the first bytes of the sampled packet."""

    protocol: int = u32(HEADER_ETHERNET, "header_protocol: 1 Ethernet, 11 IPv4, 12 IPv6")
    frame_length: int = u32(0, "original frame length, FCS included")
    stripped: int = u32(4, "bytes removed from the frame (4 = the FCS)")
    header: bytes = opaque(help="the header bytes")


@flow_record(2209)
class ExtendedTcpInfo(Record):
    """extended_tcp_info: the health of the TCP connection a sampled packet belongs to."""

    dir: int = u32(0, "0 unknown, 1 received, 2 sent")
    snd_mss: int = u32(0, "cached effective MSS")
    rcv_mss: int = u32(0, "max receive segment size")
    unacked: int = u32(0, "packets in flight")
    lost: int = u32(0, "lost packets")
    retrans: int = u32(0, "retransmitted packets")
    pmtu: int = u32(0, "last path MTU")
    rtt: int = u32(0, "smoothed RTT, microseconds")
    rttvar: int = u32(0, "RTT variance, microseconds")
    snd_cwnd: int = u32(0, "send congestion window")
    reordering: int = u32(0, "reordering")
    min_rtt: int = u32(0, "minimum RTT, microseconds")


TCP_DIR_UNKNOWN, TCP_DIR_RECEIVED, TCP_DIR_SENT = 0, 1, 2


@flow_record(2210)
class ExtendedEntities(Record):
    """extended_entities: the data sources (services) that sent and received the packet."""

    src_class: int = u32(0, "source data source class (3 = service); 0 if unknown")
    src_index: int = u32(0, "source data source index; 0 if unknown")
    dst_class: int = u32(0, "destination data source class; 0 if unknown")
    dst_index: int = u32(0, "destination data source index; 0 if unknown")


# ================================================================ counter records


@counter_record(1)
class GenericInterface(Record):
    """if_counters: generic interface counters (RFC 2233)."""

    ifIndex: int = u32()
    ifType: int = u32(6, "IANAifType; 6 = ethernetCsmacd")
    ifSpeed: int = u64(0, "bits per second")
    ifDirection: int = u32(0, "1 full duplex, 2 half, 0 unknown")
    ifStatus: int = u32(0, "bit 0 admin up, bit 1 oper up")
    ifInOctets: int = u64()
    ifInUcastPkts: int = u32()
    ifInMulticastPkts: int = u32(0xFFFFFFFF)
    ifInBroadcastPkts: int = u32(0xFFFFFFFF)
    ifInDiscards: int = u32()
    ifInErrors: int = u32()
    ifInUnknownProtos: int = u32(0xFFFFFFFF)
    ifOutOctets: int = u64()
    ifOutUcastPkts: int = u32()
    ifOutMulticastPkts: int = u32(0xFFFFFFFF)
    ifOutBroadcastPkts: int = u32(0xFFFFFFFF)
    ifOutDiscards: int = u32()
    ifOutErrors: int = u32()
    ifPromiscuousMode: int = u32()


@counter_record(1005)
class PortName(Record):
    """port_name: the interface's name."""

    name: str = string(255)


@counter_record(2000)
class HostDescr(Record):
    """host_descr: who the host (or service) is."""

    hostname: str = string(64)
    uuid: bytes = fixed_opaque(16, help="16 bytes, no length word")
    machine_type: int = u32(0, "0 unknown, 2 x86, 3 x86_64, 10 arm, ...")
    os_name: int = u32(0, "0 unknown, 2 linux, ...")
    os_release: str = string(32)


@attrs.define(slots=True)
class Adapter:
    """One adapter of host_adapters: an ifIndex and its MAC addresses (6 bytes each)."""

    ifIndex: int = 0
    macs: list[bytes] = attrs.Factory(list)


@counter_record(2001)
class HostAdapters(Record):
    """host_adapters: the host's network adapters and their MACs."""

    adapters: list[Adapter] = attrs.Factory(list)

    def encode_body(self) -> bytes:
        out = [struct.pack(">I", len(self.adapters))]
        for ad in self.adapters:
            out.append(struct.pack(">II", ad.ifIndex, len(ad.macs)))
            out.extend(bytes(mac[:6]).ljust(8, b"\0") for mac in ad.macs)
        return b"".join(out)

    @classmethod
    def decode_body(cls, data: bytes) -> "HostAdapters":
        try:
            (count,) = struct.unpack_from(">I", data, 0)
            pos, adapters = 4, []
            for _ in range(count):
                ifindex, nmacs = struct.unpack_from(">II", data, pos)
                pos += 8
                if pos + 8 * nmacs > len(data):
                    raise XdrError("host_adapters: MAC list runs past the record")
                macs = [bytes(data[pos + 8 * i : pos + 8 * i + 6]) for i in range(nmacs)]
                pos += 8 * nmacs
                adapters.append(Adapter(ifindex, macs))
        except struct.error as exc:
            raise XdrError(f"host_adapters: {exc}") from exc
        return cls(adapters)


@counter_record(2002)
class HostParent(Record):
    """host_parent: the data source that contains this one (a service's host is 2:1)."""

    container_type: int = u32(2)
    container_index: int = u32(1)


@counter_record(2003)
class HostCpu(Record):
    """host_cpu, hsflowd's 80-byte form (with steal, guest, guest_nice)."""

    load_one: float = f32()
    load_five: float = f32()
    load_fifteen: float = f32()
    proc_run: int = u32()
    proc_total: int = u32()
    cpu_num: int = u32()
    cpu_speed: int = u32(0, "MHz")
    uptime: int = u32(0, "seconds")
    cpu_user: int = u32(0, "ms")
    cpu_nice: int = u32(0, "ms")
    cpu_system: int = u32(0, "ms")
    cpu_idle: int = u32(0, "ms")
    cpu_wio: int = u32(0, "ms")
    cpu_intr: int = u32(0, "ms")
    cpu_sintr: int = u32(0, "ms")
    interrupts: int = u32()
    contexts: int = u32()
    cpu_steal: int = u32(0, "ms")
    cpu_guest: int = u32(0, "ms")
    cpu_guest_nice: int = u32(0, "ms")

    @classmethod
    def decode_body(cls, data: bytes) -> "HostCpu":
        """Also reads the 68-byte form of the 2010 spec (steal, guest, guest_nice read as 0)."""
        if len(data) == 68:
            data = bytes(data) + bytes(12)
        return cls(*cls._decode(data))


@counter_record(2004)
class HostMemory(Record):
    """host_memory, bytes and page counts."""

    mem_total: int = u64()
    mem_free: int = u64()
    mem_shared: int = u64()
    mem_buffers: int = u64()
    mem_cached: int = u64()
    swap_total: int = u64()
    swap_free: int = u64()
    page_in: int = u32()
    page_out: int = u32()
    swap_in: int = u32()
    swap_out: int = u32()


@counter_record(2005)
class HostDiskIo(Record):
    """host_disk_io: space over local filesystems, I/O over whole disks."""

    disk_total: int = u64()
    disk_free: int = u64()
    part_max_used: int = i32(-1, "hundredths of a percent, -1 unknown")
    reads: int = u32()
    bytes_read: int = u64()
    read_time: int = u32(0, "ms")
    writes: int = u32()
    bytes_written: int = u64()
    write_time: int = u32(0, "ms")


@counter_record(2006)
class HostNetIo(Record):
    """host_net_io: totals over the host's interfaces."""

    bytes_in: int = u64()
    pkts_in: int = u32()
    errs_in: int = u32()
    drops_in: int = u32()
    bytes_out: int = u64()
    pkts_out: int = u32()
    errs_out: int = u32()
    drops_out: int = u32()


MIB2_IP_FIELDS = (
    "Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos "
    "InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs "
    "ReasmFails FragOKs FragFails FragCreates"
).split()
MIB2_ICMP_FIELDS = (
    "InMsgs InErrors InDestUnreachs InTimeExcds InParamProbs InSrcQuenchs InRedirects InEchos "
    "InEchoReps InTimestamps InAddrMasks InAddrMaskReps OutMsgs OutErrors OutDestUnreachs "
    "OutTimeExcds OutParamProbs OutSrcQuenchs OutRedirects OutEchos OutEchoReps OutTimestamps "
    "OutTimestampReps OutAddrMasks OutAddrMaskReps"
).split()
MIB2_TCP_FIELDS = (
    "RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets "
    "CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors"
).split()
MIB2_UDP_FIELDS = (
    "InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors"
).split()


def _mib2(name: str, fmt: int, fields: list[str], doc: str) -> type:
    """Make a MIB-II group record: one u32 per field, named as in /proc/net/snmp."""
    ns: dict[str, Any] = {"__annotations__": {f: int for f in fields}, "__doc__": doc}
    ns.update({f: u32() for f in fields})
    return counter_record(fmt)(type(name, (Record,), ns))


Mib2Ip = _mib2("Mib2Ip", 2007, MIB2_IP_FIELDS, "mib2_ip_group (/proc/net/snmp Ip:)")
Mib2Icmp = _mib2("Mib2Icmp", 2008, MIB2_ICMP_FIELDS, "mib2_icmp_group (/proc/net/snmp Icmp:)")
Mib2Tcp = _mib2("Mib2Tcp", 2009, MIB2_TCP_FIELDS, "mib2_tcp_group (/proc/net/snmp Tcp:)")
Mib2Udp = _mib2("Mib2Udp", 2010, MIB2_UDP_FIELDS, "mib2_udp_group (/proc/net/snmp Udp:)")


@counter_record(2100)
class VirtNode(Record):
    """virt_node: the host as a container of virtual data sources (services)."""

    mhz: int = u32()
    cpus: int = u32()
    memory: int = u64()
    memory_free: int = u64()
    num_domains: int = u32()


@counter_record(2101)
class VirtCpu(Record):
    """virt_cpu: a virtual data source's CPU."""

    state: int = u32(1, "1 running")
    cpuTime: int = u32(0, "ms")
    nrVirtCpu: int = u32()


@counter_record(2102)
class VirtMemory(Record):
    """virt_memory: a virtual data source's memory, bytes."""

    memory: int = u64()
    maxMemory: int = u64()


@counter_record(2103)
class VirtDiskIo(Record):
    """virt_disk_io: a virtual data source's block I/O."""

    capacity: int = u64()
    allocation: int = u64()
    available: int = u64()
    rd_req: int = u32()
    rd_bytes: int = u64()
    wr_req: int = u32()
    wr_bytes: int = u64()
    errs: int = u32()


@counter_record(2104)
class VirtNetIo(HostNetIo):
    """virt_net_io: a virtual data source's network I/O (the layout of host_net_io)."""
