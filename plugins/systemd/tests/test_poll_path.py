"""The counter poll path of the systemd module: the small-file readers, the data source ->
service dict, and the host MemTotal read once per agent second."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from hostsflow.samples import DS_LOGICAL, DataSource
from hostsflow_systemd.cgroups import CgroupMounts, keyed_value, mem_total, parse_keyed, read_bytes
from hostsflow_systemd.services import ServiceTable

HOST = bytes.fromhex("0123456789abcdef0123456789abcdef")


def test_keyed_value_picks_whole_keys_at_line_starts():
    data = b"cache 10\nrss 22\ntotal_rss 99\nmapped_file 3\n"
    assert keyed_value(data, b"rss") == 22
    assert keyed_value(data, b"cache") == 10  # first line
    assert keyed_value(b"xrss 5\n", b"rss") is None
    assert keyed_value(b"rss max\n", b"rss") is None
    assert keyed_value(b"rss", b"rss") is None
    assert parse_keyed(b"a 1\nb x\nc 3") == {"a": 1, "c": 3}
    meminfo = read_bytes("/proc/meminfo")
    assert meminfo is not None
    want = next(int(line.split()[1]) for line in meminfo.decode().splitlines()
                if line.startswith("MemTotal:"))
    assert keyed_value(meminfo, b"MemTotal:", b"") == want and mem_total() == want * 1024
    assert read_bytes("/proc/self/nonexistent") is None and read_bytes(None) is None


def test_table_finds_services_by_source_and_reads_memtotal_once_per_second():
    m = CgroupMounts.read()
    if m.v2 is None or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup2 mount")
    slice_ = f"sflowpoll{os.getpid()}.slice"
    dirs = [m.v2 / slice_, m.v2 / slice_ / "a.service", m.v2 / slice_ / "b.service"]
    for d in dirs:
        d.mkdir()
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    clock = [5.2]
    try:
        for d, p in zip(dirs[1:], procs):
            (d / "cgroup.procs").write_text(str(p.pid))
        table = ServiceTable(m, [slice_], lambda: HOST, lambda: None, now=lambda: clock[0])
        units = {n: f"/{slice_}/{n}" for n in ("a.service", "b.service")}
        assert sorted(table.sync(units)[0]) == ["a.service", "b.service"]
        a, b = table.by_name["a.service"], table.by_name["b.service"]
        assert table.by_source(DataSource(DS_LOGICAL, a.source.ds_index)) is a
        assert table.by_source(b.source) is b
        assert table.by_source(DataSource(DS_LOGICAL, 0)) is None
        recs = table.poll(a)
        assert recs is not None and recs[3].maxMemory == mem_total() and table._mem_total_at == 5
        clock[0] = 5.9
        table.poll(b)
        assert table._mem_total_at == 5  # same agent second: not read again
        clock[0] = 6.0
        table.poll(b)
        assert table._mem_total_at == 6
        assert table.sources_used["cpu"] == "cgroup2 cpu.stat"
        # the process leaves: the service is dropped and no longer found by its source
        procs[0].kill()
        procs[0].wait()
        for _ in range(50):
            if not (dirs[1] / "cgroup.procs").read_text().split():
                break
            time.sleep(0.02)
        assert table.poll(a) is None
        assert table.by_source(a.source) is None and table.by_source(b.source) is b
    finally:
        for p in procs:
            p.kill()
            p.wait()
        time.sleep(0.05)
        for d in reversed(dirs):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
