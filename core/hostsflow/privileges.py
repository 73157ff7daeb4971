"""Dropping root after start-up, keeping only the Linux capabilities modules still need.

The agent opens every privileged socket in ``sflow_configure``, then calls
:func:`drop_privileges`: supplementary groups cleared, gid and uid set to the unprivileged user,
and the capability sets reduced to what modules asked for with
``agent.retain_capabilities(...)`` (e.g. ``CAP_NET_RAW`` to re-open a pcap tap on an interface
that was re-created).  Python has no capset(2), so it is called through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import sys
from typing import Any, Iterable

CAPABILITIES = {
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_BPF": 39,
    "CAP_PERFMON": 38,
}
PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(OSError):
    """The agent could not switch user or set its capabilities."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def capability_mask(names: Iterable[str]) -> int:
    """A 64-bit mask of the named capabilities; unknown names raise ValueError."""
    mask = 0
    for name in names:
        key = name.upper() if name.upper().startswith("CAP_") else f"CAP_{name.upper()}"
        if key not in CAPABILITIES:
            raise ValueError(f"unknown capability {name!r}")
        mask |= 1 << CAPABILITIES[key]
    return mask


def set_capabilities(mask: int) -> None:
    """Set the permitted and effective sets of this thread to ``mask`` (inheritable empty)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
    if _libc().capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"capset: {os.strerror(err)}")


def _can_enter(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` (no supplementary groups) may traverse every directory up to
    and including ``path``."""
    path = os.path.abspath(path)
    while True:
        try:
            st = os.stat(path)
        except OSError:
            return True  # a sys.path entry that does not exist is harmless
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def unreadable_python_paths(user: str) -> list[str]:
    """The interpreter's and sys.path's directories that ``user`` could not reach: after a drop
    to that user, Python's lazy imports (codecs, module modules) would fail there."""
    pw = pwd.getpwnam(user)
    paths = {sys.prefix, sys.base_prefix, *(p for p in sys.path if p and os.path.isdir(p))}
    return sorted(p for p in paths if not _can_enter(p, pw.pw_uid, pw.pw_gid))


def drop_privileges(user: str, keep: Iterable[str] = ()) -> tuple[int, int]:
    """Become ``user`` (and its primary group), keeping only the capabilities in ``keep``.

    :returns: (uid, gid) now in force.
    :raises PrivilegeError: the user does not exist, or a system call failed.
    """
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(0, f"no such user {user!r}") from None
    blocked = unreadable_python_paths(user)
    if blocked:
        raise PrivilegeError(0, f"user {user} cannot read the Python installation at "
                                f"{', '.join(blocked)}; install the agent where {user} can "
                                "read it (e.g. a venv from /usr/bin/python3)")
    mask = capability_mask(keep)
    import encodings.idna  # noqa: F401  - getaddrinfo() needs it later, loaded lazily
    libc = _libc()
    if mask and libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"prctl(PR_SET_KEEPCAPS): {os.strerror(err)}")
    try:
        os.setgroups([])
        os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
        os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    except OSError as exc:
        raise PrivilegeError(exc.errno or 0, f"switching to {user}: {exc.strerror}") from None
    set_capabilities(mask)
    return pw.pw_uid, pw.pw_gid


class Retention:
    """What the modules asked to keep when the agent drops root: root itself
    (``root_reasons``) or capabilities (``kept_capabilities``, by reason)."""

    def __init__(self) -> None:
        self.root_reasons: list[str] = []
        self.kept_capabilities: dict[str, set[str]] = {}

    def retain_root(self, reason: str) -> None:
        """Ask to keep root after start-up (call from ``sflow_configure``); logged with the
        reason.  Prefer :meth:`retain_capabilities` when a capability or two is enough."""
        self.root_reasons.append(reason)

    def retain_capabilities(self, *capabilities: str, reason: str) -> None:
        """Ask to keep these Linux capabilities (``"CAP_NET_RAW"``...) when the agent drops
        root after ``sflow_configure``; logged with the reason."""
        capability_mask(capabilities)  # unknown names fail here, in the module's configure
        self.kept_capabilities.setdefault(reason, set()).update(capabilities)

    def drop(self, user: str | None, drop_priv: bool, log: Any, count: Any) -> None:
        """After configure: become ``user`` keeping the capabilities asked for, unless
        ``dropPriv = off``, a module asked to keep root, or no user was given (the testing
        kit).  A failure is logged and counted (``count``), and the agent carries on."""
        if user is None or not drop_priv or os.geteuid() != 0:
            return
        if self.root_reasons:
            log.info("keeping_root", reasons=self.root_reasons)
            return
        keep = sorted(set().union(*self.kept_capabilities.values()))
        try:
            uid, gid = drop_privileges(user, keep)
        except PrivilegeError as exc:
            log.error("drop_privileges_failed", user=user, error=str(exc))
            count("faults.drop_privileges")
            return
        log.info("dropped_privileges", user=user, uid=uid, gid=gid, capabilities=keep,
                 reasons=sorted(self.kept_capabilities))
