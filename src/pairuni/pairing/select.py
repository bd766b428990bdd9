"""Aligned-pair selection (Algorithm 1, lines 2-8): mini-batch k-means over U ∪ G features, then
the member of each cluster with the highest dot product with its centroid.

The k-means is Sculley's mini-batch k-means (as scikit-learn's `MiniBatchKMeans`) in torch:
- initialisation: k-means++ seeding on a random projection of a subsample (or k random
  samples), drawn with the seed;
- steps: each step assigns a batch to its nearest centre (int8 matmuls: approximate, as any
  heuristic step of k-means may be) and moves each centre to the running mean of every sample it
  has been assigned so far (per-centre learning rate 1 / count);
- final: every sample is assigned to its nearest centre *exactly* (float16 filter with a proven
  error bound, float64 re-scoring of near ties; ties go to the lower centre index) and each
  non-empty cluster keeps argmax_i <f_i, c_k> (ties: lower sample index).

Nearest centre = argmin ||f - c||^2 = argmax (f . c - ||c||^2 / 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pairuni.pairing.similarity import (
    Int8Keys,
    exact_dots,
)

CHUNK_ROWS = 4096


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


def batch_schedule(n: int, batch_size: int, epochs: float, seed: int) -> list[np.ndarray]:
    """The sample indices of every mini-batch step: a fresh seeded permutation per epoch, cut into
    batches; ceil(epochs * n / batch_size) steps in all."""
    rng = np.random.default_rng(seed + 1)
    steps = max(1, math.ceil(epochs * n / batch_size))
    batches: list[np.ndarray] = []
    perm = rng.permutation(n)
    pos = 0
    while len(batches) < steps:
        if pos >= n:
            perm, pos = rng.permutation(n), 0
        batches.append(perm[pos : pos + batch_size])
        pos += batch_size
    return batches


def approx_assign(
    points_q8: torch.Tensor, point_scale: float, centers: torch.Tensor
) -> torch.Tensor:
    """Nearest centre by int8 matmul (approximate). points_q8 (m, d) int8 quantised with one
    scale `point_scale` (see `quantize_all`), centers (k, d) float32 -> (m,) int64.

    With one scale for every point, f . c - ||c||^2 / 2 is proportional to
    q8 . c8 - round(||c||^2 / (2 s_f s_c)): the whole step stays in int32."""
    keys = Int8Keys.from_float(centers, with_l1=False)
    half_sq = torch.linalg.vector_norm(centers, dim=1, dtype=torch.float64) ** 2 / 2
    offset = torch.round(half_sq / (point_scale * keys.scale)).clamp(max=2**30).to(torch.int32)
    labels = torch.empty(points_q8.shape[0], dtype=torch.int64)
    for start in range(0, points_q8.shape[0], CHUNK_ROWS):
        ints = torch._int_mm(points_q8[start : start + CHUNK_ROWS], keys.q8_t)
        ints -= offset[None, :]
        labels[start : start + CHUNK_ROWS] = ints.argmax(dim=1)
    return labels


def quantize_all(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """features (n, d) -> (int8 (n, d), one scale for all rows)."""
    peak = float(features.abs().max()) if features.numel() else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    return torch.round(features / scale).to(torch.int8), scale


def minibatch_update(
    centers: torch.Tensor, counts: torch.Tensor, batch: torch.Tensor, labels: torch.Tensor
) -> None:
    """In place: each centre becomes the running mean of all samples ever assigned to it.

    centers (k, d) float32, counts (k,) float64, batch (b, d), labels (b,) int64.
    c_new = (count_old * c_old + sum of new members) / (count_old + n_new).
    """
    k = centers.shape[0]
    sums = torch.zeros(k, centers.shape[1], dtype=torch.float32)
    sums.index_add_(0, labels, batch.float())
    added = torch.bincount(labels, minlength=k).double()
    touched = (added > 0).nonzero(as_tuple=True)[0]
    old, new = counts[touched], counts[touched] + added[touched]
    centers[touched] = (
        centers[touched] * (old / new).float()[:, None] + sums[touched] / new.float()[:, None]
    )
    counts[touched] = new


def exact_assign(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Exact nearest centre (argmax of f . c - ||c||^2 / 2 in float64, ties -> lower index).

    points (m, d) float32, centers (k, d) float32 -> (m,) int64. A float32 matmul proposes; its
    proven error bound b keeps every centre within 2b of the row's best; float64 decides only
    rows left with more than one candidate. (float16 is faster but its bound, ~2e-3, is wider
    than the typical gap between the two nearest centres of high-dimensional data.)
    """
    norms = torch.linalg.vector_norm(centers, dim=1, dtype=torch.float64)
    half_sq = norms**2 / 2
    half_sq32 = half_sq.float()
    max_norm = float(norms.max())
    d = points.shape[1]
    labels = torch.empty(points.shape[0], dtype=torch.int64)
    for start in range(0, points.shape[0], CHUNK_ROWS):
        chunk = points[start : start + CHUNK_ROWS]
        score = chunk @ centers.t()
        score -= half_sq32[None, :]
        # float32 dot: |error| <= (d + 2) 2^-24 |f| |c| (Higham), one bound per row against the
        # largest centre; the rounding of the subtraction (2^-24 of |score|) is in the slack
        chunk_norms = torch.linalg.vector_norm(chunk, dim=1, dtype=torch.float64)
        bound = (d + 2) * 2.0**-24 * chunk_norms * max_norm * 1.01 + 1e-6
        near = score >= (score.amax(dim=1) - 2 * bound.float())[:, None]
        labels[start : start + chunk.shape[0]] = _decide(chunk, centers, half_sq, near)
    return labels


