"""hsflowd's command line for ``hostsflowd``, with hsflowd's meaning for each of its flags:

    hostsflowd [-dvP] [-p PIDFile] [-u UUID] [-m machine_id] [-f CONFIGFile] [-l MODULESDir]
               [-D LOGFile] [-L LOGBytes] [-c CRASHFile] [-M MEMLimit]

``-d`` debug logging (the agent always runs in the foreground: systemd does the daemonising,
so hsflowd's "do not daemonize" has nothing left to turn off), ``-v`` version, ``-P`` keep root,
``-p`` PID file, ``-u`` the host UUID, ``-m`` the machine-id the UUID is derived from when the
system has none, ``-f`` config file, ``-D`` log to a file, ``-L`` stop writing that file at this
many bytes, ``-c`` where a crash (fatal signal) writes its tracebacks, ``-M`` exit when the
resident memory exceeds this many bytes.  ``-l`` (C modules directory), ``-F`` (debug control
file) and ``-o`` (hsflowd.auto output file) have no use here: accepted, and said so at debug
level.  The user to run as is ``--run-as`` (hsflowd has none: its ``-u`` is the UUID).
"""

from __future__ import annotations

import argparse
import os
import resource
from typing import Any, Sequence, TextIO

from . import __version__
from .host.identity import parse_hex_id

DEFAULT_CONFIG = "/etc/hsflowd.conf"
DEFAULT_STATUS = "/run/hostsflow/status.json"
DEFAULT_LOG_BYTES = 10_000_000  # hsflowd's HSP_DEFAULT_LOGBYTES
#: hsflowd flags accepted with no effect here, and why
NO_USE = {
    "modules_dir": "-l: modules are Python packages found through entry points, not a directory",
    "debug_control": "-F: there is one debug level (-d), no per-module control file",
    "output_file": "-o: hsflowd.auto is not written (hostsflow status reads the status file)",
}


def _uuid(text: str) -> bytes:
    parsed = parse_hex_id(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"bad UUID format: {text!r} (-u is the host UUID, as "
                                         "in hsflowd; the user to run as is --run-as)")
    return parsed


def _machine_id(text: str) -> bytes:
    parsed = parse_hex_id(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"bad UUID (machine-id) format: {text!r}")
    return parsed


def _bytes(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative number of bytes: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hostsflowd", description="host sFlow agent (hsflowd's command line)",
        usage="hostsflowd [-dvP] [-p PIDFile] [-u UUID] [-m machine_id] [-f CONFIGFile] "
              "[-l MODULESDir] [-D LOGFile] [-L LOGBytes] [-c CRASHFile] [-M MEMLimit] "
              "[--run-as USER] [--status-file PATH] [--test [--json]]")
    p.add_argument("-f", "--config", default=DEFAULT_CONFIG, metavar="CONFIGFile",
                   help="config file (%(default)s)")
    p.add_argument("-d", "--debug", action="count", default=0,
                   help="debug logging (the agent always stays in the foreground)")
    p.add_argument("-v", "-V", "--version", action="version", version=f"hostsflowd {__version__}")
    p.add_argument("-P", "--keep-root", action="store_true",
                   help="do not drop privileges (run as root)")
    p.add_argument("-p", "--pid-file", metavar="PIDFile",
                   help="write the agent's pid here (refused while a live agent's pid is in it)")
    p.add_argument("-u", "--uuid", type=_uuid, metavar="UUID",
                   help="the host UUID (overrides uuid = in the config and the system's)")
    p.add_argument("-m", "--machine-id", type=_machine_id, metavar="machine_id",
                   help="the machine-id the host UUID is derived from when the system has none")
    p.add_argument("-l", dest="modules_dir", metavar="MODULESDir", help=NO_USE["modules_dir"])
    p.add_argument("-F", dest="debug_control", metavar="debugCtrl", help=NO_USE["debug_control"])
    p.add_argument("-o", dest="output_file", metavar="outputFile", help=NO_USE["output_file"])
    p.add_argument("-D", "--log-file", metavar="LOGFile", help="log to this file (appended)")
    p.add_argument("-L", "--log-bytes", type=_bytes, default=DEFAULT_LOG_BYTES,
                   metavar="LOGBytes", help="stop writing LOGFile at this size (%(default)s; "
                                            "0: no limit)")
    p.add_argument("-c", "--crash-file", metavar="CRASHFile",
                   help="where a fatal signal writes every thread's traceback (default stderr)")
    p.add_argument("-M", "--mem-limit", type=_bytes, default=0, metavar="MEMLimit",
                   help="exit (status 1) when the resident memory exceeds this many bytes")
    p.add_argument("--run-as", default="nobody", metavar="USER",
                   help="user to run as after start-up when dropPriv is on (%(default)s)")
    p.add_argument("--status-file", default=DEFAULT_STATUS,
                   help="where to write health counters (%(default)s); '' for none")
    p.add_argument("--test", action="store_true",
                   help="run the configured modules for one polling round, print what would be "
                        "sent (decoded), send nothing")
    p.add_argument("--test-seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="with --test: one JSON object per datagram")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


def unused_flags(args: argparse.Namespace) -> dict[str, str]:
    """The given flags that have no use here: flag -> why (for a debug line)."""
    return {dest: why for dest, why in NO_USE.items() if getattr(args, dest) is not None}


class LimitedLog:
    """A log file that stops taking lines once it holds ``limit`` bytes (hsflowd's -L: lines
    beyond the limit are dropped, the file is never truncated)."""

    def __init__(self, path: str, limit: int) -> None:
        self.file: TextIO = open(path, "a", buffering=1, encoding="utf-8")
        self.limit = limit

    def write(self, text: str) -> int:
        if self.limit and self.file.tell() >= self.limit:
            return 0
        return self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def isatty(self) -> bool:
        return False


class PidFileError(Exception):
    """Another agent's pid is in the PID file."""


class PidFile:
    """``-p PIDFile``: the pid written at start-up (while still root), removed at exit when
    the agent still can."""

    def __init__(self, path: str) -> None:
        self.path = path
        other = _pid_in(path)
        if other and other != os.getpid() and agent_alive(other):
            raise PidFileError(f"{path} names pid {other}, which is running: another agent? "
                               "(remove the file if it is not)")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)

    def remove(self) -> None:
        if _pid_in(self.path) == os.getpid():
            try:
                os.unlink(self.path)
            except OSError:
                pass  # the directory is root's and the agent is not root any more


def _pid_in(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def agent_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is a hostsflow agent (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"hostsflow" in f.read()
    except OSError:
        return False


def rss_bytes() -> int:
    """The resident memory of this process now, in bytes (from /proc/self/statm)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryLimitExceeded(Exception):
    """``-M``: the agent's resident memory went over the limit."""


def memory_check(limit: int) -> Any:
    """A callable that raises :class:`MemoryLimitExceeded` when RSS is over ``limit`` bytes
    (None when there is no limit)."""
    if not limit:
        return None

    def check() -> None:
        rss = rss_bytes()
        if rss > limit:
            raise MemoryLimitExceeded(f"memory limit of {limit} bytes exceeded (rss={rss})")

    return check
