"""The owner log (hostsflow.sockets.owner_log) in the real kernel: processes in test-made
cgroup2 groups open real sockets on loopback and close them; the log must name each
connection's owner after the socket is gone, keep out what names nobody (pure ACKs of a
connection older than the log), tell a UDP port that changed hands after a packet, keep
namespaces apart, and leave nothing attached when its owner dies."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostsflow.sockets import CHANGED_HANDS, SRC, VIA_LOG, bpf
from hostsflow.sockets.owner_log import OwnerLog
from hostsflow.testing import AgentHarness

pytestmark = pytest.mark.root

CHILD = r"""
import socket, sys, time
what = sys.argv[1]
if what == "client":          # connect, send, read the answer, close first
    c = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    print(c.getsockname()[1], flush=True)
    c.sendall(b"hello")
    c.recv(100)
    c.close()
elif what == "server":        # accept one, answer, close first (its side goes to TIME_WAIT)
    lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
    print(lst.getsockname()[1], flush=True)
    a, _ = lst.accept(); a.recv(100); a.sendall(b"answer"); a.close()
    time.sleep(0.2)
elif what == "udp":           # queries from a fresh socket each
    for i in range(int(sys.argv[3])):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(("127.0.0.1", int(sys.argv[2])))
        print(u.getsockname()[1], flush=True)
        u.send(b"q"); u.recv(100); u.close()
elif what == "udp-from":      # one datagram from a given port
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind(("127.0.0.1", int(sys.argv[3])))
    u.sendto(b"q", ("127.0.0.1", int(sys.argv[2])))
    print(time.time(), flush=True)
elif what == "idle":          # connected, reads until told to talk
    c = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    print(c.getsockname()[1], flush=True)
    while c.recv(100) != b"talk":
        pass
    c.sendall(b"data")
    sys.stdin.read()
elif what == "log-and-die":   # an agent's log, killed while attached
    sys.path[:0] = sys.argv[3:]
    from hostsflow.sockets.owner_log import OwnerLog
    log = OwnerLog(); log.cover([sys.argv[2]])
    print("ready", flush=True)
    time.sleep(60)