def _decide(
    chunk: torch.Tensor, centers: torch.Tensor, half_sq: torch.Tensor, near: torch.Tensor
) -> torch.Tensor:
    """Among the candidate centres of each row (near (m, k) bool), the float64 winner."""
    winners = near.to(torch.uint8).argmax(dim=1)  # the only candidate, where there is one
    ambiguous = (near.sum(dim=1) > 1).nonzero(as_tuple=True)[0]
    if len(ambiguous) == 0:
        return winners
    sub_rows, cols = near[ambiguous].nonzero(as_tuple=True)
    rows = ambiguous[sub_rows]
    exact = exact_dots(chunk[rows], centers[cols]) - half_sq[cols]
    best = torch.from_numpy(_first_per_group(rows.numpy(), exact.numpy(), cols.numpy()))
    winners[rows[best]] = cols[best]
    return winners


def _first_per_group(group: np.ndarray, score: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Positions of the best entry of each group: highest score, ties -> lowest index."""
    order = np.lexsort((index, -score, group))
    group_sorted = group[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = group_sorted[1:] != group_sorted[:-1]
    return order[first]


def kmeans(
    features: torch.Tensor,
    k: int,
    *,
    batch_size: int = 8192,
    epochs: float = 3.0,
    seed: int = 0,
    init: str = "k-means++",
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mini-batch k-means. features (n, d) float32 -> (centers (k, d) float32, labels (n,)).

    `init`: `k-means++` (see `kmeans_plus_plus`) or `random` (k distinct samples). The labels
    are the exact final assignment; k is capped at n.
    """
    n = features.shape[0]
    k = min(k, n)
    if init == "k-means++":
        start = kmeans_plus_plus(features, k, seed)
    elif init == "random":
        start = init_indices(n, k, seed)
    else:
        raise ValueError(f"unknown k-means init {init!r}; use `k-means++` or `random`")
    centers = features[torch.from_numpy(start)].clone()
    counts = torch.zeros(k, dtype=torch.float64)
    batches = batch_schedule(n, batch_size, epochs, seed)
    features_q8, features_scale = quantize_all(features)
    for idx in _maybe_tqdm(batches, progress, "k-means"):
        rows = torch.from_numpy(idx)
        labels = approx_assign(features_q8[rows], features_scale, centers)
        minibatch_update(centers, counts, features[rows], labels)
    return centers, exact_assign(features, centers)


def medoids(features: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """For every non-empty cluster, the index of argmax_i <f_i, c_k> over its members (float64,
    ties -> lower index); sorted by cluster index. features (n, d), centers (k, d), labels (n,).

    float32 row dots with a bound of (d + 2) 2^-24 |f| |c| select the few members that could
    win; those are re-scored in float64.
    """
    n, d = features.shape
    k = centers.shape[0]
    score = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, CHUNK_ROWS):
        f = features[start : start + CHUNK_ROWS]
        score[start : start + CHUNK_ROWS] = (f * centers[labels[start : start + CHUNK_ROWS]]).sum(1)
    norms = features.norm(dim=1) * centers.norm(dim=1)[labels]
    bound = (d + 2) * 2.0**-24 * norms * 1.01 + 1e-7
    lower = torch.full((k,), -torch.inf).scatter_reduce(0, labels, score - bound, "amax")
    cand = ((score + bound) >= lower[labels]).nonzero(as_tuple=True)[0]
    exact = exact_dots(features[cand], centers[labels[cand]]).numpy()
    best = _first_per_group(labels[cand].numpy(), exact, cand.numpy())
    winners = cand.numpy()[best]
    return winners[np.argsort(labels.numpy()[winners], kind="stable")]


def select_aligned(
    features: torch.Tensor,
    *,
    method: str = "kmeans",
    num_clusters: int = 5000,
    batch_size: int = 8192,
    epochs: float = 3.0,
    seed: int = 0,
    init: str = "k-means++",
    progress: bool = False,
) -> np.ndarray:
    """Indices (into features) of the aligned-pair samples, ascending.

    `kmeans`: one medoid per non-empty cluster. `random`: num_clusters samples drawn uniformly
    (the Table 9 ablation).
    """
    n = features.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if method == "random":
        return np.sort(init_indices(n, min(num_clusters, n), seed))
    if method != "kmeans":
        raise ValueError(f"unknown selection method {method!r}; use `kmeans` or `random`")
    centers, labels = kmeans(
        features,
        num_clusters,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        init=init,
        progress=progress,
    )
    return np.sort(medoids(features, centers, labels))


def _maybe_tqdm(items: list, progress: bool, desc: str) -> list:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="step")
