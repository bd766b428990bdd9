"""Confidence intervals of the ablation's scores: a two-level bootstrap over seeds and items.

A setting's held-out score varies for two reasons: the RL seed (which run we got) and the
held-out items (which questions and prompts we happened to ask). The bootstrap resamples both:
each draw picks S runs with replacement among the setting's S seeds and N items with
replacement among the N held-out items, and recomputes the score. The 95 % interval is the
2.5th to 97.5th percentile of the draws (the percentile bootstrap).

A paired difference against a baseline setting draws the items once for both settings (every
run is scored on the same held-out items, so their item-to-item variation cancels) and the
seeds of each setting independently (seed k of one setting has nothing to do with seed k of
the other).

Scores are either the plain mean of the item scores (MC accuracy) or, with `groups`, the mean
over groups of each group's mean (GenEval's overall: the mean of the per-tag accuracies); a
group that a draw leaves without items is left out of that draw's mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DRAWS = 2000
"""Bootstrap draws: enough for the percentiles of a 95 % interval to settle to ~0.002."""


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95 % percentile-bootstrap interval."""

    estimate: float
    low: float
    high: float

    def format(self, digits: int = 3) -> str:
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def item_matrix(runs: Sequence[Sequence[float]]) -> np.ndarray:
    """(S, N) item scores of S runs on the same N items; refuses runs of unequal lengths."""
    lengths = {len(run) for run in runs}
    if not runs or len(lengths) != 1 or 0 in lengths:
        raise ValueError(
            f"every run must score the same non-empty list of items (lengths {sorted(lengths)})"
        )
    return np.asarray(runs, dtype=np.float64)


def score(matrix: np.ndarray, groups: np.ndarray | None = None) -> float:
    """The score of runs x items: the mean, or the mean of the group means."""
    per_item = matrix.mean(axis=0)
    if groups is None:
        return float(per_item.mean())
    return float(np.mean([per_item[groups == g].mean() for g in np.unique(groups)]))


def _draw_scores(
    matrix: np.ndarray,
    items: np.ndarray,
    groups: np.ndarray | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """(DRAWS,) scores, each of `matrix` with its runs resampled and the items `items` (D, N)."""
    runs = rng.integers(0, matrix.shape[0], size=(items.shape[0], matrix.shape[0]))
    per_item = matrix[runs].mean(axis=1)  # (D, N): each draw's runs averaged, per item
    chosen = np.take_along_axis(per_item, items, axis=1)  # (D, N): the draw's items
    if groups is None:
        return chosen.mean(axis=1)
    labels = groups[items]  # (D, N)
    means = []
    for group in np.unique(groups):
        inside = labels == group
        count = inside.sum(axis=1)
        total = np.where(inside, chosen, 0.0).sum(axis=1)
        means.append(np.where(count > 0, total / np.maximum(count, 1), np.nan))
    return np.nanmean(np.stack(means, axis=1), axis=1)


def _group_array(groups: Sequence[str] | None, n_items: int) -> np.ndarray | None:
    if groups is None:
        return None
    if len(groups) != n_items:
        raise ValueError(f"{len(groups)} group labels for {n_items} items")
    return np.asarray(groups)


def bootstrap_interval(
    runs: Sequence[Sequence[float]],
    groups: Sequence[str] | None = None,
    draws: int = DRAWS,
    seed: int = 0,
) -> Interval:
    """The score of a setting's runs (item scores per run) with its 95 % interval over seeds
    and items."""
    matrix = item_matrix(runs)
    labels = _group_array(groups, matrix.shape[1])
    rng = np.random.default_rng(seed)
    items = rng.integers(0, matrix.shape[1], size=(draws, matrix.shape[1]))
    scores = _draw_scores(matrix, items, labels, rng)
    low, high = np.percentile(scores, [2.5, 97.5])
    return Interval(score(matrix, labels), float(low), float(high))


def paired_difference(
    runs: Sequence[Sequence[float]],
    baseline: Sequence[Sequence[float]],
    groups: Sequence[str] | None = None,
    draws: int = DRAWS,
    seed: int = 0,
) -> Interval:
    """score(runs) - score(baseline) with its 95 % interval: items drawn once for both, seeds
    drawn independently for each."""
    matrix, base = item_matrix(runs), item_matrix(baseline)
    if matrix.shape[1] != base.shape[1]:
        raise ValueError(
            f"the settings were scored on different items ({matrix.shape[1]} and "
            f"{base.shape[1]}); a paired difference needs the same held-out items"
        )
    labels = _group_array(groups, matrix.shape[1])
    rng = np.random.default_rng(seed)
    items = rng.integers(0, matrix.shape[1], size=(draws, matrix.shape[1]))
    diffs = _draw_scores(matrix, items, labels, rng) - _draw_scores(base, items, labels, rng)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return Interval(score(matrix, labels) - score(base, labels), float(low), float(high))
