"""Two network namespaces joined by a veth pair, for the tests that need real traffic on a
real link (the pcap module's end-to-end tests, the fault and soak runs).  Loaded with
``hostsflow.testing.load_file_module``; nothing is sent outside the two namespaces."""

from __future__ import annotations

import secrets
import subprocess

import attrs


def sh(*args: str, check: bool = True, timeout: float = 30) -> str:
    """Run a command; its stdout.  Raises with stderr on failure."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


@attrs.define
class NetPair:
    """Namespaces ``ns_a``/``ns_b`` joined by ``dev_a``/``dev_b`` (``ip_a``/``ip_b`` in a /24),
    with IPv6, TSO, GSO and GRO off and static neighbours (no stray or merged frames)."""

    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str
    ip_a: str
    ip_b: str
    mac_a: str = ""
    mac_b: str = ""

    @classmethod
    def make(cls, prefix: str) -> "NetPair":
        """A new pair with unique names (``<prefix>A<tag>``...) and a random 10.x.0.0/24."""
        tag = secrets.token_hex(3)
        octet = 100 + secrets.randbelow(100)
        pair = cls(ns_a=f"{prefix}A{tag}", ns_b=f"{prefix}B{tag}", dev_a=f"{prefix[:3]}a{tag}",
                   dev_b=f"{prefix[:3]}b{tag}", ip_a=f"10.{octet}.0.1", ip_b=f"10.{octet}.0.2")
        try:
            sh("ip", "netns", "add", pair.ns_a)
            sh("ip", "netns", "add", pair.ns_b)
            for ns in (pair.ns_a, pair.ns_b):
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            pair.create_link()
        except BaseException:
            pair.close()
            raise
        return pair

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

    def close(self) -> None:
        sh("ip", "netns", "del", self.ns_a, check=False)
        sh("ip", "netns", "del", self.ns_b, check=False)
