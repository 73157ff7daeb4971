"""The few bpf(2) commands the owner log needs, through ctypes, and a tiny eBPF assembler.

None of the project's dependencies speaks bpf(2) (pyroute2 has no BPF support; bcc and libbpf
need a compiler toolchain and kernel headers at run time), and the owner log is one program
of a few dozen instructions and two maps, so this module is the small piece written here:
``bpf()`` itself, map create/lookup, program load (with the verifier's log in the error),
and BPF links (a link detaches its program when its last descriptor closes, so a killed agent
leaves nothing attached).

Layouts are ``union bpf_attr`` of ``linux/bpf.h``; instructions are ``struct bpf_insn``
(8 bytes: opcode, dst/src registers, 16-bit offset, 32-bit immediate).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import platform
import struct

#: the bpf(2) system call number per machine (no libc wrapper exists)
_SYSCALL = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280, "riscv64": 280,
            "s390x": 351, "ppc64le": 361, "ppc64": 361, "i386": 357, "i686": 357,
            "armv7l": 386}

# commands
MAP_CREATE, MAP_LOOKUP_ELEM, PROG_LOAD, LINK_CREATE = 0, 1, 5, 28
# types
MAP_TYPE_HASH, MAP_TYPE_ARRAY, MAP_TYPE_LRU_HASH = 1, 2, 9
PROG_TYPE_CGROUP_SKB = 8
CGROUP_INET_INGRESS, CGROUP_INET_EGRESS = 0, 1
# map_update_elem flags
ANY, NOEXIST = 0, 1

_ATTR_SIZE = 128  # bigger than every layout used here; the kernel wants the tail zeroed

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class BpfUnavailable(OSError):
    """bpf(2) cannot be used here (no syscall number for this machine, or the kernel refused)."""


def _nr() -> int:
    nr = _SYSCALL.get(platform.machine().lower())
    if nr is None:
        raise BpfUnavailable(errno_mod.ENOSYS, f"no bpf(2) number known for {platform.machine()}")
    return nr


def bpf(cmd: int, attr: ctypes.Array) -> int:  # type: ignore[type-arg]
    """Call bpf(2) with ``attr`` (a ctypes buffer of _ATTR_SIZE bytes); OSError on failure."""
    r = _syscall(_nr(), cmd, attr, _ATTR_SIZE)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def _attr(payload: bytes) -> ctypes.Array:  # type: ignore[type-arg]
    return ctypes.create_string_buffer(payload, _ATTR_SIZE)


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               name: str) -> int:
    """A new map; returns its descriptor."""
    return bpf(MAP_CREATE, _attr(struct.pack("=IIIIIII16s", map_type, key_size, value_size,
                                              max_entries, 0, 0, 0, name.encode()[:15])))


class MapReader:
    """Lookups in one map by key, with the attr, key and value buffers made once (this is
    the per-sample path: one syscall per lookup, nothing allocated for it).  Fill ``key``
    (a ctypes buffer: ``struct.pack_into(..., reader.key, 0, ...)``), call :meth:`lookup`,
    read ``value``."""

    def __init__(self, fd: int, key_size: int, value_size: int) -> None:
        self.fd = fd
        self.key = ctypes.create_string_buffer(key_size)
        self.value = ctypes.create_string_buffer(value_size)
        self._attr = _attr(struct.pack("=IIQQQ", fd, 0, ctypes.addressof(self.key),
                                       ctypes.addressof(self.value), 0))
        self._nr = _nr()

    def lookup(self) -> bool:
        """True when the map holds ``key`` (its value is then in ``value``)."""
        if _syscall(self._nr, MAP_LOOKUP_ELEM, self._attr, _ATTR_SIZE) >= 0:
            return True
        e = ctypes.get_errno()
        if e == errno_mod.ENOENT:
            return False
        raise OSError(e, os.strerror(e))

    def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None when there is none."""
        ctypes.memmove(self.key, key, len(key))
        return self.value.raw if self.lookup() else None


def prog_load(prog_type: int, insns: bytes, name: str, expected_attach_type: int = 0,
              license: str = "Apache-2.0") -> int:
    """Load a program; returns its descriptor.  A program the verifier refuses raises OSError
    whose message ends with the verifier's log."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(1 << 16)
    attr = _attr(struct.pack("=IIQQIIQII16sII", prog_type, len(insns) // 8,
                             ctypes.addressof(code), ctypes.addressof(lic), 1, len(log),
                             ctypes.addressof(log), 0, 0, name.encode()[:15], 0,
                             expected_attach_type))
    try:
        return bpf(PROG_LOAD, attr)
    except OSError as exc:
        detail = log.value.decode(errors="replace").strip().splitlines()[-6:]
        raise OSError(exc.errno, f"{exc.strerror}: {' | '.join(detail)}") from None


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach a program through a BPF link; returns the link's descriptor."""
    return bpf(LINK_CREATE, _attr(struct.pack("=IIII", prog_fd, target_fd, attach_type, 0)))


