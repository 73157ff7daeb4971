"""Small readers and parsers for /proc and /sys text files.

Every function here reads its file when called (nothing is cached) and raises ``OSError`` when
the file is missing or unreadable, and ``ValueError`` when its text does not have the expected
shape.  :mod:`hostsflow.host.counters` turns those into
:class:`~hostsflow.host.counters.CounterReadError`.  The parsers take text so they can also be
used on a snapshot a test read itself.
"""

from __future__ import annotations

import os

PROC = "/proc"
SYS = "/sys"


def read_text(path: str) -> str:
    """The whole text of a /proc or /sys file (read in one go, as the kernel generates it)."""
    with open(path, "rb", buffering=0) as f:
        chunks = []
        while True:
            data = f.read(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def read_first_line(path: str) -> str:
    """The first line of a small file, stripped (sysfs attributes are one line)."""
    with open(path, "rb", buffering=0) as f:
        return f.read(4096).decode("utf-8", "replace").split("\n", 1)[0].strip()


def read_int(path: str, default: int | None = None) -> int:
    """A sysfs attribute as an integer (decimal, or hex with 0x).

    ``default`` is returned when the file cannot be read or parsed (many attributes, e.g.
    ``speed`` of a down or virtual device, fail with EINVAL); without a default the error
    propagates.
    """
    try:
        return int(read_first_line(path), 0)
    except (OSError, ValueError):
        if default is None:
            raise
        return default


def parse_key_values(text: str) -> dict[str, int]:
    """``Key: value [kB]`` or ``key value`` lines (/proc/meminfo, /proc/vmstat) -> ints.

    Values are returned as printed (meminfo's kB are not converted); lines that do not parse
    are ignored.
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.replace(":", " ", 1).split()
        if len(parts) >= 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp (or netstat) -> ``{"Ip": {"Forwarding": 2, ...}, "Tcp": {...}}``.

    The file is pairs of lines: a header line naming the columns and a values line with the
    same prefix.  Columns are matched **by name**, never by position, so kernels that insert
    columns (``InCsumErrors`` in Icmp, ``OutRateLimit*``) are read correctly.  A pair whose
    lengths differ raises ``ValueError``.
    """
    groups: dict[str, dict[str, int]] = {}
    pending: dict[str, list[str]] = {}
    for line in text.splitlines():
        prefix, sep, rest = line.partition(":")
        if not sep:
            continue
        words = rest.split()
        if prefix in pending:
            names = pending.pop(prefix)
            if len(names) != len(words):
                raise ValueError(f"{prefix}: {len(names)} names but {len(words)} values")
            groups[prefix] = {n: int(v) for n, v in zip(names, words)}
        else:
            pending[prefix] = words
    return groups


def parse_net_dev(text: str) -> dict[str, list[int]]:
    """/proc/net/dev -> ``{name: [16 counters]}``.

    The 16 columns are rx bytes, packets, errs, drop, fifo, frame, compressed, multicast, then tx
    bytes, packets, errs, drop, fifo, colls, carrier, compressed (64-bit values on modern
    kernels).
    """
    out: dict[str, list[int]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        values = [int(v) for v in rest.split()]
        if len(values) < 16:
            raise ValueError(f"/proc/net/dev: short line for {name.strip()}")
        out[name.strip()] = values[:16]
    return out


def parse_diskstats(text: str) -> dict[str, list[int]]:
    """/proc/diskstats -> ``{device name: [major, minor, reads, reads merged, sectors read,
    ms reading, writes, writes merged, sectors written, ms writing, ...]}``."""
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 14:
            continue
        out[words[2]] = [int(words[0]), int(words[1])] + [int(w) for w in words[3:]]
    return out


def sys_block_name(dev: str) -> str:
    """The /sys/block name of a /proc/diskstats device ('/' in names becomes '!')."""
    return dev.replace("/", "!")


def is_whole_disk(dev: str, sys_root: str = SYS) -> bool:
    """True when ``dev`` is a whole block device that is not stacked on other block devices.

    Whole disks have an entry directly under /sys/block (partitions live one level down, under
    their disk); device-mapper and md devices list the devices they are built from in
    ``slaves/``, so skipping those avoids counting the same I/O twice (hsflowd skips majors 9
    and 253 for the same reason, but 253 is not always device-mapper).
    """
    base = os.path.join(sys_root, "block", sys_block_name(dev))
    if not os.path.isdir(base):
        return False
    try:
        return not os.listdir(os.path.join(base, "slaves"))
    except OSError:
        return True
