"""The agent hears about interface changes from the kernel (rtnetlink), not by polling /sys."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")

PROBE = r"""
import select, subprocess, sys
from hostsflow.host.link_watch import LinkWatch
w = LinkWatch()
w.drain()
assert not w.take(), "nothing happened yet"
subprocess.run(["ip", "link", "add", "lw0", "type", "veth", "peer", "name", "lw1"], check=True)
select.select([w], [], [], 2.0)
w.drain()
print("added", w.take())
subprocess.run(["ip", "link", "set", "lw0", "up"], check=True)
select.select([w], [], [], 2.0)
w.drain()
print("up", w.take())
print("quiet", w.take())
"""


def test_link_changes_are_heard_in_the_namespace():
    ns = f"hf-lw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["added", "True", "up", "True", "quiet", "False"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
