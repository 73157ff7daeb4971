"""The agent's own seccomp filter, installed after it dropped root: system calls no agent
needs (mounting, rebooting, loading kernel modules, kexec, swap, setting the clock or the host
name, ptrace and other processes' memory, keyrings, perf events, new namespaces) fail with
EPERM; everything else is allowed, so modules keep working.

Built as a classic BPF program for x86_64 and aarch64 (system call numbers differ per
architecture; on others no filter is installed and :func:`supported` says so).  A call made
with another architecture's convention (i386 ``int 0x80`` on x86_64, the x32 ABI) is refused.
Installed for every thread of the process (``SECCOMP_FILTER_FLAG_TSYNC``); needs
``no_new_privs`` set first.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

#: (audit architecture, seccomp(2) number, denied system calls by name -> number)
_ARCHES: dict[str, tuple[int, int, dict[str, int]]] = {
    "x86_64": (0xC000003E, 317, {
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "reboot": 169,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "swapon": 167, "swapoff": 168, "acct": 163,
        "settimeofday": 164, "clock_settime": 227, "adjtimex": 159, "clock_adjtime": 305,
        "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "ptrace": 101,
        "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "open_by_handle_at": 304, "name_to_handle_at": 303, "perf_event_open": 298,
        "userfaultfd": 323, "add_key": 248, "request_key": 249, "keyctl": 250,
        "unshare": 272, "quotactl": 179, "syslog": 103, "lookup_dcookie": 212,
        "uselib": 134, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    }),
    "aarch64": (0xC00000B7, 277, {
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "reboot": 142,
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "swapon": 224, "swapoff": 225, "acct": 89,
        "settimeofday": 170, "clock_settime": 112, "adjtimex": 171, "clock_adjtime": 266,
        "sethostname": 161, "setdomainname": 162, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "kcmp": 272, "open_by_handle_at": 265,
        "name_to_handle_at": 264, "perf_event_open": 241, "userfaultfd": 282,
        "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97, "quotactl": 60,
        "syslog": 116, "lookup_dcookie": 18, "open_tree": 428, "move_mount": 429,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    }),
}
X32_SYSCALL_BIT = 0x40000000

_LD_ABS_W = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
_NR, _ARCH = 0, 4  # offsets in struct seccomp_data
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1


class SeccompError(OSError):
    """The filter could not be installed."""


def machine() -> str:
    return platform.machine()


def supported(machine: str | None = None) -> bool:
    """Whether this architecture has a filter here."""
    return (machine or platform.machine()) in _ARCHES


def denied(machine: str | None = None) -> list[str]:
    """The names of the system calls the filter refuses on this architecture."""
    return sorted(_ARCHES.get(machine or platform.machine(), (0, 0, {}))[2])


def program(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions."""
    arch, _, calls = _ARCHES[machine or platform.machine()]
    deny = RET_ERRNO | errno.EPERM
    prog = [(_LD_ABS_W, 0, 0, _ARCH), (_JEQ_K, 1, 0, arch), (_RET_K, 0, 0, deny),
            (_LD_ABS_W, 0, 0, _NR)]
    if arch == _ARCHES["x86_64"][0]:
        prog += [(_JGE_K, 0, 1, X32_SYSCALL_BIT), (_RET_K, 0, 0, deny)]
    numbers = sorted(set(calls.values()))
    n = len(numbers)
    prog += [(_JEQ_K, n - i, 0, nr) for i, nr in enumerate(numbers)]
    prog += [(_RET_K, 0, 0, RET_ALLOW), (_RET_K, 0, 0, deny)]
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> bool:
    """Install the filter on every thread of this process; False when this architecture has
    none.  :raises SeccompError: the kernel refused it."""
    machine = platform.machine()
    if not supported(machine):
        return False
    prog = program(machine)
    buf = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *ins) for ins in prog))
    fprog = _SockFprog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    nr = _ARCHES[machine][1]
    if libc.syscall(ctypes.c_long(nr), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                    ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog)) != 0:
        err = ctypes.get_errno()
        raise SeccompError(err, f"seccomp filter: {os.strerror(err)}")
    return True
