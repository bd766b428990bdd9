"""Retrieved pairs (Algorithm 1, lines 9-14): greedy, thresholded, without replacement.

Every generation sample g may take up to n understanding samples u with cosine
s(g, u) >= delta; an understanding sample is used at most once. The paper does not say in which
order generation samples are visited (pairuni-paper.md §3.4); two orders are offered:

- `best-first` (default): repeatedly visit the unvisited g whose most similar *still unused*
  understanding sample is the most similar of all (ties: lower g index, then lower u index);
  g then takes its top-n unused candidates at once (descending s, ties to lower u index).
  For n = 1 this is exactly the greedy matching that accepts edges (g, u) in descending order of
  s: when an edge is accepted, u is g's nearest remaining understanding sample.
- `dataset`: visit g in index order, each taking its top-n unused candidates.

s is the float64 dot product of the float32 features (`similarity.exact_dots`): every decision
is the one a float64 brute force makes. The engine is faiss: `faiss.knn` (a float32 BLAS
matmul and a top-k heap) proposes each g's `max_candidates` best u with float32 scores d, and
|d - s| <= b_g = gamma_dim |g| max|u| (the float32 dot-product error bound, any summation order)
turns them into exact answers:

- an entry with d < delta - b_g cannot reach delta and is dropped;
- a u missing from a full list has s < cutoff = d_k + b_g (d_k the list's last score); a list is
  complete (cutoff -inf) when faiss returned every u or d_k < delta - b_g;
- g's best unused entry is exact when its lower bound clears the next entry's upper bound and
  the cutoff; entries whose intervals overlap are re-scored in float64 and ranked by (-s, u);
- when g's unused entries no longer certify its best (all used, or the best is below the
  cutoff), its list is recomputed over the unused u only (a *refill*), batched with the other g
  waiting for one; a g refilled again asks for twice as many.

The best-first heap holds one key per unvisited g, an upper bound of its best unused s (exact,
d + b_g, or the cutoff); a g is accepted only when its exact key is on top.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pairuni.pairing.similarity import exact_dots

SCAN_ROWS = 16384
REFILL_BATCH = 512
_EMPTY_U = np.zeros(0, dtype=np.int64)
_EMPTY_D = np.zeros(0, dtype=np.float64)


def dot_error_bound(dim: int) -> float:
    """gamma_dim = dim u / (1 - dim u), u = 2^-24: |fl32(q . k) - q . k| <= gamma |q| |k| for any
    summation order (Higham, Accuracy and Stability, §3.1), with or without FMA."""
    unit = 2.0**-24
    return dim * unit / (1 - dim * unit)


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x, dtype=np.float64)


def knn_inner_product(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple:
    """The k largest float32 inner products of each query row: (scores (m, k) float32 descending,
    indices (m, k) int64). faiss on as many threads as torch uses."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss.knn(queries, keys, k, metric=faiss.METRIC_INNER_PRODUCT)


@dataclass
class RetrievalResult:
    """Matched (g, u, s) triples in the order they were made."""

    gen: list[int] = field(default_factory=list)
    und: list[int] = field(default_factory=list)
    sim: list[float] = field(default_factory=list)
    refills: int = 0
    """How many candidate lists had to be recomputed over the unused understanding samples."""


_REFILL = -1  # `head`: the list no longer certifies g's best unused u


