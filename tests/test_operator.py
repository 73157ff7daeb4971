"""An operator's first hour, with real ``hostsflowd`` and ``hostsflow`` processes: hsflowd's
command line with hsflowd's meanings, a drop that fails stops the agent, the status file that
cannot stop the agent and tells the truth about it, config files that are not regular files,
and the tools ending with one clear line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from hostsflow.bootstrap import load
from hostsflow.sflow.records import HostDescr
from hostsflow.testing import UdpCollector, load_file_module

HERE = Path(__file__).resolve().parent
AgentProcess = load_file_module("hostsflow_tests_agent_process",
                                HERE / "agent_process.py").AgentProcess
proc_status = load_file_module("hostsflow_tests_faults_kit", HERE / "faults_kit.py").proc_status

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
AGENT = [sys.executable, "-c", "import sys; from hostsflow.cli import agent_main; "
         "sys.exit(agent_main())"]
TOOLS = [sys.executable, "-c", "import sys; from hostsflow.cli import tools_main; "
         "sys.exit(tools_main())"]


def conf(port: int, extra: str = "") -> str:
    return f"sflow {{\n  collector {{ ip = 127.0.0.1 udpport = {port} }}\n  polling = 1\n{extra}}}\n"


def run(cmd: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def events(log: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


# ---------------------------------------------------------------- hsflowd's command line


@root
def test_hsflowd_flags_mean_what_they_mean_in_hsflowd(tmp_path):
    """``-u UUID`` is the host UUID (sent in host_descr) and the agent still drops to nobody;
    ``-p`` writes the pid file; ``-D``/``-L`` log to a file up to a size; ``-c`` opens the crash
    file; ``-l``, ``-F`` and ``-o`` are accepted and said to have no use at debug level."""
    host_uuid = uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
    pid_file, log_file, crash = tmp_path / "h.pid", tmp_path / "h.log", tmp_path / "crash"
    with UdpCollector() as col:
        with AgentProcess(conf(col.port), tmp_path, args=(
                "-dd", "-u", str(host_uuid), "-p", str(pid_file), "-D", str(log_file),
                "-L", "200000", "-c", str(crash), "-l", "/usr/lib/hsflowd", "-F", "/x.ctl",
                "-o", "/etc/hsflowd.auto")) as agent:
            col.wait_for(lambda d: any(d), 10)
            wait(lambda: "dropped_privileges" in log_file.read_text(), 10, "drop logged")
            descr = [r for d in col.datagrams for s in d.counter_samples for r in s.records
                     if isinstance(r, HostDescr)]
            assert descr and descr[0].uuid == host_uuid.bytes, descr[:1]
            assert proc_status(agent.pid)["Uid"].split() == ["65534"] * 4
            assert pid_file.read_text() == f"{agent.pid}\n"
            assert crash.exists()
            logged = events(log_file.read_text())
            assert agent.log() == ""  # everything went to -D LOGFile
            no_use = {e["flag"] for e in logged if e.get("event") == "flag_has_no_use_here"}
            assert no_use == {"modules_dir", "debug_control", "output_file"}
            assert all(e["level"] == "debug" for e in logged
                       if e.get("event") == "flag_has_no_use_here")
            assert agent.stop() == 0
    # -L: the file stops growing at its limit
    small = tmp_path / "small.log"
    (tmp_path / "b").mkdir()
    with UdpCollector() as col, AgentProcess(conf(col.port), tmp_path / "b",
                                             args=("-d", "-D", str(small), "-L", "600")):
        col.wait_for(lambda d: len(d) >= 3, 10)
        assert 0 < small.stat().st_size < 600 + 4096
        size = small.stat().st_size
        col.wait_for(lambda d: len(d) >= 5, 10)
        assert small.stat().st_size == size


def test_bad_uuid_is_refused_and_version_is_v():
    r = run([*AGENT, "-u", "nobody", "-f", "/nonexistent.conf"])
    assert r.returncode == 2 and "bad UUID format: 'nobody'" in r.stderr, r.stderr
    assert "--run-as" in r.stderr and "Traceback" not in r.stderr
    r = run([*AGENT, "-v"])
    assert r.returncode == 0 and r.stdout.startswith("hostsflowd ")


@root
def test_machine_id_flag_derives_the_uuid_when_the_system_has_none(tmp_path):
    """``-m`` gives the machine-id the UUID is derived from; with a system UUID (DMI) the
    system's wins, as in hsflowd."""
    from hostsflow.host import identity

    mid = bytes(range(16))
    with UdpCollector() as col, AgentProcess(conf(col.port), tmp_path,
                                             args=("-m", mid.hex())) as agent:
        col.wait_for(lambda d: any(d), 10)
        (descr, *_) = [r for d in col.datagrams for s in d.counter_samples for r in s.records
                       if isinstance(r, HostDescr)]
        want = identity.system_uuid() or identity.uuid_from_machine_id(mid)
        assert descr.uuid == want
        assert agent.stop() == 0


