"""Blocking calls the event loop must never wait for (name lookups, DNS-SD queries), run in
daemon threads.

:class:`DaemonThreads` is a :class:`concurrent.futures.Executor` (so asyncio's
``run_in_executor`` takes it) whose threads are daemon threads: a lookup stuck on a DNS server
that does not answer never delays the agent's exit, and :meth:`~DaemonThreads.shutdown`
cancels whatever is still queued without waiting for the calls in progress."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable


class DaemonThreads(Executor):
    """Up to ``workers`` daemon threads named ``name``, started on the first call."""

    def __init__(self, workers: int, name: str) -> None:
        self.workers = workers
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, fn, args, kwargs))
        if len(self._threads) < self.workers:
            with self._lock:
                if len(self._threads) < self.workers:
                    t = threading.Thread(target=self._work, name=self.name, daemon=True)
                    self._threads.append(t)
                    t.start()
        return future

    def _work(self) -> None:
        while True:
            future, fn, args, kwargs = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = True) -> None:
        """Cancel every queued call; never waits for the calls in progress (``wait`` is
        accepted for the Executor interface and ignored)."""
        if not cancel_futures:
            return
        while True:
            try:
                future = self._queue.get_nowait()[0]
            except queue.Empty:
                return
            future.cancel()


#: collector name lookups (a few threads: one name that does not answer holds only its own)
LOOKUPS = DaemonThreads(4, "hostsflow-lookup")
