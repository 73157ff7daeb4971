"""The per-key sFlow bound check the end-to-end tests assert with
(``estimate_within_bound`` in tests/sampling_bounds.py), on simulated 1-in-N sampling."""

from __future__ import annotations

import random
from pathlib import Path

from hostsflow.testing import load_file_module

bounds = load_file_module("hostsflow_tests_sampling_bounds",
                          Path(__file__).with_name("sampling_bounds.py"))
estimate_within_bound, min_inside, sflow_bound_pct = (
    bounds.estimate_within_bound, bounds.min_inside, bounds.sflow_bound_pct)


def simulate(rng: random.Random, truth: dict[int, int], rate: int, keep: float) -> dict[int, int]:
    """Samples per key when each packet is kept with probability ``keep``."""
    return {key: sum(rng.random() < keep for _ in range(n)) for key, n in truth.items()}


def test_binomial_floor_and_bound() -> None:
    assert min_inside(40) == 33  # P(fewer than 33 of 40 inside) = 0.07%
    assert min_inside(40, false_failure=0.01) == 34
    assert min_inside(1) == 0  # one key: a floor cannot be set (assert the key itself)
    assert round(sflow_bound_pct(10_000), 2) == 1.96


def test_unbiased_sampling_passes_and_biased_sampling_fails() -> None:
    rng = random.Random(7)
    truth = {port: 5000 for port in range(40)}
    rate = 20
    fair = simulate(rng, truth, rate, 1 / rate)
    check = estimate_within_bound(fair, {k: n * rate for k, n in fair.items()}, truth)
    assert check.ok and check.inside >= 33, str(check)
    # an agent that samples 1 in 20 but keeps 15% fewer (or reports the wrong rate)
    short = simulate(rng, truth, rate, 0.85 / rate)
    check = estimate_within_bound(short, {k: n * rate for k, n in short.items()}, truth)
    assert not check.ok, str(check)
    # a key with no samples at all is outside, whatever its truth
    empty = estimate_within_bound({}, {}, {1: 100})
    assert empty.inside == 0 and 1 in empty.outside
