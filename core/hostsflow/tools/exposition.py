"""Metric families in the Prometheus text exposition format (version 0.0.4), with a bound on
the number of series.

A :class:`Family` holds one metric's series by label values.  Once a family has ``max_series``
series, a new label set is not added: its value is summed into the family's one overflow
series (every label ``_overflow``) and the label set is counted in
``hostsflow_metrics_folded_series{family=...}`` (exactly, up to :data:`MAX_FOLDED_TRACKED`
distinct label sets a family; beyond that the count stops growing and says so with
``hostsflow_metrics_folded_series_capped``).  Counters only grow, also through the overflow
series; a gauge's overflow series is the sum of the last values of the folded label sets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

OVERFLOW = "_overflow"
MAX_FOLDED_TRACKED = 65_536
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label(value: str) -> str:
    """A label value as the text format writes it (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Family:
    """One metric: ``kind`` counter or gauge, its label names, at most ``max_series`` series."""

    def __init__(self, name: str, kind: str, help_text: str, labels: Iterable[str],
                 max_series: int) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(f"{name}: kind {kind!r} is neither counter nor gauge")
        self.name = name
        self.kind = kind
        self.help = help_text
        self.labels = tuple(labels)
        self.max_series = max_series
        self.series: dict[tuple[str, ...], float] = {}
        self.overflow = 0.0
        self._folded: dict[tuple[str, ...], float] = {}
        self.folded_capped = False

    @property
    def folded(self) -> int:
        """Distinct label sets summed into the overflow series."""
        return len(self._folded)

    def inc(self, values: tuple[str, ...], amount: float = 1.0) -> None:
        """Add ``amount`` to the series of ``values`` (a counter's increment)."""
        series = self.series
        if values in series:
            series[values] += amount
        elif len(series) < self.max_series:
            series[values] = amount
        else:
            self._fold(values, amount)
            self.overflow += amount

    def set(self, values: tuple[str, ...], value: float) -> None:
        """Set the series of ``values`` to ``value`` (a gauge)."""
        series = self.series
        if values in series or len(series) < self.max_series:
            series[values] = value
            return
        before = self._folded.get(values, 0.0)
        if self._fold(values, value):
            self.overflow += value - before

    def remove(self, values: tuple[str, ...]) -> None:
        """Drop the series of ``values`` (a gauge whose label set changed), freeing its place."""
        if self.series.pop(values, None) is None and values in self._folded:
            self.overflow -= self._folded.pop(values)

    def _fold(self, values: tuple[str, ...], value: float) -> bool:
        """Track a folded label set (its last value); False once the tracking is full."""
        if values in self._folded or len(self._folded) < MAX_FOLDED_TRACKED:
            self._folded[values] = value
            return True
        self.folded_capped = True
        return False

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for values, value in self.series.items():
            out.append(f"{self.name}{self._labels(values)} {_number(value)}")
        if self._folded:
            out.append(f"{self.name}{self._labels((OVERFLOW,) * len(self.labels))} "
                       f"{_number(self.overflow)}")

    def _labels(self, values: tuple[str, ...]) -> str:
        if not self.labels:
            return ""
        inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in zip(self.labels, values))
        return "{" + inner + "}"


class Registry:
    """Families by name, rendered in the order they were made, then the overflow figures."""

    def __init__(self, max_series: int) -> None:
        if max_series < 1:
            raise ValueError("the series bound must be at least 1")
        self.max_series = max_series
        self.families: dict[str, Family] = {}

    def counter(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Family:
        return self._family(name, "counter", help_text, labels)

    def gauge(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Family:
        return self._family(name, "gauge", help_text, labels)

    def _family(self, name: str, kind: str, help_text: str, labels: Iterable[str]) -> Family:
        if name in self.families:
            raise ValueError(f"metric {name} defined twice")
        fam = self.families[name] = Family(name, kind, help_text, labels, self.max_series)
        return fam

    def render(self) -> str:
        out: list[str] = []
        for fam in self.families.values():
            fam.render(out)
        out.append("# HELP hostsflow_metrics_series_limit The most series one metric may have "
                   "(--metrics-max-series); more are summed into its _overflow series.")
        out.append("# TYPE hostsflow_metrics_series_limit gauge")
        out.append(f"hostsflow_metrics_series_limit {self.max_series}")
        out.append("# HELP hostsflow_metrics_folded_series Label sets summed into a metric's "
                   "_overflow series because the metric had reached the series limit.")
        out.append("# TYPE hostsflow_metrics_folded_series gauge")
        for fam in self.families.values():
            out.append(f'hostsflow_metrics_folded_series{{family="{fam.name}"}} {fam.folded}')
        out.append("# HELP hostsflow_metrics_folded_series_capped 1 when a metric folded more "
                   "label sets than are tracked (the folded count is then a lower bound).")
        out.append("# TYPE hostsflow_metrics_folded_series_capped gauge")
        for fam in self.families.values():
            out.append(f'hostsflow_metrics_folded_series_capped{{family="{fam.name}"}} '
                       f"{int(fam.folded_capped)}")
        return "\n".join(out) + "\n"
