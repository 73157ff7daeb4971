"""Host and interface counter records, each read from /proc and /sys when it is called.

One function per record (the sources hsflowd reads for it, with its quirks fixed):

============  =========================================================================
record        source
============  =========================================================================
2000 descr    uname (hostname, kernel release), :mod:`.identity` UUID, platform.machine()
2001 adapters the interface table: up, not loopback, not veth, non-zero MAC (max 32)
2003 cpu      /proc/loadavg, /proc/stat, /proc/uptime, /proc/cpuinfo ``cpu MHz``
2004 memory   /proc/meminfo (kB x 1024), /proc/vmstat
2005 disk_io  statvfs of local read-write mounts; /proc/diskstats over whole disks only
2006 net_io   /proc/net/dev summed over up interfaces that are not loopback, VLAN or bond
2007-2010     /proc/net/snmp, matched **by column name** (missing names are 0)
1, 1005       /sys/class/net/X/statistics and the interface table (per interface)
============  =========================================================================

Error handling: a record whose source file vanishes or cannot be parsed raises
:class:`CounterReadError`.  :func:`host_records` catches it, leaves that record out of the list
and passes the error to its ``on_error`` callback so the caller can count and log it; the other
records are still returned.

Width: u32 fields are masked modulo 2**32 (the kernel's 64-bit counters wrap as the 32-bit
sFlow counters would); u64 fields are reported as read.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable

from ..sflow.records import (
    MIB2_ICMP_FIELDS,
    MIB2_IP_FIELDS,
    MIB2_TCP_FIELDS,
    MIB2_UDP_FIELDS,
    Adapter,
    GenericInterface,
    HostAdapters,
    HostCpu,
    HostDescr,
    HostDiskIo,
    HostMemory,
    HostNetIo,
    Mib2Icmp,
    Mib2Ip,
    Mib2Tcp,
    Mib2Udp,
    PortName,
    Record,
)
from . import identity, procfs
from .interfaces import Interface, InterfaceTable, scan_interfaces

U32 = 0xFFFFFFFF
UNKNOWN32 = 0xFFFFFFFF
SECTOR_BYTES = 512
MAX_ADAPTERS = 32
OS_LINUX = 2

#: platform.machine() -> sFlow machine_type
MACHINE_TYPES = {
    "x86_64": 3, "amd64": 3, "i386": 2, "i486": 2, "i586": 2, "i686": 2, "x86": 2,
    "ia64": 4, "sparc": 5, "sparc64": 5, "alpha": 6, "ppc": 7, "ppc64": 7, "ppc64le": 7,
    "powerpc": 7, "m68k": 8, "mips": 9, "mips64": 9, "arm": 10, "aarch64": 10, "arm64": 10,
    "parisc": 11, "parisc64": 11, "hppa": 11, "s390": 12, "s390x": 12,
}  # fmt: skip

#: mounts whose file system type marks them remote (hsflowd's remote_mount, from Ganglia)
_REMOTE_TYPES = ("autofs", "gfs", "none")


class CounterReadError(Exception):
    """A counter record could not be read (its source vanished, was unreadable, or malformed).

    ``record`` names the record (e.g. ``"host_cpu"``), ``path`` the file involved, ``cause`` the
    original exception."""

    def __init__(self, record: str, path: str, cause: BaseException) -> None:
        super().__init__(f"{record}: {path}: {cause}")
        self.record = record
        self.path = path
        self.cause = cause


def _read(record: str, path: str) -> str:
    try:
        return procfs.read_text(path)
    except OSError as exc:
        raise CounterReadError(record, path, exc) from exc


def _u32(v: int) -> int:
    return v & U32


# ---------------------------------------------------------------- 2000 host_descr


def machine_type(machine: str | None = None) -> int:
    """sFlow machine_type for a ``platform.machine()`` string (0 unknown)."""
    m = (machine or platform.machine()).lower()
    if m in MACHINE_TYPES:
        return MACHINE_TYPES[m]
    if m.startswith("arm"):
        return 10
    if m.startswith("mips"):
        return 9
    return 0


def _truncate(s: str, limit: int) -> str:
    raw = s.encode("utf-8")
    return s if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def host_descr(uuid: bytes | None = None, hostname: str | None = None) -> HostDescr:
    """host_descr (2000).  ``uuid``/``hostname`` are the agent's (overrides); by default the
    UUID is chosen by :func:`hostsflow.host.identity.host_uuid`."""
    u = os.uname()
    return HostDescr(
        hostname=_truncate(hostname if hostname is not None else u.nodename, 64),
        uuid=uuid if uuid is not None else identity.host_uuid(),
        machine_type=machine_type(u.machine),
        os_name=OS_LINUX,
        os_release=_truncate(u.release, 32),
    )


# ---------------------------------------------------------------- 2001 host_adapters


def adapter_interfaces(interfaces: InterfaceTable) -> list[Interface]:
    """The interfaces host_adapters lists: up, not loopback, not a veth (container side or
    peer, as hsflowd), with a non-zero MAC; at most 32, in ifIndex order."""
    chosen = [i for i in interfaces if i.up and not i.loopback and i.kind != "veth" and i.has_mac]
    return chosen[:MAX_ADAPTERS]


def host_adapters(interfaces: InterfaceTable | None = None) -> HostAdapters:
    """host_adapters (2001): one MAC per adapter.  Scans the interfaces if none are given."""
    table = interfaces if interfaces is not None else scan_interfaces()
    return HostAdapters(
        adapters=[Adapter(i.ifindex, [bytes(i.mac)]) for i in adapter_interfaces(table)]
    )


# ---------------------------------------------------------------- 2003 host_cpu


def _clk_tck() -> int:
    try:
        return os.sysconf("SC_CLK_TCK") or 100
    except (ValueError, OSError):
        return 100


def cpu_mhz() -> int:
    """The first ``cpu MHz`` of /proc/cpuinfo (truncated), else cpufreq's cpuinfo_max_freq of
    cpu0 (ARM has no ``cpu MHz``), else 0."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            for line in f:
                if line.startswith(b"cpu MHz"):
                    return int(float(line.split(b":", 1)[1]))
    except (OSError, ValueError, IndexError):
        pass
    khz = procfs.read_int("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", 0)
    return khz // 1000