"""


def cgroup2_root() -> Path:
    root = Path("/sys/fs/cgroup/unified")
    if not root.is_dir():
        root = Path("/sys/fs/cgroup")
    if os.geteuid() != 0 or not (root / "cgroup.procs").exists():
        pytest.skip("needs root and a cgroup2 mount")
    return root


@pytest.fixture
def groups():
    """Two fresh cgroup2 groups, removed afterwards."""
    root = cgroup2_root()
    made = [root / f"hostsflow-owner-test-{os.getpid()}-{i}" for i in range(2)]
    for g in made:
        g.mkdir()
    yield made
    for g in made:
        for _ in range(50):
            try:
                g.rmdir()
                break
            except OSError:
                time.sleep(0.05)


@pytest.fixture
def log():
    try:
        owners = OwnerLog()
    except OSError as exc:
        pytest.skip(f"bpf(2) not usable here: {exc}")
    yield owners
    owners.close()


def child(group: Path, *args: str, netns: bool = False) -> subprocess.Popen[str]:
    """CHILD with ``args``, in ``group`` (joined before any socket exists); in a new network
    namespace (loopback up) with ``netns``."""
    cmd = [sys.executable, "-c", CHILD, *args]
    if netns:
        cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: (group / "cgroup.procs").write_text("0"))


def cookie() -> int:
    with socket.socket() as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 71, 8), "little")


LO = socket.inet_aton("127.0.0.1")


def owner(log: OwnerLog, proto: int, lport: int, rport: int, ns: int | None = None):
    return log.owner(cookie() if ns is None else ns, proto, socket.AF_INET, LO, lport, LO, rport)


def test_a_client_that_closed_is_named_by_its_cgroup(log, groups):
    a, _ = groups
    log.cover([str(a)])
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    p = child(a, "client", str(lst.getsockname()[1]))
    conn, _ = lst.accept()
    cport = int(p.stdout.readline())
    conn.recv(100)
    conn.sendall(b"answer")
    p.wait(5)
    conn.close()
    lport = lst.getsockname()[1]
    got = owner(log, 6, cport, lport)
    assert got is not None and got[0] == a.stat().st_ino
    assert owner(log, 6, lport, cport) is None, "the server is in no covered group"
    lst.close()


def test_a_server_that_closed_first_is_named_by_its_listener_cgroup(log, groups):
    a, _ = groups
    log.cover([str(a)])
    p = child(a, "server")
    sport = int(p.stdout.readline())
    c = socket.create_connection(("127.0.0.1", sport))
    cport = c.getsockname()[1]
    c.sendall(b"hi")
    assert c.recv(100) == b"answer"
    c.close()
    p.wait(5)
    got = owner(log, 6, sport, cport)
    assert got is not None and got[0] == a.stat().st_ino


def test_udp_queries_from_fresh_sockets_each_named(log, groups):
    a, _ = groups
    log.cover([str(a)])
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(5)
    n = 20
    p = child(a, "udp", str(srv.getsockname()[1]), str(n))
    ports = []
    for _ in range(n):
        ports.append(int(p.stdout.readline()))
        data, peer = srv.recvfrom(100)
        srv.sendto(b"a", peer)
    p.wait(5)
    named = [owner(log, 17, port, srv.getsockname()[1]) for port in ports]
    assert all(o is not None and o[0] == a.stat().st_ino for o in named)
    srv.close()


def test_a_udp_port_that_changed_hands_is_not_blamed_on_the_new_owner(log, groups):
    a, b = groups
    log.cover([str(a), str(b)])
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sport = str(srv.getsockname()[1])
    pa = child(a, "udp-from", sport, str(port))
    t_a = float(pa.stdout.readline())
    pa.wait(5)
    time.sleep(0.05)
    pb = child(b, "udp-from", sport, str(port))
    t_b = float(pb.stdout.readline())
    pb.wait(5)
    h = AgentHarness("sflow { collector { ip = 127.0.0.1 } }").start()
    try:
        sk = h.agent.sockets
        sk._log = log  # the log these tests made (record_owners would load another)
        sk._wall_offset = time.time() - time.monotonic()
        tup = ("127.0.0.1", port, "127.0.0.1", int(sport))
        old = sk.owner(h.make_sample(udp=tup, timestamp=t_a), SRC)
        assert old == CHANGED_HANDS, "A's packet must not be put on B"
        new = sk.owner(h.make_sample(udp=tup, timestamp=t_b + 0.001), SRC)
        assert new.via == VIA_LOG and new.cgroup_id == b.stat().st_ino
        assert sk.stats["log_changed_hands"] == 1
    finally:
        sk._log = None
        h.stop()
        srv.close()


def test_pure_acks_name_nobody_data_does(log, groups):
    """A connection older than the log: while its socket only acknowledges, nothing is
    logged (pure ACKs are also what TIME_WAIT and the kernel's reset socket send); its first
    data names it."""
    a, _ = groups
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    p = child(a, "idle", str(lst.getsockname()[1]))
    cport = int(p.stdout.readline())
    conn, _ = lst.accept()
    log.cover([str(a)])  # attached after the handshake
    conn.sendall(b"x" * 1000)  # the child acknowledges: pure ACKs
    time.sleep(0.1)
    lport = lst.getsockname()[1]
    assert owner(log, 6, cport, lport) is None
    conn.sendall(b"talk")
    assert conn.recv(100) == b"data"
    got = owner(log, 6, cport, lport)
    assert got is not None and got[0] == a.stat().st_ino
    p.stdin.close()
    p.wait(5)
    conn.close()
    lst.close()


def test_namespaces_are_kept_apart(log, groups):
    """A 127.0.0.1 datagram sent in another network namespace is filed under that
    namespace's cookie, not the agent's."""
    a, _ = groups
    log.cover([str(a)])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    p = child(a, "udp-from", "9", str(port), netns=True)
    p.stdout.readline()
    p.wait(5)
    assert owner(log, 17, port, 9) is None
    assert [k for k in _log_keys(log) if k[1] == port and k[0] != cookie()]


def _log_keys(log: OwnerLog) -> list[tuple[int, int]]:
    """(netns cookie, local port) of every entry (BPF_MAP_GET_NEXT_KEY walk)."""
    out, key, nxt = [], ctypes.create_string_buffer(48), ctypes.create_string_buffer(48)
    first = True
    while True:
        attr = bpf._attr(struct.pack("=IIQQ", log.log_fd, 0, 0 if first else ctypes.addressof(key),
                                     ctypes.addressof(nxt)))
        try:
            bpf.bpf(4, attr)
        except OSError:
            return out
        first = False
        ctypes.memmove(key, nxt, 48)
        ns, _f, _p, lport = struct.unpack_from("=QBB2s", key.raw)
        out.append((ns, int.from_bytes(lport, "big")))


def _attached(group: Path) -> int:
    """How many programs are attached to the group's egress hook (BPF_PROG_QUERY)."""
    fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attr = bpf._attr(struct.pack("=IIIIQI", fd, bpf.CGROUP_INET_EGRESS, 0, 0, 0, 0))
        bpf.bpf(16, attr)
        return struct.unpack_from("=I", attr.raw, 24)[0]
    finally:
        os.close(fd)


def test_nothing_stays_attached_when_the_log_closes_or_its_owner_is_killed(log, groups):
    a, b = groups
    log.cover([str(a)])
    assert _attached(a) == 1
    log.cover([])
    assert _attached(a) == 0
    repo_core = str(Path(__file__).resolve().parents[1])
    p = subprocess.Popen([sys.executable, "-c", CHILD, "log-and-die", str(b), repo_core],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    assert _attached(b) == 1
    p.send_signal(signal.SIGKILL)
    p.wait(5)
    deadline = time.monotonic() + 5
    while _attached(b) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel releases a link once its last descriptor is closed
    assert _attached(b) == 0


def test_more_new_owners_than_the_log_keeps_is_counted_and_logged_once(groups, capsys):
    """A log of 16 entries, 40 new UDP owners in a second: entries may be evicted before their
    samples are read; that is counted and logged once while it lasts."""
    a, _ = groups
    try:
        small = OwnerLog(capacity=16)
    except OSError as exc:
        pytest.skip(f"bpf(2) not usable here: {exc}")
    h = AgentHarness("sflow { collector { ip = 127.0.0.1 } }").start()
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(5)
    try:
        sk = h.agent.sockets
        sk._log = small
        small.cover([str(a)])
        ports = []
        for _ in range(2):
            p = child(a, "udp", str(srv.getsockname()[1]), "40")
            for _ in range(40):
                p.stdout.readline()
                data, peer = srv.recvfrom(100)
                ports.append(peer[1])
                srv.sendto(b"a", peer)
            p.wait(5)
            h.tick()
        assert sk.stats["log_overflow"] == 2
        # one write per new owner of a port: a fresh socket the kernel gave a port whose entry
        # is still in the log with the same owner changes nothing and writes nothing
        assert len(set(ports)) <= sk.stats["log_writes"] <= 80, (sk.stats, len(set(ports)))
        out = capsys.readouterr()
        assert (out.out + out.err).count("] owner_log_overflow") == 1
        assert h.agent.health.snapshot()["sockets.log_overflow"] == 2
    finally:
        sk._log = None
        small.close()
        srv.close()
        h.stop()


def test_each_cgroup_s_traffic_is_counted_both_ways(log, groups):
    """What a covered group's sockets send and receive: IP packets and their IP lengths
    (UDP here: 28 bytes of headers on each datagram)."""
    a, _ = groups
    log.cover([str(a)])
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(5)
    n = 25
    p = child(a, "udp", str(srv.getsockname()[1]), str(n))
    for _ in range(n):
        p.stdout.readline()
        data, peer = srv.recvfrom(100)
        assert data == b"q"
        srv.sendto(b"answer", peer)
    p.wait(5)
    srv.close()
    assert log.traffic(a.stat().st_ino) == (n * (28 + 6), n, n * (28 + 1), n)
    assert log.traffic(cgroup2_root().stat().st_ino) is None, "the root is not covered"


REFUSED = """
import os, sys
from hostsflow.sockets import SRC
from hostsflow.testing import AgentHarness
h = AgentHarness("sflow { collector { ip = 127.0.0.1 } }").start()
os.setgroups([]); os.setgid(65534); os.setuid(65534)   # no CAP_BPF, no CAP_SYS_ADMIN
ok = h.agent.sockets.record_owners([sys.argv[1]])
got = h.agent.sockets.owner(h.make_sample(tcp=("127.0.0.1", 40000, "127.0.0.1", 40001)), SRC)
print(ok, got, h.agent.sockets.recording)
"""


def test_a_kernel_that_refuses_bpf_leaves_marking_on_live_sockets():
    """Where bpf(2) is refused (a container's seccomp filter, no CAP_BPF), record_owners says
    so once and returns False; owner() goes on without the log."""
    r = subprocess.run([sys.executable, "-c", REFUSED, str(cgroup2_root())],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.split()[-3:] == ["False", "no_socket", "False"], r.stdout + r.stderr
    assert r.stdout.count("owner_log_unavailable") == 1
