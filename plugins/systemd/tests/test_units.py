"""Unit tests of the pieces that do not need systemd: identity, cgroup mounts, accounting
fallbacks, D-Bus reply parsing, and the plugin when there is no systemd to talk to."""

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
from hostsflow_systemd.plugin import SystemdPlugin
from hostsflow_systemd.services import under_slice
from hostsflow_tcp.lookup import DiagChannel

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


def test_marker_lookup_finds_cgroup_id_and_inode():
    """The marker's lookups through the tcp distribution's DiagChannel (no tcp_info, answered
    inside send()): TCP v4 both ends, UDP v6 (ends swapped), no such socket, and the answers
    cached per 5-tuple."""
    if os.geteuid() != 0:
        pytest.skip("sock_diag of other users' sockets needs root")
    from hostsflow_systemd.marking import Marker, Owner
    from hostsflow_systemd.services import ServiceTable

    ch = DiagChannel()
    now = [100.0]
    table = ServiceTable(CgroupMounts.read(), ["system.slice"], lambda: HOST, lambda: None)
    marker = Marker(table, lambda: now[0], ch)
    marker.local.update([], 1)  # 127/8 and ::1 are local
    h = AgentHarness  # make_sample only
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.bind(("::1", 0))
    try:
        s = h.make_sample(tcp=("127.0.0.1", c.getsockname()[1], "127.0.0.1", srv.getsockname()[1]))
        src, dst = marker.owners(s)
        assert not s.held and marker.stats["lookups"] == 2
        assert src.inode == os.fstat(c.fileno()).st_ino and dst.inode == os.fstat(a.fileno()).st_ino
        m = CgroupMounts.read()
        if m.v2 is not None:
            mine = Path("/proc/self/cgroup").read_text().split("0::", 1)[1].split()[0]
            assert src.cgroup_id == dst.cgroup_id == m.cgroup_id(mine)
        again = marker.owners(h.make_sample(tcp=("127.0.0.1", c.getsockname()[1],
                                                 "127.0.0.1", srv.getsockname()[1])))
        assert again == (src, dst)
        assert marker.stats["lookups"] == 2 and marker.stats["cache_hits"] == 2
        s = h.make_sample(udp=("::1", 9, "::1", u.getsockname()[1]))
        assert marker.owners(s) == (None, Owner(os.fstat(u.fileno()).st_ino, src.cgroup_id))
        s = h.make_sample(tcp=("127.0.0.1", 1, "127.0.0.2", 2))
        assert marker.owners(s) == (None, None) and not s.held
        assert marker.owners(h.make_sample(tcp=("10.9.9.9", 1, "10.9.9.8", 2))) == (None, None)
        assert marker.stats["malformed"] == marker.stats["errors"] == marker.stats["late"] == 0
    finally:
        for x in (a, c, srv, u):
            x.close()
        ch.close()


def test_marker_uses_the_stash_side_given_by_socket_local_src():
    """A socket another module put in the stash is used for the end SOCKET_LOCAL_SRC names,
    also when that module found no socket there (SOCKET_LOOKED_UP alone); the other local end
    is still looked up (here: no diag channel, so nothing found)."""
    from hostsflow.samples import SOCKET_CGROUP_ID, SOCKET_INODE, SOCKET_LOCAL_SRC, SOCKET_LOOKED_UP
    from hostsflow_systemd.marking import Marker, Owner, from_stash
    from hostsflow_systemd.services import ServiceTable

    table = ServiceTable(CgroupMounts.parse(""), ["system.slice"], lambda: HOST, lambda: None)
    marker = Marker(table, lambda: 0.0, None)
    marker.local.update([], 1)
    h = AgentHarness  # make_sample only
    for local_src, want in ((True, (Owner(7, 9), None)), (False, (None, Owner(7, 9)))):
        s = h.make_sample(tcp=("127.0.0.1", 1000, "127.0.0.1", 2000))
        s.stash.update({SOCKET_INODE: 7, SOCKET_CGROUP_ID: 9, SOCKET_LOCAL_SRC: local_src})
        assert marker.owners(s) == want
    assert marker.stats["from_stash"] == 2
    s = h.make_sample(tcp=("127.0.0.1", 1000, "127.0.0.1", 2000))
    s.stash.update({SOCKET_INODE: 7, SOCKET_CGROUP_ID: 9})  # which end? unknown: not used
    assert marker.owners(s) == (None, None) and marker.stats["from_stash"] == 2
    # looked up, no socket: that end is settled; without SOCKET_LOOKED_UP it is not
    assert from_stash({SOCKET_LOCAL_SRC: False, SOCKET_LOOKED_UP: True}) == (1, None)
    assert from_stash({SOCKET_LOCAL_SRC: False}) is None
    # a sample from another namespace: only the stash counts, nothing is looked up there
    s = h.make_sample(tcp=("127.0.0.1", 1000, "127.0.0.1", 2000), netns="/var/run/netns/x")
    s.stash.update({SOCKET_INODE: 7, SOCKET_CGROUP_ID: 9, SOCKET_LOCAL_SRC: True})
    assert marker.owners(s) == (Owner(7, 9), None)


def _run_without_systemd(bus: str, seconds: float):
    plugin = SystemdPlugin()
    conf = ("sflow {\n collector { ip = 127.0.0.1 }\n polling = 1\n"
            f" systemd {{\n  bus = \"{bus}\"\n  markTraffic = on\n }}\n}}\n")
    with structlog.testing.capture_logs() as logs:
        h = AgentHarness(conf, plugins={"systemd": plugin}, host_poller=True)
        try:
            h.start()
            h.run_loop(seconds)
            h.tick(2)
            h.feed(h.make_sample(tcp=("127.0.0.1", 1, "127.0.0.1", 2)))
            h.flush()
            # marking's sock_diag channel is hostsflow_tcp's, with no tcp { } block configured
            assert isinstance(plugin.diag, DiagChannel) and "tcp" not in h.agent.host.states
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
    assert plugin.watcher is not None and plugin.watcher.syncs == 0


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
