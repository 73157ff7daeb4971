"""The collector across a fleet: the aggregator of ``hostsflow view`` with the dependency map
(:mod:`hostsflow.tools.edges`) and the Prometheus metrics (:mod:`hostsflow.tools.fleet_metrics`)
fed the same decoded datagrams, and their HTTP routes.

Routes (added to the view's application by :func:`add_routes`):

* ``GET /api/edges``: the map's nodes and edges over the window as JSON
  (:meth:`~hostsflow.tools.edges.EdgeSnapshot.to_dict`);
* ``GET /metrics``: the Prometheus text exposition;
* ``GET /map``: the page that draws the map (``static/map.html``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .aggregate import DEFAULT_HISTORY, DEFAULT_WINDOW, Aggregator
from .flow_rows import CollectorDatagram
from .edges import EdgeJoiner
from .exposition import CONTENT_TYPE
from .fleet_metrics import DEFAULT_MAX_SERIES, FleetMetrics

if TYPE_CHECKING:
    from aiohttp import web

STATIC = Path(__file__).parent / "view" / "static"


class FleetAggregator(Aggregator):
    """An :class:`Aggregator` that also joins edges (``edges``) and keeps metrics (``metrics``)
    from every datagram it is fed."""

    def __init__(self, window: float = DEFAULT_WINDOW, history: int = DEFAULT_HISTORY,
                 clock: Callable[[], float] = time.time,
                 max_series: int = DEFAULT_MAX_SERIES, **limits: Any) -> None:
        # limits: the Aggregator's table bounds and ``allow`` filter
        super().__init__(window=window, history=history, clock=clock, **limits)
        self.edges = EdgeJoiner(self.services, self.agent_names, window=window, clock=clock)
        self.metrics = FleetMetrics(self.edges, self, max_series)

    def feed_read(self, read: CollectorDatagram, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.metrics.fold(int(now))  # the seconds before this one are whole
        super().feed_read(read, now)  # learns the names first
        self.edges.feed_rows(read.agent, read.rows, now)
        if read.counters:
            self.metrics.feed_counters(read.agent, read.counters)


def add_routes(app: web.Application, fleet: FleetAggregator) -> None:
    """The map's and the metrics' routes on the view's aiohttp application."""
    from aiohttp import web

    async def edges(_request: web.Request) -> web.Response:
        return web.json_response(fleet.edges.snapshot().to_dict())

    async def metrics(_request: web.Request) -> web.Response:
        body = fleet.metrics.render().encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def map_page(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "map.html")

    app.router.add_get("/api/edges", edges)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/map", map_page)
