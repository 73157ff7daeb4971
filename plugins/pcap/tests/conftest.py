"""Fixtures for the pcap module's tests on real traffic.

``netpair`` builds two uniquely named network namespaces joined by a veth pair (offloads off,
IPv6 off, static neighbours: the only frames on the link are the ones a test sends), and
removes them afterwards.  ``udpsend`` is a small C ``sendmmsg`` generator compiled once per
session.  Everything needs root and iproute2/ethtool/gcc; without them the tests skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

UDPSEND_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
/* udpsend DST DPORT SPORT COUNT PAYLOAD [PPS]: send exactly COUNT UDP datagrams of PAYLOAD
   bytes from port SPORT with sendmmsg, at most PPS per second (0 = as fast as possible). */
int main(int argc, char **argv) {
  if (argc < 6) { fprintf(stderr, "usage: udpsend DST DPORT SPORT COUNT PAYLOAD [PPS]\n"); return 2; }
  long n = atol(argv[4]); int size = atoi(argv[5]); double pps = argc > 6 ? atof(argv[6]) : 0;
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  int big = 1 << 22; setsockopt(s, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
  if (bind(s, (struct sockaddr *)&src, sizeof src)) { perror("bind"); return 1; }
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
  inet_pton(AF_INET, argv[1], &a.sin_addr);
  if (connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
  static char buf[65536]; memset(buf, 'x', sizeof buf);
  enum { B = 64 }; struct mmsghdr m[B]; struct iovec iov[B];
  for (int i = 0; i < B; i++) { iov[i].iov_base = buf; iov[i].iov_len = size; memset(&m[i], 0, sizeof m[i]);
    m[i].msg_hdr.msg_iov = &iov[i]; m[i].msg_hdr.msg_iovlen = 1; }
  struct timespec t0, t; clock_gettime(CLOCK_MONOTONIC, &t0);
  long sent = 0, errors = 0;
  while (sent < n) {
    int want = n - sent < B ? (int)(n - sent) : B;
    if (pps > 0) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      double el = (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9;
      if (sent >= el * pps) { struct timespec d = {0, 200000}; nanosleep(&d, NULL); continue; }
    }
    int r = sendmmsg(s, m, want, 0);
    if (r > 0) sent += r; else errors++;
  }
  clock_gettime(CLOCK_MONOTONIC, &t);
  double dt = (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9;
  printf("sent=%ld secs=%.3f errors=%ld\n", sent, dt, errors); return 0;
}
"""


def _need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, packet sockets)")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


def sh(*args: str, check: bool = True, timeout: float = 30) -> str:
    """Run a command; its stdout.  Raises with stderr on failure."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


@attrs.define
class NetPair:
    """Namespaces ``ns_a``/``ns_b`` joined by ``dev_a``/``dev_b`` (10.x.0.1 / 10.x.0.2)."""

    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str
    ip_a: str
    ip_b: str
    mac_a: str = ""
    mac_b: str = ""

    def in_a(self, *args: str, **kw: object) -> str:
        return sh("ip", "netns", "exec", self.ns_a, *args, **kw)  # type: ignore[arg-type]

    def in_b(self, *args: str, **kw: object) -> str:
        return sh("ip", "netns", "exec", self.ns_b, *args, **kw)  # type: ignore[arg-type]

    def counters(self, side: str = "b") -> dict[str, int]:
        """rx/tx packets and bytes of one side's veth."""
        ns, dev = (self.ns_b, self.dev_b) if side == "b" else (self.ns_a, self.dev_a)
        out = sh("ip", "netns", "exec", ns, "sh", "-c",
                 f"cd /sys/class/net/{dev}/statistics && cat rx_packets tx_packets rx_bytes "
                 "tx_bytes")
        rx_p, tx_p, rx_b, tx_b = (int(x) for x in out.split())
        return {"rx_packets": rx_p, "tx_packets": tx_p, "rx_bytes": rx_b, "tx_bytes": tx_b}

    def ifindex(self, side: str = "b") -> int:
        ns, dev = (self.ns_b, self.dev_b) if side == "b" else (self.ns_a, self.dev_a)
        return int(sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/ifindex"))

    def create_link(self) -> None:
        """(Re-)create the veth pair with addresses, offloads off and static neighbours."""
        sh("ip", "link", "add", self.dev_a, "type", "veth", "peer", "name", self.dev_b)
        sh("ip", "link", "set", self.dev_a, "netns", self.ns_a)
        sh("ip", "link", "set", self.dev_b, "netns", self.ns_b)
        for ns, dev, ip in ((self.ns_a, self.dev_a, self.ip_a), (self.ns_b, self.dev_b, self.ip_b)):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off",
               "gro", "off")
        self.mac_a = sh("ip", "netns", "exec", self.ns_a, "cat",
                        f"/sys/class/net/{self.dev_a}/address").strip()
        self.mac_b = sh("ip", "netns", "exec", self.ns_b, "cat",
                        f"/sys/class/net/{self.dev_b}/address").strip()
        sh("ip", "-n", self.ns_a, "neigh", "replace", self.ip_b, "lladdr", self.mac_b, "dev",
           self.dev_a, "nud", "permanent")
        sh("ip", "-n", self.ns_b, "neigh", "replace", self.ip_a, "lladdr", self.mac_a, "dev",
           self.dev_b, "nud", "permanent")

    def delete_link(self) -> None:
        sh("ip", "-n", self.ns_a, "link", "del", self.dev_a, check=False)


@pytest.fixture
def netpair() -> Iterator[NetPair]:
    """A fresh pair of namespaces and a veth between them; removed afterwards."""
    _need("ip", "ethtool")
    tag = uuid.uuid4().hex[:6]
    octet = 100 + int(tag[:2], 16) % 100
    pair = NetPair(
        ns_a=f"hsfpcapA{tag}", ns_b=f"hsfpcapB{tag}", dev_a=f"pa{tag}", dev_b=f"pb{tag}",
        ip_a=f"10.{octet}.0.1", ip_b=f"10.{octet}.0.2",
    )
    try:
        sh("ip", "netns", "add", pair.ns_a)
        sh("ip", "netns", "add", pair.ns_b)
        for ns in (pair.ns_a, pair.ns_b):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        pair.create_link()
        yield pair
    finally:
        sh("ip", "netns", "del", pair.ns_a, check=False)
        sh("ip", "netns", "del", pair.ns_b, check=False)


@pytest.fixture(scope="session")
def udpsend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the compiled C sendmmsg generator."""
    _need("gcc")
    d = tmp_path_factory.mktemp("udpsend")
    (d / "udpsend.c").write_text(UDPSEND_C)
    sh("gcc", "-O2", "-Wall", "-o", str(d / "udpsend"), str(d / "udpsend.c"))
    return d / "udpsend"
