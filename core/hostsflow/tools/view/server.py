"""``hostsflow view``: a page on localhost with a live chart of traffic by service.

One aiohttp application on one asyncio loop, which also receives the sFlow datagrams
(:func:`hostsflow.tools.aggregate.listen`) into an :class:`~hostsflow.tools.aggregate.Aggregator`.
Once a second (just after each wall-clock second) a ticker takes a snapshot and pushes it to
every open page as a server-sent event.

Routes:

* ``GET /``: the page (``static/index.html``), ``GET /static/...``: its script, style and the
  vendored chart library (uPlot, with its licence), all shipped inside the package.
* ``GET /api/snapshot``: the current snapshot as JSON.
* ``GET /api/events``: ``text/event-stream``; first a ``history`` event (the chart points kept so
  far), then a ``snapshot`` event every second (``{"snapshot": ..., "point": ...}``).
* with a :class:`~hostsflow.tools.fleet.FleetAggregator` (the default): ``GET /api/edges``,
  ``GET /metrics`` and ``GET /map`` (see :mod:`hostsflow.tools.fleet`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from ..aggregate import Aggregator, listen
from ..decode import parse_listen
from ..fleet import FleetAggregator, add_routes
from ..fleet_metrics import DEFAULT_MAX_SERIES

STATIC = Path(__file__).parent / "static"
DEFAULT_HTTP = "127.0.0.1:8008"
DEFAULT_SFLOW = "0.0.0.0:6343"
CLIENT_QUEUE = 8  # events a slow page may lag behind before it misses some


class ViewServer:
    """The aggregator, its sFlow socket, the ticker and the web application.

    ``await start()`` binds both sockets (port 0 picks a free one: see ``sflow_address`` and
    ``url``); ``await stop()`` closes everything."""

    def __init__(self, aggregator: Aggregator | None = None, listen_sflow: str = DEFAULT_SFLOW,
                 http: str = DEFAULT_HTTP, interval: float = 1.0) -> None:
        self.aggregator = aggregator if aggregator is not None else FleetAggregator()
        self.listen_sflow = listen_sflow
        self.http = http
        self.interval = interval
        self.clients: set[asyncio.Queue[str | None]] = set()
        self.sflow_address: tuple[str, int] | None = None
        self.url = ""
        self._transport: asyncio.DatagramTransport | None = None
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.app = self._make_app()

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/api/events", self._events)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        if isinstance(self.aggregator, FleetAggregator):
            add_routes(app, self.aggregator)
        app.on_shutdown.append(self._on_shutdown)
        return app

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen for sFlow and HTTP and start the once-a-second ticker."""
        self._transport = await listen(self.aggregator, self.listen_sflow)
        addr = self._transport.get_extra_info("sockname")
        self.sflow_address = (addr[0], addr[1])
        _family, host, port = parse_listen(self.http, default_port=8008)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}/"
        self._ticker = asyncio.create_task(self._tick_forever())

    async def stop(self) -> None:
        """Stop the ticker, close the pages' streams and both sockets."""
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        if self._runner is not None:
            await self._runner.cleanup()
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

    def broadcast(self) -> None:
        """Take a snapshot (one chart point) and send it to every open page."""
        snap, point = self.aggregator.tick()
        if not self.clients:  # the point is in the history; nobody to send it to
            return
        message = _sse("snapshot", {"snapshot": snap.to_dict(), "point": point})
        for q in list(self.clients):
            _offer(q, message)

    # ------------------------------------------------------------ handlers

    async def _index(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _snapshot(self, _request: web.Request) -> web.Response:
        return web.json_response(self.aggregator.snapshot().to_dict())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(CLIENT_QUEUE)
        self.clients.add(queue)
        try:
            await resp.write(_sse("history", {
                "window": self.aggregator.window, "points": list(self.aggregator.history),
                "snapshot": self.aggregator.snapshot().to_dict()}).encode())
            while True:
                message = await queue.get()
                if message is None:
                    break
                await resp.write(message.encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(queue)
        return resp


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _offer(queue: asyncio.Queue[str | None], message: str | None) -> None:
    """Queue a message for one page; a page that lags drops its oldest message."""
    if queue.full():
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
    queue.put_nowait(message)


async def serve(listen_sflow: str, http: str, window: float, max_series: int) -> None:
    """Run the view until cancelled (Ctrl-C), printing where it listens."""
    server = ViewServer(FleetAggregator(window=window, max_series=max_series), listen_sflow, http)
    await server.start()
    assert server.sflow_address is not None
    host, port = server.sflow_address
    print(f"hostsflow view: sFlow on {host}:{port}, open {server.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def run_view(listen_sflow: str = DEFAULT_SFLOW, http: str = DEFAULT_HTTP,
             window: float = 5.0, max_series: int = DEFAULT_MAX_SERIES) -> int:
    """``hostsflow view``: exit status 2 for an address that cannot be used."""
    try:
        asyncio.run(serve(listen_sflow, http, window, max_series))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as exc:
        print(f"hostsflow view: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
