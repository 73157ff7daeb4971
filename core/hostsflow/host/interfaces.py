"""The interface table: every network interface of the agent's network namespace.

:func:`scan_interfaces` reads /sys/class/net, one ``SIOCETHTOOL``/``ETHTOOL_GDRVINFO`` ioctl per
interface (the driver name, to tell a veth from a physical NIC, as hsflowd does), glibc's
``getifaddrs()`` for the addresses and /proc/net/if_inet6 for IPv6 address flags.  It takes well
under a millisecond per interface, so the agent may rescan every few seconds and compare the
tables with :meth:`InterfaceTable.diff` to tell plugins what changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
from collections.abc import Iterator

import attrs

from . import procfs

# net/if.h flags (the sysfs ``flags`` attribute is dev->flags)
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_PROMISC = 0x100

#: ``/proc/net/if_inet6`` flag: the address has no lifetime (configured, not SLAAC/DHCPv6)
IFA_F_PERMANENT = 0x80

KINDS = ("physical", "veth", "bridge", "vlan", "bond", "loopback", "other")

ZERO_MAC = b"\0" * 6


@attrs.define(slots=True, eq=True)
class Interface:
    """One network interface as seen at scan time.

    ``speed`` is in bits per second (0 = unknown, from /sys/class/net/X/speed in Mb/s);
    ``duplex`` is 1 full, 2 half, 0 unknown; ``up`` is the admin state (IFF_UP) and ``oper_up``
    the operational state; ``kind`` is one of :data:`KINDS`; ``addresses`` are the IPv4 and IPv6
    addresses (text form, no scope suffix); ``dynamic_addresses`` the IPv6 ones among them that
    have a lifetime (SLAAC or DHCPv6, i.e. not ``IFA_F_PERMANENT``).
    """

    name: str
    ifindex: int
    mac: bytes = ZERO_MAC
    speed: int = 0
    duplex: int = 0
    up: bool = False
    oper_up: bool = False
    loopback: bool = False
    promisc: bool = False
    kind: str = "other"
    addresses: list[str] = attrs.Factory(list)
    dynamic_addresses: frozenset[str] = frozenset()
    driver: str = ""
    alias: str = ""
    mtu: int = 0
    iflink: int = 0

    @property
    def mac_str(self) -> str:
        """The MAC as ``aa:bb:cc:dd:ee:ff``."""
        return ":".join(f"{b:02x}" for b in self.mac)

    @property
    def has_mac(self) -> bool:
        """True when the interface has a 6-byte, non-zero MAC address."""
        return len(self.mac) == 6 and self.mac != ZERO_MAC


@attrs.define(slots=True, frozen=True)
class InterfaceDiff:
    """What changed between two scans: interface names added, removed, and changed (present in
    both but with any attribute different, ifindex included)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


class InterfaceTable:
    """An immutable set of :class:`Interface` with lookups by name, ifIndex and MAC.

    Iteration yields interfaces in ifIndex order.  For ``by_mac`` the interface with the lowest
    ifIndex wins when several share a MAC (bridges, VLANs and bonds copy their ports' MACs).
    """

    __slots__ = ("_by_index", "_by_mac", "_by_name", "_local")

    def __init__(self, interfaces: list[Interface] | tuple[Interface, ...] = ()) -> None:
        ordered = sorted(interfaces, key=lambda i: i.ifindex)
        self._by_name = {i.name: i for i in ordered}
        self._by_index = {i.ifindex: i for i in ordered}
        self._by_mac: dict[bytes, Interface] = {}
        for i in ordered:
            if i.has_mac:
                self._by_mac.setdefault(bytes(i.mac), i)
        self._local = frozenset(filter(None, (canonical_address(a) for i in ordered
                                              for a in i.addresses)))

    def is_local(self, addr: str) -> bool:
        """True when ``addr`` (text, as the packet decoder writes it) is this host's: an
        address of one of its interfaces, anything in 127.0.0.0/8, ``::1``, or the IPv4-mapped
        IPv6 form (``::ffff:a.b.c.d``) of one of those."""
        if addr in self._local:
            return True
        if addr.startswith("::ffff:") and "." in addr:
            addr = addr[7:]
            if addr in self._local:
                return True
        return addr.startswith("127.") or addr == "::1"

    def by_name(self, name: str) -> Interface | None:
        """The interface called ``name``, or None."""
        return self._by_name.get(name)

    def by_index(self, ifindex: int) -> Interface | None:
        """The interface with this ifIndex, or None."""
        return self._by_index.get(ifindex)

    def by_mac(self, mac: bytes) -> Interface | None:
        """The (lowest-ifIndex) interface with this 6-byte MAC, or None."""
        return self._by_mac.get(bytes(mac))

    def by_alias(self, alias: str) -> Interface | None:
        """The first interface whose ifalias is ``alias`` (hsflowd's ``agent=`` fallback)."""
        for i in self._by_index.values():
            if alias and i.alias == alias:
                return i
        return None

    def names(self) -> list[str]:
        """Interface names in ifIndex order."""
        return [i.name for i in self._by_index.values()]

    def __iter__(self) -> Iterator[Interface]:
        return iter(list(self._by_index.values()))

    def __len__(self) -> int:
        return len(self._by_index)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"InterfaceTable({', '.join(self.names())})"

    def diff(self, other: InterfaceTable) -> InterfaceDiff:
        """Compare with a newer table: names ``other`` added, removed, and changed."""
        mine, theirs = self._by_name, other._by_name
        return InterfaceDiff(
            added=tuple(sorted(set(theirs) - set(mine))),
            removed=tuple(sorted(set(mine) - set(theirs))),
            changed=tuple(sorted(n for n in set(mine) & set(theirs) if mine[n] != theirs[n])),
        )


