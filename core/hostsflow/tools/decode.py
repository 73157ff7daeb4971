"""``hostsflow decode``: a small sFlow collector that prints every datagram it receives.

Binds a UDP socket (IPv4 or IPv6, ``HOST:PORT``, ``[V6]:PORT`` or just ``PORT``), decodes each
datagram with :func:`~hostsflow.sflow.datagram.decode_datagram` and prints it as text (a
DATAGRAM line, then one line per sample) or as one JSON object per line.  A malformed datagram
prints one ``ERROR`` line (JSON: ``{"error": ...}``) and is counted; it never stops the loop.
It can also read datagrams from files (``--file``: a bare datagram, or a classic pcap of UDP
packets) instead of listening.
"""

from __future__ import annotations

import argparse
import json as jsonlib
import socket
import struct
import sys
import time
from typing import Callable, Iterator, TextIO

import attrs

from ..sflow.datagram import SflowDecodeError, decode_datagram
from .allow import SourceFilter, add_allow_argument, source_filter
from .render import datagram_dict, datagram_lines

DEFAULT_LISTEN = "0.0.0.0:6343"
MAX_DATAGRAM = 65535


@attrs.define(slots=True)
class DecodeStats:
    """What a decode run saw: datagrams received, how many of them were malformed, and how
    many were refused (sender outside ``--allow``; not decoded, not counted as received)."""

    received: int = 0
    malformed: int = 0
    refused: int = 0


def parse_listen(listen: str, default_port: int = 6343) -> tuple[socket.AddressFamily, str, int]:
    """``"0.0.0.0:6343"``, ``"[::]:6343"``, ``"::1"``, ``"6343"``, ``"localhost:6343"`` ->
    (family, host, port).  Raises ValueError for anything else."""
    text = listen.strip()
    host, port = text, default_port
    if text.isdigit():
        host, port = "0.0.0.0", int(text)
    elif text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"listen address {listen!r}: missing ']'")
        host, rest = text[1:close], text[close + 1:]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"listen address {listen!r}: bad port after ']'")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"listen address {listen!r}: bad port {port_text!r}")
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {listen!r}: port {port} out of range")
    host = host or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    except socket.gaierror as exc:
        raise ValueError(f"listen address {listen!r}: {exc}") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr[0], port


#: The receive buffer the collector tools ask for.  A fleet's datagrams come in bursts and the
#: collector is one Python thread: at 100 agents x 500 samples/s a 1 MiB buffer (2 MiB as the
#: kernel counts it) lost 4-11 % of the stream while the view used 0.8-0.9 of a core; with
#: 4 MiB it lost none (bench/collector_cost.py).
RECEIVE_BUFFER = 4 << 20
#: Linux's SO_RCVBUFFORCE (asm-generic/socket.h); Python's socket module does not name it
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def set_receive_buffer(sock: socket.socket, size: int = RECEIVE_BUFFER) -> None:
    """Give ``sock`` a receive buffer of ``size`` bytes: past net.core.rmem_max where the
    process may (SO_RCVBUFFORCE needs CAP_NET_ADMIN), else as much as rmem_max allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def open_socket(listen: str) -> socket.socket:
    """A bound UDP socket for ``listen`` (an IPv6 wildcard also takes IPv4 where it can)."""
    family, host, port = parse_listen(listen)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and host == "::":
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        set_receive_buffer(sock)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _format_peer(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Printer:
    """Decodes and prints datagrams one at a time, counting the malformed ones."""

    def __init__(self, out: TextIO, json: bool = False) -> None:
        self.out = out
        self.json = json
        self.stats = DecodeStats()

    def feed(self, data: bytes, source: str | None = None) -> None:
        """Decode one datagram and print it (or one error line)."""
        self.stats.received += 1
        try:
            dgram = decode_datagram(data)
        except SflowDecodeError as exc:
            self.stats.malformed += 1
            if self.json:
                err = {"error": str(exc), "size": len(data)}
                if source is not None:
                    err["source"] = source
                self.out.write(jsonlib.dumps(err, allow_nan=False) + "\n")
            else:
                where = f" from {source}" if source is not None else ""
                self.out.write(f"ERROR{where}: malformed datagram ({len(data)} bytes): {exc}\n")
        else:
            if self.json:
                self.out.write(jsonlib.dumps(datagram_dict(dgram, source), allow_nan=False)
                               + "\n")
            else:
                self.out.write("\n".join(datagram_lines(dgram, source)) + "\n")
        self.out.flush()


def run_decode(
    listen: str = DEFAULT_LISTEN,
    json: bool = False,
    count: int | None = None,
    out: TextIO | None = None,
    timeout: float | None = None,
    on_ready: Callable[[tuple], None] | None = None,
    allow: SourceFilter | None = None,
) -> DecodeStats:
    """Listen on ``listen`` and print each datagram until ``count`` datagrams (malformed ones
    included) were received, ``timeout`` seconds passed, or Ctrl-C.

    ``on_ready`` is called with the bound socket address once listening (port 0 picks a free
    port; tests use this).  With ``allow``, datagrams from other senders are dropped undecoded
    and counted (the first one, and the count at the end, are said on stderr).  Returns the
    counts."""
    out = out if out is not None else sys.stdout
    printer = Printer(out, json)
    try:
        _receive(listen, printer, count, timeout, on_ready, allow)
    finally:
        if printer.stats.refused:
            print(f"hostsflow decode: {printer.stats.refused} datagram(s) refused "
                  f"(sender not in --allow {allow})", file=sys.stderr, flush=True)
    return printer.stats


def _receive(listen: str, printer: Printer, count: int | None, timeout: float | None,
             on_ready: Callable[[tuple], None] | None, allow: SourceFilter | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    with open_socket(listen) as sock:
        if on_ready is not None:
            on_ready(sock.getsockname())
        while count is None or printer.stats.received < count:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
            try:
                data, peer = sock.recvfrom(MAX_DATAGRAM)
            except socket.timeout:
                break
            if allow is not None and not allow.allows(peer[0]):
                if not printer.stats.refused:
                    print(f"hostsflow decode: refusing datagrams from {peer[0]} (not in "
                          f"--allow {allow}); counting them", file=sys.stderr, flush=True)
                printer.stats.refused += 1
                continue
            printer.feed(data, _format_peer(peer))


# ---------------------------------------------------------------- files

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000), b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000), b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6 = 1, 101, 113, 228, 229


def _udp_payload(frame: bytes, linktype: int) -> tuple[bytes, str] | None:
    """(UDP payload, "src:port") of an Ethernet/raw-IP/SLL frame, or None if not UDP."""
    if linktype == LINKTYPE_ETHERNET:
        off, etype = 14, struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
        while etype in (0x8100, 0x88A8) and len(frame) >= off + 4:
            etype = struct.unpack_from("!H", frame, off + 2)[0]
            off += 4
    elif linktype == LINKTYPE_LINUX_SLL:
        off, etype = 16, struct.unpack_from("!H", frame, 14)[0] if len(frame) >= 16 else 0
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        off, etype = 0, {4: 0x0800, 6: 0x86DD}.get(frame[0] >> 4 if frame else 0, 0)
    else:
        return None
    if etype == 0x0800 and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        if frame[off + 9] != 17 or struct.unpack_from("!H", frame, off + 6)[0] & 0x1FFF:
            return None
        src = socket.inet_ntoa(frame[off + 12:off + 16])
        udp = off + ihl
    elif etype == 0x86DD and len(frame) >= off + 40:
        if frame[off + 6] != 17:
            return None
        src = "[" + socket.inet_ntop(socket.AF_INET6, frame[off + 8:off + 24]) + "]"
        udp = off + 40
    else:
        return None
    if len(frame) < udp + 8:
        return None
    sport, _dport, ulen = struct.unpack_from("!HHH", frame, udp)
    payload = frame[udp + 8:udp + max(ulen, 8)]
    return payload, f"{src}:{sport}"


def read_pcap(data: bytes) -> Iterator[tuple[bytes, str]]:
    """(UDP payload, source) for each UDP packet of a classic pcap file's bytes."""
    if len(data) < 24 or data[:4] not in _PCAP_MAGIC:
        raise ValueError("not a classic pcap file (pcapng is not read)")
    endian, _ = _PCAP_MAGIC[data[:4]]
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    rec = struct.Struct(endian + "IIII")
    pos = 24
    while pos + rec.size <= len(data):
        _sec, _frac, incl, _orig = rec.unpack_from(data, pos)
        pos += rec.size
        frame = data[pos:pos + incl]
        pos += incl
        got = _udp_payload(frame, linktype)
        if got is not None:
            yield got


