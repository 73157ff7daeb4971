"""A real ``hostsflowd`` process for the end-to-end tests and the benchmarks (not part of the
public testing kit): the repository's tests load it with
``hostsflow.testing.load_file_module``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any


class AgentProcess:
    """A real ``hostsflowd`` process (optionally inside a network namespace) on a config text.

    Use as a context manager; ``stop()`` sends SIGTERM and returns the exit status."""

    def __init__(self, config_text: str, tmpdir: Any, netns: str | None = None,
                 args: tuple[str, ...] = (), wrapper: tuple[str, ...] = ()) -> None:
        """:param netns: run inside this network namespace (``ip netns exec``).
        :param wrapper: a command prefix the agent's command line is appended to (for set-ups
            ``netns`` alone does not cover)."""
        # the config lives where the agent can still read it after dropping root (SIGHUP)
        self.confdir = tempfile.mkdtemp(prefix="hostsflow-conf-")
        os.chmod(self.confdir, 0o755)
        self.conf = os.path.join(self.confdir, "hsflowd.conf")
        with open(self.conf, "w") as f:
            f.write(config_text)
        os.chmod(self.conf, 0o644)
        self.log_path = os.path.join(str(tmpdir), "agent.log")
        self.status_path = os.path.join(str(tmpdir), "status.json")
        cmd = [sys.executable, "-m", "hostsflow", "-f", self.conf,
               "--status-file", self.status_path, *args]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        cmd = [*wrapper, *cmd]
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` is in the agent's log; fail if the agent exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"hostsflowd exited: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the agent log: {self.log()[-2000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except Exception:  # noqa: BLE001 - still running: kill it, the test will fail
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.confdir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> "AgentProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