@root
def test_pid_file_of_a_running_agent_is_refused(tmp_path):
    """A second agent on the same -p PIDFile while the first runs: refused, the file kept."""
    pid_file = tmp_path / "x.pid"
    with UdpCollector() as col, AgentProcess(conf(col.port), tmp_path,
                                             args=("-p", str(pid_file))) as first:
        wait(lambda: pid_file.exists(), 10, "pid file")
        (tmp_path / "c.conf").write_text(conf(col.port))
        r = run([*AGENT, "-f", str(tmp_path / "c.conf"), "-p", str(pid_file),
                 "--status-file", ""])
        assert r.returncode == 1, r.stderr
        assert f"names pid {first.pid}, which is running" in r.stderr
        assert pid_file.read_text() == f"{first.pid}\n"
        assert first.stop() == 0
    # removed if the agent (nobody by then) may, else naming a process that is gone, which
    # the next agent replaces
    from hostsflow.daemon_args import agent_alive

    assert not pid_file.exists() or not agent_alive(int(pid_file.read_text()))


@root
def test_memory_limit_exits_with_status_1(tmp_path):
    with UdpCollector() as col, AgentProcess(conf(col.port), tmp_path,
                                             args=("-M", "5000000")) as agent:
        assert agent.proc.wait(15) == 1
        assert "memory_limit_exceeded" in agent.log()


# ---------------------------------------------------------------- a failed drop


@root
def test_a_drop_that_fails_stops_the_agent(tmp_path):
    """Never run on with more privilege than asked: an unknown --run-as user ends the agent
    with one clear line (exit 2), it does not stay root."""
    with UdpCollector() as col, AgentProcess(conf(col.port), tmp_path,
                                             args=("--run-as", "no-such-user-hsf")) as agent:
        assert agent.proc.wait(15) == 2, agent.log()
        log = agent.log()
        assert "cannot drop privileges to no-such-user-hsf: no such user" in log
        assert "Traceback" not in log
        assert not col.raw  # nothing was sent as root


# ---------------------------------------------------------------- the status file


@root
def test_status_tells_who_wrote_it_and_whether_it_runs(tmp_path):
    # a directory nobody can reach (pytest's are root's alone): the agent makes run/ in it,
    # gives it to nobody and replaces the status file there by rename
    base = Path(tempfile.mkdtemp(prefix="hostsflow-operator-"))
    os.chmod(base, 0o755)
    status = base / "run" / "status.json"
    with UdpCollector() as col:
        agent = AgentProcess(conf(col.port), tmp_path, args=("--status-file", str(status)))
        agent.status_path = str(status)
        try:
            wait(lambda: os.path.exists(agent.status_path), 15, "status file")
            first = os.stat(agent.status_path).st_ino
            r = run([*TOOLS, "status", "--status-file", agent.status_path])
            assert r.returncode == 0, r.stderr
            assert f"hostsflowd pid {agent.pid}, running" in r.stdout
            assert f"config   {agent.conf}" in r.stdout
            assert "started  " in r.stdout and " ago)" in r.stdout
            js = json.loads(run([*TOOLS, "status", "--status-file", agent.status_path,
                                 "--json"]).stdout)
            assert js["pid"] == agent.pid and js["agent_running"] is True
            assert js["age_seconds"] < 10
            # replaced whole on every write (a new file renamed over the old one)
            wait(lambda: os.stat(agent.status_path).st_ino != first, 12, "a rewrite")
        finally:
            agent.proc.send_signal(signal.SIGKILL)  # gone without a last word
            agent.proc.wait(5)
            agent.stop()
        r = run([*TOOLS, "status", "--status-file", agent.status_path])
        shutil.rmtree(base)
        assert r.returncode == 1
        assert f"pid {agent.pid}, which is gone" in r.stdout


def test_status_of_empty_truncated_or_corrupt_files_is_one_clear_line(tmp_path):
    path = tmp_path / "status.json"
    for content, says in ((b"", "it is empty"), (b'{"time": 17', "not a complete status"),
                          (b"\x00\xff garbage", "not a complete status"),
                          (b"[1, 2]", "a JSON list, not a status object")):
        path.write_bytes(content)
        r = run([*TOOLS, "status", "--status-file", str(path)])
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [f"no usable status in {path}: "
                                                 + r.stderr.split(": ", 1)[1].strip()]
        assert says in r.stderr
    r = run([*TOOLS, "status", "--status-file", str(tmp_path / "none.json")])
    assert r.returncode == 1 and "no status at" in r.stderr and "Traceback" not in r.stderr


def _in_private_mount(script: str) -> tuple[str, ...]:
    """A wrapper: the agent runs in a private mount namespace after ``script`` (sh)."""
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            script + ' && exec "$@"', "sh")


