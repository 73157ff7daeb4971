"""The agent's own health counters: samples taken and sent, faults, plugin errors.

Read with ``hostsflow status`` (from the status file the agent rewrites every few seconds) or
from the final log line."""

from __future__ import annotations

import collections
import json
import os
import tempfile
import time
from typing import Any


class Health:
    """Named counters, cheap to bump."""

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.started = time.time()

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def snapshot(self) -> dict[str, Any]:
        return dict(sorted(self.counters.items()))


def write_status(path: str, status: dict[str, Any]) -> None:
    """Atomically replace the status file with ``status`` as JSON."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".status")
    with os.fdopen(fd, "w") as f:
        json.dump(status, f, indent=1, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_status(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)
