"""Unit tests of the pieces that do not need systemd: identity, cgroup mounts, accounting
fallbacks, D-Bus reply parsing, and the module when there is no systemd to talk to."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

import pytest
import structlog
from hostsflow.testing import AgentHarness
from hostsflow_systemd.cgroups import CgroupMounts, DeltaAccumulator, ServiceAccounting
from hostsflow_systemd.dbus import MalformedReply, parse_units, wanted
from hostsflow_systemd.identity import DsIndexAllocator, hash_uuid, unit_uuid
from hostsflow_systemd.module import SystemdModule
from hostsflow_systemd.services import under_slice

HOST = bytes.fromhex("0123456789abcdef0123456789abcdef")


def test_unit_uuid_is_rfc4122_v5():
    # with no agent address, the name is the unit name alone: Python's uuid5 must agree
    assert unit_uuid(HOST, "sshd.service", None) == uuidlib.uuid5(
        uuidlib.UUID(bytes=HOST), "sshd.service").bytes
    u = uuidlib.UUID(bytes=unit_uuid(HOST, "sshd.service", "10.0.0.1"))
    assert u.version == 5 and u.variant == uuidlib.RFC_4122
    assert unit_uuid(HOST, "sshd.service", "10.0.0.1") != unit_uuid(HOST, "sshd.service", "10.0.0.2")
    assert unit_uuid(HOST, "a.service", "::1") != unit_uuid(HOST, "a.service", None)


def fnv1a_reference(data: bytes, signed: bool) -> int:
    h = 2166136261
    for b in data:
        v = b - 256 if (signed and b >= 128) else b
        h = ((h ^ (v & 0xFFFFFFFF)) * 16777619) & 0xFFFFFFFF
    return h


def test_fnv_hash_signed_char_quirk():
    ascii16 = b"abcdefghijklmnop"
    assert hash_uuid(ascii16) == fnv1a_reference(ascii16, signed=False)
    assert hash_uuid(b"a" + bytes(15)) == fnv1a_reference(b"a" + bytes(15), False)
    high = bytes(range(0x80, 0x90))
    assert hash_uuid(high) == fnv1a_reference(high, signed=True)
    assert hash_uuid(high) != fnv1a_reference(high, signed=False)


def test_dsindex_linear_probing_and_full_table():
    a = DsIndexAllocator(100, 102)
    same = bytes(16)
    pref = 100 + hash_uuid(same) % 3
    got = [a.assign(n, same) for n in ("x", "y", "z")]
    assert got[0] == pref and sorted(got) == [100, 101, 102]
    assert got[1] == (pref - 100 + 1) % 3 + 100  # next slot, wrapping
    assert a.assign("w", same) == 0  # full
    assert a.assign("x", same) == got[0]  # stable
    a.release("y")
    assert a.assign("w", same) == got[1]


MOUNTINFO = {
    "unified": "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
    "hybrid": (
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "38 31 0:35 / /sys/fs/cgroup/blkio rw - cgroup cgroup rw,blkio\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"),
    "legacy": (
        "32 31 0:29 / /sys/fs/cgroup/cpu\\040acct rw shared:9 - cgroup cgroup rw,cpuacct\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"),
}


def test_mountinfo_modes():
    u = CgroupMounts.parse(MOUNTINFO["unified"])
    assert u.mode == "unified" and u.v2 == Path("/sys/fs/cgroup") and not u.v1
    h = CgroupMounts.parse(MOUNTINFO["hybrid"])
    assert h.mode == "hybrid" and h.v2 == Path("/sys/fs/cgroup/unified")
    assert h.v1["cpuacct"] == h.v1["cpu"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert h.v1["systemd"] == Path("/sys/fs/cgroup/systemd")
    assert h.v2_dir("/system.slice/x.service") == Path("/sys/fs/cgroup/unified/system.slice/x.service")
    legacy = CgroupMounts.parse(MOUNTINFO["legacy"])
    assert legacy.mode == "legacy" and legacy.v1["cpuacct"] == Path("/sys/fs/cgroup/cpu acct")
    assert CgroupMounts.parse("garbage\n\n1 2 3\n").mode == "none"
    # this machine (whatever it is) parses to something consistent with /proc/mounts
    here = CgroupMounts.read()
    mounts = Path("/proc/mounts").read_text()
    assert (here.v2 is not None) == (" cgroup2 " in mounts)


def test_slice_match():
    assert under_slice("/system.slice/sshd.service", ["system.slice"])
    assert under_slice("/system.slice/system-getty.slice/getty@tty1.service", ["system.slice"])
    assert under_slice("/sflowuser/app.slice/x.service", ["app.slice"])
    assert not under_slice("/user.slice/user-0.slice/x.service", ["system.slice"])
    assert not under_slice("/my-system.slice-x/x.service", ["system.slice"])


def test_delta_accumulator_survives_exits():
    acc = DeltaAccumulator(1)
    assert acc.update({1: (100,), 2: (50,)}) == [150]
    assert acc.update({1: (120,)}) == [170]  # pid 2 exited: no step back
    assert acc.update({1: (130,), 3: (5,)}) == [185]


def test_accounting_v2_then_proc_fallback():
    """A cgroup made by the test: cpu.stat comes from cgroup v2 (always present), memory from
    memory.current when the memory controller is there, else the processes' resident pages."""
    m = CgroupMounts.read()
    if m.v2 is None or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup2 mount")
    name = f"sflowunit-{os.getpid()}"
    d = m.v2 / name
    d.mkdir()
    p = subprocess.Popen(["python3", "-c", "x = bytearray(30 << 20)\nimport time\n"
                          "t = time.time()\nwhile time.time() - t < 0.4: pass\ntime.sleep(30)"])
    try:
        (d / "cgroup.procs").write_text(str(p.pid))
        time.sleep(0.6)
        acc = ServiceAccounting(m, "/" + name)
        u = acc.read([p.pid], 8 << 30)
        assert u.cpu_source == "cgroup2 cpu.stat" and u.cpu_ms >= 100
        if (d / "memory.current").exists():
            assert u.memory_source == "cgroup2 memory.current"
        else:
            assert u.memory_source == "/proc/PID/statm"
        assert u.memory >= 30 << 20
        assert m.pids("/" + name) == [p.pid]
        assert m.cgroup_id("/" + name) == os.stat(d).st_ino
    finally:
        p.kill()
        p.wait()
        time.sleep(0.05)
        d.rmdir()


