"""Aligned-pair selection (Algorithm 1, lines 2-8): k-means over U ∪ G features (Lloyd's
algorithm with exact assignments), then the member of each cluster with the highest dot product
with its centroid.

`kmeans`:

- initialisation (`init`): k-means++ D² seeding on a seeded subsample of 3k points projected to
  64 dimensions (`kmeans_plus_plus`), or k distinct samples drawn with the seed;
- `iterations` Lloyd iterations, each an exact assignment of every sample to its nearest centre
  (`exact_assign`) followed by the update: every centre becomes the float64 mean of its members,
  rounded to float32 (`cluster_means`). A centre left without members is re-seeded at the sample
  farthest from its own centre (float64 distances, ties to the lower sample index; one distinct
  sample per empty centre, in centre order): an empty centre costs nothing where it is, so
  moving it can only lower the inertia;
- one more exact assignment, to the final centres, gives the labels (the assignment of iteration
  t + 1 *is* the assignment to the centres of iteration t, so T iterations cost T + 1 passes;
  the loop stops early when an assignment repeats the previous one: the centres would not move).

Each assignment is exact, so each iteration cannot raise the inertia (Lloyd's property), and the
whole run is a deterministic function of the features and the seed: float32 matmuls only
propose candidates within a proven error bound and float64 decides; sums run in sample order.
The result is the same for any thread count, chunk size or BLAS.

Nearest centre = argmin ||f - c||^2 = argmax (f . c - ||c||^2 / 2), ties to the lower index.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pairuni.pairing.similarity import exact_dots

CHUNK_ROWS = 4096
"""Rows per float32 score block of `exact_assign` (4,096 x 5,000 scores: 82 MB)."""
SUM_ROWS = 8192
"""Rows per float64 block of `cluster_means` and `sq_distances` (results do not depend on it)."""
RESCORE_PAIRS = 8192
"""(row, centre) pairs re-scored in float64 at once (bounds the memory of degenerate data)."""
DEFAULT_ITERATIONS = 2
"""Lloyd iterations of `kmeans` unless told otherwise (benchmarks/RESULTS.md, ## Pairing)."""
UNIT = 2.0**-24
"""Unit roundoff of float32."""
SLACK = 1.001
"""Widens every float32 error bound by 0.1 %: covers the float64 rounding of the bound itself
and of the float64 reference (~2^-53 relative, far below 0.1 % of gamma)."""


class Workspace:
    """Scratch tensors reused across the blocks and passes of one k-means run: a fresh block of
    this size (tens of MB) costs more in page faults than the arithmetic done in it."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        """A (rows, cols) view of buffer `name` (contents undefined), grown when needed."""
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.shape[1] != cols or buf.shape[0] < rows:
            buf = torch.empty(rows, cols, dtype=dtype)
            self._buffers[name] = buf
        return buf[:rows]


def gamma(terms: int) -> float:
    """gamma_m = m u / (1 - m u): |fl32(sum of m products) - exact| <= gamma_m sum |x_i y_i| for
    any summation order, with or without FMA (Higham, Accuracy and Stability, §3.1)."""
    return terms * UNIT / (1 - terms * UNIT)


# --------------------------------------------------------------------------- initialisation


def init_indices(n: int, k: int, seed: int) -> np.ndarray:
    """k distinct sample indices drawn uniformly with `seed`."""
    return np.random.default_rng(seed).choice(n, size=k, replace=False)


def kmeans_plus_plus(
    features: torch.Tensor, k: int, seed: int, sample_size: int | None = None, dim: int = 64
) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): k distinct indices into features.

    For speed at k = 5000 the D^2 sampling runs on a seeded random subsample of
    `sample_size` (default min(n, 3k)) points projected to `dim` dimensions by a Gaussian random
    projection (Johnson-Lindenstrauss: distances are kept up to a small factor, which is all
    seeding needs). The first centre is uniform; each next one is drawn with probability
    proportional to the squared distance to its nearest chosen centre; for large k,
    max(1, k // 500) centres are drawn per round from the same distribution (distinct, so at
    most 500-odd rounds).
    """
    n, d = features.shape
    rng = np.random.default_rng(seed)
    m = min(n, sample_size or 3 * k)
    pool = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    sub = features[torch.from_numpy(pool)]
    if d > dim:
        proj = torch.randn(d, dim, generator=torch.Generator().manual_seed(seed)) / dim**0.5
        sub = sub @ proj
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny matmuls: thread wake-ups cost more than they save
    try:
        return pool[_d2_sampling(sub.double(), k, rng)]
    finally:
        torch.set_num_threads(threads)


def _d2_sampling(points: torch.Tensor, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct row indices of points (m, dim) float64 by (batched) D^2 sampling."""
    m = points.shape[0]
    sq_norms = (points**2).sum(dim=1)
    per_round = max(1, k // 500)
    chosen = [int(rng.integers(m))]
    # ||x - p||^2 = ||x||^2 - 2 x.p + ||p||^2 : one mat-vec (mat-mat per round) per update
    nearest = (sq_norms - 2 * points @ points[chosen[0]] + sq_norms[chosen[0]]).clamp(min=0)
    nearest[chosen[0]] = 0.0
    while len(chosen) < k:
        cumulative = torch.cumsum(nearest, 0)
        total = float(cumulative[-1])
        if total <= 0:  # fewer distinct points than k: fill with unchosen ones in order
            rest = np.setdiff1d(np.arange(m), chosen)[: k - len(chosen)]
            chosen.extend(int(i) for i in rest)
            break
        draws = torch.from_numpy(rng.random(min(per_round, k - len(chosen))) * total)
        picks_t = torch.searchsorted(cumulative, draws, right=True).clamp(max=m - 1)
        picks = [p for p in dict.fromkeys(picks_t.tolist()) if nearest[p] > 0]
        if not picks:  # rounding at the boundary: take the last point with mass
            picks = [int((nearest > 0).nonzero()[-1])]
        chosen.extend(picks)
        sel = torch.tensor(picks)
        dist = sq_norms[:, None] - 2 * points @ points[sel].T + sq_norms[sel][None, :]
        torch.minimum(nearest, dist.amin(dim=1).clamp(min=0), out=nearest)
        nearest[sel] = 0.0
    return np.asarray(chosen[:k])


def initial_centers(features: torch.Tensor, k: int, seed: int, init: str) -> torch.Tensor:
    """The k seed centres (k, d) float32: copies of the samples `init` picks."""
    if init == "k-means++":
        start = kmeans_plus_plus(features, k, seed)
    elif init == "random":
        start = init_indices(features.shape[0], k, seed)
    else:
        raise ValueError(f"unknown k-means init {init!r}; use `k-means++` or `random`")
    return features.index_select(0, torch.from_numpy(np.asarray(start, dtype=np.int64)))


# --------------------------------------------------------------------------- exact assignment


def exact_assign(
    points: torch.Tensor,
    centers: torch.Tensor,
    work: Workspace | None = None,
    point_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact nearest centre: argmax_j of s_j = f . c_j - ||c_j||^2 / 2 in float64, ties to the
    lower index. points (m, d) float32, centers (k, d) float32 -> (m,) int64.

    One float32 gemm per block of rows and one subtraction give t_j = fl32(f . c_j - h_j)
    (h_j = ||c_j||^2 / 2 rounded to float32), with |t_j - s_j| <= e (`assign_error_bound`). So
    the best centre j* has t_j* >= max_j t_j - 2e: a row whose two best t are further apart than
    2e has one candidate, the float32 argmax; the other rows re-score every candidate within 2e
    of their best in float64 (`similarity.exact_dots`). The gemm is numpy's (OpenBLAS in the
    wheels: 20-40 % faster than torch's MKL sgemm on the AVX2 AMD machine of
    benchmarks/RESULTS.md), on `torch.get_num_threads()` threads; any BLAS gives the same labels.
    (float16 or int8 filters are faster on some CPUs, but their bounds, ~1e-3, are wider than
    the typical gap between the two nearest centres.) `point_sq_norms` (m,) float64: the rows'
    squared norms, when the caller has them (`kmeans` computes them once for all passes).
    """
    points = points.detach().float().contiguous()
    centers = centers.detach().float().contiguous()
    m, d = points.shape
    k = centers.shape[0]
    labels = torch.zeros(m, dtype=torch.int64)
    if m == 0 or k <= 1:
        return labels
    work = work or Workspace()
    half_sq = _sq_norms(centers) / 2
    neg_half32 = (-half_sq).float()
    max_half = float(half_sq.max())
    centers_t = centers.numpy().T
    if point_sq_norms is None:
        point_sq_norms = _sq_norms(points)
    with _blas_threads(torch.get_num_threads()):
        for start in range(0, m, CHUNK_ROWS):
            chunk = points[start : start + CHUNK_ROWS]
            score = work.get("score", chunk.shape[0], k, torch.float32)
            np.matmul(chunk.numpy(), centers_t, out=score.numpy())
            score += neg_half32
            bound = assign_error_bound(point_sq_norms[start : start + CHUNK_ROWS], max_half, d)
            labels[start : start + chunk.shape[0]] = _decide(chunk, centers, half_sq, score, bound)
    return labels


def _blas_threads(threads: int) -> contextlib.AbstractContextManager:
    """Limit numpy's BLAS to `threads` (threadpoolctl, where installed; else its own default,
    set by OPENBLAS_NUM_THREADS / OMP_NUM_THREADS)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")


def assign_error_bound(row_sq_norms: torch.Tensor, max_half: float, dim: int) -> torch.Tensor:
    """e per row (float64): |fl32(f . c - h) - (f . c - h)| <= e for every centre, when h =
    ||c||^2 / 2 <= max_half is rounded to float32 and subtracted after (or added inside) a
    float32 gemm.

    The gemm's dot: gamma_d |f| |c| in any summation order, |c| <= sqrt(2 max_half); the
    subtraction rounds once more (u |f . c - h|), and rounding h to float32 adds u h. All of it
    is below gamma_{d+1} (|f| |c| + h) + u h (gamma_{d+1} >= gamma_d + u), which also covers h
    added inside the gemm as a (d + 1)-th term."""
    max_norm = math.sqrt(2 * max_half)
    g = gamma(dim + 1)
    return (g * (row_sq_norms.sqrt() * max_norm + max_half) + UNIT * max_half) * SLACK


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Row squared L2 norms in float64 (numpy's einsum is ~30x faster here than torch's float64
    `vector_norm`; used for bounds and ||c||^2, each row on its own)."""
    x = x.numpy()
    return torch.from_numpy(np.einsum("ij,ij->i", x, x, dtype=np.float64))


def _decide(
    chunk: torch.Tensor,
    centers: torch.Tensor,
    half_sq: torch.Tensor,
    score: torch.Tensor,
    bound: torch.Tensor,
) -> torch.Tensor:
    """The float64 winner of each row of score (m, k) float32, given |score - s| <= bound (m,)."""
    top = score.topk(2, dim=1)
    best, second = top.values[:, 0].double(), top.values[:, 1].double()
    winners = top.indices[:, 0].clone()
    floor = best - 2 * bound  # s_j* >= this for the true winner j*
    ambiguous = (second >= floor).nonzero(as_tuple=True)[0]
    if len(ambiguous) == 0:
        return winners
    near = score[ambiguous] >= _float32_at_most(floor[ambiguous])[:, None]
    sub_rows, cols = near.nonzero(as_tuple=True)
    rows = ambiguous[sub_rows]
    exact = _rescore(chunk, centers, rows, cols) - half_sq[cols]
    pick = torch.from_numpy(_first_per_group(rows.numpy(), exact.numpy(), cols.numpy()))
    winners[rows[pick]] = cols[pick]
    return winners


def _float32_at_most(x: torch.Tensor) -> torch.Tensor:
    """The largest float32 <= x (float64): `t32 >= result` is then exactly `t32 >= x`."""
    y = x.float()
    too_big = y.double() > x
    y[too_big] = torch.nextafter(y[too_big], torch.tensor(-math.inf))
    return y


def _rescore(
    chunk: torch.Tensor, centers: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """float64 dot products of the (row, centre) pairs, RESCORE_PAIRS at a time."""
    out = torch.empty(len(rows), dtype=torch.float64)
    for start in range(0, len(rows), RESCORE_PAIRS):
        part = slice(start, start + RESCORE_PAIRS)
        out[part] = exact_dots(chunk[rows[part]], centers[cols[part]])
    return out


def _first_per_group(group: np.ndarray, score: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Positions of the best entry of each group: highest score, ties -> lowest index."""
    order = np.lexsort((index, -score, group))
    group_sorted = group[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = group_sorted[1:] != group_sorted[:-1]
    return order[first]


# --------------------------------------------------------------------------- update


def sq_distances(
    features: torch.Tensor,
    centers: torch.Tensor,
    labels: torch.Tensor,
    work: Workspace | None = None,
) -> torch.Tensor:
    """||f_i - c_{labels_i}||^2 in float64 (n,): the differences of the float32 values are
    taken in float64 (exactly), each row reduced on its own (the same for any SUM_ROWS)."""
    n, d = features.shape
    work = work or Workspace()
    out = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, SUM_ROWS):
        stop = min(n, start + SUM_ROWS)
        diff = work.get("rows64", stop - start, d, torch.float64)
        diff.copy_(features[start:stop])
        near = work.get("centers32", stop - start, d, torch.float32)
        torch.index_select(centers, 0, labels[start:stop], out=near)
        near64 = work.get("centers64", stop - start, d, torch.float64)
        near64.copy_(near)  # a mixed-dtype sub_ would be ~5x slower than copy + sub
        diff.sub_(near64).square_()
        out[start:stop] = diff.sum(dim=1)
    return out


def cluster_means(
    features: torch.Tensor, labels: torch.Tensor, k: int, work: Workspace | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 mean of every cluster, rounded to float32: (centres (k, d) float32, counts
    (k,) int64); empty clusters get a zero row. Each cluster's members are summed in sample
    order (`index_add_` on CPU adds the rows one after the other), so the means do not depend
    on SUM_ROWS or the thread count."""
    n, d = features.shape
    work = work or Workspace()
    sums = work.get("sums64", k, d, torch.float64).zero_()
    for start in range(0, n, SUM_ROWS):
        stop = min(n, start + SUM_ROWS)
        rows = work.get("rows64", stop - start, d, torch.float64)
        rows.copy_(features[start:stop])
        sums.index_add_(0, labels[start:stop], rows)
    counts = torch.bincount(labels, minlength=k)
    means = sums / counts.clamp(min=1).double()[:, None]
    return means.float(), counts


def reseed_empty(
    centers: torch.Tensor, counts: torch.Tensor, features: torch.Tensor, sq_dist: torch.Tensor
) -> np.ndarray:
    """In place: every empty centre (counts == 0), in index order, moves onto the next sample
    farthest from its own centre (sq_dist (n,) float64; ties to the lower sample index).
    Returns the samples taken, in the order of the empty centres."""
    empty = (counts == 0).nonzero(as_tuple=True)[0]
    if len(empty) == 0:
        return np.zeros(0, dtype=np.int64)
    farthest = np.argsort(-sq_dist.numpy(), kind="stable")[: len(empty)]
    centers[empty[: len(farthest)]] = features[torch.from_numpy(farthest)]
    return farthest


# --------------------------------------------------------------------------- k-means


@dataclass
class KMeansResult:
    """What `kmeans` found."""

    centers: torch.Tensor
    """(k, d) float32: the centres after the last update."""
    labels: torch.Tensor
    """(n,) int64: the exact nearest centre of every sample (ties to the lower index)."""
    inertia: list[float] = field(default_factory=list)
    """inertia[t] = sum_i ||f_i - c_{labels_i}||^2 (float64, `math.fsum`) for the centres after t
    updates: inertia[0] for the seeds, inertia[-1] for `centers`. Never increases."""
    reseeded: int = 0
    """Empty clusters re-seeded at the farthest sample, over all iterations."""

    @property
    def iterations(self) -> int:
        """Lloyd iterations run (fewer than asked when the assignment stopped changing)."""
        return len(self.inertia) - 1


def kmeans(
    features: torch.Tensor,
    k: int,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
    init: str = "k-means++",
    progress: bool = False,
) -> KMeansResult:
    """Lloyd's k-means with exact assignments, see the module docstring. features (n, d)
    float32; k is capped at n. `iterations` = 0 keeps the seeds as centres (one assignment)."""
    if iterations < 0:
        raise ValueError(f"k-means iterations must be >= 0, got {iterations}")
    features = features.float().contiguous()
    n = features.shape[0]
    k = min(k, n)
    centers = initial_centers(features, k, seed, init)
    result = KMeansResult(centers=centers, labels=torch.zeros(n, dtype=torch.int64))
    previous: torch.Tensor | None = None
    moved_empty = False
    work = Workspace()
    sq_norms = _sq_norms(features)
    bar = _progress_bar(iterations + 1, progress)
    for step in range(iterations + 1):
        labels = exact_assign(features, centers, work, sq_norms)
        sq_dist = sq_distances(features, centers, labels, work)
        result.inertia.append(math.fsum(sq_dist.tolist()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(inertia=f"{result.inertia[-1]:.6g}")
        converged = previous is not None and not moved_empty and torch.equal(labels, previous)
        if step == iterations or converged:
            break
        centers, counts = cluster_means(features, labels, k, work)
        moved = len(reseed_empty(centers, counts, features, sq_dist))
        result.reseeded += moved
        moved_empty, previous = moved > 0, labels
    if bar is not None:
        bar.close()
    result.centers, result.labels = centers, labels
    return result


# --------------------------------------------------------------------------- medoids


def medoids(features: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """For every non-empty cluster, the index of argmax_i <f_i, c_k> over its members (float64,
    ties -> lower index); sorted by cluster index. features (n, d), centers (k, d), labels (n,).

    float32 row dots t_i, with |t_i - s_i| <= b_i = gamma_d |f_i| |c_k|, select the members whose
    upper bound reaches the cluster's best lower bound; those are re-scored in float64.
    """
    features = features.float()
    centers = centers.float()
    n, d = features.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = centers.shape[0]
    score = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, CHUNK_ROWS):
        f = features[start : start + CHUNK_ROWS]
        score[start : start + CHUNK_ROWS] = (f * centers[labels[start : start + CHUNK_ROWS]]).sum(1)
    norms = (_sq_norms(features) * _sq_norms(centers)[labels]).sqrt()
    bound = gamma(d) * norms * SLACK
    score64 = score.double()
    lower = torch.full((k,), -math.inf, dtype=torch.float64)
    lower = lower.scatter_reduce(0, labels, score64 - bound, "amax")
    cand = ((score64 + bound) >= lower[labels]).nonzero(as_tuple=True)[0]
    exact = exact_dots(features.index_select(0, cand), centers[labels[cand]]).numpy()
    best = _first_per_group(labels[cand].numpy(), exact, cand.numpy())
    winners = cand.numpy()[best]
    return winners[np.argsort(labels.numpy()[winners], kind="stable")]


def select_aligned(
    features: torch.Tensor,
    *,
    method: str = "kmeans",
    num_clusters: int = 5000,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
    init: str = "k-means++",
    progress: bool = False,
) -> np.ndarray:
    """Indices (into features) of the aligned-pair samples, ascending.

    `kmeans`: one medoid per non-empty cluster of `kmeans(features, num_clusters, ...)`.
    `random`: num_clusters samples drawn uniformly (the Table 9 ablation).
    """
    n = features.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if method == "random":
        return np.sort(init_indices(n, min(num_clusters, n), seed))
    if method != "kmeans":
        raise ValueError(f"unknown selection method {method!r}; use `kmeans` or `random`")
    found = kmeans(
        features, num_clusters, iterations=iterations, seed=seed, init=init, progress=progress
    )
    return np.sort(medoids(features, found.centers, found.labels))


def _progress_bar(total: int, progress: bool) -> Any:
    """A tqdm bar over the assignment passes, or None."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="k-means", unit="pass")
