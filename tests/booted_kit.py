"""Booted Debian 12 containers for end-to-end tests: systemd as PID 1, the packaged unit.

* :func:`rootfs` a Debian 12 (bookworm) tree made once with mmdebstrap (the machine's own apt
  sources) and cached under /var/cache/hostsflow-tests, keyed by its package list; never
  modified after (each container boots from an overlay on it);
* :class:`Container` one booted machine: an overlayfs on the cached tree, files written into
  it, hostsflow installed as a host installs it (``scripts/install-agent.sh``, run inside
  before boot, with the host's network for pip), then ``systemd-nspawn --boot`` from a cgroup
  of its own with a veth pair (``ve-NAME`` here, ``host0`` inside, addressed by a oneshot unit
  written into it); commands run inside it through nsenter (``exec``, ``systemctl``);
* :class:`Bridge` one network for several containers (``--network-bridge``: ``vb-NAME`` here,
  each container's ``host0`` on the bridge's subnet, this host at ``.1``), so they talk to each
  other directly;
* :func:`hostsflow_layer` this checkout installed once (scripts/install-agent.sh) into an
  overlay layer that several containers then boot from, above the cached tree.

Facts this rests on (tested on this machine, kernel 6.18, systemd 252): nspawn needs
``--register=no --keep-unit`` without a host systemd; pip inside needs the host's CA bundle;
the container's cgroup2 is the subtree of the launcher's cgroup (hybrid mode here);
bird2 does not start without a router id.  Everything is removed on :meth:`Container.stop`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/hostsflow-tests")
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "nginx",
            "openssh-server", "bird2", "libpcap0.8", "iproute2", "procps", "ca-certificates")
#: the tree of multi-tier tests: the above with PostgreSQL and a client library for it
PACKAGES_DB = PACKAGES + ("postgresql", "python3-psycopg2")
CGROUP_ROOTS = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")


def why_not() -> str | None:
    """Why booted containers cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("mmdebstrap", "systemd-nspawn", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install mmdebstrap systemd-container iproute2)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "needs overlayfs"
    return None


def rootfs(packages: Iterable[str] = PACKAGES) -> Path:
    """The cached Debian 12 tree with ``packages`` (built on first use: about 30 s)."""
    pkgs = sorted(packages)
    key = hashlib.sha256(" ".join(pkgs).encode()).hexdigest()[:12]
    done = CACHE / f"bookworm-{key}"
    if (done / "etc" / "os-release").exists():
        return done
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
    try:
        subprocess.run(["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
                        f"--include={','.join(pkgs)}", "bookworm", str(tmp / "root")],
                       check=True, timeout=900)
        os.rename(tmp / "root", done)  # atomic: a half-built tree is never taken
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return done


def sh(*args: str, check: bool = True, timeout: float = 60) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


class Bridge:
    """A bridge on this host (``prefix`` + 6 hex digits, at most 15 characters) with an address
    of its own in a random 10.x.y.0/24; :meth:`address` hands out the next one to a container."""

    def __init__(self, prefix: str = "hsfbr") -> None:
        self.name = f"{prefix}{secrets.token_hex(3)}"
        self.subnet = f"10.{16 + secrets.randbelow(200)}.{secrets.randbelow(250) + 1}"
        self.host_ip = f"{self.subnet}.1"
        self._next = 2
        sh("ip", "link", "add", self.name, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.name)
        sh("ip", "link", "set", self.name, "up")

    def address(self) -> str:
        ip = f"{self.subnet}.{self._next}"
        self._next += 1
        return ip

    def remove(self) -> None:
        sh("ip", "link", "del", self.name, check=False)


def hostsflow_layer(packages: Iterable[str] = PACKAGES, prefix: str = "hsfl") -> Path:
    """This checkout installed by scripts/install-agent.sh into an overlay layer over the cached
    tree of ``packages`` (a directory to pass as ``Container(layers=...)``, removed by the
    caller); returns its path."""
    builder = Container(prefix, packages=packages)
    try:
        builder.prepare(mark=False)
        builder.install_hostsflow()
        sh("umount", str(builder.root))
        builder.mounted = False
        layer = Path(tempfile.mkdtemp(prefix="hostsflow-layer-"))
        os.rmdir(layer)
        os.rename(builder.tmp / "upper", layer)
        return layer
    finally:
        builder.stop()