def decode_file(path: str, json: bool = False, out: TextIO | None = None) -> DecodeStats:
    """Print the datagrams of a file: a classic pcap (every UDP packet in it is taken as an
    sFlow datagram) or one bare datagram."""
    out = out if out is not None else sys.stdout
    printer = Printer(out, json)
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] in _PCAP_MAGIC:
        for payload, source in read_pcap(data):
            printer.feed(payload, source)
    else:
        printer.feed(data, None)
    return printer.stats


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``hostsflow decode`` (for the CLI's subcommand parser)."""
    parser.add_argument("-l", "--listen", default=DEFAULT_LISTEN,
                        help="UDP address to listen on: HOST:PORT, [V6]:PORT or PORT "
                             f"(default {DEFAULT_LISTEN})")
    parser.add_argument("-j", "--json", action="store_true",
                        help="print one JSON object per datagram")
    parser.add_argument("-c", "--count", type=int, default=None,
                        help="stop after this many datagrams")
    parser.add_argument("-t", "--timeout", type=float, default=None,
                        help="stop after this many seconds")
    parser.add_argument("-r", "--file", default=None,
                        help="read a pcap file or a bare datagram instead of listening")
    add_allow_argument(parser)


def run_args(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run with parsed options; returns the exit status (1 if any datagram was malformed
    when reading a file, or the address cannot be listened on; 2 for an address that is not
    one or a file that cannot be read).  Every failure is one line on stderr."""
    out = out if out is not None else sys.stdout
    try:
        if args.file:
            try:
                stats = decode_file(args.file, json=args.json, out=out)
            except (ValueError, OSError) as exc:
                print(f"hostsflow decode: {exc}", file=sys.stderr)
                return 2
            return 1 if stats.malformed else 0
        try:
            run_decode(args.listen, json=args.json, count=args.count, out=out,
                       timeout=args.timeout, allow=source_filter(args.allow))
        except ValueError as exc:  # an address that is not one
            print(f"hostsflow decode: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"hostsflow decode: cannot listen on {args.listen}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """``hostsflow decode [options]``: parse ``argv`` (without the program and subcommand
    names) and run."""
    parser = argparse.ArgumentParser(prog="hostsflow decode",
                                     description="Print the sFlow datagrams sent to a UDP port.")
    add_arguments(parser)
    return run_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
