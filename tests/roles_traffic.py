"""Traffic as hosts have it, for the marking tests: one small program, run either under a
systemd unit (the service's side of a role) or as a plain process (the outside party).

    roles_traffic.py http10-server ADDR PORT          HTTP/1.0: the server closes first
    roles_traffic.py cc-server ADDR PORT              answers requests until the client closes
    roles_traffic.py udp-server ADDR PORT             answers every datagram
    roles_traffic.py http-client ADDR PORT LOG PAUSE BIND      short GETs, one connection each
    roles_traffic.py cc-client ADDR PORT LOG PAUSE N BIND      N requests per connection, then
                                                                the client closes
    roles_traffic.py udp-client ADDR PORT LOG PAUSE BIND       one query per fresh socket

Every client writes one line per connection or query to LOG (``proto address port``: its own
end; the port is the one the kernel chose when the socket was bound to BIND, port 0), before
it sends anything, so a test knows every local endpoint each party used, even one whose
connection was cut short.  PAUSE is the pause between connections in seconds.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"x" * 2000
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY


class Http10(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the response ends with the server's close

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


class ClientClosesFirst(socketserver.BaseRequestHandler):
    """Answers each request; closes only once the client has closed its end."""

    def handle(self) -> None:
        buf = b""
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                self.request.sendall(RESPONSE)


class Threading(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


def udp_server(addr: str, port: int) -> None:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(b"answer:" + data[:64], peer)


def _bound(kind: int, bind: str, log, proto: str) -> socket.socket:
    """A socket bound to ``bind`` (a port the kernel chooses), its end logged at once."""
    s = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, kind)
    s.bind((bind, 0))
    host, port = s.getsockname()[:2]
    log.write(f"{proto} {host} {port}\n")
    log.flush()
    return s


def _recv_response(s: socket.socket) -> None:
    """Read one RESPONSE (headers and a body of len(BODY))."""
    got = b""
    while len(got) < len(RESPONSE):
        data = s.recv(65536)
        if not data:
            return
        got += data


def http_client(addr: str, port: int, log, pause: float, bind: str) -> None:
    while True:
        try:
            s = _bound(socket.SOCK_STREAM, bind, log, "tcp")
            s.settimeout(5)
            s.connect((addr, port))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            while s.recv(65536):  # until the server's close
                pass
            s.close()
        except OSError:
            time.sleep(0.1)
        time.sleep(pause)


def cc_client(addr: str, port: int, log, pause: float, n: int, bind: str) -> None:
    while True:
        try:
            s = _bound(socket.SOCK_STREAM, bind, log, "tcp")
            s.settimeout(5)
            s.connect((addr, port))
            for i in range(n):
                s.sendall(REQUEST)
                _recv_response(s)
                if i + 1 < n:
                    time.sleep(pause)
            s.close()  # the client closes first
        except OSError:
            time.sleep(0.1)
        time.sleep(pause)


def udp_client(addr: str, port: int, log, pause: float, bind: str) -> None:
    n = 0
    while True:
        s = _bound(socket.SOCK_DGRAM, bind, log, "udp")  # a fresh socket per query, as resolvers do
        s.settimeout(2)
        try:
            s.sendto(b"query %d" % n, (addr, port))
            s.recv(2048)
        except OSError:
            pass
        finally:
            s.close()
        n += 1
        time.sleep(pause)


def main(argv: list[str]) -> None:
    role, addr, port = argv[0], argv[1], int(argv[2])
    if role == "http10-server":
        ThreadingHTTPServer.request_queue_size = 256
        ThreadingHTTPServer((addr, port), Http10).serve_forever()
    elif role == "cc-server":
        Threading((addr, port), ClientClosesFirst).serve_forever()
    elif role == "udp-server":
        udp_server(addr, port)
    else:
        log = open(argv[3], "a", buffering=1)
        pause = float(argv[4])
        if role == "http-client":
            http_client(addr, port, log, pause, argv[5])
        elif role == "cc-client":
            cc_client(addr, port, log, pause, int(argv[5]), argv[6])
        elif role == "udp-client":
            udp_client(addr, port, log, pause, argv[5])
        else:
            raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    threading.excepthook = lambda args: None  # a reset connection in a handler thread is fine
    main(sys.argv[1:])
