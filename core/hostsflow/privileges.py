"""Dropping root after start-up, keeping only the Linux capabilities modules still need.

The agent opens every privileged socket in ``sflow_configure``, then calls
:func:`drop_privileges`: the capability bounding set reduced to what modules asked for with
``agent.retain_capabilities(...)`` (e.g. ``CAP_NET_RAW`` to re-open a pcap tap on an interface
that was re-created), supplementary groups cleared, gid and uid set to the unprivileged user,
the permitted and effective sets reduced to the same capabilities, ``no_new_privs`` set and a
seccomp filter (:mod:`.seccomp`) refusing the system calls no agent needs.  Python has no
capset(2), so it is called through ctypes.  A drop that cannot be completed raises
:class:`PrivilegeError`: the agent then exits instead of running with more than it asked for.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import sys
from typing import Any, Iterable

from . import seccomp

CAPABILITIES = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
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
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
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


def capability_name(name: str) -> str:
    """``net_raw``, ``CAP_NET_RAW``... as ``CAP_NET_RAW``; unknown names raise ValueError."""
    key = name.upper() if name.upper().startswith("CAP_") else f"CAP_{name.upper()}"
    if key not in CAPABILITIES:
        raise ValueError(f"unknown capability {name!r}")
    return key


def capability_mask(names: Iterable[str]) -> int:
    """A 64-bit mask of the named capabilities; unknown names raise ValueError."""
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[capability_name(name)]
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


def can_enter(path: str, uid: int, gid: int) -> bool:
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
    return sorted(p for p in paths if not can_enter(p, pw.pw_uid, pw.pw_gid))


def last_capability() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def capability_names(mask: int) -> list[str]:
    """The names of the capabilities in ``mask`` (``CAP_<n>`` for ones without a name here)."""
    by_number = {v: k for k, v in CAPABILITIES.items()}
    return [by_number.get(n, f"CAP_{n}") for n in range(64) if mask >> n & 1]


def process_privileges(pid: int | str = "self") -> dict[str, int]:
    """What /proc/PID/status says about a process's privileges (:func:`privileges_in`)."""
    with open(f"/proc/{pid}/status") as f:
        return privileges_in(f.read())


def privileges_in(proc_status: str) -> dict[str, int]:
    """From the text of a /proc/PID/status: ``uid`` (effective), ``CapEff``, ``CapPrm``,
    ``CapBnd``, ``CapAmb`` (masks), ``NoNewPrivs`` and ``Seccomp``."""
    out: dict[str, int] = {}
    for line in proc_status.splitlines():
        key, _, value = line.partition(":")
        if key == "Uid":
            out["uid"] = int(value.split()[1])
        elif key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            out[key] = int(value, 16)
        elif key in ("NoNewPrivs", "Seccomp"):
            out[key] = int(value)
    return out


def has_capability(name: str) -> bool:
    """Whether this process has capability ``name`` in its effective set now."""
    return bool(process_privileges().get("CapEff", 0) & capability_mask([name]))


def _prctl(option: int, arg: int, what: str) -> int:
    zero = ctypes.c_ulong(0)
    result = _libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero)
    if result < 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"{what}: {os.strerror(err)}")
    return int(result)


def limit_bounding_set(mask: int) -> None:
    """Drop every capability outside ``mask`` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last_capability() + 1):
        if mask >> cap & 1 or not _prctl(PR_CAPBSET_READ, cap, "PR_CAPBSET_READ"):
            continue
        try:
            _prctl(PR_CAPBSET_DROP, cap, "PR_CAPBSET_DROP")
        except PrivilegeError as exc:
            raise PrivilegeError(exc.errno or 0, f"cannot drop {capability_names(1 << cap)[0]} "
                                 f"from the bounding set ({exc.strerror}; it takes "
                                 "CAP_SETPCAP)") from None


def drop_privileges(user: str, keep: Iterable[str] = ()) -> tuple[int, int, str]:
    """Become ``user`` (and its primary group), keeping only the capabilities in ``keep`` (in
    the bounding set too), with ``no_new_privs`` and the seccomp filter set.  A capability in
    ``keep`` that the process does not have to begin with is not kept (the caller compares).

    :returns: (uid, gid, what became of the seccomp filter: "on", "none for ARCH" or why
        the kernel refused it).
    :raises PrivilegeError: the user does not exist, a system call failed, or the process
        does not look as asked afterwards (checked in /proc/self/status).
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
    mask = capability_mask(keep) & process_privileges().get("CapPrm", 0)
    import encodings.idna  # noqa: F401  - getaddrinfo() needs it later, loaded lazily
    limit_bounding_set(mask)
    if mask:
        _prctl(PR_SET_KEEPCAPS, 1, "prctl(PR_SET_KEEPCAPS)")
    try:
        os.setgroups([])
        os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
        os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    except OSError as exc:
        raise PrivilegeError(exc.errno or 0, f"switching to {user}: {exc.strerror}") from None
    set_capabilities(mask)
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT_CLEAR_ALL")
    except PrivilegeError:
        pass  # kernels before 4.3 have no ambient set
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")
    try:
        filtered = "on" if seccomp.install() else f"none for {seccomp.machine()}"
    except seccomp.SeccompError as exc:
        filtered = str(exc)  # a kernel without seccomp filters: the rest still holds
    now = process_privileges()
    wrong = {k: now.get(k) for k, want in (("uid", pw.pw_uid), ("CapEff", mask),
                                            ("CapPrm", mask), ("CapBnd", mask), ("CapAmb", 0))
             if now.get(k, want) != want}
    if wrong:
        raise PrivilegeError(0, f"after the switch to {user} the process still has {wrong}")
    return pw.pw_uid, pw.pw_gid, filtered


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
        # unknown names fail here, in the module's configure
        names = {capability_name(c) for c in capabilities}
        self.kept_capabilities.setdefault(reason, set()).update(names)

    @property
    def kept(self) -> list[str]:
        return sorted(set().union(*self.kept_capabilities.values()))

    def drop(self, user: str | None, drop_priv: bool, log: Any) -> None:
        """After configure: become ``user`` keeping the capabilities asked for, unless
        ``dropPriv = off``, a module asked to keep root, or no user was given (the testing
        kit).

        :raises PrivilegeError: the drop failed; the agent must not run on with root."""
        if user is None or not drop_priv or os.geteuid() != 0:
            return
        if self.root_reasons:
            log.info("keeping_root", reasons=self.root_reasons)
            return
        keep = self.kept
        uid, gid, filtered = drop_privileges(user, keep)
        kept = capability_names(process_privileges().get("CapEff", 0))
        log.info("dropped_privileges", user=user, uid=uid, gid=gid, capabilities=kept,
                 reasons=sorted(self.kept_capabilities), seccomp=filtered)
        missing = sorted(set(keep) - set(kept))
        if missing:
            log.warning("capabilities_not_available", missing=missing,
                        detail="the agent did not have them at start-up; the modules that "
                               "asked for them may fail later")