def canonical_address(addr: str) -> str | None:
    """An address in the text form inet_ntop gives (the packet decoder's), without a prefix
    length or scope; None if it is not an IPv4 or IPv6 address."""
    addr = addr.split("%", 1)[0].split("/", 1)[0]
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(fam, socket.inet_pton(fam, addr))
        except OSError:
            continue
    return None


# ---------------------------------------------------------------- driver name (ethtool ioctl)

_SIOCETHTOOL = 0x8946
_ETHTOOL_GDRVINFO = 0x00000003
_DRVINFO_SIZE = 196  # struct ethtool_drvinfo


def ethtool_driver(name: str, sock: socket.socket | None = None) -> str:
    """The driver name ``ETHTOOL_GDRVINFO`` reports for an interface ('' when unsupported).

    Run in the caller's network namespace (the socket's namespace).
    """
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        buf = ctypes.create_string_buffer(struct.pack("I", _ETHTOOL_GDRVINFO), _DRVINFO_SIZE)
        ifreq = struct.pack("16sP", name.encode()[:15], ctypes.addressof(buf)) + b"\0" * 16
        fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifreq)
        return buf.raw[4:36].split(b"\0", 1)[0].decode("ascii", "replace")
    except OSError:
        return ""
    finally:
        if own:
            s.close()


# ---------------------------------------------------------------- addresses (getifaddrs)


class _Sockaddr(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_ubyte * 26)]


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_Ifaddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_Sockaddr)),
    ("ifa_netmask", ctypes.POINTER(_Sockaddr)),
    ("ifa_ifu", ctypes.POINTER(_Sockaddr)),
    ("ifa_data", ctypes.c_void_p),
]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.getifaddrs.argtypes = [ctypes.POINTER(ctypes.POINTER(_Ifaddrs))]
_libc.freeifaddrs.argtypes = [ctypes.POINTER(_Ifaddrs)]


def local_addresses() -> dict[str, list[str]]:
    """``{interface name: [address, ...]}`` from glibc ``getifaddrs()`` (IPv4 and IPv6, primary
    and secondary addresses, in kernel order).  IPv4 label names (``eth0:1``) are folded into
    their interface.  Raises ``OSError`` if getifaddrs fails."""
    head = ctypes.POINTER(_Ifaddrs)()
    if _libc.getifaddrs(ctypes.byref(head)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    out: dict[str, list[str]] = {}
    try:
        node = head
        while node:
            ifa = node.contents
            if ifa.ifa_addr and ifa.ifa_name:
                fam = ifa.ifa_addr.contents.sa_family
                raw = bytes(ifa.ifa_addr.contents.sa_data)  # starts after sa_family
                addr = None
                if fam == socket.AF_INET:
                    addr = socket.inet_ntop(socket.AF_INET, raw[2:6])
                elif fam == socket.AF_INET6:
                    addr = socket.inet_ntop(socket.AF_INET6, raw[6:22])
                if addr is not None:
                    name = ifa.ifa_name.decode("utf-8", "replace").split(":", 1)[0]
                    lst = out.setdefault(name, [])
                    if addr not in lst:
                        lst.append(addr)
            node = ifa.ifa_next
    finally:
        _libc.freeifaddrs(head)
    return out


def inet6_flags(text: str | None = None) -> dict[tuple[str, str], int]:
    """``{(interface, address): flags}`` from /proc/net/if_inet6 (flags are ``IFA_F_*``)."""
    if text is None:
        try:
            text = procfs.read_text("/proc/net/if_inet6")
        except OSError:
            return {}
    out: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        w = line.split()
        if len(w) >= 6 and len(w[0]) == 32:
            addr = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(w[0]))
            out[(w[5], addr)] = int(w[4], 16)
    return out


# ---------------------------------------------------------------- scanning /sys/class/net