@root
@pytest.mark.parametrize("case", ["directory", "read-only", "full"])
def test_status_file_problems_never_stop_the_agent(tmp_path, case):
    """A status path that is a directory, on a read-only file system or on a full one: logged
    once, the agent sends on (and stops with 0)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    status = run_dir / "status.json"
    wrapper: tuple[str, ...] = ()
    if case == "directory":
        status.mkdir()
    elif case == "read-only":
        wrapper = _in_private_mount(f"mount -t tmpfs -o ro,size=64k tmpfs {run_dir}")
    else:
        wrapper = _in_private_mount(f"mount -t tmpfs -o size=8k tmpfs {run_dir} && "
                                    f"head -c 8192 /dev/zero > {run_dir}/fill 2>/dev/null; true")
    with UdpCollector() as col:
        agent = AgentProcess(conf(col.port), tmp_path, wrapper=wrapper,
                             args=("--status-file", str(status)))
        try:
            # the first status write fails (logged), then the agent sends on past more writes
            agent.wait_for_log('"status_file_failed"', 30)
            col.wait_for(lambda d: len(d) >= 8, 20, since=time.time())
            assert agent.proc.poll() is None, agent.log()
            log = agent.log()
            assert "Traceback" not in log
            assert log.count('"status_file_failed"') == 1, log
        finally:
            assert agent.stop() == 0


# ---------------------------------------------------------------- config files


@pytest.mark.parametrize("kind", ["fifo", "zero", "huge"])
def test_config_files_that_are_not_regular_or_too_big_exit_2(tmp_path, kind):
    from hostsflow.config.schema import MAX_CONFIG_BYTES

    if kind == "fifo":
        path = tmp_path / "fifo.conf"
        os.mkfifo(path)
    elif kind == "zero":
        path = Path("/dev/zero")
    else:
        path = tmp_path / "huge.conf"
        with open(path, "wb") as f:
            f.truncate(100 * MAX_CONFIG_BYTES)
    for cmd in ([*AGENT, "-f", str(path), "--status-file", ""],
                [*TOOLS, "modules", "-f", str(path)]):
        t0 = time.monotonic()
        r = run(cmd, timeout=20)
        assert time.monotonic() - t0 < 10
        assert r.returncode == 2, (cmd, r.returncode, r.stderr)
        assert r.stderr.startswith(f"{path}: ") and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- the tools' one line


def test_decode_on_a_port_in_use_is_one_line():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        r = run([*TOOLS, "decode", "--listen", f"127.0.0.1:{port}"])
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == (f"hostsflow decode: cannot listen on 127.0.0.1:{port}: "
                                "Address already in use")


def test_config_into_a_closed_pipe_is_quiet():
    """``hostsflow config | head -1``: head leaves, hostsflow ends without a traceback."""
    p = subprocess.Popen(TOOLS + ["config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode() if p.stderr else ""
    assert p.wait(20) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_config_output_loads_and_enables_nothing_not_asked_for(tmp_path):
    """``hostsflow config > file`` is one sflow block that our parser loads, with every module
    block commented out; ``hostsflow config MODULE`` enables that module alone."""
    r = run([*TOOLS, "config"])
    assert r.returncode == 0, r.stderr
    (tmp_path / "all.conf").write_text(r.stdout)
    loaded = load(r.stdout, "all.conf")
    assert loaded.config.modules == {} and not loaded.host.states.keys() - {"core"}
    assert "# pcap {" in r.stdout and "# nflog {" in r.stdout
    for name in ("pcap", "tcp", "nflog"):
        r = run([*TOOLS, "config", name])
        loaded = load(r.stdout, f"{name}.conf")
        assert set(loaded.config.modules) == {name}, r.stdout


# ---------------------------------------------------------------- not root


def test_not_root_says_what_is_missing(tmp_path):
    """As an ordinary user with pcap { dev = lo }: the pcap module says it needs root or
    CAP_NET_RAW (not "unsupported link type -3"), the status file's directory that it cannot
    write is one log line (no PermissionError traceback), and counters still go out."""
    as_user: tuple[str, ...] = ()
    if os.geteuid() == 0:
        as_user = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                   "--inh-caps=-all", "--bounding-set=-all")
    status_dir = tmp_path / "st"
    status_dir.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    with UdpCollector() as col:
        agent = AgentProcess(conf(col.port, "  pcap { dev = lo }\n"), tmp_path / "st",
                             wrapper=as_user, args=("--status-file",
                                                    str(status_dir / "x" / "s.json")))
        try:
            col.wait_for(lambda d: len(d) >= 2, 15)
            log = agent.log()
            assert "pcap_not_permitted" in log and "CAP_NET_RAW" in log, log
            assert "unsupported link type" not in log and "Traceback" not in log, log
            assert log.count('"status_file_failed"') == 1, log
        finally:
            agent.stop()
