"""Statistics of sampled estimates: how the end-to-end tests assert that an agent's sampled
figures are right without being flaky.  Loaded by the tests with
``hostsflow.testing.load_file_module``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


#: sigmas of the 95 % bound, and of the 99.9 % one (for a test that asserts a few estimates
#: one by one and must not fail a correct agent 1 run in 20)
Z_95, Z_999 = 1.96, 3.29


def sflow_bound_pct(samples: int, z: float = Z_95) -> float:
    """The sFlow 95% bound on the relative error of an estimate built from ``samples``
    samples, in percent: ``196 * sqrt(1 / samples)`` (infinite for no samples); ``z`` another
    number of sigmas (:data:`Z_999`: the 99.9 % bound)."""
    return 100.0 * z * math.sqrt(1.0 / samples) if samples > 0 else float("inf")


def min_inside(keys: int, confidence: float = 0.95, false_failure: float = 0.001) -> int:
    """How many of ``keys`` independent estimates must fall inside their ``confidence`` bound:
    the largest m with P(fewer than m inside) <= ``false_failure`` for a correct agent
    (binomial tail; 33 of 40 at the defaults, a 0.07% chance of a false failure)."""
    tail, m = 0.0, 0
    for k in range(keys + 1):
        tail += math.comb(keys, k) * confidence**k * (1 - confidence) ** (keys - k)
        if tail > false_failure:
            break
        m = k + 1
    return m


class BoundCheck:
    """Per-key estimates against their sFlow 95% bound: see :func:`estimate_within_bound`."""

    def __init__(self, rows: dict[Any, tuple[int, float, float]], required: int) -> None:
        #: key -> (samples, estimate, truth)
        self.rows = rows
        self.required = required
        #: key -> (error %, bound %) of every estimate outside its bound
        self.outside: dict[Any, tuple[float, float]] = {}
        for key, (n, est, truth) in rows.items():
            if not truth:  # nothing to see: inside only if nothing was seen
                err, bound = (0.0 if est == 0 else float("inf")), 0.0
            else:  # no samples of something that was there: outside
                err, bound = 100.0 * (est - truth) / truth, sflow_bound_pct(n) if n else -1.0
            if abs(err) > bound:
                self.outside[key] = (round(err, 2), round(bound, 2))
        self.inside = len(rows) - len(self.outside)

    @property
    def ok(self) -> bool:
        """At least ``required`` estimates fell inside their bound."""
        return self.inside >= self.required

    def __str__(self) -> str:
        return (f"{self.inside}/{len(self.rows)} estimates inside their 95% bound (at least "
                f"{self.required} required); outside (error %, bound %): {self.outside}")


def estimate_within_bound(
    samples: Mapping[Any, int], estimates: Mapping[Any, float], truth: Mapping[Any, float],
    false_failure: float = 0.001,
) -> BoundCheck:
    """Check many independent sampled estimates (one per key of ``truth``: a port, a flow)
    against the sFlow bound, the way a test can assert without being flaky.

    A single estimate falls outside its 95% bound (``196*sqrt(1/samples)`` percent of the
    truth) 1 time in 20 with a correct agent, so asserting one estimate makes a test that fails
    1 run in 20.  Many keys, each against its own bound, and a binomial floor on how many must
    be inside (:func:`min_inside`) make a check that fails a correct agent ``false_failure`` of
    the time and still catches a biased one.  A key with no samples (or absent) is outside."""
    rows = {key: (samples.get(key, 0), float(estimates.get(key, 0)), float(t))
            for key, t in truth.items()}
    return BoundCheck(rows, min_inside(len(rows), 0.95, false_failure))
