"""A real dnsmasq serving the DNS-SD records of one domain (SRV and TXT of ``_sflow._udp.<domain>``,
A records of the collectors' names) on a loopback address the test picks, inside a network
namespace; for tests/test_dns_sd.py.  Loaded with ``hostsflow.testing.load_file_module``."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from hostsflow.testing import end_process

DNSMASQ = "/usr/sbin/dnsmasq"
CLONE_NEWNET = 0x40000000


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not os.access(DNSMASQ, os.X_OK):
        return "needs dnsmasq (apt-get install dnsmasq-base)"
    if shutil.which("ip") is None:
        return "needs ip"
    return None


def loopback_address() -> str:
    """A random 127.x.y.z (not 127.0.0.x)."""
    x, y, z = secrets.randbelow(200) + 20, secrets.randbelow(250) + 1, secrets.randbelow(250) + 1
    return f"127.{x}.{y}.{z}"


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` run in a thread that entered namespace ``ns`` first (sockets it makes are
    there); its result, or its exception raised here."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    out: dict[str, Any] = {}

    def run() -> None:
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


class Dnsmasq:
    """dnsmasq in namespace ``ns`` on ``address``:``port``, authoritative for ``domain``
    (other names there: NXDOMAIN).  :meth:`serve` (re)starts it with a set of records;
    :meth:`stop` takes the server away."""

    def __init__(self, workdir: Path, ns: str, domain: str, address: str | None = None,
                 port: int = 53) -> None:
        self.workdir, self.ns, self.domain = workdir, ns, domain
        self.address = address or loopback_address()
        self.port = port
        self.name = f"_sflow._udp.{domain}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "dnsmasq.log"
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{self.address}/32", "dev", "lo"],
                       check=True)

    def serve(self, srv: Sequence[tuple[str, int]], txt: Sequence[str], ttl: int = 1,
              hosts: dict[str, str] | None = None) -> None:
        """Serve these records: SRV ``(target, port)``, one TXT record holding the ``txt``
        strings, A records ``hosts``; every TTL ``ttl``."""
        self.stop()
        lines = ["no-resolv", "no-hosts", "no-poll", "bind-interfaces",
                 f"listen-address={self.address}", f"port={self.port}",
                 f"local=/{self.domain}/", f"local-ttl={ttl}", "log-queries"]
        lines += [f"srv-host={self.name},{target},{port}" for target, port in srv]
        if txt:
            lines.append(f"txt-record={self.name}," + ",".join(f'"{t}"' for t in txt))
        lines += [f"host-record={name},{ip}" for name, ip in (hosts or {}).items()]
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text("\n".join(lines) + "\n")
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, DNSMASQ, "--keep-in-foreground",
             "--log-facility=-", f"--conf-file={conf}", "--pid-file", "--user=root"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while "started, version" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dnsmasq did not start: {self.log()[-2000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
        self.proc = None

    def resolv_conf(self) -> Path:
        """A resolv.conf naming this server (for the agent's private mount namespace)."""
        path = self.workdir / "resolv.conf"
        path.write_text(f"nameserver {self.address}\noptions timeout:1 attempts:2\n")
        path.chmod(0o644)
        return path
