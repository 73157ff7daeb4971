"""Talk to systemd over D-Bus (jeepney's asyncio router, on the agent's loop).

:class:`UnitWatcher` is one asyncio task: connect, ``Subscribe`` to the manager's signals, then
loop: ``ListUnits`` (+ ``Properties.Get(ControlGroup)`` for units not seen before), hand
``{unit: ControlGroup}`` to a callback, and wait for a unit signal (UnitNew, UnitRemoved,
JobRemoved, PropertiesChanged; debounced) or the refresh period.  If the bus or systemd goes
away it reconnects with exponential backoff and reports the outage once.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable

from jeepney import DBusAddress, MatchRule, MessageType, Properties, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.asyncio import open_dbus_router
from jeepney.wrappers import DBusErrorResponse

SYSTEMD = "org.freedesktop.systemd1"
MANAGER = DBusAddress("/org/freedesktop/systemd1", bus_name=SYSTEMD,
                      interface="org.freedesktop.systemd1.Manager")
SIGNAL_RULE = MatchRule(type="signal", sender=SYSTEMD, path_namespace="/org/freedesktop/systemd1")
#: local filter (the sender of a signal is systemd's unique name, so match on the path)
LOCAL_RULE = MatchRule(type="signal", path_namespace="/org/freedesktop/systemd1")
DEBOUNCE = 0.15  # seconds to gather a burst of signals into one ListUnits
CALL_TIMEOUT = 10.0  # hsflowd drops requests outstanding longer than 10 s
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0


class MalformedReply(Exception):
    """A D-Bus reply did not have the expected signature."""


def bus_address(configured: str | None) -> str:
    """The address to open: the configured one, else the system bus (honouring
    DBUS_SYSTEM_BUS_ADDRESS)."""
    return configured or "SYSTEM"


def describe_bus(configured: str | None) -> str:
    return configured or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS",
                                        "unix:path=/var/run/dbus/system_bus_socket")


def parse_units(body: Any) -> list[tuple[str, str, str, str]]:
    """ListUnits reply body -> [(name, load_state, active_state, object_path)]; raises
    MalformedReply on a wrong shape."""
    try:
        (rows,) = body
        out = []
        if not isinstance(rows, (list, tuple)):
            raise MalformedReply("ListUnits: not an array")
        for row in rows:
            if not isinstance(row, (list, tuple)) or len(row) < 7:
                raise MalformedReply("ListUnits: not a (ssssssouso) struct")
            name, _desc, load, active, _sub, _follow, path = row[:7]
            if not all(isinstance(x, str) for x in (name, load, active, path)):
                raise MalformedReply("ListUnits: non-string field")
            out.append((name, load, active, path))
        return out
    except (TypeError, ValueError) as exc:
        raise MalformedReply(f"ListUnits: {exc}") from exc


def wanted(name: str, load: str, active: str) -> bool:
    """hsflowd's filter: ``*.service`` units that are loaded and active."""
    return name.endswith(".service") and load == "loaded" and active == "active"


class UnitWatcher:
    """Keeps ``on_units({name: ControlGroup})`` informed of the active services.

    :param on_units: called on the loop with every fresh list.
    :param on_state: called with ``("up", address)``, ``("down", reason)`` on transitions.
    """

    def __init__(self, address: str | None, refresh: float,
                 on_units: Callable[[dict[str, str]], None],
                 on_state: Callable[[str, str], None],
                 on_malformed: Callable[[str], None]) -> None:
        self.address = address
        self.refresh = refresh
        self.on_units = on_units
        self.on_state = on_state
        self.on_malformed = on_malformed
        self._task: asyncio.Task[None] | None = None
        self._cgroups: dict[str, str] = {}  # unit -> ControlGroup, kept while the unit is listed
        self.syncs = 0
        self.connected = False
        self._kick: asyncio.Event | None = None

    def start(self) -> None:
        self._kick = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="systemd-dbus")

    def resync(self) -> None:
        """Ask for a ListUnits now (e.g. a poll found a service gone)."""
        if self._kick is not None:
            self._kick.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # ------------------------------------------------------------ the task

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                await self._session()
                reason = "connection closed"
            except asyncio.CancelledError:
                raise
            except DBusErrorResponse as exc:
                reason = f"{exc.name}: {exc.data[0] if exc.data else ''}"
            except (OSError, EOFError, ConnectionError, asyncio.TimeoutError) as exc:
                # the bus address, which an OSError from connect() does not name
                reason = (f"cannot reach D-Bus at {describe_bus(self.address)}: "
                          f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # jeepney RouterClosed, auth failure, parser errors
                reason = f"{type(exc).__name__}: {exc}"
            if self.connected:
                backoff = BACKOFF_MIN
            self.connected = False
            self.on_state("down", f"{reason}; retrying in {backoff:.0f} s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _call(self, router: Any, msg: Any) -> Any:
        reply = await asyncio.wait_for(router.send_and_get_reply(msg), CALL_TIMEOUT)
        if reply.header.message_type == MessageType.error:
            raise DBusErrorResponse(reply)
        return reply

    async def _session(self) -> None:
        async with open_dbus_router(bus_address(self.address)) as router:
            await self._call(router, message_bus.AddMatch(SIGNAL_RULE))
            await self._call(router, new_method_call(MANAGER, "Subscribe"))
            self.connected = True
            self.on_state("up", describe_bus(self.address))
            rcv = getattr(router, "_rcv_task", None)
            assert self._kick is not None
            with router.filter(LOCAL_RULE, bufsize=1) as queue:
                while True:
                    await self._sync(router)
                    self._kick.clear()
                    waiters = {asyncio.ensure_future(queue.get()),
                               asyncio.ensure_future(self._kick.wait())}
                    if rcv is not None:
                        waiters.add(rcv)  # type: ignore[arg-type]
                    try:
                        done, _ = await asyncio.wait(waiters, timeout=self.refresh,
                                                     return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waiters:
                            if w is not rcv and not w.done():
                                w.cancel()
                    if rcv is not None and rcv.done():
                        return  # bus connection lost
                    if done:
                        await asyncio.sleep(DEBOUNCE)
                        while not queue.empty():
                            queue.get_nowait()

    async def _sync(self, router: Any) -> None:
        reply = await self._call(router, new_method_call(MANAGER, "ListUnits"))
        try:
            units = parse_units(reply.body)
        except MalformedReply as exc:
            self.on_malformed(str(exc))
            return
        current: dict[str, str] = {}
        for name, load, active, path in units:
            if not wanted(name, load, active):
                continue
            cg = self._cgroups.get(name)
            if cg is None:
                cg = await self._control_group(router, path)
                if cg is None:
                    continue
            current[name] = cg
        self._cgroups = {n: c for n, c in current.items() if c}
        self.syncs += 1
        self.on_units(current)

    async def _control_group(self, router: Any, path: str) -> str | None:
        svc = DBusAddress(path, bus_name=SYSTEMD, interface="org.freedesktop.systemd1.Service")
        try:
            reply = await self._call(router, Properties(svc).get("ControlGroup"))
        except DBusErrorResponse:
            return None  # unit vanished between ListUnits and Get
        try:
            sig, value = reply.body[0]
            if sig != "s" or not isinstance(value, str):
                raise ValueError(sig)
            return value
        except (TypeError, ValueError, IndexError) as exc:
            self.on_malformed(f"ControlGroup of {path}: {exc}")
            return None