def _uevent(path: str) -> dict[str, str]:
    try:
        text = procfs.read_text(os.path.join(path, "uevent"))
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _kind(path: str, flags: int, driver: str, uevent: dict[str, str]) -> str:
    if flags & IFF_LOOPBACK:
        return "loopback"
    if os.path.isdir(os.path.join(path, "bridge")) or driver == "bridge":
        return "bridge"
    if os.path.isdir(os.path.join(path, "bonding")) or driver == "bonding":
        return "bond"
    if uevent.get("DEVTYPE") == "vlan" or driver == "802.1Q VLAN Support":
        return "vlan"
    if driver == "veth":
        return "veth"
    if os.path.exists(os.path.join(path, "device")):
        return "physical"
    return "other"


def _mac(text: str) -> bytes:
    try:
        mac = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        return ZERO_MAC
    return mac if len(mac) == 6 else ZERO_MAC


def read_interface(
    name: str,
    addresses: list[str] | None = None,
    v6flags: dict[tuple[str, str], int] | None = None,
    sock: socket.socket | None = None,
    sys_class_net: str = "/sys/class/net",
) -> Interface | None:
    """Read one interface from sysfs; None if it vanished meanwhile."""
    path = os.path.join(sys_class_net, name)
    try:
        ifindex = procfs.read_int(os.path.join(path, "ifindex"))
        flags = procfs.read_int(os.path.join(path, "flags"))
    except (OSError, ValueError):
        return None
    try:
        mac = _mac(procfs.read_first_line(os.path.join(path, "address")))
    except OSError:
        mac = ZERO_MAC
    mbps = procfs.read_int(os.path.join(path, "speed"), -1)
    speed = mbps * 1_000_000 if mbps > 0 else 0
    try:
        duplex_s = procfs.read_first_line(os.path.join(path, "duplex"))
    except OSError:
        duplex_s = ""
    duplex = {"full": 1, "half": 2}.get(duplex_s, 0)
    try:
        operstate = procfs.read_first_line(os.path.join(path, "operstate"))
    except OSError:
        operstate = "unknown"
    up = bool(flags & IFF_UP)
    if operstate == "up":
        oper_up = True
    elif operstate == "unknown":  # lo, tun and some virtual devices do not report one
        oper_up = up and procfs.read_int(os.path.join(path, "carrier"), 0) == 1
    else:
        oper_up = False
    try:
        alias = procfs.read_first_line(os.path.join(path, "ifalias"))
    except OSError:
        alias = ""
    driver = ethtool_driver(name, sock)
    addrs = list(addresses or [])
    flags6 = v6flags or {}
    dynamic = frozenset(
        a
        for a in addrs
        if ":" in a and not flags6.get((name, a), IFA_F_PERMANENT) & IFA_F_PERMANENT
    )
    return Interface(
        name=name,
        ifindex=ifindex,
        mac=mac,
        speed=speed,
        duplex=duplex,
        up=up,
        oper_up=oper_up,
        loopback=bool(flags & IFF_LOOPBACK),
        promisc=bool(flags & IFF_PROMISC),
        kind=_kind(path, flags, driver, _uevent(path)),
        addresses=addrs,
        dynamic_addresses=dynamic,
        driver=driver,
        alias=alias,
        mtu=procfs.read_int(os.path.join(path, "mtu"), 0),
        iflink=procfs.read_int(os.path.join(path, "iflink"), 0),
    )


def scan_interfaces(sys_class_net: str = "/sys/class/net") -> InterfaceTable:
    """Read every interface of the current network namespace into a new table.

    Interfaces that disappear during the scan are left out; addresses come from
    ``getifaddrs()`` (empty if it fails).
    """
    try:
        names = sorted(os.listdir(sys_class_net))
    except OSError:
        names = []
    try:
        addrs = local_addresses()
    except OSError:
        addrs = {}
    v6flags = inet6_flags()
    found: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            iface = read_interface(name, addrs.get(name), v6flags, sock, sys_class_net)
            if iface is not None:
                found.append(iface)
    return InterfaceTable(found)


def interfaces_fingerprint(sys_class_net: str = "/sys/class/net") -> tuple[tuple[str, str, str], ...]:
    """A cheap summary of the interfaces (name, ifindex, flags): two small reads each, so the
    agent can check every couple of seconds and rescan fully only when it changed (hsflowd's
    10-second flags check, made cheaper)."""
    out = []
    try:
        names = sorted(os.listdir(sys_class_net))
    except OSError:
        return ()
    for name in names:
        base = f"{sys_class_net}/{name}/"
        try:
            ifindex = _read_small(base + "ifindex")
            flags = _read_small(base + "flags")
        except OSError:
            continue  # vanished while we looked: the next check sees it gone
        out.append((name, ifindex, flags))
    return tuple(out)


def _read_small(path: str) -> str:
    """A short /sys attribute, stripped (raw os.read: a fraction of open()'s cost)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
