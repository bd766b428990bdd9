"""The ablation's bootstrap intervals against naive loops and closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from pairuni.shapes.ablate_stats import bootstrap_interval, paired_difference, score


def naive_bootstrap(runs: list[list[float]], groups: list[str] | None, draws: int) -> list[float]:
    """One draw at a time, in plain Python: seeds with replacement, items with replacement."""
    rng = np.random.default_rng(123)
    n_runs, n_items = len(runs), len(runs[0])
    out = []
    for _ in range(draws):
        chosen_runs = [runs[i] for i in rng.integers(0, n_runs, n_runs)]
        chosen_items = rng.integers(0, n_items, n_items)
        values = [sum(run[j] for run in chosen_runs) / n_runs for j in chosen_items]
        if groups is None:
            out.append(sum(values) / len(values))
            continue
        by_group: dict[str, list[float]] = {}
        for j, value in zip(chosen_items, values, strict=True):
            by_group.setdefault(groups[j], []).append(value)
        out.append(sum(sum(v) / len(v) for v in by_group.values()) / len(by_group))
    return out


def random_runs(seeds: int, items: int, rate: float, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return (rng.random((seeds, items)) < rate).astype(float).tolist()


def test_point_estimates_are_the_plain_and_the_grouped_means() -> None:
    runs = [[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    assert score(np.asarray(runs)) == pytest.approx(5 / 8)
    # groups a = items 0, 1 (mean 0.25), b = items 2, 3 (mean 1.0)
    assert score(np.asarray(runs), np.asarray(["a", "a", "b", "b"])) == pytest.approx(0.625)
    grouped = bootstrap_interval(runs, ["a", "b", "b", "b"], draws=50)
    assert grouped.estimate == pytest.approx(
        (0.5 + (0.0 + 1 + 1) / 3) / 2
    )  # item means 0.5, 0, 1, 1


@pytest.mark.parametrize("grouped", [False, True])
def test_interval_matches_a_naive_loop(grouped: bool) -> None:
    runs = random_runs(seeds=4, items=60, rate=0.4, seed=1)
    groups = [f"tag{j % 3}" for j in range(60)] if grouped else None
    ours = bootstrap_interval(runs, groups, draws=4000, seed=5)
    naive = np.percentile(naive_bootstrap(runs, groups, 4000), [2.5, 97.5])
    assert ours.low == pytest.approx(naive[0], abs=0.012)
    assert ours.high == pytest.approx(naive[1], abs=0.012)


def test_one_run_of_bernoulli_items_has_the_binomial_width() -> None:
    runs = random_runs(seeds=1, items=400, rate=0.5, seed=2)
    interval = bootstrap_interval(runs, draws=4000)
    p = interval.estimate
    half = 1.96 * (p * (1 - p) / 400) ** 0.5
    assert interval.high - interval.low == pytest.approx(2 * half, rel=0.1)


def test_paired_difference_draws_the_items_once_for_both() -> None:
    runs = random_runs(seeds=1, items=200, rate=0.5, seed=3)
    same = paired_difference(runs, runs, draws=500)
    # one seed each and the same items: every draw's difference is exactly 0 (drawing the
    # items apart for the two settings would spread it over about +-0.1)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    shifted = [[min(1.0, v + (j % 10 == 0)) for j, v in enumerate(runs[0])]]
    gain = paired_difference(shifted, runs, draws=2000)
    expected = (np.asarray(shifted) - np.asarray(runs)).mean()
    assert gain.estimate == pytest.approx(expected) and gain.excludes_zero()


def test_seed_spread_widens_the_interval() -> None:
    steady = [[1.0] * 50 + [0.0] * 50] * 4
    wandering = [[1.0] * 50 + [0.0] * 50, [1.0] * 80 + [0.0] * 20] * 2
    assert bootstrap_interval(steady).high - bootstrap_interval(steady).low < (
        bootstrap_interval(wandering).high - bootstrap_interval(wandering).low
    )


def test_mismatched_items_are_refused() -> None:
    with pytest.raises(ValueError, match="same non-empty list of items"):
        bootstrap_interval([[1.0, 0.0], [1.0]])
    with pytest.raises(ValueError, match="different items"):
        paired_difference([[1.0, 0.0]], [[1.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="group labels"):
        bootstrap_interval([[1.0, 0.0]], ["a"])