class _Retriever:
    def __init__(
        self, gen: torch.Tensor, und: torch.Tensor, threshold: float, max_candidates: int
    ) -> None:
        self.gen = gen.float().contiguous()
        self.und = und.float().contiguous()
        self.gen_np = self.gen.numpy()
        self.und_np = self.und.numpy()
        self.threshold = threshold
        self.k = max(1, max_candidates)
        n_g, dim = self.gen.shape
        und_norm = float(np.sqrt(_sq_norms(self.und_np).max()))
        gen_norm = np.sqrt(_sq_norms(self.gen_np))
        # the float64 reference itself is within ~dim 2^-53 of the real dot: inside the slack
        self.bound = dot_error_bound(dim) * gen_norm * und_norm * 1.01 + 1e-6
        self.used = np.zeros(self.und.shape[0], dtype=bool)
        self.u: list[np.ndarray] = [_EMPTY_U] * n_g
        self.d: list[np.ndarray] = [_EMPTY_D] * n_g
        self.s: list[np.ndarray] = [_EMPTY_D] * n_g  # exact s, nan until computed
        self.pos = np.zeros(n_g, dtype=np.int64)
        self.cutoff = np.full(n_g, -np.inf)
        self.asked = np.full(n_g, self.k, dtype=np.int64)
        self.refills = 0
        self.low: set[int] = set()

    # ---------------------------------------------------------------- candidate lists

    def scan(self, progress: bool) -> None:
        """Every g's list against all u."""
        n_g = self.gen.shape[0]
        starts = range(0, n_g, SCAN_ROWS)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="retrieval scan", unit="chunk")
        for start in starts:
            rows = np.arange(start, min(start + SCAN_ROWS, n_g))
            self._lists(rows, np.arange(self.und.shape[0]), self.k)

    def refill(self, rows: np.ndarray) -> None:
        """Recompute the lists of g rows `rows` over the unused u; each asks for twice as many."""
        free = np.flatnonzero(~self.used)
        self.low.difference_update(rows.tolist())
        self.refills += len(rows)
        self.asked[rows] *= 2
        self._lists(rows, free, int(self.asked[rows].max()))

    def _lists(self, rows: np.ndarray, pool: np.ndarray, k: int) -> None:
        k = min(k, len(pool))
        self.pos[rows] = 0
        if k == 0:
            for g in rows.tolist():
                self.u[g], self.d[g], self.s[g] = _EMPTY_U, _EMPTY_D, _EMPTY_D
            self.cutoff[rows] = -np.inf
            return
        keys = self.und_np if len(pool) == self.und.shape[0] else self.und_np[pool]
        scores, index = knn_inner_product(np.ascontiguousarray(self.gen_np[rows]), keys, k)
        scores = scores.astype(np.float64)
        bound = self.bound[rows]
        floor = self.threshold - bound
        last = scores[:, -1]
        full = (k < len(pool)) & (last >= floor)
        self.cutoff[rows] = np.where(full, last + bound, -np.inf)
        keep = (scores >= floor[:, None]) & (index >= 0)
        counts = keep.sum(axis=1)
        for i, g in enumerate(rows.tolist()):
            n = int(counts[i])  # faiss sorts by score: the kept entries come first
            if n == 0:
                self.u[g], self.d[g], self.s[g] = _EMPTY_U, _EMPTY_D, _EMPTY_D
                continue
            u, d = pool[index[i, :n]], scores[i, :n]
            order = np.lexsort((u, -d))  # equal float32 scores: lower u first
            self.u[g], self.d[g] = u[order], d[order]
            self.s[g] = np.full(n, np.nan)

    def _exact(self, g: int, entries: list[int] | np.ndarray) -> None:
        s = self.s[g]
        todo = [j for j in entries if math.isnan(s[j])]
        if todo:  # numpy gathers: torch's advanced indexing reads the whole tensor
            keys = torch.from_numpy(self.und_np[self.u[g][todo]])
            s[todo] = exact_dots(self.gen[g].expand(len(todo), -1), keys).numpy()

    # ---------------------------------------------------------------- g's best unused u

    def head(self, g: int) -> int | None:
        """Position in g's list of its best unused u (exact, ties to the lower u), `_REFILL` when
        the list cannot tell, or None when no unused u reaches the threshold."""
        u, d, s = self.u[g], self.d[g], self.s[g]
        p, n, used = int(self.pos[g]), len(u), self.used
        while p < n and used[u[p]]:
            p += 1
        self.pos[g] = p
        cutoff, b = self.cutoff[g], self.bound[g]
        if 4 * (n - p) <= n and cutoff > -np.inf:
            self.low.add(g)  # three quarters used up: refill it with the next batch
        if p == n:
            return None if cutoff == -np.inf else _REFILL
        window = [p]
        q = p + 1
        while q < n and d[q] >= d[p] - 2 * b:  # could beat p once exact
            if not used[u[q]]:
                window.append(q)
            q += 1
        best = p
        if len(window) > 1:
            self._exact(g, window)
            best = min(window, key=lambda j: (-s[j], u[j]))
        lower = s[best] if not math.isnan(s[best]) else d[best] - b
        if lower < cutoff or lower < self.threshold:
            self._exact(g, [best])
            if s[best] < cutoff:  # a missing u might be better
                return _REFILL
            if s[best] < self.threshold:
                return None
        return best

    def upper(self, g: int, j: int) -> tuple[float, bool]:
        """Upper bound of entry j's s, and whether it is the exact value."""
        s = self.s[g][j]
        return (
            (float(s), True) if not math.isnan(s) else (float(self.d[g][j] + self.bound[g]), False)
        )

    def head_refilled(self, g: int, pending: list[int] | None = None) -> int | None:
        """`head`, refilling (with `pending` g rows alongside) until the list can tell."""
        j = self.head(g)
        while j == _REFILL:
            rows = [g] + [r for r in (pending or []) if r != g]
            self.refill(np.asarray(rows[:REFILL_BATCH], dtype=np.int64))
            pending = None
            j = self.head(g)
        return j

    def take(self, g: int, top_n: int, first: int | None, result: RetrievalResult) -> None:
        """g takes its top-n unused candidates (the first one at position `first` if given)."""
        for i in range(top_n):
            j = first if i == 0 and first is not None else self.head_refilled(g)
            if j is None:
                return
            self._exact(g, [j])
            u = int(self.u[g][j])
            self.used[u] = True
            result.gen.append(g)
            result.und.append(u)
            result.sim.append(float(self.s[g][j]))


