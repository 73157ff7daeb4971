"""Fixtures for the pcap module's tests on real traffic.

``netpair`` builds two uniquely named network namespaces joined by a veth pair
(tests/netpair.py: offloads off, IPv6 off, static neighbours: the only frames on the link are
the ones a test sends), and removes them afterwards.  ``udpsend`` is a small C ``sendmmsg`` generator compiled once per
session.  Everything needs root and iproute2/ethtool/gcc; without them the tests skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostsflow.testing import load_file_module

_netpair = load_file_module("hostsflow_tests_netpair",
                            Path(__file__).resolve().parents[3] / "tests" / "netpair.py")
NetPair, sh = _netpair.NetPair, _netpair.sh

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


@pytest.fixture
def netpair() -> Iterator[NetPair]:
    """A fresh pair of namespaces and a veth between them; removed afterwards."""
    _need("ip", "ethtool")
    pair = NetPair.make("hsfpcap")
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture(scope="session")
def udpsend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the compiled C sendmmsg generator."""
    _need("gcc")
    d = tmp_path_factory.mktemp("udpsend")
    (d / "udpsend.c").write_text(UDPSEND_C)
    sh("gcc", "-O2", "-Wall", "-o", str(d / "udpsend"), str(d / "udpsend.c"))
    return d / "udpsend"
