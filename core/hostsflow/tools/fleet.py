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

from ..packet import PacketInfo, decode_sampled_header
from ..sflow.datagram import Datagram
from ..sflow.records import SampledHeader
from .aggregate import DEFAULT_HISTORY, DEFAULT_WINDOW, Aggregator
from .edges import EdgeJoiner
from .exposition import CONTENT_TYPE
from .fleet_metrics import DEFAULT_MAX_SERIES, FleetMetrics

if TYPE_CHECKING:
    from aiohttp import web

STATIC = Path(__file__).parent / "view" / "static"


class HeaderMemo:
    """:func:`~hostsflow.packet.decode_sampled_header` once per record while one datagram is
    handled (keyed by the record's identity: :meth:`clear` before the next datagram)."""

    def __init__(self) -> None:
        self._seen: dict[int, PacketInfo | None] = {}

    def __call__(self, header: SampledHeader) -> PacketInfo | None:
        key = id(header)
        seen = self._seen
        if key in seen:
            return seen[key]
        info = seen[key] = decode_sampled_header(header)
        return info

    def clear(self) -> None:
        self._seen.clear()


class FleetAggregator(Aggregator):
    """An :class:`Aggregator` that also joins edges (``edges``) and keeps metrics (``metrics``)
    from every datagram it is fed."""

    def __init__(self, window: float = DEFAULT_WINDOW, history: int = DEFAULT_HISTORY,
                 clock: Callable[[], float] = time.time,
                 max_series: int = DEFAULT_MAX_SERIES, **limits: Any) -> None:
        # limits: the Aggregator's table bounds and ``allow`` filter
        super().__init__(window=window, history=history, clock=clock, **limits)
        self.edges = EdgeJoiner(self.services, self.agent_names, window=window, clock=clock)
        self.metrics = FleetMetrics(self.edges, self.stats, max_series)
        self._memo = HeaderMemo()
        self.decode_header = self.edges.decode_header = self._memo

    def feed_datagram(self, dgram: Datagram, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        try:
            super().feed_datagram(dgram, now)  # learns the names first
            self.metrics.feed(dgram, self.edges.feed_datagram(dgram, now))
        finally:
            self._memo.clear()


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
