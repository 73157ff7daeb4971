"""``hostsflow top``: traffic by service in the terminal, refreshed in place once a second.

The same :class:`~hostsflow.tools.aggregate.Aggregator` as ``hostsflow view``, drawn with rich:
a table of services (in, out, total, packets/s; traffic marked with no service as "other" in
the total column, its direction being unknown), the top protocols/ports and remote addresses
(one table each), and the top TCP connections with their RTT and retransmissions.  Empty tables
say "none yet"; the notices say why no service is listed (from the local agent's status file
when there is one).  ``q`` quits (exit status 0), as does Ctrl-C.  Needs the ``view`` extra
(rich).  ``--seconds N`` stops after N seconds (and prints the last screen once more).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import time
import tty
from collections.abc import Iterator

from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .aggregate import Aggregator, Snapshot, format_rate, listen
from .allow import source_filter
from .hints import AgentStatus, AgentStatusReader, notices

DEFAULT_SFLOW = "0.0.0.0:6343"
NONE_YET = "none yet"
QUIT_KEYS = b"qQ"


def _table(title: str, columns: tuple[tuple[str, str], ...]) -> Table:
    table = Table(title=title, title_justify="left", expand=True)
    for col, just in columns:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    return table


def _none_yet(table: Table) -> None:
    table.add_row(Text(NONE_YET, style="dim italic"), *[""] * (len(table.columns) - 1))


def render(snap: Snapshot, rows: int = 10, status: AgentStatus | None = None,
           service_rows: int = 20) -> Group:
    """The screen for one snapshot (a rich renderable)."""
    hosts = ", ".join(f"{h} ({a})" for a, h in snap.agents.items())
    st = snap.stats
    summary = (f"total {format_rate(snap.total.bps)}, {st.flow_samples} flow samples "
               f"({st.marked_samples} marked), {st.malformed} malformed, "
               f"window {snap.window:g} s  (q quits)")
    head = Text.assemble(("hostsflow top", "bold"), f"  {hosts or 'waiting for sFlow'}  ",
                         (summary, "dim"))

    services = _table("Traffic by service", (
        ("service", "left"), ("in", "right"), ("out", "right"), ("total", "right"),
        ("pkts/s", "right")))
    shown = snap.services[:service_rows]
    for s in shown:
        services.add_row(s.label, format_rate(s.inbound.bps), format_rate(s.outbound.bps),
                         Text(format_rate(s.bps), style="bold"), f"{s.pps:.0f}")
    hidden = snap.services_total - len(shown)
    if hidden > 0:
        more_bps = snap.more.bps + sum(s.bps for s in snap.services[service_rows:])
        more_pps = snap.more.pps + sum(s.pps for s in snap.services[service_rows:])
        services.add_row(Text(f"{hidden} more services", style="dim"), "", "",
                         format_rate(more_bps), f"{more_pps:.0f}")
    services.add_row(Text("other (no service)", style="dim"), "", "",
                     format_rate(snap.other.bps), f"{snap.other.pps:.0f}")

    conns = _table("Top TCP connections", (
        ("service", "left"), ("local", "left"), ("remote", "left"), ("rate", "right"),
        ("RTT ms", "right"), ("min RTT ms", "right"), ("retrans", "right"), ("lost", "right"),
        ("cwnd", "right")))
    for c in snap.connections[:rows]:
        conns.add_row(c.service or "-", c.local, c.remote, format_rate(c.bps),
                      f"{c.rtt_ms:.3f}", f"{c.min_rtt_ms:.3f}", str(c.retrans), str(c.lost),
                      str(c.snd_cwnd))
    if not snap.connections:
        _none_yet(conns)

    keyed = Table.grid(expand=True, padding=(0, 2))
    keyed.add_column(ratio=1)
    keyed.add_column(ratio=1)
    cols = (("service", "left"), ("dir", "left"), ("KEY", "left"), ("rate", "right"))
    tables = []
    for title, key, items in (("By protocol", "protocol/port", snap.protocols),
                              ("By remote address", "remote", snap.remotes)):
        t = _table(title, tuple((key if c == "KEY" else c, j) for c, j in cols))
        for p in items[:rows]:
            t.add_row(p.service, p.direction, p.key, format_rate(p.bps))
        if not items:
            _none_yet(t)
        tables.append(t)
    keyed.add_row(*tables)

    parts: list[ConsoleRenderable] = [head, services]
    parts += [Text(line, style="yellow") for line in notices(snap, status)]
    return Group(*parts, conns, keyed)


@contextlib.contextmanager
def _keys(loop: asyncio.AbstractEventLoop, on_quit: asyncio.Event) -> Iterator[None]:
    """While inside: a ``q`` on stdin sets ``on_quit`` (the terminal in cbreak mode, no echo,
    restored after).  Nothing happens when stdin cannot be watched (a file, closed)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        yield
        return
    saved = None
    if os.isatty(fd):
        try:
            saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except termios.error:
            saved = None

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data:  # end of input: stop watching, keep running
            loop.remove_reader(fd)
            return
        if any(b in QUIT_KEYS for b in data):
            on_quit.set()

    watching = False
    try:
        loop.add_reader(fd, readable)
        watching = True
    except (OSError, ValueError, PermissionError):
        pass
    try:
        yield
    finally:
        if watching:
            loop.remove_reader(fd)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run(listen_sflow: str, window: float, seconds: float | None,
              console: Console | None = None, allow: list[str] | None = None,
              status_file: str | None = None) -> Snapshot:
    """Listen and redraw once a second until ``seconds`` passed, ``q`` was pressed (or
    cancelled); returns the last snapshot."""
    console = console if console is not None else Console()
    agg = Aggregator(window=window, allow=source_filter(allow))
    status = AgentStatusReader(status_file) if status_file else None
    transport = await listen(agg, listen_sflow)
    deadline = None if seconds is None else time.monotonic() + seconds
    quit_pressed = asyncio.Event()
    loop = asyncio.get_running_loop()
    snap = agg.snapshot()
    try:
        with _keys(loop, quit_pressed), \
             Live(render(snap, status=status.read() if status else None), console=console,
                  auto_refresh=False, screen=False) as live:
            while deadline is None or time.monotonic() < deadline:
                wait = 1.0 - time.time() % 1.0 + 0.02
                try:
                    await asyncio.wait_for(quit_pressed.wait(), wait)
                    break
                except asyncio.TimeoutError:
                    pass
                snap = agg.snapshot()
                live.update(render(snap, status=status.read() if status else None),
                            refresh=True)
    finally:
        transport.close()
    return snap


def run_top(listen_sflow: str = DEFAULT_SFLOW, window: float = 5.0,
            seconds: float | None = None, allow: list[str] | None = None,
            status_file: str | None = None) -> int:
    """``hostsflow top``: exit status 0 when stopped (``q``, ``--seconds``, Ctrl-C), 2 for an
    address that cannot be used."""
    try:
        asyncio.run(run(listen_sflow, window, seconds, allow=allow, status_file=status_file))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as exc:
        print(f"hostsflow top: {exc}", file=sys.stderr)
        return 2
    return 0
