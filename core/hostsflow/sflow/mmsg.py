"""``sendmmsg(2)``: many datagrams to one connected UDP socket in one system call.

Python's socket module has no sendmmsg; this calls libc's through ctypes.  On the packet path
the exporter finishes several datagrams per capture batch; sending them one by one costs a
system call each, and on a busy host (or a collector on the same CPU) a wake-up of the
receiver each.  :func:`sendmmsg` returns how many datagrams the kernel took, or raises
OSError if it took none; :data:`AVAILABLE` is False where libc has no sendmmsg (the caller
then sends one by one).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Sequence

MAX_BATCH = 1024  #: UIO_MAXIOV: the kernel's limit of messages per call


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_char_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _libc_sendmmsg():  # type: ignore[no-untyped-def]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_sendmmsg = _libc_sendmmsg()
AVAILABLE = _sendmmsg is not None


def sendmmsg(fd: int, datagrams: Sequence[bytes]) -> int:
    """Send ``datagrams`` (at most :data:`MAX_BATCH`) on the connected socket ``fd``.

    Returns the number sent (the kernel may stop early: the caller sends the rest again or
    reports them); raises OSError when not even the first one could be sent."""
    n = len(datagrams)
    iov = (_Iovec * n)()
    msgs = (_Mmsghdr * n)()
    for i, data in enumerate(datagrams):
        v = iov[i]
        v.iov_base = data  # a pointer into the bytes object, which the caller keeps alive
        v.iov_len = len(data)
        h = msgs[i].msg_hdr
        h.msg_iov = ctypes.pointer(v)
        h.msg_iovlen = 1
    sent = _sendmmsg(fd, msgs, n, 0)  # type: ignore[misc]
    if sent < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return sent
