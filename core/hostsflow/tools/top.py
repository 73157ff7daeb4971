"""``hostsflow top``: traffic by service in the terminal, refreshed in place once a second.

The same :class:`~hostsflow.tools.aggregate.Aggregator` as ``hostsflow view``, drawn with rich:
a table of services (in, out, total, packets/s), the top protocols/ports and remote addresses,
and the top TCP connections with their RTT and retransmissions.  Needs the ``view`` extra
(rich).  ``--seconds N`` stops after N seconds (and prints the last screen once more).
"""

from __future__ import annotations

import asyncio
import sys
import time

from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .aggregate import Aggregator, Snapshot, format_rate, listen

DEFAULT_SFLOW = "0.0.0.0:6343"
NO_SERVICES = ("No services heard yet: the agent needs systemd { markTraffic = on } (services "
               "come with its counter samples, every polling interval).")


def render(snap: Snapshot, rows: int = 10) -> Group:
    """The screen for one snapshot (a rich renderable)."""
    hosts = ", ".join(f"{h} ({a})" for a, h in snap.agents.items())
    st = snap.stats
    summary = (f"total {format_rate(snap.total.bps)}, {st.flow_samples} flow samples "
               f"({st.marked_samples} marked), {st.malformed} malformed, "
               f"window {snap.window:g} s")
    head = Text.assemble(("hostsflow top", "bold"), f"  {hosts or 'waiting for sFlow'}  ",
                         (summary, "dim"))

    services = Table(title="Traffic by service", title_justify="left", expand=True)
    for col, just in (("service", "left"), ("in", "right"), ("out", "right"),
                      ("total", "right"), ("pkts/s", "right")):
        services.add_column(col, justify=just)  # type: ignore[arg-type]
    for s in snap.services:
        services.add_row(s.label, format_rate(s.inbound.bps), format_rate(s.outbound.bps),
                         Text(format_rate(s.bps), style="bold"), f"{s.pps:.0f}")
    services.add_row(Text("other (no service)", style="dim"), format_rate(snap.other.bps), "",
                     format_rate(snap.other.bps), f"{snap.other.pps:.0f}")

    conns = Table(title="Top TCP connections", title_justify="left", expand=True)
    for col, just in (("service", "left"), ("local", "left"), ("remote", "left"),
                      ("rate", "right"), ("RTT ms", "right"), ("min RTT ms", "right"),
                      ("retrans", "right"), ("lost", "right"), ("cwnd", "right")):
        conns.add_column(col, justify=just)  # type: ignore[arg-type]
    for c in snap.connections[:rows]:
        conns.add_row(c.service or "-", c.local, c.remote, format_rate(c.bps),
                      f"{c.rtt_ms:.3f}", f"{c.min_rtt_ms:.3f}", str(c.retrans), str(c.lost),
                      str(c.snd_cwnd))

    keyed = Table(title="By protocol and remote address", title_justify="left", expand=True)
    for col, just in (("service", "left"), ("dir", "left"), ("protocol/port", "left"),
                      ("rate", "right"), ("remote", "left"), ("rate ", "right")):
        keyed.add_column(col, justify=just)  # type: ignore[arg-type]
    for i in range(min(rows, max(len(snap.protocols), len(snap.remotes)))):
        p = snap.protocols[i] if i < len(snap.protocols) else None
        r = snap.remotes[i] if i < len(snap.remotes) else None
        keyed.add_row(p.service if p else "", p.direction if p else "", p.key if p else "",
                      format_rate(p.bps) if p else "",
                      f"{r.service} {r.direction} {r.key}" if r else "",
                      format_rate(r.bps) if r else "")
    parts: list[ConsoleRenderable] = [head, services]
    if not snap.services:
        parts.append(Text(NO_SERVICES, style="yellow"))
    return Group(*parts, conns, keyed)


async def run(listen_sflow: str, window: float, seconds: float | None,
              console: Console | None = None) -> Snapshot:
    """Listen and redraw once a second until ``seconds`` passed (or cancelled); returns the
    last snapshot."""
    console = console if console is not None else Console()
    agg = Aggregator(window=window)
    transport = await listen(agg, listen_sflow)
    deadline = None if seconds is None else time.monotonic() + seconds
    snap = agg.snapshot()
    try:
        with Live(render(snap), console=console, auto_refresh=False, screen=False) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(1.0 - time.time() % 1.0 + 0.02)
                snap = agg.snapshot()
                live.update(render(snap), refresh=True)
    finally:
        transport.close()
    return snap


def run_top(listen_sflow: str = DEFAULT_SFLOW, window: float = 5.0,
            seconds: float | None = None) -> int:
    """``hostsflow top``: exit status 2 for an address that cannot be used."""
    try:
        asyncio.run(run(listen_sflow, window, seconds))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as exc:
        print(f"hostsflow top: {exc}", file=sys.stderr)
        return 2
    return 0
