"""Marking as hosts see it: real services under a real systemd talking in every role, a real
hostsflowd sampling their packets, and the ground truth to judge each sample by.

* :class:`Party` one program of ``tests/roles_traffic.py``: under a unit (a service) or as a
  plain process (the outside world, in no service); a server has a fixed endpoint, a client
  logs every local endpoint the kernel gave it;
* :class:`Truth` endpoint -> who used it (the parties' endpoints, from their logs);
* :func:`judge` every flow sample the collector got, side by side against the truth: right,
  wrong (a service named that does not own that end), or unmarked;
* :class:`RoleFigures` the verdicts of one role.

A sample's two ends are judged on their own: the end that belongs to a role's party must
name that party's service (or none, for a plain process); nothing may ever name a service
that does not own the end.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import attrs
from hostsflow.packet import decode_sampled_header
from hostsflow.sflow.datagram import decode_datagram
from hostsflow.sflow.records import ExtendedEntities, ExtendedTcpInfo, HostDescr, SampledHeader
from hostsflow.testing import end_process

from .faults_kit import sh

ROLES = Path(__file__).resolve().parent / "roles_traffic.py"
DELAY_LINE = Path(__file__).resolve().parent / "delay_line.py"
PROTO = {"tcp": 6, "udp": 17}

Endpoint = tuple[int, str, int]  # (protocol, address, port)


@attrs.define(eq=False)
class Party:
    """One traffic program: ``role`` of roles_traffic.py with its arguments; ``service`` the
    unit it runs as (None: a plain process, in no service)."""

    name: str
    role: str
    args: list[str]
    service: str | None = None
    endpoint: Endpoint | None = None  #: a server's fixed local end
    log: Path | None = None  #: a client's endpoint log
    proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [sys.executable, str(ROLES), self.role, *self.args]

    def endpoints(self) -> set[Endpoint]:
        if self.endpoint is not None:
            return {self.endpoint}
        out: set[Endpoint] = set()
        if self.log is not None and self.log.exists():
            for line in self.log.read_text().splitlines():
                proto, addr, port = line.split()
                out.add((PROTO[proto], addr, int(port)))
        return out


def server(name: str, role: str, addr: str, port: int, proto: str = "tcp",
           service: str | None = None) -> Party:
    return Party(name, role, [addr, str(port)], service, endpoint=(PROTO[proto], addr, port))


def client(name: str, role: str, addr: str, port: int, log: Path, pause: float,
           *extra: str, bind: str, service: str | None = None) -> Party:
    """A client of addr:port connecting from address ``bind``."""
    args = [addr, str(port), str(log), str(pause), *extra, bind]
    return Party(name, role, args, service, log=log)


class DelayedVeth:
    """The agent's namespace and namespace ``ns`` joined through ``delay_ms`` of delay each
    way (None: a plain veth pair, no delay).

    ``host_dev`` (``host_ip``, in the agent's namespace) is a veth whose peer sits in a relay
    namespace, as is the peer of ``peer_dev`` (``peer_ip``, in ``ns``); tests/delay_line.py
    forwards frames between the two relay ends after ``delay_ms``.  (netem would do this in
    the kernel, but this kernel is built without CONFIG_NET_SCH_NETEM.)  Offloads are off on
    every end, so frames are real-sized and carry their checksums."""

    def __init__(self, delay_ms: float | None = 1.0) -> None:
        tag = f"{os.getpid() % 1000}{secrets.token_hex(2)}"
        octet = 100 + secrets.randbelow(100)
        self.ns, self.relay = f"hsfmk{tag}", f"hsfmr{tag}"
        self.host_dev, self.peer_dev = f"mka{tag}", f"mkb{tag}"
        self.host_ip, self.peer_ip = f"10.{octet}.9.1", f"10.{octet}.9.2"
        self.line: subprocess.Popen[bytes] | None = None
        try:
            for ns in (self.ns, self.relay) if delay_ms is not None else (self.ns,):
                sh("ip", "netns", "add", ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            ends: tuple[tuple[str | None, str, str | None], ...]
            if delay_ms is None:
                sh("ip", "link", "add", self.host_dev, "type", "veth", "peer", "name",
                   self.peer_dev, "netns", self.ns)
                ends = ((None, self.host_dev, self.host_ip), (self.ns, self.peer_dev, self.peer_ip))
            else:
                sh("ip", "link", "add", self.host_dev, "type", "veth", "peer", "name",
                   f"mkc{tag}", "netns", self.relay)
                sh("ip", "-n", self.ns, "link", "add", self.peer_dev, "type", "veth", "peer",
                   "name", f"mkd{tag}", "netns", self.relay)
                ends = ((None, self.host_dev, self.host_ip), (self.ns, self.peer_dev, self.peer_ip),
                        (self.relay, f"mkc{tag}", None), (self.relay, f"mkd{tag}", None))
            for ns, dev, ip in ends:
                run = ("ip", "netns", "exec", ns) if ns else ()
                sh(*run, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
                sh(*run, "ethtool", "-K", dev, "tx", "off", "rx", "off", "tso", "off", "gso", "off",
                   "gro", "off")
                if ip:
                    sh(*run, "ip", "addr", "add", f"{ip}/24", "dev", dev)
                sh(*run, "ip", "link", "set", dev, "up")
            if delay_ms is not None:
                self.line = subprocess.Popen(
                    ["ip", "netns", "exec", self.relay, sys.executable, str(DELAY_LINE),
                     f"mkc{tag}", f"mkd{tag}", str(delay_ms)])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.line is not None and self.line.poll() is None:
            self.line.terminate()
            self.line.wait(5)
        sh("ip", "link", "del", self.host_dev, check=False)
        for ns in (self.ns, self.relay):
            sh("ip", "netns", "del", ns, check=False)  # the relay is not there without delay


class Scenario:
    """Start parties (services through the user manager, plain ones as subprocesses, or in a
    namespace with ``netns``) and stop them."""

    def __init__(self, um: Any) -> None:
        self.um = um
        self.parties: list[Party] = []

    def start(self, party: Party, netns: str | None = None) -> Party:
        if party.service is not None:
            self.um.add_service(party.service, party.argv())
        else:
            cmd = party.argv()
            if netns:
                cmd = ["ip", "netns", "exec", netns, *cmd]
            party.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        self.parties.append(party)
        return party

    def stop(self) -> None:
        for p in reversed(self.parties):
            if p.service is not None:
                try:
                    self.um.stop_unit(p.service)
                except Exception:  # noqa: BLE001 - teardown goes on; the manager's stop kills
                    pass
            elif p.proc is not None:
                end_process(p.proc)


class Truth:
    """Endpoint -> the set of owners (service names; None for a plain process) that used it
    during the run.  An endpoint used by two owners is ambiguous and not judged."""

    def __init__(self, parties: Iterable[Party]) -> None:
        self.owners: dict[Endpoint, set[str | None]] = defaultdict(set)
        self.party_of: dict[Endpoint, set[str]] = defaultdict(set)
        for p in parties:
            for ep in p.endpoints():
                self.owners[ep].add(p.service)
                self.party_of[ep].add(p.name)

    def owner(self, ep: Endpoint) -> tuple[bool, str | None]:
        """(known, owner): known is False for an endpoint nobody logged or two owners used."""
        found = self.owners.get(ep)
        if not found or len(found) != 1:
            return False, None
        return True, next(iter(found))


@attrs.define
class Side:
    """One end of one sample, judged."""

    party: str | None  #: the party whose end it is (None: no party logged it)
    owner: str | None  #: who owns it (service name; None: a plain process)
    marked: str | None  #: the service the sample names at this end (None: unmarked)
    known: bool
    owners: frozenset[str | None]  #: everyone who used the end (empty: nobody logged it)


@attrs.define
class Judged:
    protocol: int
    src: Endpoint
    dst: Endpoint
    sides: tuple[Side, Side]
    tcp_info: ExtendedTcpInfo | None
    tcp_flags: int
    payload: int


def tcp_udp_samples(datagrams: Iterable[Any]) -> Iterable[tuple[Any, Any, Any]]:
    """(flow sample, its sampled_header, the decoded packet) of every TCP/UDP flow sample."""
    for dg in datagrams:
        for fs in dg.flow_samples:
            hdr = fs.record(SampledHeader)
            pkt = decode_sampled_header(hdr) if hdr is not None else None
            if pkt is not None and pkt.protocol in (6, 17):
                yield fs, hdr, pkt


def services_by_index(datagrams: Iterable[Any]) -> dict[int, str]:
    """dsIndex -> unit name, from the host_descr of the agent's 3:* counter samples."""
    out: dict[int, str] = {}
    for dg in datagrams:
        for cs in dg.counter_samples:
            if cs.source.ds_class != 3:
                continue
            hd = cs.record(HostDescr)
            if hd is not None:
                out[cs.source.ds_index] = hd.hostname.removesuffix(".service")
    return out


def judge(raw: Iterable[bytes], truth: Truth) -> tuple[list[Judged], dict[int, str]]:
    """Every TCP/UDP flow sample in ``raw`` (datagrams as received), both ends judged."""
    dgs = [decode_datagram(d) for d in raw]
    names = services_by_index(dgs)
    out: list[Judged] = []
    for fs, hdr, pkt in tcp_udp_samples(dgs):
        ent = fs.record(ExtendedEntities)
        marks = (None, None)
        if ent is not None:
            marks = (names.get(ent.src_index, f"?{ent.src_index}") if ent.src_class else None,
                     names.get(ent.dst_index, f"?{ent.dst_index}") if ent.dst_class else None)
        ends = ((pkt.protocol, pkt.src_ip, pkt.src_port), (pkt.protocol, pkt.dst_ip, pkt.dst_port))
        sides = []
        for ep, marked in zip(ends, marks):
            known, owner = truth.owner(ep)
            parties = truth.party_of.get(ep) or set()
            party = next(iter(parties)) if len(parties) == 1 else None
            sides.append(Side(party, owner, marked, known,
                              frozenset(truth.owners.get(ep, ()))))
        out.append(Judged(pkt.protocol, ends[0], ends[1], (sides[0], sides[1]),
                          fs.record(ExtendedTcpInfo), pkt.tcp_flags,
                          l4_payload(hdr.header, pkt)))
    return out, names


@attrs.define
class RoleFigures:
    """How the ends of one party were marked."""

    party: str
    service: str | None
    ends: int = 0
    right: int = 0
    wrong: int = 0
    unmarked: int = 0

    @property
    def right_pct(self) -> float:
        return 100.0 * self.right / self.ends if self.ends else 0.0


def figures(judged: Iterable[Judged], parties: Iterable[Party]) -> dict[str, RoleFigures]:
    """Per party: its ends in all samples, marked right (its service, or nothing for a plain
    process), wrong (another service), unmarked (a service's end left without a mark)."""
    out = {p.name: RoleFigures(p.name, p.service) for p in parties}
    for j in judged:
        for side in j.sides:
            if side.party is None or not side.known:
                continue
            f = out[side.party]
            f.ends += 1
            if side.marked == side.owner:
                f.right += 1
            elif side.marked is None:
                f.unmarked += 1
            else:
                f.wrong += 1
    return out


def wrong_marks(judged: Iterable[Judged]) -> list[Judged]:
    """Samples naming, at some end, a service that did not use that end (every party logs
    its ends, so an end nobody logged belongs to no service of the run)."""
    return [j for j in judged
            if any(s.marked is not None and s.marked not in s.owners for s in j.sides)]


def l4_payload(header: bytes, pkt: Any) -> int:
    """Bytes of TCP/UDP payload in an IPv4 packet (from its IP and TCP lengths); -1 when
    the header does not say (IPv6, cut short)."""
    off = pkt.l3_offset
    if pkt.ip_version != 4 or len(header) < off + 20:
        return -1
    ihl = (header[off] & 0x0F) * 4
    if pkt.protocol == 17:
        return pkt.ip_total_length - ihl - 8
    if len(header) < off + ihl + 13:
        return -1
    return pkt.ip_total_length - ihl - (header[off + ihl + 12] >> 4) * 4


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)
