"""The agent's own health counters: samples taken and sent, drops by reason, faults, module
errors.

Read with ``hostsflow status`` (from the status file the agent rewrites every few seconds), from
the ``health`` line the agent logs every five minutes, or from the final log line."""

from __future__ import annotations

import collections
import errno
import json
import os
import stat
import time
from typing import Any


class Health:
    """Named counters, cheap to bump."""

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.started = time.time()

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def set(self, name: str, value: int) -> None:
        """Set a figure the agent derives from elsewhere (datagrams sent, module errors...)."""
        self.counters[name] = value

    def snapshot(self) -> dict[str, Any]:
        return dict(sorted(self.counters.items()))

    def summary(self) -> dict[str, Any]:
        """The one-line health report: samples taken and sent, datagrams, drops by reason,
        module errors and faults (zero-valued drop and fault reasons left out)."""
        c = self.counters
        return {
            "uptime": int(time.time() - self.started),
            "flow_samples_taken": c["flow_samples_taken"],
            "flow_samples_sent": c["flow_samples_sent"],
            "counter_samples_sent": c["counter_samples"],
            "datagrams": c["datagrams"],
            "datagrams_delivered": c["datagrams_delivered"],
            "dropped": {k[8:]: v for k, v in sorted(c.items()) if k.startswith("dropped.") and v},
            "holds_timed_out": c["holds_timed_out"],
            "module_errors": c["module_errors"],
            "faults": {k[7:]: v for k, v in sorted(c.items()) if k.startswith("faults.") and v},
        }


class Tally(dict[str, int]):
    """Counts a module keeps on its packet path (a plain dict increment per event), pushed
    into the agent's health counters as ``PREFIX.name`` once a second with :meth:`push`."""

    def __init__(self, prefix: str, names: Any) -> None:
        super().__init__((n, 0) for n in names)
        self.prefix = prefix
        self._pushed: dict[str, int] = {}

    def push(self, count: Any) -> dict[str, int]:
        """Call ``count(name, n)`` with what each counter grew since the last push; returns
        those increases (only the counters that grew)."""
        grown = {}
        for name, value in self.items():
            d = value - self._pushed.get(name, 0)
            if d:
                count(f"{self.prefix}.{name}", d)
                self._pushed[name] = value
                grown[name] = d
        return grown


class StatusError(ValueError):
    """The status file holds no complete status (empty, truncated or not JSON)."""


class StatusFile:
    """The status file, replaced whole on every write (a temporary file in the same directory,
    then rename), so a reader never sees half of one.

    Made while the agent is still root: a directory it creates (or the default one) is given
    to ``owner`` (uid, gid), the user the agent becomes, so the renames keep working after the
    drop.  Where that user cannot write the directory (a path the operator chose, owned by
    someone else) the file is instead opened now and rewritten in place.  Nothing here is
    allowed to stop the agent: :meth:`write` raises OSError, which the caller logs once."""

    def __init__(self, path: str, owner: tuple[int, int] | None = None,
                 own_directory: bool = False) -> None:
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        self.fd: int | None = None  # in-place mode
        self.tmp = os.path.join(self.directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        created = not os.path.isdir(self.directory)
        if created:
            os.makedirs(self.directory, mode=0o755, exist_ok=True)
        if owner is not None and (created or own_directory):
            st = os.stat(self.directory)
            if (st.st_uid, st.st_gid) != owner:
                try:
                    os.chown(self.directory, *owner)
                except PermissionError:
                    pass  # no CAP_CHOWN: rewritten in place below
        uid, gid = owner if owner is not None else (os.geteuid(), os.getegid())
        if not _can_write(self.directory, uid, gid):
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                              0o644)
            os.fchmod(self.fd, 0o644)
        elif owner is not None:
            # a status file left by an earlier run as root: ours to replace (a sticky
            # directory such as /tmp refuses renames over another user's file)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_uid != uid:
                    os.chown(path, uid, gid)
            except (FileNotFoundError, PermissionError):
                pass

    def write(self, status: dict[str, Any]) -> None:
        # one line: without ``indent`` json uses its C encoder (a quarter of the CPU);
        # ``hostsflow status`` prints it indented
        data = json.dumps(status, sort_keys=True).encode()
        if self.fd is not None:
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
            return
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
        finally:
            os.close(fd)
        os.rename(self.tmp, self.path)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _can_write(directory: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may reach ``directory`` and create files in it (by the mode
    bits; root always may)."""
    from .privileges import can_enter

    if uid == 0:
        return os.access(directory, os.W_OK)
    if not can_enter(directory, uid, gid):
        return False
    try:
        st = os.stat(directory)
    except OSError:
        return False
    if st.st_uid == uid:
        bits = 0o300
    elif st.st_gid == gid:
        bits = 0o030
    else:
        bits = 0o003
    return st.st_mode & bits == bits


def read_status(path: str, attempts: int = 3) -> dict[str, Any]:
    """The last status the agent wrote (retried if caught mid-rewrite).

    :raises OSError: no such file, or unreadable.
    :raises StatusError: the file holds no complete status."""
    problem = ""
    for attempt in range(attempts):
        with open(path, "rb") as f:
            data = f.read(1 << 24)
        if not data.strip():
            problem = "it is empty"
        else:
            try:
                status = json.loads(data)
            except ValueError as exc:
                problem = f"it is not a complete status (not JSON: {exc})"
            else:
                if isinstance(status, dict):
                    return status
                problem = f"it holds a JSON {type(status).__name__}, not a status object"
        if attempt < attempts - 1:
            time.sleep(0.05)
    raise StatusError(problem)