@contextlib.contextmanager
def booted(name_prefix: str, before_boot: Callable[["Container"], object] = lambda c: None,
           ) -> Iterator["Container"]:
    """A :class:`Container` with this checkout installed, ``before_boot(c)`` run on its tree
    (files written, units enabled), booted; stopped and removed on exit."""
    c = Container(name_prefix)
    try:
        c.prepare()
        c.install_hostsflow()
        before_boot(c)
        c.boot()
        yield c
    finally:
        c.stop()


class Container:
    """One booted Debian machine on an overlay of :func:`rootfs` (and ``layers`` above it,
    highest first).  Use :meth:`write` and :meth:`install_hostsflow` before :meth:`boot`;
    :meth:`stop` removes everything.  With a ``bridge`` it joins that network instead of a veth
    of its own; ``hostname`` is its name inside (default: the container's name)."""

    #: nspawn's own seccomp filter refuses bpf(2): markTraffic's owner log needs it allowed
    #: (what an operator running hostsflowd in an nspawn container passes too)
    NSPAWN_ARGS = ("--system-call-filter=bpf",)

    def __init__(self, name_prefix: str = "hsfb", packages: Iterable[str] = PACKAGES,
                 layers: Iterable[Path] = (), bridge: Bridge | None = None,
                 hostname: str | None = None) -> None:
        self.name = f"{name_prefix}{secrets.token_hex(3)}"  # ve-NAME fits in 15 characters
        self.packages = tuple(packages)
        self.layers = tuple(layers)
        self.bridge = bridge
        self.hostname = hostname or self.name
        self.tmp = Path(tempfile.mkdtemp(prefix=f"hostsflow-{self.name}-"))
        os.chmod(self.tmp, 0o755)
        self.root = self.tmp / "merged"
        if bridge is not None:
            self.subnet, self.host_ip, self.ip = bridge.subnet, bridge.host_ip, bridge.address()
            self.host_dev = f"vb-{self.name}"
        else:
            octet = 16 + secrets.randbelow(200)
            self.subnet = f"10.{octet}.{secrets.randbelow(250) + 1}"
            self.host_ip, self.ip = f"{self.subnet}.1", f"{self.subnet}.2"
            self.host_dev = f"ve-{self.name}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounted = False
        self.cgroup = f"hostsflow-booted-{self.name}"

    # ------------------------------------------------------------ before boot

    def prepare(self, mark: bool = True) -> "Container":
        """Mount the overlay; with ``mark``, write its hostname and network unit."""
        lower = ":".join(str(p) for p in (*self.layers, rootfs(self.packages)))
        for d in ("upper", "work", "merged"):
            (self.tmp / d).mkdir()
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={lower},upperdir={self.tmp}/upper,workdir={self.tmp}/work", str(self.root))
        self.mounted = True
        if not mark:
            return self
        self.write("/etc/hostname", f"{self.hostname}\n")
        self.write("/etc/systemd/system/host0-address.service", f"""[Unit]
Description=the test network on host0
Before=network-online.target
Wants=network-online.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ip link set host0 up
ExecStart=/usr/sbin/ip addr add {self.ip}/24 dev host0
[Install]
WantedBy=multi-user.target
""")
        self.enable("host0-address.service")
        return self

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        p = self.root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink():  # an absolute link points into this host, not the tree: replace it
            p.unlink()
        p.write_text(text)
        os.chmod(p, mode)

    def mask(self, *units: str) -> None:
        """Keep ``units`` from starting (a link to /dev/null, as ``systemctl mask`` makes)."""
        for unit in units:
            link = self.root / "etc/systemd/system" / unit
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/dev/null")

    def enable(self, unit: str, target: str = "multi-user.target") -> None:
        wants = self.root / "etc/systemd/system" / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / unit
        if not link.exists():
            link.symlink_to(f"/etc/systemd/system/{unit}")

    def run(self, *cmd: str, timeout: float = 600) -> str:
        """Run ``cmd`` in the tree before boot (nspawn, the host's network, the host CA)."""
        return sh("systemd-nspawn", "-q", "-D", str(self.root), "--register=no", "--keep-unit",
                  "--pipe", "--bind-ro=/etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt",
                  "--setenv=PIP_CERT=/run/host-ca.crt", "--setenv=PIP_DISABLE_PIP_VERSION_CHECK=1",
                  *cmd, timeout=timeout)

    def install_hostsflow(self) -> float:
        """This checkout (its working tree, without .git and .venv) into the tree, installed
        by scripts/install-agent.sh as on a host; returns the seconds it took."""
        t0 = time.monotonic()
        dest = self.root / "usr/src/hostsflow"
        dest.mkdir(parents=True)
        with tarfile.open(self.tmp / "src.tar", "w") as tar:
            for item in ("pyproject.toml", "README.md", "core", "plugins", "packaging",
                         "scripts"):
                tar.add(REPO / item, arcname=item,
                        filter=lambda t: None if "__pycache__" in t.name or
                        t.name.endswith(".egg-info") else t)
        with tarfile.open(self.tmp / "src.tar") as tar:
            tar.extractall(dest)
        self.run("bash", "/usr/src/hostsflow/scripts/install-agent.sh", "--no-apt")
        return time.monotonic() - t0

    # ------------------------------------------------------------ boot and stop

    def boot(self, timeout: float = 60) -> float:
        """Boot it (systemd as PID 1) with a veth to here; wait until the system is running;
        returns the seconds it took."""
        t0 = time.monotonic()
        for h in CGROUP_ROOTS:
            os.makedirs(f"{h}/{self.cgroup}", exist_ok=True)

        def own_cgroup() -> None:
            os.setsid()
            for h in CGROUP_ROOTS:
                with open(f"{h}/{self.cgroup}/cgroup.procs", "w") as f:
                    f.write("0")

        network = (f"--network-bridge={self.bridge.name}" if self.bridge is not None
                   else "--network-veth")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-q", "-b", "-D", str(self.root), "-M", self.name,
             "--register=no", "--keep-unit", network, "--console=passive",
             *self.NSPAWN_ARGS],
            stdout=open(self.tmp / "nspawn.log", "wb"), stderr=subprocess.STDOUT,
            preexec_fn=own_cgroup)
        deadline = time.monotonic() + timeout
        while not Path(f"/sys/class/net/{self.host_dev}").exists():
            self._alive_or_fail(deadline)
            time.sleep(0.05)
        if self.bridge is None:
            sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_dev)
        sh("ip", "link", "set", self.host_dev, "up")
        while self._leader() is None:
            self._alive_or_fail(deadline)
            time.sleep(0.05)
        while self.systemctl("is-system-running", check=False).strip() not in (
                "running", "degraded"):
            self._alive_or_fail(deadline)
            time.sleep(0.2)
        return time.monotonic() - t0

    def _alive_or_fail(self, deadline: float) -> None:
        if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{self.name} did not boot: {self.log()[-3000:]}")

    def exec(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        """Run ``cmd`` inside the booted container (all its namespaces, via nsenter)."""
        leader = self._leader()
        if leader is None:
            raise RuntimeError(f"{self.name} is not running")
        r = subprocess.run(["nsenter", "-t", str(leader), "-a", *cmd], capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
        return r.stdout

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.exec("systemctl", "--no-pager", *args, check=check)

    def journal(self, unit: str) -> str:
        return self.exec("journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False)

    def log(self) -> str:
        try:
            return (self.tmp / "nspawn.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            leader = self._leader()
            if leader:
                os.kill(leader, signal.SIGRTMIN + 4)  # systemd: power off
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        sh("ip", "link", "del", self.host_dev, check=False)
        for h in CGROUP_ROOTS:
            base = f"{h}/{self.cgroup}"
            for root, dirs, _ in os.walk(base, topdown=False):
                for d in dirs:
                    try:
                        os.rmdir(os.path.join(root, d))
                    except OSError:
                        pass
            try:
                os.rmdir(base)
            except OSError:
                pass
        if self.mounted:
            sh("umount", "-l", str(self.root), check=False)
            self.mounted = False
        for leftover in (f"/run/systemd/nspawn/unix-export/{self.name}",):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _leader(self) -> int | None:
        """The container's PID 1 (nspawn's child)."""
        assert self.proc is not None
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        pids = [int(p) for p in kids.split()]
        return pids[0] if pids else None
