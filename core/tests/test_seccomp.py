"""The agent's own seccomp filter, installed in a child process: the calls it denies fail with
EPERM (unshare, sethostname, mount, ptrace), everything an agent does still works (files,
sockets, threads, getpid), and without no_new_privs an unprivileged process cannot install it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hostsflow import seccomp

pytestmark = [pytest.mark.skipif(not seccomp.supported(), reason="no filter for this machine"),
              pytest.mark.skipif(os.geteuid() != 0, reason="root: the calls must be ones "
                                 "that would succeed without the filter")]
#: the child runs in a UTS namespace of its own: a host name it sets is nobody else's
IN_OWN_UTS = ["unshare", "--uts", sys.executable, "-c"]

CHILD = r"""
import ctypes, errno, os, socket, sys, threading
from hostsflow import seccomp
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
t = threading.Thread(target=lambda: None)  # a thread that exists when the filter goes on
t.start()
assert seccomp.install()
t.join()
def refused(name, *args):
    rc = getattr(libc, name)(*args)
    return rc == -1 and ctypes.get_errno() == errno.EPERM
results = {
    "unshare": refused("unshare", 0x04000000),  # CLONE_NEWUTS
    "sethostname": refused("sethostname", b"x", 1),
    # allowed, these fail harmlessly (ENOENT, EIO); refused, with EPERM
    "mount": refused("mount", b"none", b"/nonexistent-hostsflow", b"tmpfs", 0, None),
    "ptrace": refused("ptrace", ctypes.c_long(-1), 0, 0, 0),
}
# what an agent does
with open("/proc/self/status") as f:
    seccomp_mode = [l.split()[1] for l in f if l.startswith("Seccomp:")][0]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); s.close()
th = threading.Thread(target=lambda: None); th.start(); th.join()
print(sorted(k for k, v in results.items() if v), seccomp_mode, os.getpid() > 0)
"""


def test_denied_calls_fail_and_the_rest_works():
    r = subprocess.run([*IN_OWN_UTS, CHILD], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("]")[0] + "]" == str(sorted(["mount", "ptrace", "sethostname",
                                                       "unshare"]))
    assert r.stdout.split("]")[1].split() == ["2", "True"]


def test_without_the_filter_root_may_do_them():
    """The control: the same child without the filter unshares and sets its host name."""
    control = CHILD.replace("assert seccomp.install()", "pass")
    r = subprocess.run([*IN_OWN_UTS, control], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "'unshare'" not in r.stdout and "'sethostname'" not in r.stdout


def test_program_shape():
    prog = seccomp.program("x86_64")
    assert prog[0] == (0x20, 0, 0, 4) and prog[-2] == (0x06, 0, 0, seccomp.RET_ALLOW)
    assert prog[-1][3] == seccomp.RET_ERRNO | 1  # EPERM
    # every deny jump lands on the last instruction
    for i, (code, jt, jf, k) in enumerate(prog):
        if code == 0x15 and i > 1:
            assert i + 1 + jt == len(prog) - 1
    assert {"mount", "ptrace", "kexec_load", "init_module"} <= set(seccomp.denied("x86_64"))
    assert "bpf" not in seccomp.denied("x86_64") and "setns" not in seccomp.denied("x86_64")
