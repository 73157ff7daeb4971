"""``hostsflow view``: a page on localhost with a live chart of traffic by service.

One aiohttp application on one asyncio loop, which also receives the sFlow datagrams
(:func:`hostsflow.tools.aggregate.listen`) into an :class:`~hostsflow.tools.aggregate.Aggregator`.
Once a second (just after each wall-clock second) a ticker takes a snapshot and pushes it to
every open page as a server-sent event.

Routes:

* ``GET /``: the page (``static/index.html``), ``GET /static/...``: its script, style and the
  vendored chart library (uPlot, with its licence), all shipped inside the package.
* ``GET /api/snapshot``: the current snapshot as JSON (with ``notices``: what the page should
  tell the user, from the snapshot and the local agent's status file).
* ``GET /api/events``: ``text/event-stream``; first a ``history`` event (the chart points kept so
  far), then a ``snapshot`` event every second (``{"snapshot": ..., "point": ...}``).
* with a :class:`~hostsflow.tools.fleet.FleetAggregator` (the default): ``GET /api/edges``,
  ``GET /metrics`` and ``GET /map`` (see :mod:`hostsflow.tools.fleet`).
* ``GET /api/flows?keys=protocol,dst_port&filter=service=&start=T&end=T&top=10``: the traffic
  of the kept seconds grouped by the keys sFlow carries (see :mod:`hostsflow.tools.flows`).

The server is built to stay up for real users under abuse (:mod:`.guard`): a capped number of
connections, idle and slow connections closed, event streams that stop reading dropped, logs
rate-limited, and a Content-Security-Policy on every response (the page loads only its own
script and style and talks only to its own origin).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..aggregate import Aggregator, SflowReceiver, listen
from ..allow import source_filter
from ..decode import parse_listen
from ..fleet import FleetAggregator, add_routes
from ..fleet_metrics import DEFAULT_MAX_SERIES
from ..flows import DEFAULT_KEYS, FlowQueryError, parse_filter, parse_keys
from ..hints import AgentStatusReader, notices
from .guard import ConnectionGuard, RateLimitedLog

STATIC = Path(__file__).parent / "static"
DEFAULT_HTTP = "127.0.0.1:8008"
DEFAULT_SFLOW = "0.0.0.0:6343"
CLIENT_QUEUE = 8  # events a slow page may lag behind before it misses some
LISTEN_QUEUE = 1024  # connections the kernel holds for the server to accept
MAX_STREAMS = 64  # open event streams; one more closes the oldest (the page reconnects)
STREAM_STALL = 10.0  # seconds an event stream may take to accept one message before it is dropped
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class ViewServer:
    """The aggregator, its sFlow socket, the ticker and the web application.

    ``await start()`` binds both sockets (port 0 picks a free one: see ``sflow_address`` and
    ``url``); ``await stop()`` closes everything.  ``status_file`` is the local agent's status
    file (read for the hints on the page; None: no hints from it)."""

    def __init__(self, aggregator: Aggregator | None = None, listen_sflow: str = DEFAULT_SFLOW,
                 http: str = DEFAULT_HTTP, interval: float = 1.0,
                 status_file: str | None = None, guard: ConnectionGuard | None = None,
                 log: RateLimitedLog | None = None) -> None:
        self.aggregator = aggregator if aggregator is not None else FleetAggregator()
        self.listen_sflow = listen_sflow
        self.http = http
        self.interval = interval
        self.status = AgentStatusReader(status_file) if status_file else None
        self.guard = guard if guard is not None else ConnectionGuard()
        self.log = log if log is not None else RateLimitedLog()
        self.clients: dict[asyncio.Queue[str | None], web.Request] = {}  # in order of arrival
        self.streams_dropped = 0
        self.stream_stall = STREAM_STALL
        self.sflow_address: tuple[str, int] | None = None
        self.url = ""
        self._transport: SflowReceiver | None = None
        self._runner: web.AppRunner | None = None
        self._http_server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._flows_lock = asyncio.Lock()
        self.app = self._make_app()

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._track], client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/flows", self._flows)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        if isinstance(self.aggregator, FleetAggregator):
            add_routes(app, self.aggregator)
        app.on_response_prepare.append(_security_headers)
        app.on_shutdown.append(self._on_shutdown)
        return app

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen for sFlow and HTTP and start the once-a-second ticker."""
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.log.loop_handler)
        for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "asyncio"):
            logging.getLogger(name).addFilter(self.log.filter())
        self._transport = await listen(self.aggregator, self.listen_sflow)
        addr = self._transport.sockname
        self.sflow_address = (addr[0], addr[1])
        family, host, port = parse_listen(self.http, default_port=8008)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0,
                                     keepalive_timeout=self.guard.idle_timeout,
                                     handler_cancellation=True)
        await self._runner.setup()
        assert self._runner.server is not None
        # asyncio accepts up to ``backlog`` connections in one pass of the loop, before it reads
        # from any of them; a pass larger than the cap could push out a real user's connection
        # before its request is read, so the pass is kept small and the kernel's queue long
        raw = socket.create_server((host, port), family=family, backlog=LISTEN_QUEUE)
        try:
            self._http_server = await loop.create_server(
                self.guard.wrap(self._runner.server), sock=raw,
                backlog=self.guard.accept_batch)
        except BaseException:
            raw.close()
            raise
        raw.listen(LISTEN_QUEUE)  # create_server set the kernel's queue to the pass size
        bound = self._http_server.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}/"
        self.guard.start()
        self._ticker = asyncio.create_task(self._tick_forever())

    async def stop(self) -> None:
        """Stop the ticker, close the pages' streams and both sockets."""
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        if self._http_server is not None:
            self._http_server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.guard.stop()
        if self._transport is not None:
            self._transport.close()

    async def _on_shutdown(self, _app: web.Application) -> None:
        for q in list(self.clients):
            _offer(q, None)

    async def _tick_forever(self) -> None:
        while True:
            now = time.time()
            # just after the next whole second, so each snapshot covers whole seconds
            await asyncio.sleep(self.interval - (now % self.interval) + 0.02)
            self.broadcast()

    def snapshot_dict(self, snap: Any) -> dict[str, Any]:
        """A snapshot as the page gets it: with ``notices`` and the server's own figures."""
        out = snap.to_dict()
        status = self.status.read() if self.status is not None else None
        out["notices"] = notices(snap, status)
        out["http"] = {**self.guard.figures(), "streams": len(self.clients),
                       "streams_dropped": self.streams_dropped}
        return out

    def broadcast(self) -> None:
        """Take a snapshot (one chart point) and send it to every open page."""
        snap, point = self.aggregator.tick()
        if not self.clients:  # the point is in the history; nobody to send it to
            return
        message = _sse("snapshot", {"snapshot": self.snapshot_dict(snap), "point": point})
        for q in list(self.clients):
            _offer(q, message)

    # ------------------------------------------------------------ handlers

    @web.middleware
    async def _track(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        conn = self.guard.request_started(request.transport)
        try:
            return await handler(request)
        finally:
            self.guard.request_done(conn)

    async def _index(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _snapshot(self, _request: web.Request) -> web.Response:
        return _json_response(self.snapshot_dict(self.aggregator.snapshot()))

    async def _flows(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            keys = parse_keys(q.get("keys", ",".join(DEFAULT_KEYS)))
            conditions = parse_filter(q.get("filter", ""))
            start = float(q["start"]) if q.get("start") else None
            end = float(q["end"]) if q.get("end") else None
            top = int(q.get("top", "10"))
        except (FlowQueryError, ValueError) as exc:
            return _json_response({"error": str(exc)}, status=400)
        async with self._flows_lock:  # one breakdown at a time: each is a pass over the history
            result = self.aggregator.flow_query(keys, conditions, start, end, top)
        return _json_response(result)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(CLIENT_QUEUE)
        while len(self.clients) >= MAX_STREAMS:
            oldest = next(iter(self.clients))
            self._drop_stream(oldest)
        self.clients[queue] = request
        try:
            first = _sse("history", {
                "window": self.aggregator.window, "points": list(self.aggregator.history),
                "snapshot": self.snapshot_dict(self.aggregator.snapshot())})
            message: str | None = first
            while message is not None:
                try:
                    await asyncio.wait_for(resp.write(message.encode()), self.stream_stall)
                except asyncio.TimeoutError:
                    self._drop_stream(queue)  # the page stopped reading: its buffers go too
                    break
                message = await queue.get()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients.pop(queue, None)
        return resp

    def _drop_stream(self, queue: asyncio.Queue[str | None]) -> None:
        request = self.clients.pop(queue, None)
        if request is None:
            return
        self.streams_dropped += 1
        _offer(queue, None)
        if request.transport is not None:
            request.transport.abort()


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, separators=(",", ":"), allow_nan=False),
                        status=status, content_type="application/json")


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n"


def _offer(queue: asyncio.Queue[str | None], message: str | None) -> None:
    """Queue a message for one page; a page that lags drops its oldest message."""
    if queue.full():
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
    queue.put_nowait(message)


async def serve(listen_sflow: str, http: str, window: float,
                max_series: int = DEFAULT_MAX_SERIES, allow: list[str] | None = None,
                status_file: str | None = None) -> None:
    """Run the view until cancelled (Ctrl-C), printing where it listens."""
    server = ViewServer(FleetAggregator(window=window, max_series=max_series,
                                        allow=source_filter(allow)),
                        listen_sflow, http, status_file=status_file)
    await server.start()
    _quiet_gc()
    assert server.sflow_address is not None
    host, port = server.sflow_address
    only = f" (only from {server.aggregator.allow})" if server.aggregator.allow else ""
    print(f"hostsflow view: sFlow on {host}:{port}{only}, open {server.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


#: allocations between young collections: the tables make and drop tens of thousands of small
#: objects a second, and each young collection also walks what survived the last ones
GC_YOUNG_THRESHOLD = 50_000


def _quiet_gc() -> None:
    """Fewer cycle collections for a process that holds large tables of small objects: what
    start-up made is frozen out of every collection, and the young generation is collected
    every GC_YOUNG_THRESHOLD allocations instead of 700 (the tables hold no cycles: what they
    drop is freed by reference counting at once)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_view(listen_sflow: str = DEFAULT_SFLOW, http: str = DEFAULT_HTTP,
             window: float = 5.0, max_series: int = DEFAULT_MAX_SERIES,
             allow: list[str] | None = None, status_file: str | None = None) -> int:
    """``hostsflow view``: exit status 2 for an address that cannot be used."""
    try:
        asyncio.run(serve(listen_sflow, http, window, max_series, allow, status_file))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as exc:
        print(f"hostsflow view: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0