def test_parse_units_rejects_malformed():
    good = ([("a.service", "d", "loaded", "active", "running", "", "/o/a", 0, "", "/")],)
    assert parse_units(good) == [("a.service", "loaded", "active", "/o/a")]
    for bad in ((), ([("a.service",)],), ([(1, "d", "loaded", "active", "r", "", "/o", 0, "", "/")],),
                (["not a struct"],)):
        with pytest.raises(MalformedReply):
            parse_units(bad)
    assert wanted("a.service", "loaded", "active")
    assert not wanted("a.socket", "loaded", "active")
    assert not wanted("a.service", "not-found", "active")
    assert not wanted("a.service", "loaded", "activating")


def _marker_world():
    """A Marker on a real agent's sockets, with this test process's own cgroup2 group (the
    root here) standing in for a service's."""
    from hostsflow_systemd.marking import Marker
    from hostsflow_systemd.services import ServiceTable

    if os.geteuid() != 0:
        pytest.skip("sock_diag of other users' sockets needs root")
    mounts = CgroupMounts.read()
    if mounts.v2 is None:
        pytest.skip("needs cgroup v2")
    mine = Path("/proc/self/cgroup").read_text().split("0::", 1)[1].split()[0]
    h = AgentHarness("sflow { collector { ip = 127.0.0.1 } }").start()
    table = ServiceTable(mounts, ["system.slice"], lambda: HOST, lambda: None)
    return h, table, Marker(table, h.agent.sockets, h.agent.now), mine


def test_marker_names_services_and_counts_why_not():
    from hostsflow_systemd.marking import MARK_TTL

    h, table, marker, mine = _marker_world()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    tup = ("127.0.0.1", c.getsockname()[1], "127.0.0.1", srv.getsockname()[1])
    try:
        assert marker.entities(h.make_sample(tcp=tup)) is None
        assert marker.outcomes["unmarked.not_service"] == 1
        svc = table._add("me.service", mine)  # now this process's group is a service
        rec = marker.entities(h.make_sample(tcp=tup))
        assert (rec.src_class, rec.src_index, rec.dst_class, rec.dst_index) == (
            3, svc.source.ds_index, 3, svc.source.ds_index)
        lookups = h.agent.sockets.stats["lookups"]
        assert marker.entities(h.make_sample(tcp=tup)) == rec
        assert marker.stats["marks_reused"] == 1 and h.agent.sockets.stats["lookups"] == lookups
        h.clock.advance(MARK_TTL * 2)
        assert marker.entities(h.make_sample(tcp=tup)) == rec and marker.stats["marks_reused"] == 1
        assert marker.entities(h.make_sample(tcp=("10.9.9.9", 1, "10.9.9.8", 2))) is None
        assert marker.outcomes["unmarked.not_local"] == 1
        assert marker.entities(h.make_sample(tcp=("127.0.0.1", 1, "127.0.0.1", 2))) is None
        assert marker.outcomes["unmarked.socket_gone"] == 1
        assert marker.outcomes["marked"] == 3
        marker.outcomes.push(h.agent.count)
        assert h.agent.health.snapshot()["systemd.marking.marked"] == 3
    finally:
        h.stop()
        for x in (a, c, srv):
            x.close()


