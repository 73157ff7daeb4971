"""A real systemd for the tests: ``systemd --user`` in a private mount namespace, its own
cgroup, and a private dbus-daemon (a user manager wants a /run/systemd/system of its own,
and registers on the bus once its own dbus.service runs).  The agent reaches it
through ``bus = unix:path=...`` (the D-Bus address the fixture hands out).

Services are real units: ``python3 -m http.server`` (or any argv) written to
``$XDG_RUNTIME_DIR/systemd/user/NAME.service`` and started with Reload + StartUnit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=SOCKET_PATH</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <!-- any user may connect: the agent reaches the bus as nobody, after it dropped root -->
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

MANAGER_SH = """#!/bin/bash
T=$1; CG=$2
for h in systemd unified; do echo $$ > /sys/fs/cgroup/$h/$CG/cgroup.procs; done
exec unshare --mount --propagation private bash -c '
  mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system
  export XDG_RUNTIME_DIR='"$T"'/rt DBUS_SESSION_BUS_ADDRESS=unix:path='"$T"'/bus.sock
  exec /lib/systemd/systemd --user'
"""

CGROUP_ROOTS = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (cgroups, mount namespace)"
    for tool in ("dbus-daemon", "systemctl", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install systemd dbus util-linux)"
    if not os.path.exists("/lib/systemd/systemd"):
        return "/lib/systemd/systemd is not installed (apt-get install systemd)"
    if not all(os.path.isdir(p) for p in CGROUP_ROOTS) and not os.path.exists(
            "/sys/fs/cgroup/cgroup.controllers"):
        return "no cgroup hierarchy this fixture knows"
    return None


def _rmdir_tree(path: str) -> None:
    if not os.path.isdir(path):
        return
    for root, dirs, _files in os.walk(path, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


class UserManager:
    """A running ``systemd --user`` with a private bus.  ``address`` is the D-Bus address,
    ``cgroup`` the cgroup (relative to the hierarchy roots) it runs in."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="sflow-sd-"))
        self.cgroup = f"sflowuser-{os.getpid()}-{os.urandom(3).hex()}"
        self.rt = self.tmp / "rt"
        self.units = self.rt / "systemd" / "user"
        self.address = f"unix:path={self.tmp}/bus.sock"
        self.manager: subprocess.Popen[bytes] | None = None
        self.dbus_pid: int | None = None
        self._conn: Any = None

    # ------------------------------------------------------------ start / stop

    def start(self) -> "UserManager":
        self.units.mkdir(parents=True)
        os.chmod(self.tmp, 0o755)  # the bus socket is here, for an agent that runs as nobody
        os.chmod(self.rt, 0o700)
        (self.tmp / "bus.conf").write_text(BUS_CONF.replace("SOCKET_PATH", f"{self.tmp}/bus.sock"))
        out = subprocess.run(
            ["dbus-daemon", f"--config-file={self.tmp}/bus.conf", "--print-address=1",
             "--print-pid=1", "--fork"], capture_output=True, text=True, check=True, timeout=10)
        self.dbus_pid = int(out.stdout.split()[1])
        for h in CGROUP_ROOTS:
            os.makedirs(f"{h}/{self.cgroup}", exist_ok=True)
        (self.tmp / "um.sh").write_text(MANAGER_SH)
        os.chmod(self.tmp / "um.sh", 0o755)
        self.manager = subprocess.Popen(
            [str(self.tmp / "um.sh"), str(self.tmp), self.cgroup],
            stdout=open(self.tmp / "um.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        env = dict(os.environ, XDG_RUNTIME_DIR=str(self.rt))
        deadline = time.monotonic() + 15
        while True:
            r = subprocess.run(["systemctl", "--user", "show", "-p", "SystemState", "--value"],
                               env=env, capture_output=True, text=True)
            if r.stdout.strip() in ("running", "degraded"):
                break
            if self.manager.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"systemd --user did not start: {self.log()}")
            time.sleep(0.05)
        subprocess.run(["systemctl", "--user", "start", "dbus.service"], env=env, check=True,
                       timeout=15)
        from jeepney.io.blocking import open_dbus_connection

        deadline = time.monotonic() + 15
        while True:
            try:
                self._conn = open_dbus_connection(bus=self.address)
                self.call("GetUnit", "s", ("dbus.service",))
                break
            except Exception:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return (self.tmp / "um.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        if self.manager is not None and self.manager.poll() is None:
            self.manager.send_signal(signal.SIGTERM)
            try:
                self.manager.wait(15)
            except subprocess.TimeoutExpired:
                self.manager.kill()
                self.manager.wait(5)
        if self.dbus_pid:
            try:
                os.kill(self.dbus_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # processes still in our cgroups (a unit that ignored SIGTERM): kill them by pid
        for h in CGROUP_ROOTS:
            base = f"{h}/{self.cgroup}"
            for root, _dirs, files in os.walk(base):
                if "cgroup.procs" in files:
                    try:
                        pids = Path(root, "cgroup.procs").read_text().split()
                    except OSError:
                        continue
                    for pid in pids:
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except (ProcessLookupError, ValueError):
                            pass
        time.sleep(0.1)
        for h in CGROUP_ROOTS:
            _rmdir_tree(f"{h}/{self.cgroup}")
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------ units

    def call(self, method: str, sig: str = "", body: tuple[Any, ...] = ()) -> Any:
        from jeepney import DBusAddress, new_method_call

        mgr = DBusAddress("/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1",
                          interface="org.freedesktop.systemd1.Manager")
        reply = self._conn.send_and_get_reply(new_method_call(mgr, method, sig, body), timeout=10)
        if reply.header.message_type.name == "error":
            raise RuntimeError(f"{method}: {reply.body}")
        return reply.body

    def add_service(self, name: str, argv: list[str], start: bool = True) -> None:
        """Write NAME.service running argv, reload, and start it (waits until active)."""
        (self.units / f"{name}.service").write_text(
            "[Unit]\nDescription=hostsflow test service\n[Service]\n"
            f"ExecStart={' '.join(argv)}\n")
        self.call("Reload")
        if start:
            self.start_unit(name)

    def start_unit(self, name: str) -> None:
        self.call("StartUnit", "ss", (f"{name}.service", "replace"))
        self.wait_state(name, "active")

    def stop_unit(self, name: str) -> None:
        self.call("StopUnit", "ss", (f"{name}.service", "replace"))
        self.wait_state(name, "inactive", "failed", "gone")

    def wait_state(self, name: str, *states: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.active_state(name)
            if state in states:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: state {state}, wanted {states}\n{self.log()}")
            time.sleep(0.02)

    def active_state(self, name: str) -> str:
        from jeepney import DBusAddress, Properties

        for u in self.call("ListUnits")[0]:
            if u[0] == f"{name}.service":
                return u[3]
        return "gone"

    def control_group(self, name: str) -> str:
        from jeepney import DBusAddress, Properties

        (path,) = self.call("GetUnit", "s", (f"{name}.service",))
        svc = DBusAddress(path, bus_name="org.freedesktop.systemd1",
                          interface="org.freedesktop.systemd1.Service")
        reply = self._conn.send_and_get_reply(Properties(svc).get("ControlGroup"), timeout=10)
        return reply.body[0][1]

    def pids(self, name: str) -> list[int]:
        cg = self.control_group(name)
        return [int(p) for p in Path(f"/sys/fs/cgroup/unified{cg}/cgroup.procs").read_text().split()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def user_manager() -> Iterator[UserManager]:
    why = _why_not()
    if why:
        pytest.skip(why)
    um = UserManager()
    try:
        um.start()
        yield um
    finally:
        um.stop()


@pytest.fixture
def user_manager_factory() -> Iterator[Any]:
    """Start extra, private user managers (for tests that break them)."""
    why = _why_not()
    if why:
        pytest.skip(why)
    made: list[UserManager] = []

    def make() -> UserManager:
        um = UserManager()
        made.append(um)
        return um.start()

    try:
        yield make
    finally:
        for um in made:
            um.stop()