def host_cpu() -> HostCpu:
    """host_cpu (2003), hsflowd's 80-byte form.

    Loads and running/total threads from /proc/loadavg (running minus one for the agent
    itself, as hsflowd); jiffies of the ``cpu`` line of /proc/stat converted to ms
    (x1000/USER_HZ); ``intr`` total and ``ctxt``; cpu_num = max(``cpuN`` lines, online CPUs);
    uptime in whole seconds.
    """
    rec = "host_cpu"
    load = _read(rec, "/proc/loadavg").split()
    stat = _read(rec, "/proc/stat")
    uptime = _read(rec, "/proc/uptime").split()
    try:
        loads = [float(x) for x in load[:3]]
        run, total = (int(x) for x in load[3].split("/"))
        up = int(float(uptime[0]))
    except (ValueError, IndexError) as exc:
        raise CounterReadError(rec, "/proc/loadavg or /proc/uptime", exc) from exc
    try:
        hz = _clk_tck()
        jiffies: list[int] = []
        ncpu = intr = ctxt = 0
        for line in stat.splitlines():
            w = line.split()
            if not w:
                continue
            if w[0] == "cpu":
                jiffies = [int(x) for x in w[1:11]]
            elif w[0].startswith("cpu") and w[0][3:].isdigit():
                ncpu += 1
            elif w[0] == "intr":
                intr = int(w[1])
            elif w[0] == "ctxt":
                ctxt = int(w[1])
        if len(jiffies) < 4:
            raise ValueError("no cpu line in /proc/stat")
        ms = [_u32(j * 1000 // hz) for j in jiffies] + [0] * (10 - len(jiffies))
        online = os.sysconf("SC_NPROCESSORS_ONLN")
        return HostCpu(
            load_one=loads[0],
            load_five=loads[1],
            load_fifteen=loads[2],
            proc_run=max(run - 1, 0),
            proc_total=_u32(total),
            cpu_num=max(ncpu, online),
            cpu_speed=cpu_mhz(),
            uptime=_u32(up),
            cpu_user=ms[0],
            cpu_nice=ms[1],
            cpu_system=ms[2],
            cpu_idle=ms[3],
            cpu_wio=ms[4],
            cpu_intr=ms[5],
            cpu_sintr=ms[6],
            interrupts=_u32(intr),
            contexts=_u32(ctxt),
            cpu_steal=ms[7],
            cpu_guest=ms[8],
            cpu_guest_nice=ms[9],
        )
    except (ValueError, IndexError) as exc:
        raise CounterReadError(rec, "/proc/stat", exc) from exc


# ---------------------------------------------------------------- 2004 host_memory


def host_memory() -> HostMemory:
    """host_memory (2004).  kB values of /proc/meminfo x 1024: MemTotal, MemFree, Shmem
    (hsflowd leaves mem_shared 0; we report Shmem), Buffers, Cached + SReclaimable (as
    hsflowd), SwapTotal, SwapFree; pgpgin, pgpgout, pswpin, pswpout from /proc/vmstat."""
    rec = "host_memory"
    mem = procfs.parse_key_values(_read(rec, "/proc/meminfo"))
    vm = procfs.parse_key_values(_read(rec, "/proc/vmstat"))
    if "MemTotal" not in mem:
        raise CounterReadError(rec, "/proc/meminfo", ValueError("no MemTotal"))
    k = 1024
    return HostMemory(
        mem_total=mem["MemTotal"] * k,
        mem_free=mem.get("MemFree", 0) * k,
        mem_shared=mem.get("Shmem", 0) * k,
        mem_buffers=mem.get("Buffers", 0) * k,
        mem_cached=(mem.get("Cached", 0) + mem.get("SReclaimable", 0)) * k,
        swap_total=mem.get("SwapTotal", 0) * k,
        swap_free=mem.get("SwapFree", 0) * k,
        page_in=_u32(vm.get("pgpgin", 0)),
        page_out=_u32(vm.get("pgpgout", 0)),
        swap_in=_u32(vm.get("pswpin", 0)),
        swap_out=_u32(vm.get("pswpout", 0)),
    )


# ---------------------------------------------------------------- 2005 host_disk_io


def _remote_mount(device: str, fstype: str) -> bool:
    if device.startswith("ubi:"):
        return False
    return (
        ":" in device
        or (fstype == "smbfs" and device.startswith("//"))
        or fstype.startswith("nfs")
        or fstype in _REMOTE_TYPES
    )


def local_mounts(mounts_text: str) -> list[str]:
    """Mount points hsflowd counts for disk space: device under /dev/ or /dev2/ (or ubi:),
    options not starting with ``ro``, not remote, first mount of each device only."""
    seen: set[str] = set()
    out: list[str] = []
    for line in mounts_text.splitlines():
        w = line.split()
        if len(w) < 4:
            continue
        device, mount, fstype, opts = w[0], w[1], w[2], w[3]
        if not device.startswith(("/dev/", "/dev2/", "ubi:")):
            continue
        if opts.startswith("ro") or _remote_mount(device, fstype) or device in seen:
            continue
        seen.add(device)
        out.append(mount.replace("\\040", " ").replace("\\011", "\t"))
    return out


def whole_disks(diskstats: dict[str, list[int]]) -> list[str]:
    """The /proc/diskstats devices host_disk_io sums: whole disks only.

    A device counts when it has an entry directly under /sys/block (partitions do not, so
    ``sda1`` is never added to ``sda``, whose line already includes it) and is not built on
    other block devices (dm/md list theirs in ``slaves/``).  Loop, zram and ram devices are
    whole disks and are counted, as hsflowd does; unused ones add nothing, and I/O on a
    file-backed loop device is also seen on the disk holding the file.
    """
    return [dev for dev in diskstats if procfs.is_whole_disk(dev)]


def host_disk_io() -> HostDiskIo:
    """host_disk_io (2005): space over local mounts (f_blocks x f_frsize total, f_bavail x
    f_frsize free, part_max_used = the fullest file system in hundredths of a percent, -1 when
    none), I/O over :func:`whole_disks` (bytes = sectors x 512, times in ms)."""
    rec = "host_disk_io"
    try:
        stats = procfs.parse_diskstats(_read(rec, "/proc/diskstats"))
    except ValueError as exc:
        raise CounterReadError(rec, "/proc/diskstats", exc) from exc
    reads = sectors_r = time_r = writes = sectors_w = time_w = 0
    for dev in whole_disks(stats):
        v = stats[dev]
        reads += v[2]
        sectors_r += v[4]
        time_r += v[5]
        writes += v[6]
        sectors_w += v[8]
        time_w += v[9]
    total = free = 0
    max_used = -1
    for mount in local_mounts(_read(rec, "/proc/mounts")):
        try:
            st = os.statvfs(mount)
        except OSError:
            continue
        if not st.f_blocks:
            continue
        t, f = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        total += t
        free += f
        max_used = max(max_used, (t - f) * 10000 // t)
    return HostDiskIo(
        disk_total=total,
        disk_free=free,
        part_max_used=max_used,
        reads=_u32(reads),
        bytes_read=sectors_r * SECTOR_BYTES,
        read_time=_u32(time_r),
        writes=_u32(writes),
        bytes_written=sectors_w * SECTOR_BYTES,
        write_time=_u32(time_w),
    )


# ---------------------------------------------------------------- 2006 host_net_io


def net_io_interfaces(interfaces: InterfaceTable) -> list[Interface]:
    """The interfaces host_net_io sums (hsflowd's rule against double counting): admin up,
    not loopback, not a VLAN sub-interface, not a bond master."""
    return [i for i in interfaces if i.up and not i.loopback and i.kind not in ("vlan", "bond")]


def host_net_io(interfaces: InterfaceTable | None = None) -> HostNetIo:
    """host_net_io (2006): /proc/net/dev rx/tx bytes, packets, errs, drop summed over
    :func:`net_io_interfaces`.  Scans the interfaces if none are given."""
    rec = "host_net_io"
    table = interfaces if interfaces is not None else scan_interfaces()
    try:
        dev = procfs.parse_net_dev(_read(rec, "/proc/net/dev"))
    except ValueError as exc:
        raise CounterReadError(rec, "/proc/net/dev", exc) from exc
    s = [0] * 16
    for iface in net_io_interfaces(table):
        v = dev.get(iface.name)
        if v is not None:
            s = [a + b for a, b in zip(s, v)]
    return HostNetIo(
        bytes_in=s[0],
        pkts_in=_u32(s[1]),
        errs_in=_u32(s[2]),
        drops_in=_u32(s[3]),
        bytes_out=s[8],
        pkts_out=_u32(s[9]),
        errs_out=_u32(s[10]),
        drops_out=_u32(s[11]),
    )


# ---------------------------------------------------------------- 2007-2010 MIB-II


#: sFlow field name -> /proc/net/snmp column, where they differ (the kernel says "Parm")
_SNMP_ALIASES = {"InParamProbs": "InParmProbs", "OutParamProbs": "OutParmProbs"}


def _mib2_group(
    cls: type[Record], group: str, fields: list[str], snmp: dict[str, dict[str, int]]
) -> Record:
    cols = snmp.get(group, {})
    values = {f: _u32(cols.get(_SNMP_ALIASES.get(f, f), cols.get(f, 0))) for f in fields}
    return cls(**values)


def snmp_groups() -> dict[str, dict[str, int]]:
    """/proc/net/snmp parsed by column name (raises CounterReadError)."""
    try:
        return procfs.parse_snmp(_read("mib2", "/proc/net/snmp"))
    except ValueError as exc:
        raise CounterReadError("mib2", "/proc/net/snmp", exc) from exc


def mib2_records(snmp: dict[str, dict[str, int]] | None = None) -> list[Record]:
    """mib2 ip, icmp, tcp, udp (2007-2010) from one read of /proc/net/snmp, matched by
    column name: names the kernel does not print are 0, extra columns are ignored, negative
    values (Tcp MaxConn is -1) wrap modulo 2**32 as in hsflowd."""
    g = snmp if snmp is not None else snmp_groups()
    return [
        _mib2_group(Mib2Ip, "Ip", MIB2_IP_FIELDS, g),
        _mib2_group(Mib2Icmp, "Icmp", MIB2_ICMP_FIELDS, g),
        _mib2_group(Mib2Tcp, "Tcp", MIB2_TCP_FIELDS, g),
        _mib2_group(Mib2Udp, "Udp", MIB2_UDP_FIELDS, g),
    ]


# ---------------------------------------------------------------- interface counters


_STATS = (
    "rx_bytes", "rx_packets", "multicast", "rx_dropped", "rx_errors",
    "tx_bytes", "tx_packets", "tx_dropped", "tx_errors",
)  # fmt: skip


def interface_statistics(name: str, sys_class_net: str = "/sys/class/net") -> dict[str, int]:
    """The counters of /sys/class/net/NAME/statistics that if_counters uses (raises
    CounterReadError if the interface vanished)."""
    base = os.path.join(sys_class_net, name, "statistics")
    out = {}
    for stat in _STATS:
        path = os.path.join(base, stat)
        try:
            out[stat] = int(procfs.read_first_line(path))
        except (OSError, ValueError) as exc:
            raise CounterReadError("if_counters", path, exc) from exc
    return out


def interface_counters(iface: Interface) -> list[Record]:
    """if_counters (1) and port_name (1005) for one interface.

    Octets, packets, discards and errors from /sys/class/net/X/statistics; ifInMulticastPkts
    from ``multicast`` (received) and ifInUcastPkts = rx_packets - multicast (broadcasts are
    not counted separately by the kernel, so ifInBroadcastPkts is unknown 0xFFFFFFFF and
    broadcasts are inside ifInUcastPkts); the kernel has no transmitted-multicast counter, so
    ifOutMulticastPkts and ifOutBroadcastPkts are unknown and ifOutUcastPkts = tx_packets (as
    hsflowd without ethtool statistics).  ifInUnknownProtos unknown.  ifStatus bit 0 admin up,
    bit 1 oper up; speed, duplex and promiscuous mode from the interface table.
    """
    st = interface_statistics(iface.name)
    in_mcast = st["multicast"]
    return [
        GenericInterface(
            ifIndex=iface.ifindex,
            ifType=6,
            ifSpeed=iface.speed,
            ifDirection=iface.duplex,
            ifStatus=(1 if iface.up else 0) | (2 if iface.oper_up else 0),
            ifInOctets=st["rx_bytes"],
            ifInUcastPkts=_u32(max(st["rx_packets"] - in_mcast, 0)),
            ifInMulticastPkts=_u32(in_mcast),
            ifInBroadcastPkts=UNKNOWN32,
            ifInDiscards=_u32(st["rx_dropped"]),
            ifInErrors=_u32(st["rx_errors"]),
            ifInUnknownProtos=UNKNOWN32,
            ifOutOctets=st["tx_bytes"],
            ifOutUcastPkts=_u32(st["tx_packets"]),
            ifOutMulticastPkts=UNKNOWN32,
            ifOutBroadcastPkts=UNKNOWN32,
            ifOutDiscards=_u32(st["tx_dropped"]),
            ifOutErrors=_u32(st["tx_errors"]),
            ifPromiscuousMode=1 if iface.promisc else 0,
        ),
        PortName(name=_truncate(iface.name, 255)),
    ]


# ---------------------------------------------------------------- the host sample


ErrorCallback = Callable[[CounterReadError], None]


def host_records(
    interfaces: InterfaceTable | None = None,
    uuid: bytes | None = None,
    hostname: str | None = None,
    on_error: ErrorCallback | None = None,
) -> list[Record]:
    """The host data source's records (2:1), in hsflowd's order: 2000, 2006, 2003, 2004, 2005,
    2007, 2008, 2009, 2010, 2001.

    A record whose source cannot be read is left out and its :class:`CounterReadError` is
    passed to ``on_error`` (if given); the others are still returned.
    """
    table = interfaces if interfaces is not None else scan_interfaces()
    out: list[Record] = []

    def attempt(fn: Callable[[], Record | list[Record]]) -> None:
        try:
            r = fn()
        except CounterReadError as exc:
            if on_error is not None:
                on_error(exc)
            return
        out.extend(r if isinstance(r, list) else [r])

    attempt(lambda: host_descr(uuid, hostname))
    attempt(lambda: host_net_io(table))
    attempt(host_cpu)
    attempt(host_memory)
    attempt(host_disk_io)
    attempt(mib2_records)
    attempt(lambda: host_adapters(table))
    return out


def all_interface_records(
    interfaces: InterfaceTable, on_error: ErrorCallback | None = None
) -> dict[int, list[Record]]:
    """``{ifIndex: [if_counters, port_name]}`` for every interface; an interface that vanished
    meanwhile is left out and reported to ``on_error``."""
    out: dict[int, list[Record]] = {}
    for iface in interfaces:
        try:
            out[iface.ifindex] = interface_counters(iface)
        except CounterReadError as exc:
            if on_error is not None:
                on_error(exc)
    return out