def retrieve(
    gen: torch.Tensor,
    und: torch.Tensor,
    *,
    threshold: float = 0.6,
    top_n: int = 1,
    order: str = "best-first",
    max_candidates: int = 32,
    progress: bool = False,
) -> RetrievalResult:
    """Greedy thresholded matching. gen (n_g, d), und (n_u, d) float32, L2-normalised.

    Returns the matched (g, u, s) triples, g and u indexing the rows of `gen` and `und`.
    `max_candidates` is the first list length (speed only: the result does not depend on it).
    """
    if order not in ("best-first", "dataset"):
        raise ValueError(f"unknown retrieval order {order!r}; use `best-first` or `dataset`")
    result = RetrievalResult()
    if gen.shape[0] == 0 or und.shape[0] == 0:
        return result
    r = _Retriever(gen, und, threshold, max(max_candidates, top_n))
    r.scan(progress)
    if order == "dataset":
        _in_order(r, top_n, result)
    else:
        _best_first(r, top_n, result)
    result.refills = r.refills
    return result


def _in_order(r: _Retriever, top_n: int, result: RetrievalResult) -> None:
    n_g = len(r.u)
    for g in range(n_g):
        j = r.head(g)
        if j == _REFILL:
            # refill the next g rows whose lists are used up too, in one search
            later = [
                h
                for h in range(g + 1, min(n_g, g + 8 * REFILL_BATCH))
                if r.cutoff[h] > -np.inf and r.used[r.u[h]].all()
            ]
            j = r.head_refilled(g, later)
        if j is not None:
            r.take(g, top_n, j, result)


def _best_first(r: _Retriever, top_n: int, result: RetrievalResult) -> None:
    # entries (-key, g, u, exact): key is an upper bound of g's best unused s; u = -1 marks a g
    # whose list must be refilled first (key = its cutoff)
    heap: list[tuple[float, int, int, bool]] = []
    pending: dict[int, float] = {}

    def push(g: int) -> None:
        j = r.head(g)
        if j is None:
            return
        if j == _REFILL:
            pending[g] = float(r.cutoff[g])
            heapq.heappush(heap, (-pending[g], g, -1, False))
            return
        key, exact = r.upper(g, j)
        heapq.heappush(heap, (-key, g, int(r.u[g][j]), exact))

    for g in range(len(r.u)):
        push(g)
    visited = np.zeros(len(r.u), dtype=bool)
    while heap:
        _, g, u, exact = heapq.heappop(heap)
        if visited[g]:
            continue
        if u == -1:
            if g in pending:  # refill g, the waiting g with the highest cutoffs, then the
                # g whose lists are nearly used up (refilling early is always sound)
                others = sorted(pending, key=lambda h: (-pending[h], h))
                others += sorted(h for h in r.low if not visited[h] and h not in pending)
                others = [h for h in others if h != g][: REFILL_BATCH - 1]
                rows = np.asarray([g, *others], dtype=np.int64)
                r.refill(rows)
                for h in rows.tolist():
                    pending.pop(h, None)
            push(g)
            continue
        j = r.head(g)
        if j is None or j == _REFILL or int(r.u[g][j]) != u:
            push(g)  # stale: u was taken meanwhile
            continue
        if not exact:
            r._exact(g, [j])
            heapq.heappush(heap, (-float(r.s[g][j]), g, u, True))
            continue
        visited[g] = True
        r.take(g, top_n, j, result)
