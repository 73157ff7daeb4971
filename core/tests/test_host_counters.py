"""Host counter records against what /proc and /sys say at (nearly) the same moment.

Moving counters are bracketed: the test reads the source before and after the call and checks
``before <= value <= after``.  Sources are read here with independent code (different files
where the kernel offers them: /sys/block/*/stat for disks, /proc/self/mountinfo for mounts,
/sys/class/net/*/statistics for interfaces).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid as uuidlib

import pytest
from hostsflow.host import counters
from hostsflow.host.counters import CounterReadError
from hostsflow.host.interfaces import scan_interfaces
from hostsflow.sflow.records import (
    MIB2_ICMP_FIELDS,
    MIB2_IP_FIELDS,
    MIB2_TCP_FIELDS,
    MIB2_UDP_FIELDS,
    REGISTRY,
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
)

HZ = os.sysconf("SC_CLK_TCK")
M32 = 0xFFFFFFFF
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


# ---------------------------------------------------------------- cpu


def _stat_snapshot() -> dict:
    out: dict = {}
    for line in _read("/proc/stat").splitlines():
        w = line.split()
        if w and w[0] == "cpu":
            out["cpu"] = [int(x) for x in w[1:11]]
        elif w and w[0] in ("intr", "ctxt"):
            out[w[0]] = int(w[1])
        elif w and w[0].startswith("cpu"):
            out["ncpu"] = out.get("ncpu", 0) + 1
    out["uptime"] = float(_read("/proc/uptime").split()[0])
    out["loadavg"] = _read("/proc/loadavg").split()
    return out


def test_host_cpu_matches_proc():
    before = _stat_snapshot()
    rec = counters.host_cpu()
    after = _stat_snapshot()
    assert isinstance(rec, HostCpu)
    names = ["cpu_user", "cpu_nice", "cpu_system", "cpu_idle", "cpu_wio", "cpu_intr",
             "cpu_sintr", "cpu_steal", "cpu_guest", "cpu_guest_nice"]  # fmt: skip
    for i, name in enumerate(names):
        lo, hi = before["cpu"][i] * 1000 // HZ, after["cpu"][i] * 1000 // HZ
        assert lo & M32 <= getattr(rec, name) <= hi & M32, name
    assert before["intr"] & M32 <= rec.interrupts <= after["intr"] & M32
    assert before["ctxt"] & M32 <= rec.contexts <= after["ctxt"] & M32
    assert int(before["uptime"]) <= rec.uptime <= int(after["uptime"])
    assert rec.cpu_num == max(before["ncpu"], os.cpu_count() or 0)
    loads = {tuple(float(x) for x in s["loadavg"][:3]) for s in (before, after)}
    got = (rec.load_one, rec.load_five, rec.load_fifteen)
    assert any(all(abs(a - b) < 1e-6 for a, b in zip(got, ld)) for ld in loads)
    totals = [int(s["loadavg"][3].split("/")[1]) for s in (before, after)]
    assert min(totals) - 20 <= rec.proc_total <= max(totals) + 20
    assert 0 <= rec.proc_run <= rec.proc_total
    mhz = [line for line in _read("/proc/cpuinfo").splitlines() if line.startswith("cpu MHz")]
    if mhz:
        first = float(mhz[0].split(":")[1])
        assert abs(rec.cpu_speed - first) <= max(50, first * 0.5)  # frequency scaling moves it
        assert rec.cpu_speed > 0
    assert len(rec.encode_body()) == 80


# ---------------------------------------------------------------- memory


def test_host_memory_matches_proc():
    def snap():
        mem = {
            l.split(":")[0]: int(l.split()[1]) * 1024 for l in _read("/proc/meminfo").splitlines()
        }
        vm = {l.split()[0]: int(l.split()[1]) for l in _read("/proc/vmstat").splitlines()}
        return mem, vm

    (m0, v0) = snap()
    rec = counters.host_memory()
    (m1, v1) = snap()
    assert isinstance(rec, HostMemory)
    assert rec.mem_total == m0["MemTotal"] == m1["MemTotal"]
    assert rec.swap_total == m0["SwapTotal"]
    slack = 64 << 20
    for field, key in [("mem_free", "MemFree"), ("mem_buffers", "Buffers"), ("mem_shared", "Shmem"),
                       ("swap_free", "SwapFree")]:  # fmt: skip
        assert min(m0[key], m1[key]) - slack <= getattr(rec, field) <= max(m0[key], m1[key]) + slack
    cached = [m["Cached"] + m["SReclaimable"] for m in (m0, m1)]
    assert min(cached) - slack <= rec.mem_cached <= max(cached) + slack
    for field, key in [("page_in", "pgpgin"), ("page_out", "pgpgout"), ("swap_in", "pswpin"),
                       ("swap_out", "pswpout")]:  # fmt: skip
        assert v0[key] & M32 <= getattr(rec, field) <= v1[key] & M32, field
    assert len(rec.encode_body()) == 72


# ---------------------------------------------------------------- disk


def _whole_disk_stats() -> dict[str, list[int]]:
    """Per whole disk, the /sys/block/<dev>/stat counters (an independent source from
    /proc/diskstats): every /sys/block entry that is not built on other block devices."""
    out = {}
    for dev in os.listdir("/sys/block"):
        slaves = f"/sys/block/{dev}/slaves"
        if os.path.isdir(slaves) and os.listdir(slaves):
            continue
        out[dev] = [int(x) for x in _read(f"/sys/block/{dev}/stat").split()]
    return out


def _sum_stat(stats: dict[str, list[int]]) -> dict[str, int]:
    # /sys/block/X/stat: reads, reads merged, sectors read, ms reading, writes, merged, sectors
    # written, ms writing, ...
    keys = {"reads": 0, "sectors_r": 2, "time_r": 3, "writes": 4, "sectors_w": 6, "time_w": 7}
    return {k: sum(v[i] for v in stats.values()) for k, i in keys.items()}


def _mountinfo_space() -> tuple[int, int, int]:
    """Disk space over local read-write block-device mounts, one per device, from
    /proc/self/mountinfo (not /proc/mounts)."""
    seen, total, free, max_used = set(), 0, 0, -1
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        lw, rw = left.split(), right.split()
        mount, opts = lw[4].replace("\\040", " "), lw[5].split(",")
        fstype, source = rw[0], rw[1]
        if not source.startswith("/dev/") or "rw" not in opts or fstype.startswith("nfs"):
            continue
        if source in seen:
            continue
        seen.add(source)
        st = os.statvfs(mount)
        if st.f_blocks:
            t, f = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
            total, free = total + t, free + f
            max_used = max(max_used, (t - f) * 10000 // t)
    return total, free, max_used


def test_host_disk_io_sums_whole_disks_only():
    s0 = _sum_stat(_whole_disk_stats())
    rec = counters.host_disk_io()
    s1 = _sum_stat(_whole_disk_stats())
    assert isinstance(rec, HostDiskIo)
    assert s0["reads"] & M32 <= rec.reads <= s1["reads"] & M32
    assert s0["writes"] & M32 <= rec.writes <= s1["writes"] & M32
    assert s0["sectors_r"] * 512 <= rec.bytes_read <= s1["sectors_r"] * 512
    assert s0["sectors_w"] * 512 <= rec.bytes_written <= s1["sectors_w"] * 512
    assert s0["time_r"] & M32 <= rec.read_time <= s1["time_r"] & M32
    assert s0["time_w"] & M32 <= rec.write_time <= s1["time_w"] & M32
    total, free, max_used = _mountinfo_space()
    assert rec.disk_total == total
    assert abs(rec.disk_free - free) <= 256 << 20
    assert abs(rec.part_max_used - max_used) <= 100
    assert len(rec.encode_body()) == 52


def test_whole_disks_never_lists_partitions():
    stats = {}
    for line in _read("/proc/diskstats").splitlines():
        w = line.split()
        stats[w[2]] = [int(w[0]), int(w[1])] + [int(x) for x in w[3:]]
    chosen = counters.whole_disks(stats)
    for dev in stats:
        is_part = os.path.exists(f"/sys/class/block/{dev.replace('/', '!')}/partition")
        if is_part:
            assert dev not in chosen
    assert set(chosen) == set(_whole_disk_stats()) & set(stats)


def _mbr_image(path: str) -> None:
    with open(path, "wb") as f:
        f.truncate(8 << 20)
        mbr = bytearray(512)
        mbr[440:444] = b"\x12\x34\x56\x78"
        mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\x02\0", 0x83, b"\xfe\xff\xff", 2048, 8192)
        mbr[510:512] = b"\x55\xaa"
        f.write(mbr)


@needs_root
def test_partition_io_counted_once(tmp_path):
    """A loop device with a real partition: writing to the partition must raise host_disk_io
    by what the whole loop device shows, not twice that."""
    if not shutil.which("losetup"):
        pytest.skip("losetup (util-linux) is not installed")
    img = str(tmp_path / "disk.img")
    _mbr_image(img)
    dev = subprocess.run(["losetup", "-fP", "--show", img], capture_output=True, text=True,
                         check=False)  # fmt: skip
    if dev.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {dev.stderr.strip()}")
    loop = dev.stdout.strip()
    name = os.path.basename(loop)
    try:
        deadline = time.monotonic() + 2
        while not os.path.exists(f"/sys/block/{name}/{name}p1") and time.monotonic() < deadline:
            time.sleep(0.05)
        if not os.path.exists(f"/sys/block/{name}/{name}p1"):
            pytest.skip("this kernel has no MBR partition-table support (no loop partitions)")
        fd = os.open(f"/dev/{name}p1", os.O_WRONLY | os.O_DIRECT | os.O_SYNC)
        try:
            import mmap

            buf = mmap.mmap(-1, 4096)
            buf.write(b"x" * 4096)
            for i in range(200):
                os.pwrite(fd, buf, i * 4096)
        finally:
            os.close(fd)
        part_writes = int(_read(f"/sys/block/{name}/{name}p1/stat").split()[4])
        assert part_writes >= 200
        s0 = _sum_stat(_whole_disk_stats())
        rec = counters.host_disk_io()
        s1 = _sum_stat(_whole_disk_stats())
        assert s0["writes"] <= rec.writes <= s1["writes"]
        # counting the partition line as well would add part_writes on top
        assert rec.writes < s0["writes"] + part_writes
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


# ---------------------------------------------------------------- net io


def _net_io_truth() -> dict[str, int]:
    """Sum of /sys/class/net/X/statistics over up, non-loopback, non-VLAN, non-bond
    interfaces."""
    keys = ["rx_bytes", "rx_packets", "rx_errors", "rx_dropped", "tx_bytes", "tx_packets",
            "tx_errors", "tx_dropped"]  # fmt: skip
    tot = dict.fromkeys(keys, 0)
    for name in os.listdir("/sys/class/net"):
        base = f"/sys/class/net/{name}"
        flags = int(_read(f"{base}/flags"), 16)
        uevent = _read(f"{base}/uevent")
        if (
            not flags & 1
            or flags & 8
            or "DEVTYPE=vlan" in uevent
            or os.path.isdir(f"{base}/bonding")
        ):
            continue
        for k in keys:
            tot[k] += int(_read(f"{base}/statistics/{k}"))
    return tot


def test_host_net_io_matches_sysfs():
    t0 = _net_io_truth()
    rec = counters.host_net_io(scan_interfaces())
    t1 = _net_io_truth()
    assert isinstance(rec, HostNetIo)
    pairs = [("bytes_in", "rx_bytes", 0), ("pkts_in", "rx_packets", M32), ("errs_in", "rx_errors", M32),
             ("drops_in", "rx_dropped", M32), ("bytes_out", "tx_bytes", 0),
             ("pkts_out", "tx_packets", M32), ("errs_out", "tx_errors", M32),
             ("drops_out", "tx_dropped", M32)]  # fmt: skip
    for field, key, mask in pairs:
        lo, hi = (t0[key] & mask, t1[key] & mask) if mask else (t0[key], t1[key])
        assert lo <= getattr(rec, field) <= hi, field


# ---------------------------------------------------------------- MIB-II


def _snmp_by_name() -> dict[str, dict[str, int]]:
    lines = _read("/proc/net/snmp").splitlines()
    out = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        g = head.split(":")[0]
        out[g] = dict(zip(head.split()[1:], (int(v) for v in vals.split()[1:])))
    return out


ALIASES = {"InParamProbs": "InParmProbs", "OutParamProbs": "OutParmProbs"}


@pytest.mark.parametrize(
    "cls,group,fields",
    [
        (Mib2Ip, "Ip", MIB2_IP_FIELDS),
        (Mib2Icmp, "Icmp", MIB2_ICMP_FIELDS),
        (Mib2Tcp, "Tcp", MIB2_TCP_FIELDS),
        (Mib2Udp, "Udp", MIB2_UDP_FIELDS),
    ],
)
def test_mib2_by_column_name(cls, group, fields):
    s0 = _snmp_by_name()
    recs = {type(r): r for r in counters.mib2_records()}
    s1 = _snmp_by_name()
    rec = recs[cls]
    for f in fields:
        col = ALIASES.get(f, f)
        v0, v1 = s0[group].get(col, 0) & M32, s1[group].get(col, 0) & M32
        assert min(v0, v1) <= getattr(rec, f) <= max(v0, v1), f"{group}.{f}"


def test_icmp_not_shifted_by_incsumerrors():
    """Make ICMP port-unreachables on loopback: InDestUnreachs must be the column of that
    name (positional parsing would read InCsumErrors, which stays 0)."""
    before = counters.mib2_records()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(5):
            s.sendto(b"x", ("127.0.0.1", port))
            time.sleep(0.002)
    after = counters.mib2_records()[1]
    assert after.InDestUnreachs >= before.InDestUnreachs + 5
    assert after.OutDestUnreachs >= before.OutDestUnreachs + 5
    assert after.InMsgs >= before.InMsgs + 5


def test_parse_snmp_by_name_missing_and_extra():
    text = (
        "Udp: NoPorts InDatagrams Unheard InErrors\n"
        "Udp: 7 42 9 1\n"
        "Tcp: RtoAlgorithm MaxConn\n"
        "Tcp: 1 -1\n"
    )
    from hostsflow.host import procfs

    recs = counters.mib2_records(procfs.parse_snmp(text))
    udp, tcp, ip = recs[3], recs[2], recs[0]
    assert (udp.InDatagrams, udp.NoPorts, udp.InErrors, udp.OutDatagrams) == (42, 7, 1, 0)
    assert tcp.RtoAlgorithm == 1 and tcp.MaxConn == M32 and tcp.InSegs == 0
    assert all(getattr(ip, f) == 0 for f in MIB2_IP_FIELDS)
    with pytest.raises(ValueError):
        procfs.parse_snmp("Ip: A B\nIp: 1\n")


# ---------------------------------------------------------------- descr, adapters, set


def test_host_descr():
    rec = counters.host_descr()
    u = os.uname()
    assert isinstance(rec, HostDescr)
    assert rec.hostname == u.nodename[:64]
    assert rec.os_release == u.release[:32]
    assert rec.os_name == 2
    assert len(rec.uuid) == 16
    if u.machine == "x86_64":
        assert rec.machine_type == 3
    elif u.machine == "aarch64":
        assert rec.machine_type == 10
    HostDescr.decode_body(rec.encode_body())


def test_host_adapters_from_ip_link():
    links = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout)  # fmt: skip
    expected = []
    for link in sorted(links, key=lambda l: l["ifindex"]):
        mac = link.get("address", "")
        kind = link.get("linkinfo", {}).get("info_kind", "")
        if "UP" in link["flags"] and "LOOPBACK" not in link["flags"] and kind != "veth" and \
                mac and mac != "00:00:00:00:00:00" and len(mac) == 17:  # fmt: skip
            expected.append((link["ifindex"], bytes.fromhex(mac.replace(":", ""))))
    rec = counters.host_adapters()
    assert isinstance(rec, HostAdapters)
    assert [(a.ifIndex, a.macs[0]) for a in rec.adapters] == expected[:32]
    assert all(len(a.macs) == 1 for a in rec.adapters)


def test_host_records_order_and_encoding():
    recs = counters.host_records()
    assert [r.format for r in recs] == [2000, 2006, 2003, 2004, 2005, 2007, 2008, 2009, 2010, 2001]
    for r in recs:
        data = r.encode()
        tag, length = struct.unpack(">II", data[:8])
        assert tag == r.format and length == len(data) - 8
        back = REGISTRY[("counter", 0, r.format)].decode_body(data[8:])
        assert back.encode_body() == data[8:]  # f32 loads do not compare equal as floats
        if not isinstance(r, HostCpu):
            assert back == r


# ---------------------------------------------------------------- vanished sources


def test_vanished_interface_is_skipped_and_reported():
    table = scan_interfaces()
    ghost = next(iter(table))
    import attrs as _attrs

    gone = _attrs.evolve(ghost, name="hf-gone-" + uuidlib.uuid4().hex[:6], ifindex=999999)
    from hostsflow.host.interfaces import InterfaceTable

    errors: list[CounterReadError] = []
    out = counters.all_interface_records(InterfaceTable([*table, gone]), on_error=errors.append)
    assert 999999 not in out and set(out) == {i.ifindex for i in table}
    assert len(errors) == 1 and errors[0].record == "if_counters"
    with pytest.raises(CounterReadError):
        counters.interface_counters(gone)


@needs_root
def test_unreadable_proc_file_skips_that_record(tmp_path):
    """In a private mount namespace, cover /proc/loadavg with garbage: host_cpu is left out
    and reported, every other record is still there."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed")
    bad = tmp_path / "loadavg"
    bad.write_text("garbage\n")
    code = (
        "import json; from hostsflow.host.counters import host_records\n"
        "errs=[]; recs=host_records(on_error=errs.append)\n"
        "print(json.dumps({'formats':[r.format for r in recs],'errors':[e.record for e in errs]}))"
    )
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount --bind "{bad}" /proc/loadavg && exec "{sys.executable}" -c "$0"', code],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["errors"] == ["host_cpu"]
    assert out["formats"] == [2000, 2006, 2004, 2005, 2007, 2008, 2009, 2010, 2001]


# ---------------------------------------------------------------- performance guard


def test_full_host_poll_is_fast():
    """One full poll (interface scan, host records, counters of every interface)."""

    def poll():
        table = scan_interfaces()
        counters.host_records(table)
        counters.all_interface_records(table)

    poll()
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        poll()
    per_poll = (time.perf_counter() - t0) / n
    assert per_poll < 0.05, f"{per_poll * 1000:.1f} ms per poll"
