"""Every sampled packet by the keys sFlow carries, second by second: the breakdown behind the
view's "Break down traffic" panel (``GET /api/flows``).

Each flow sample with a readable sampled_header becomes one flow key: the agent's address, the
service at each end (from extended_entities, None for none), the protocol, the addresses and
the ports.  Its estimate (``frame_length * sampling_rate`` bytes, ``sampling_rate`` packets) is
added to that key in the bucket of its wall-clock second.  The last ``history`` seconds are kept;
a second holds at most ``per_second`` distinct keys and what arrives beyond that is added to the
second's *not itemised* figure (so a flood of keys is counted, never stored).

:meth:`FlowHistory.query` groups any span of kept seconds by a choice of fields, after a filter,
and gives the top groups with their rate over the span and one point per second.

Fields: ``agent``, ``service`` (the receiving service, else the sending one), ``src_service``,
``dst_service``, ``protocol``, ``src_addr``, ``dst_addr``, ``src_port``, ``dst_port``.  A filter
may also use ``address`` and ``port`` (either end).  Traffic marked with no service has the
service ``""``, so ``service=`` selects what the view calls "other".
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

#: (agent, src service id, dst service id, protocol, src addr, src port, dst addr, dst port)
FlowKey = tuple[str, Any, Any, str, str, int, str, int]

GROUP_FIELDS = ("agent", "service", "src_service", "dst_service", "protocol", "src_addr",
                "dst_addr", "src_port", "dst_port")
FILTER_FIELDS = (*GROUP_FIELDS, "address", "port")
DEFAULT_KEYS = ("protocol", "dst_port")
DEFAULT_PER_SECOND = 2000
MAX_TOP = 50
NOT_ITEMISED = "(not itemised: too many keys)"


class FlowQueryError(ValueError):
    """A bad ``keys`` or ``filter`` (the message says which part)."""


def parse_keys(text: str) -> tuple[str, ...]:
    """``"protocol,dst_port"`` -> ("protocol", "dst_port"); unknown fields are refused."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys:
        raise FlowQueryError("keys: name at least one of " + ", ".join(GROUP_FIELDS))
    for k in keys:
        if k not in GROUP_FIELDS:
            raise FlowQueryError(f"keys: unknown field {k!r} (one of {', '.join(GROUP_FIELDS)})")
    if len(set(keys)) != len(keys):
        raise FlowQueryError("keys: a field is named twice")
    return keys


