"""What keeps the view's HTTP server usable when someone is trying to make it unusable.

* :class:`ConnectionGuard` wraps each connection's protocol (aiohttp's request handler): it
  caps the open connections (below the file-descriptor limit, so accept never fails for want
  of descriptors), and closes a connection that has had no request in progress for
  ``idle_timeout`` seconds, whether it is idle between requests or still dribbling in the
  headers of its first one (slowloris).  When the cap is reached, the connection idle the
  longest makes room, unless a whole request head has arrived on it: a real user's request,
  which arrives in one piece, is safe from the moment its blank line is read (before the event
  loop gets round to handling it), while held-open connections, whose heads never end, only
  push each other out.
* :class:`RateLimitedLog` lets one line through per ``period`` seconds per kind of message
  and says how many it held back (accept errors, aiohttp's own loggers, the loop's exception
  handler), so a flood cannot fill the disk with stderr.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

IDLE_TIMEOUT = 10.0  # seconds a connection may stay open without a request in progress
MAX_CONNECTIONS = 512
SWEEP_EVERY = 1.0
HEAD_SCAN = 16 * 1024  # bytes of a read searched for the blank line that ends a request head
LOG_PERIOD = 10.0


def connection_limit(cap: int = MAX_CONNECTIONS) -> int:
    """The cap: at most ``cap``, and at most a quarter of the soft descriptor limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return cap
    return max(16, min(cap, soft // 4))


class _Conn(asyncio.Protocol):
    """One connection: passes everything to aiohttp's handler and tells the guard."""

    __slots__ = ("busy", "guard", "head_done", "idle_since", "inner", "tail", "transport")

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.busy = 0
        #: a whole request head (up to its blank line) arrived and its handler has not started
        #: yet: the connection is about to be busy and is not closed to make room
        self.head_done = False
        self.tail = b""  # the last bytes received, to find a blank line split across reads
        self.idle_since = time.monotonic()

    @property
    def evictable(self) -> bool:
        return not self.busy and not self.head_done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.guard.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and not self.head_done:
            seen = self.tail + data[:HEAD_SCAN]
            self.head_done = b"\r\n\r\n" in seen or b"\n\n" in seen
            self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.guard.forget(self):
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionGuard:
    """Caps and times out the connections of one HTTP server (see the module docstring).

    ``wrap(factory)`` gives the protocol factory to serve with; ``middleware`` marks the
    requests in progress; ``start()``/``stop()`` run the once-a-second sweep.  ``closed_idle``
    and ``evicted`` count the connections it closed, ``refused`` those it never let in (all
    open ones busy)."""

    def __init__(self, limit: int | None = None, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.limit = limit if limit is not None else connection_limit()
        #: connections accepted in one pass of the loop: well under the cap, so a pass cannot
        #: push out connections it has not yet read a request from
        self.accept_batch = max(1, min(64, self.limit // 4))
        self.idle_timeout = idle_timeout
        self.conns: dict[_Conn, None] = {}  # in order of arrival
        self._by_transport: dict[Any, _Conn] = {}
        self.closed_idle = self.evicted = self.refused = 0
        self._sweeper: asyncio.Task[None] | None = None

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Conn(factory(), self)

    def admit(self, conn: _Conn) -> bool:
        if len(self.conns) >= self.limit:
            victim = next((c for c in self.conns if c.evictable), None)
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            self._close(victim)
        self.conns[conn] = None
        self._by_transport[conn.transport] = conn
        return True

    def forget(self, conn: _Conn) -> bool:
        """Drop a closed connection; False if it was never admitted."""
        if self.conns.pop(conn, 0) is None:
            self._by_transport.pop(conn.transport, None)
            return True
        return False

    def _close(self, conn: _Conn) -> None:
        transport = conn.transport
        self.forget(conn)
        conn.inner.connection_lost(None)
        if transport is not None:
            transport.abort()

    def request_started(self, transport: Any) -> _Conn | None:
        conn = self._by_transport.get(transport)
        if conn is not None:
            conn.busy += 1
            conn.head_done = False
            conn.tail = b""
        return conn

    @staticmethod
    def request_done(conn: _Conn | None) -> None:
        if conn is not None:
            conn.busy -= 1
            conn.idle_since = time.monotonic()

    def sweep(self, now: float | None = None) -> int:
        """Close the connections idle for longer than ``idle_timeout``; returns how many."""
        now = time.monotonic() if now is None else now
        stale = [c for c in self.conns if not c.busy and now - c.idle_since > self.idle_timeout]
        for c in stale:
            self._close(c)
        self.closed_idle += len(stale)
        return len(stale)

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        for c in list(self.conns):
            self._close(c)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            self.sweep()

    def figures(self) -> dict[str, int]:
        """Open connections, the cap, and what the guard closed or refused so far."""
        return {"open": len(self.conns), "limit": self.limit, "closed_idle": self.closed_idle,
                "evicted": self.evicted, "refused": self.refused}


class RateLimitedLog:
    """At most one line per kind of message every ``period`` seconds, to ``stream``; the next
    line that gets through says how many were held back."""

    def __init__(self, period: float = LOG_PERIOD, stream: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self.stream = stream
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def passes(self, kind: str) -> bool:
        """Whether a ``kind`` line may go out now (else it is counted as held back)."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.period:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._last[kind] = now
        return True

    def say(self, kind: str, text: str) -> bool:
        """Write ``text`` unless a ``kind`` line went out less than ``period`` ago."""
        if not self.passes(kind):
            return False
        held = self._held.pop(kind, 0)
        more = f" ({held} more like it in the last {self.period:g} s)" if held else ""
        print(f"hostsflow view: {text}{more}", file=self.stream or sys.stderr, flush=True)
        return True

    def loop_handler(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """For ``loop.set_exception_handler``: accept errors (EMFILE...) and the like."""
        exc = context.get("exception")
        message = context.get("message", "error")
        kind = f"loop:{message}:{type(exc).__name__ if exc else ''}"
        self.say(kind, f"{message}: {exc}" if exc else message)

    def filter(self) -> logging.Filter:
        """A logging filter holding back repeats (for aiohttp's loggers)."""
        log = self

        class _Filter(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                return log.passes(f"log:{record.name}:{record.msg}")

        return _Filter()