def test_marker_never_reuses_a_udp_mark():
    """A UDP port changes hands between fresh sockets quickly: each sample is worked out."""
    h, table, marker, mine = _marker_world()
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.bind(("::1", 0))
    try:
        svc = table._add("me.service", mine)
        for _ in range(3):
            rec = marker.entities(h.make_sample(udp=("::1", 9, "::1", u.getsockname()[1])))
            assert (rec.dst_class, rec.dst_index, rec.src_index) == (3, svc.source.ds_index, 0)
        assert marker.stats["marks_reused"] == 0
    finally:
        h.stop()
        u.close()


def _run_without_systemd(bus: str, seconds: float):
    plugin = SystemdModule()
    conf = ("sflow {\n collector { ip = 127.0.0.1 }\n polling = 1\n"
            f" systemd {{\n  bus = {bus}\n  markTraffic = on\n }}\n}}\n")  # unquoted
    with structlog.testing.capture_logs() as logs:
        h = AgentHarness(conf, modules={"systemd": plugin}, host_poller=True)
        try:
            h.start()
            h.run_loop(seconds)
            h.tick(2)
            h.feed(h.make_sample(tcp=("127.0.0.1", 1, "127.0.0.1", 2)))
            h.flush()
            # marking runs on the core's socket lookups, with no tcp { } block configured
            assert plugin.marker is not None and "tcp" not in h.agent.host.states
            assert plugin.sflow_data_sources(h.agent) == []
            assert len(h.flow_samples()) == 1  # the packet path runs on
            assert h.counter_samples()  # the host's counters still go out
        finally:
            h.stop()
    return plugin, [e for e in logs if e.get("event") == "systemd_unreachable"]


def test_no_systemd_one_message_and_retries():
    plugin, msgs = _run_without_systemd("unix:path=/nonexistent/hostsflow-test-bus", 3.5)
    assert len(msgs) == 1, msgs
    assert "FileNotFoundError" in msgs[0]["detail"] or "No such file" in msgs[0]["detail"]
    # the message names where the bus was looked for
    assert "unix:path=/nonexistent/hostsflow-test-bus" in msgs[0]["detail"], msgs[0]
    assert plugin.watcher is not None and plugin.watcher.syncs == 0


def test_unreachable_system_bus_names_its_address(monkeypatch):
    """No ``bus =``: the system bus, whose address (DBUS_SYSTEM_BUS_ADDRESS here) is named."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/hostsflow-system-bus")
    plugin = SystemdModule()
    conf = "sflow {\n collector { ip = 127.0.0.1 }\n systemd { }\n}\n"
    with structlog.testing.capture_logs() as logs:
        h = AgentHarness(conf, modules={"systemd": plugin}, host_poller=True)
        try:
            h.start()
            h.run_loop(1.5)
        finally:
            h.stop()
    msgs = [e for e in logs if e.get("event") == "systemd_unreachable"]
    assert msgs and "unix:path=/nonexistent/hostsflow-system-bus" in msgs[0]["detail"], msgs


@pytest.fixture
def bare_bus():
    tmp = tempfile.mkdtemp(prefix="sflow-bus-")
    conf = Path(tmp, "bus.conf")
    conf.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        f"<busconfig><type>session</type><listen>unix:path={tmp}/bus.sock</listen>"
        '<auth>EXTERNAL</auth><policy context="default">'
        '<allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>'
        '<allow own="*"/></policy></busconfig>\n')
    out = subprocess.run(["dbus-daemon", f"--config-file={conf}", "--print-address=1",
                          "--print-pid=1", "--fork"], capture_output=True, text=True, check=True)
    pid = int(out.stdout.split()[1])
    try:
        yield f"unix:path={tmp}/bus.sock"
    finally:
        os.kill(pid, 15)
        time.sleep(0.05)
        for f in Path(tmp).iterdir():
            f.unlink()
        os.rmdir(tmp)


def test_bus_without_systemd_one_message(bare_bus):
    """A D-Bus bus is there but nobody owns org.freedesktop.systemd1."""
    plugin, msgs = _run_without_systemd(bare_bus, 3.5)
    assert len(msgs) == 1, msgs
    assert "ServiceUnknown" in msgs[0]["detail"] or "NameHasNoOwner" in msgs[0]["detail"]


@pytest.mark.parametrize("drop_priv, kept", [("off", {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}),
                                             ("on", set())])
def test_reading_proc_io_keeps_two_capabilities_not_root(drop_priv, kept):
    """/proc/PID/io of another user's process needs CAP_DAC_READ_SEARCH (the file is 0400)
    and CAP_SYS_PTRACE (its ptrace read check); the module asks for those, never for root."""
    conf = ("sflow {\n collector { ip = 127.0.0.1 }\n"
            f" systemd {{ bus = unix:path=/nonexistent/hsf dropPriv = {drop_priv} }}\n}}\n")
    h = AgentHarness(conf, modules={"systemd": SystemdModule()})
    try:
        h.start()
        assert h.agent.root_reasons == []
        assert set().union(*h.agent.kept_capabilities.values()) == kept
    finally:
        h.stop()