def parse_filter(text: str) -> list[tuple[str, bool, str]]:
    """``"protocol=tcp,dst_port!=22,service="`` -> [(field, negated, value)...]; every
    condition must hold.  Values are compared as text (ports as decimal numbers)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        negated = "!=" in part
        field, sep, value = part.partition("!=" if negated else "=")
        field = field.strip()
        if not sep:
            raise FlowQueryError(f"filter: {part!r} is not FIELD=VALUE or FIELD!=VALUE")
        if field not in FILTER_FIELDS:
            raise FlowQueryError(f"filter: unknown field {field!r} "
                                 f"(one of {', '.join(FILTER_FIELDS)})")
        out.append((field, negated, value.strip()))
    return out


#: A flow's figures in one second are one int, ``bytes << PACKETS_BITS | packets``: 300
#: seconds of 2,000 keys held as [bytes, packets] lists were 600,000 containers for Python's
#: garbage collector to walk, and each full collection paused the view for ~0.4 s (long
#: enough for the kernel to drop sFlow datagrams).  Ints are not tracked by the collector.
#: (A key's packets in one second, sampling rates summed, stay far below 2**64.)
PACKETS_BITS = 64
PACKETS_MASK = (1 << PACKETS_BITS) - 1


def unpack(cell: int) -> tuple[int, int]:
    """(bytes, packets) of a packed cell (the per-sample paths write the shifts out)."""
    return cell >> PACKETS_BITS, cell & PACKETS_MASK


class _Second:
    __slots__ = ("flows", "overflow", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.flows: dict[FlowKey, int] = {}  #: key -> bytes << PACKETS_BITS | packets
        self.overflow = [0, 0]


class FlowHistory:
    """Flow keys per second for the last ``history`` seconds, at most ``per_second`` each."""

    def __init__(self, history: int, per_second: int = DEFAULT_PER_SECOND) -> None:
        self.per_second = per_second
        self.refused = 0  #: samples added to "not itemised" because their second was full
        self._seconds: collections.deque[_Second] = collections.deque(maxlen=max(1, history))

    def add(self, second: int, key: FlowKey, nbytes: int, npkts: int) -> None:
        secs = self._seconds
        if not secs or secs[-1].second < second:
            secs.append(_Second(second))
        bucket = secs[-1]  # a clock stepped back adds to the newest second
        flows = bucket.flows
        cell = flows.get(key)
        if cell is not None:
            flows[key] = cell + (nbytes << PACKETS_BITS | npkts)
        elif len(flows) < self.per_second:
            flows[key] = nbytes << PACKETS_BITS | npkts
        else:
            self.refused += 1
            bucket.overflow[0] += nbytes
            bucket.overflow[1] += npkts

    def span(self) -> tuple[int, int] | None:
        """The first and last second kept, or None."""
        if not self._seconds:
            return None
        return self._seconds[0].second, self._seconds[-1].second

    def query(self, keys: tuple[str, ...], conditions: list[tuple[str, bool, str]],
              start: float, end: float, label: Callable[[Any], str], top: int = 10
              ) -> dict[str, Any]:
        """Group the seconds in [start, end) by ``keys`` after ``conditions``; the ``top``
        groups by bytes, each with its rate over the span and its bits/s in each second.
        ``label`` turns a service id into the name shown (None into "")."""
        top = max(1, min(int(top), MAX_TOP))
        first, last = int(start), int(end)
        seconds = [s for s in self._seconds if first <= s.second < last]
        nsec = max(1, last - first)
        t = list(range(first, last))
        index = {sec: i for i, sec in enumerate(t)}
        labels: dict[Any, str] = {}

        def name(svc: Any) -> str:
            got = labels.get(svc)
            if got is None:
                got = labels[svc] = "" if svc is None else label(svc)
            return got

        groups: dict[tuple[Any, ...], list[Any]] = {}
        overflow = [0, 0]
        for sec in seconds:
            i = index[sec.second]
            for k, cell in sec.flows.items():
                nb, npk = cell >> PACKETS_BITS, cell & PACKETS_MASK
                values = _fields(k, name)
                if not _matches(values, conditions):
                    continue
                g = tuple(values[f] for f in keys)
                cell = groups.get(g)
                if cell is None:
                    cell = groups[g] = [0, 0, {}]
                cell[0] += nb
                cell[1] += npk
                cell[2][i] = cell[2].get(i, 0) + nb
            overflow[0] += sec.overflow[0]
            overflow[1] += sec.overflow[1]
        total_b = sum(c[0] for c in groups.values())
        total_p = sum(c[1] for c in groups.values())
        ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
        return {
            "keys": list(keys), "filter": [f"{f}{'!=' if n else '='}{v}"
                                           for f, n, v in conditions],
            "start": first, "end": last, "span": nsec, "t": t,
            "groups": [{"key": list(g), "bps": round(c[0] * 8 / nsec, 1),
                        "pps": round(c[1] / nsec, 2),
                        "series": [round(c[2].get(i, 0) * 8, 1) for i in range(len(t))]}
                       for g, c in ranked],
            "matched": {"bps": round(total_b * 8 / nsec, 1), "pps": round(total_p / nsec, 2),
                        "groups": len(groups)},
            "not_itemised": {"bps": round(overflow[0] * 8 / nsec, 1),
                             "pps": round(overflow[1] / nsec, 2), "label": NOT_ITEMISED},
        }


def _fields(k: FlowKey, name: Callable[[Any], str]) -> dict[str, Any]:
    agent, src_svc, dst_svc, proto, src, sport, dst, dport = k
    dst_name, src_name = name(dst_svc), name(src_svc)
    return {"agent": agent, "service": dst_name or src_name, "src_service": src_name,
            "dst_service": dst_name, "protocol": proto, "src_addr": src, "dst_addr": dst,
            "src_port": sport, "dst_port": dport}


def _matches(values: dict[str, Any], conditions: list[tuple[str, bool, str]]) -> bool:
    for field, negated, want in conditions:
        if field == "address":
            hit = want in (values["src_addr"], values["dst_addr"])
        elif field == "port":
            hit = want in (str(values["src_port"]), str(values["dst_port"]))
        else:
            hit = str(values[field]) == want
        if hit == negated:
            return False
    return True
