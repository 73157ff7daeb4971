"""Running an agent as the daemon: its asyncio loop, one agent second a second, the signals
(SIGTERM and SIGINT stop it, SIGHUP reloads the config) and the garbage collector settled
once start-up is over."""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .agent import Agent

SUSPEND_SECONDS = 5  # a second this late means the host was suspended: do not replay


async def run_agent(agent: "Agent", reload: Callable[[], Any] | None = None,
                    every_second: Callable[[], None] | None = None) -> None:
    """Start ``agent`` and run it until SIGTERM/SIGINT; SIGHUP calls ``reload()`` (which
    returns a new config or raises a config error that is logged while the old config stays
    in force).  ``every_second()`` runs after each agent second; what it raises ends the run
    (the agent is stopped, then the exception propagates)."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _try_reload(agent, reload))
    agent.start(loop)
    settle_gc()
    clock = agent.clock
    next_second = clock() + 1.0
    timer: asyncio.TimerHandle | None = None

    def tick() -> None:
        # One timer callback a second (no task, future or wait_for per second).
        nonlocal next_second, timer
        timer = None
        if stop.done():
            return
        try:
            agent.second()
            if every_second is not None:
                every_second()
        except Exception as exc:  # an error in the core's own second ends the run
            stop.set_exception(exc)
            return
        next_second += 1.0
        if clock() - next_second > SUSPEND_SECONDS:
            next_second = clock() + 1.0
        timer = loop.call_later(max(0.0, next_second - clock()), tick)

    timer = loop.call_later(max(0.0, next_second - clock()), tick)
    try:
        await stop
    finally:
        if timer is not None:
            timer.cancel()
        agent.stop()
        agent.log.info("stopped", **agent.health.snapshot())


def _try_reload(agent: "Agent", reload: Callable[[], Any]) -> None:
    try:
        new = reload()
    except Exception as exc:  # noqa: BLE001 - a bad config must not stop the agent
        agent.log.error("reload_refused", error=str(exc))
        agent.health.count("reloads_refused")
        return
    agent.reload(new)


def settle_gc() -> None:
    """Once start-up is over: hide every object alive now (modules, config, tables) from the
    cyclic garbage collector, and let it run less often.

    The packet path makes a few short-lived container objects per sample (FlowSample, its
    records list and stash, the sampled_header), freed by reference counting; with the default
    threshold a collection ran every ~100 samples and re-scanned the batch in flight and every
    long-lived object (about 15 % of the per-sample CPU, bench/RESULTS.md).  Cycles are still
    collected, just in larger steps."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
