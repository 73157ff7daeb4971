"""Keeping the interface table current: a rescan when the kernel reports a link or address
change (rtnetlink, :class:`~hostsflow.host.link_watch.LinkWatch`), or, where that is not
available, when the cheap /sys fingerprint changes; and every ``refreshAdaptors`` seconds
for what neither shows."""

from __future__ import annotations

from typing import Any, Callable

from .interfaces import InterfaceTable, interfaces_fingerprint
from .link_watch import LinkWatch

INTERFACE_SCAN_SECONDS = 2  # without rtnetlink: how often the /sys fingerprint is checked


class InterfaceRefresh:
    """The agent's interface table (``table``) and its version, bumped on every change."""

    def __init__(self, scan: Callable[[], InterfaceTable], log: Any) -> None:
        self.scan = scan
        self.log = log
        self.table = scan()
        self.version = 0
        self._mark = interfaces_fingerprint()
        self._links: LinkWatch | None = None

    def watch(self, add_reader: Callable[[int, Callable[[], Any]], None]) -> None:
        """Listen to rtnetlink link and address events (the agent loop reads them)."""
        try:
            self._links = LinkWatch()
        except OSError as exc:  # no rtnetlink here: fall back to the /sys fingerprint
            self.log.info("link_watch_unavailable", error=str(exc))
            self._links = None
            return
        add_reader(self._links.fileno(), self._links.drain)

    def refresh(self, seconds: int, refresh_adaptors: int) -> bool:
        """Agent second ``seconds``: rescan if something changed or the full re-read is due;
        True when the table changed (a new ``table``, ``version`` bumped)."""
        due = seconds % max(1, refresh_adaptors) == 0
        if self._links is not None:
            if not self._links.take() and not due:
                return False
        else:
            if seconds % INTERFACE_SCAN_SECONDS:
                return False
            mark = interfaces_fingerprint()
            if mark == self._mark and not due:
                return False
            self._mark = mark
        table = self.scan()
        if not self.table.diff(table):
            return False
        self.table = table
        self.version += 1
        return True

    def close(self) -> None:
        if self._links is not None:
            self._links.close()
            self._links = None