# ---------------------------------------------------------------- the assembler

# instruction classes, sizes, modes, operations (linux/bpf_common.h, linux/bpf.h)
_LD, _LDX, _STX, _ALU64, _JMP = 0x00, 0x01, 0x03, 0x07, 0x05
_ST = 0x02
SIZE = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
_MEM, _IMM = 0x60, 0x00
_K, _X = 0x00, 0x08
_ALU = {"+": 0x00, "-": 0x10, "|": 0x40, "&": 0x50, "<<": 0x60, ">>": 0x70, "=": 0xB0}
_JUMP = {"==": 0x10, ">": 0x20, ">=": 0x30, "&": 0x40, "!=": 0x50, "<": 0xA0, "<=": 0xB0,
         "s>": 0x60, "s<=": 0xD0}
_ATOMIC = 0xC0
_CALL, _EXIT, _JA = 0x80, 0x90, 0x00
_END_BE = 0xD4 | 0x08  # BPF_ALU | BPF_END | BPF_TO_BE
_PSEUDO_MAP_FD = 1
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, FP = range(11)


def _ins(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


class Asm:
    """Builds a program instruction by instruction; jumps name labels, resolved by
    :meth:`code`.  Registers are numbers (R0-R9, FP = r10, the read-only frame pointer)."""

    def __init__(self) -> None:
        self._out: list[bytes | tuple[int, int, int, str]] = []
        self._labels: dict[str, int] = {}

    def _at(self) -> int:
        return sum(2 if isinstance(i, bytes) and len(i) == 16 else 1 for i in self._out)

    def label(self, name: str) -> None:
        self._labels[name] = self._at()

    def alu(self, dst: int, op: str, src_or_imm: int, *, reg: bool = False) -> None:
        """``dst op= src`` (reg) or ``dst op= imm``, 64-bit."""
        if reg:
            self._out.append(_ins(_ALU64 | _ALU[op] | _X, dst, src_or_imm))
        else:
            self._out.append(_ins(_ALU64 | _ALU[op] | _K, dst, 0, 0, src_or_imm))

    def mov(self, dst: int, src: int) -> None:
        self.alu(dst, "=", src, reg=True)

    def load(self, dst: int, src: int, off: int, size: int) -> None:
        """dst = *(size *)(src + off)"""
        self._out.append(_ins(_LDX | _MEM | SIZE[size], dst, src, off))

    def store(self, dst: int, off: int, src: int, size: int) -> None:
        """*(size *)(dst + off) = src"""
        self._out.append(_ins(_STX | _MEM | SIZE[size], dst, src, off))

    def store_imm(self, dst: int, off: int, imm: int, size: int) -> None:
        self._out.append(_ins(_ST | _MEM | SIZE[size], dst, 0, off, imm))

    def atomic_add(self, dst: int, off: int, src: int, size: int) -> None:
        """*(size *)(dst + off) += src, atomically (size 4 or 8)."""
        self._out.append(_ins(_STX | _ATOMIC | SIZE[size], dst, src, off, 0))

    def to_be16(self, dst: int) -> None:
        """Swap a 16-bit network-order value to host order (on a little-endian host)."""
        self._out.append(_ins(_END_BE, dst, 0, 0, 16))

    def map_fd(self, dst: int, fd: int) -> None:
        """dst = the map with descriptor fd (a 16-byte ld_imm64)."""
        self._out.append(_ins(_LD | _IMM | 0x18, dst, _PSEUDO_MAP_FD, 0, fd) + _ins(0))

    def jump(self, op: str, dst: int, imm_or_src: int, target: str, *, reg: bool = False) -> None:
        """if (dst op imm) goto target; ``op`` "goto" is unconditional."""
        code = _JMP | (_JA if op == "goto" else _JUMP[op]) | (_X if reg else _K)
        self._out.append((code, dst, imm_or_src if not reg else 0, target)
                         if not reg else (code | 0x100, dst, imm_or_src, target))

    def call(self, helper: int) -> None:
        self._out.append(_ins(_JMP | _CALL, 0, 0, 0, helper))

    def exit(self) -> None:
        self._out.append(_ins(_JMP | _EXIT))

    def code(self) -> bytes:
        out, pos = [], 0
        for item in self._out:
            if isinstance(item, bytes):
                out.append(item)
                pos += len(item) // 8
                continue
            code, dst, other, target = item
            off = self._labels[target] - pos - 1
            if code & 0x100:  # register operand
                out.append(_ins(code & 0xFF, dst, other, off))
            else:
                out.append(_ins(code, dst, 0, off, other))
            pos += 1
        return b"".join(out)
