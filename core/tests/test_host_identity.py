"""Host identity: hostname, machine-id, and the machine-id -> UUID derivation.

The derivation is checked against a small C program compiled here that does what hsflowd's
``chooseUUID`` does (FNV-1a over ``char`` bytes, u32 stores through a cast pointer), so the
platform's char signedness and byte order are the C compiler's, not our guess.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess

import pytest
from hostsflow.host import identity

C_SOURCE = r"""
#include <stdio.h>
#include <stdint.h>
#include <string.h>
static uint32_t fnv(const char *s, uint32_t len) {
  uint32_t h = 2166136261U;
  for (uint32_t i = 0; i < len; i++) { h ^= (s[i]); h *= 16777619; }
  return h;
}
int main(int argc, char **argv) {
  for (int a = 1; a < argc; a++) {
    char mid[16]; char uuid[16];
    for (int i = 0; i < 16; i++) { unsigned v; sscanf(argv[a] + 2 * i, "%2x", &v); mid[i] = (char)v; }
    uint32_t h1 = fnv(mid, 8), h2 = fnv(mid + 8, 8);
    uint32_t *q = (uint32_t *)uuid;
    q[0] = q[2] = h1; q[1] = q[3] = h2;
    uuid[6] &= 0x0F; uuid[6] |= 0x50; uuid[8] &= 0x3F; uuid[8] |= 0x80;
    for (int i = 0; i < 16; i++) printf("%02x", (unsigned char)uuid[i]);
    printf("\n");
  }
  return 0;
}
"""

MACHINE_IDS = [
    "00000000000000000000000000000000",
    "0123456789abcdef0123456789abcdef",
    "ffffffffffffffffffffffffffffffff",
    "3d1219c7c4c5404aaa1f6d2a48adfda4",
    "807f80ff01fe7f80c0c1d0e0f0a0b0c0",
]


@pytest.fixture(scope="module")
def c_derive(tmp_path_factory):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to cross-check the UUID derivation")
    d = tmp_path_factory.mktemp("uuidc")
    (d / "u.c").write_text(C_SOURCE)
    subprocess.run([cc, "-O1", "-o", str(d / "u"), str(d / "u.c")], check=True)

    def run(mids: list[str]) -> list[str]:
        out = subprocess.run([str(d / "u"), *mids], capture_output=True, text=True, check=True)
        return out.stdout.split()

    return run


def test_uuid_derivation_matches_c(c_derive):
    mids = list(MACHINE_IDS)
    real = identity.read_machine_id()
    if real is not None:
        mids.append(real.hex())
    mids += [os.urandom(16).hex() for _ in range(50)]
    expected = c_derive(mids)
    got = [identity.uuid_from_machine_id(bytes.fromhex(m)).hex() for m in mids]
    assert got == expected


def test_uuid_derivation_signedness_matters():
    mid = bytes.fromhex("807f80ff01fe7f80c0c1d0e0f0a0b0c0")
    signed = identity.uuid_from_machine_id(mid, "little", signed_char=True)
    unsigned = identity.uuid_from_machine_id(mid, "little", signed_char=False)
    assert signed != unsigned
    for u in (signed, unsigned):
        assert u[6] >> 4 == 5 and u[8] >> 6 == 2  # version 5, RFC 4122 variant
        # h1 h2 h1 h2 (little-endian), except the two bytes forced to version/variant
        assert u[1:4] == u[9:12] and u[4:6] == u[12:14] and u[7] == u[15]
    plain = bytes(range(16))  # all bytes < 0x80: signedness makes no difference
    assert identity.uuid_from_machine_id(plain, "little", True) == identity.uuid_from_machine_id(
        plain, "little", False
    )
    assert identity.char_is_signed("x86_64") and not identity.char_is_signed("aarch64")


def test_machine_id_and_host_uuid():
    text = None
    for path in identity.MACHINE_ID_PATHS:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().strip()
            break
    mid = identity.read_machine_id()
    if text is None:
        assert mid is None
    else:
        assert mid == bytes.fromhex(text)
    sysu = None
    if os.path.exists(identity.SYSTEM_UUID_PATH):
        try:
            with open(identity.SYSTEM_UUID_PATH) as f:
                raw = f.read().strip()
            sysu = bytes.fromhex(raw.replace("-", ""))
        except OSError:
            pass
    u = identity.host_uuid()
    if sysu is not None and sysu not in (b"\0" * 16, b"\xff" * 16):
        assert u == sysu
    elif mid is not None:
        assert u == identity.uuid_from_machine_id(mid)
    else:
        assert u == b"\0" * 16


def test_host_uuid_override_and_parse():
    assert identity.host_uuid("01234567-89ab-cdef-0123-456789abcdef") == bytes.fromhex(
        "0123456789abcdef0123456789abcdef"
    )
    assert identity.host_uuid(b"\x01" * 16) == b"\x01" * 16
    with pytest.raises(ValueError):
        identity.host_uuid("not-a-uuid")
    assert identity.parse_hex_id("01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef") is not None
    assert identity.parse_hex_id("0123") is None
    u = bytes.fromhex("0123456789abcdef0123456789abcdef")
    assert identity.format_uuid(u) == "01234567-89ab-cdef-0123-456789abcdef"


def test_hostname():
    assert identity.hostname() == socket.gethostname() == os.uname().nodename
    assert platform.machine()  # host_descr maps it; see test_host_counters
