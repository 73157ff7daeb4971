"""The agent's own health counters: samples taken and sent, drops by reason, faults, module
errors.

Read with ``hostsflow status`` (from the status file the agent rewrites every few seconds), from
the ``health`` line the agent logs every five minutes, or from the final log line."""

from __future__ import annotations

import collections
import json
import os
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


class StatusFile:
    """The status file, opened once at start-up (while still root) and rewritten in place, so
    the agent can keep updating it after it dropped privileges."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.fchmod(self.fd, 0o644)

    def write(self, status: dict[str, Any]) -> None:
        # one line: without ``indent`` json uses its C encoder (a quarter of the CPU);
        # ``hostsflow status`` prints it indented
        data = json.dumps(status, sort_keys=True).encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def close(self) -> None:
        os.close(self.fd)


def read_status(path: str, attempts: int = 3) -> dict[str, Any]:
    """The last status the agent wrote (retried if caught mid-rewrite)."""
    for attempt in range(attempts):
        with open(path) as f:
            text = f.read()
        try:
            return json.loads(text)
        except ValueError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)
    return {}
