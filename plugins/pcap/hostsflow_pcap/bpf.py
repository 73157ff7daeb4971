"""Classic BPF socket filters for kernel-side 1-in-N random packet sampling.

The program is attached with ``setsockopt(SO_ATTACH_FILTER)`` straight on the capture socket's
file descriptor (``cap.getfd()``), never through libpcap's filter string: libpcap re-runs string
filters in user space on the first ring blocks, where the ``ld [random]`` ancillary load is an
out-of-bounds load and fails.  Attaching again replaces the old program atomically, which is how
a new sampling rate takes effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

SOL_SOCKET = 1
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27

#: BPF_LD|BPF_W|BPF_ABS with k = SKF_AD_OFF (-0x1000) + SKF_AD_RANDOM (56): A = random u32
LD_RANDOM = (0x20, 0, 0, 0xFFFFF038)
BPF_ALU_MOD_K = 0x94
BPF_JMP_JEQ_K = 0x15
BPF_RET_K = 0x06

#: one cBPF instruction: (code, jt, jf, k)
Insn = tuple[int, int, int, int]

_INSN = struct.Struct("=HBBI")
_FPROG = struct.Struct("@HL")  # struct sock_fprog {u16 len; struct sock_filter *filter} (native)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def sampling_program(n: int, accept: int) -> list[Insn]:
    """The program that keeps one packet in ``n`` at random, each cut to ``accept`` bytes.

    ``accept`` should be the snap length: the kernel copies that many bytes of an accepted packet
    into the ring (returning -1 would copy whole frames: 5 times fewer samples per ring block, 5 times more
    wakeups).
    ``n <= 1`` gives a program that accepts every packet; ``n`` must not be 0 (use
    :func:`drop_all_program` to sample nothing).
    """
    if n < 0 or n > 0xFFFFFFFF:
        raise ValueError(f"sampling rate out of range: {n}")
    if n == 0:
        raise ValueError("sampling rate 0 means no sampling; use drop_all_program()")
    accept &= 0xFFFFFFFF
    if n == 1:
        return [(BPF_RET_K, 0, 0, accept)]
    return [
        LD_RANDOM,
        (BPF_ALU_MOD_K, 0, 0, n),  # A = A % n
        (BPF_JMP_JEQ_K, 0, 1, 0),  # A == 0 ? next : skip one
        (BPF_RET_K, 0, 0, accept),  # keep, cut to accept bytes
        (BPF_RET_K, 0, 0, 0),  # drop
    ]


def drop_all_program() -> list[Insn]:
    """A program that keeps nothing (an open tap whose rate is 0)."""
    return [(BPF_RET_K, 0, 0, 0)]


def pack_program(prog: list[Insn]) -> bytes:
    """The instructions as the kernel's ``struct sock_filter`` array."""
    return b"".join(_INSN.pack(*insn) for insn in prog)


def attach_filter(fd: int, prog: list[Insn]) -> None:
    """Attach (or replace) the socket filter on ``fd``.

    Uses libc ``setsockopt`` through ctypes so no Python socket object owns (and later closes)
    the capture library's descriptor.  Raises :class:`OSError` if the kernel refuses it.
    """
    if not prog:
        raise ValueError("empty BPF program")
    insns = ctypes.create_string_buffer(pack_program(prog))
    fprog = _FPROG.pack(len(prog), ctypes.addressof(insns))
    if _libc.setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, fprog, len(fprog)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"SO_ATTACH_FILTER: {os.strerror(err)}")
