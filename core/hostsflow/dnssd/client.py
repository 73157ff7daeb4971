"""Keeping an agent's collectors and settings in step with its DNS-SD records, as hsflowd's
mod_dnssd: the first query a random 1..``startDelay`` seconds after start-up, the next one
after the answers' TTL (see :func:`~.records.refresh_seconds`); each query runs in its own
daemon thread, so the event loop never waits on DNS.

A good answer that changes anything is installed like a reload (``install``); a failed query or
a refused answer keeps the settings in force, with one log line while it lasts."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Callable

from ..background import DaemonThreads
from ..config.schema import DnsSdConfig
from ..logsetup import OnceLog
from . import lookup
from .records import Answer, DnsSettings, Refused, no_collectors, refresh_seconds, settings_from

#: the DNS-SD queries (one thread: a query waits for the one before)
QUERIES = DaemonThreads(1, "hostsflow-dnssd")


class DnsSd:
    """The DNS-SD client of one agent.

    :param install: called on the loop with each new good :class:`DnsSettings`.
    :param query: ``query(name) -> Answer``, blocking (default: :func:`.lookup.query`).
    """

    def __init__(self, cfg: DnsSdConfig, install: Callable[[DnsSettings], None], log: Any,
                 rng: random.Random, query: Callable[[str], Answer] = lookup.query) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.install = install
        self.log = log
        self.once = OnceLog(log)
        self.rng = rng
        self.query = query
        self.settings: DnsSettings | None = None  #: the last good answer (in force)
        self.state = "waiting"  #: waiting, ok, none (no SRV record), failed, refused
        self.error = ""
        self.answers = 0
        self.last_query: float | None = None  #: wall-clock time of the last answer
        self.next_query: float | None = None  #: wall-clock time of the next query
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._future: asyncio.Future[Answer] | None = None
        self._stopped = False

    # ------------------------------------------------------------ schedule

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        delay = self.cfg.start_delay
        self._schedule(self.rng.randint(1, delay) if delay else 0)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._future is not None:
            self._future.cancel()

    def _schedule(self, seconds: float) -> None:
        assert self._loop is not None
        self.next_query = time.time() + seconds
        self._timer = self._loop.call_later(seconds, self._ask)

    def _ask(self) -> None:
        assert self._loop is not None
        self._timer = None
        self._future = self._loop.run_in_executor(QUERIES, self.query, self.name)
        self._future.add_done_callback(self._answered)

    def _answered(self, future: "asyncio.Future[Answer]") -> None:
        self._future = None
        if self._stopped or future.cancelled():
            return
        exc = future.exception()
        answer = (Answer(self.name, "failed", error=repr(exc)) if exc is not None
                  else future.result())
        self.take(answer)
        self._schedule(refresh_seconds(answer.ttl))

    async def answer_now(self) -> None:
        """Query at once and take the answer (``hostsflowd --test``)."""
        loop = asyncio.get_running_loop()
        self.take(await loop.run_in_executor(QUERIES, self.query, self.name))

    # ------------------------------------------------------------ answers

    def take(self, answer: Answer) -> None:
        """Install what a good answer changes; keep the settings in force otherwise."""
        self.last_query = time.time()
        self.answers += 1
        if answer.status == "failed":
            self.state, self.error = "failed", answer.error
            self.once.warn("dns_sd failed", "dns_sd_query_failed", name=self.name,
                           error=answer.error, kept="the settings in force")
            return
        try:
            new = settings_from(answer) if answer.status == "ok" else no_collectors(answer)
        except Refused as exc:
            self.state, self.error = "refused", str(exc)
            self.once.warn("dns_sd refused", "dns_sd_answer_refused", level="error",
                           name=self.name, reason=str(exc), kept="the settings in force")
            return
        self.once.clear("dns_sd failed")
        self.once.clear("dns_sd refused")
        self.state, self.error = answer.status, ""
        for text in new.ignored:
            self.once.warn(f"dns_sd key {text.split('=', 1)[0].lower()}", "dns_sd_key_ignored",
                           level="info", name=self.name, record=text,
                           reason="not a setting hsflowd takes from DNS")
        changed = not new.same_as(self.settings)
        self.settings = new
        if changed:
            self.install(new)

    def status(self) -> dict[str, Any]:
        """For the status file and ``--test``: the name, the state, the times."""
        ttl = self.settings.ttl if self.settings is not None else None
        return {"name": self.name, "state": self.state, "error": self.error,
                "answers": self.answers, "ttl": ttl, "last_query": self.last_query,
                "next_query": self.next_query}
