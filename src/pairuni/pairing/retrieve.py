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

Every s is a float64 dot product of the float32 features. Candidates are proposed by an int8
matmul whose error is provably bounded (see `similarity`), so no pair >= delta is ever missed.
Each g keeps at most `max_candidates` candidates; if they are all used up before g is visited,
its candidates are recomputed over the unused understanding samples.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import torch

from pairuni.pairing.similarity import Int8Keys, exact_dots, int8_bound, int8_products

CHUNK_ROWS = 2048
_EMPTY_U = np.zeros(0, dtype=np.int64)
_EMPTY_S = np.zeros(0, dtype=np.float64)


@dataclass
class _Candidates:
    """One g's candidates, exact scores descending. Every u missing from the list has
    s < `cutoff` (-inf when the list is complete down to the threshold)."""

    u: np.ndarray
    s: np.ndarray
    cutoff: float
    pos: int = 0


@dataclass
class RetrievalResult:
    """Matched (g, u, s) triples in the order they were made."""

    gen: list[int] = field(default_factory=list)
    und: list[int] = field(default_factory=list)
    sim: list[float] = field(default_factory=list)
    refills: int = 0
    """How many times a g's candidate list had to be recomputed."""


class _Retriever:
    def __init__(
        self,
        gen: torch.Tensor,
        und: torch.Tensor,
        threshold: float,
        top_n: int,
        max_candidates: int,
    ) -> None:
        self.gen = gen.float().contiguous()
        self.und = und.float().contiguous()
        self.threshold = threshold
        self.top_n = top_n
        self.max_candidates = max(max_candidates, top_n)
        self.keys = Int8Keys.from_float(self.und)
        self.used = np.zeros(self.und.shape[0], dtype=bool)
        self.cands: list[_Candidates] = []
        self.refills = 0

    def scan(self, progress: bool) -> None:
        """Candidate lists for every g, chunk by chunk."""
        starts = range(0, self.gen.shape[0], CHUNK_ROWS)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="retrieval scan", unit="chunk")
        for start in starts:
            rows = torch.arange(start, min(start + CHUNK_ROWS, self.gen.shape[0]))
            self.cands.extend(self._candidates(rows, self.max_candidates, None))

    def _candidates(
        self, rows: torch.Tensor, limit: int, available: np.ndarray | None
    ) -> list[_Candidates]:
        """Exact candidate lists of the g rows `rows`, at most ~`limit` each (ties kept)."""
        queries = self.gen[rows]
        if self.keys.n == 0:
            return [_Candidates(_EMPTY_U, _EMPTY_S, -np.inf) for _ in rows]
        ints, factor = int8_products(queries, self.keys)
        bound = int8_bound(queries, self.keys)
        # integer threshold per row: ints * factor >= delta - bound  (a superset of s >= delta)
        floor_int = torch.ceil((self.threshold - bound) / factor - 1e-9).clamp(-(2**31), 2**31 - 1)
        floor_int = floor_int.to(torch.int32)
        if available is not None:
            ints[:, torch.from_numpy(~available)] = torch.iinfo(torch.int32).min
        # most rows have no candidate at all: find the others with one int32 reduction
        hits = (ints.amax(dim=1) >= floor_int).nonzero(as_tuple=True)[0].tolist()
        out = [_Candidates(_EMPTY_U, _EMPTY_S, -np.inf) for _ in range(rows.shape[0])]
        for i in hits:
            mask = ints[i] >= floor_int[i]
            out[i] = self._one_row(
                int(rows[i]),
                ints[i],
                mask,
                int(mask.sum()),
                limit,
                float(factor[i]),
                float(bound[i]),
            )
        return out

    def _one_row(
        self,
        g: int,
        ints: torch.Tensor,
        mask: torch.Tensor,
        count: int,
        limit: int,
        factor: float,
        bound: float,
    ) -> _Candidates:
        if count == 0:
            return _Candidates(_EMPTY_U, _EMPTY_S, -np.inf)
        cutoff = -np.inf
        if count > limit:
            masked = torch.where(mask, ints, torch.iinfo(torch.int32).min)
            kth = int(masked.topk(limit).values[-1])
            mask = masked >= kth
            # anything left out has approx < kth, hence exact < kth * factor + bound
            cutoff = kth * factor + bound
        cols = mask.nonzero(as_tuple=True)[0]
        exact = exact_dots(self.gen[g].expand(len(cols), -1), self.und[cols]).numpy()
        keep = exact >= self.threshold
        u, s = cols.numpy()[keep], exact[keep]
        order = np.lexsort((u, -s))
        return _Candidates(u[order], s[order], cutoff)

    def head(self, g: int) -> tuple[float, int] | None:
        """g's best unused candidate (s, u), recomputing its list when it may be incomplete."""
        c = self.cands[g]
        while True:
            while c.pos < len(c.u) and self.used[c.u[c.pos]]:
                c.pos += 1
            if c.pos < len(c.u) and c.s[c.pos] >= c.cutoff:
                return float(c.s[c.pos]), int(c.u[c.pos])
            if c.cutoff == -np.inf:
                return None
            self.refills += 1
            limit = 2 * max(len(c.u), self.max_candidates)
            c = self._candidates(torch.tensor([g]), limit, ~self.used)[0]
            self.cands[g] = c

    def take(self, g: int, result: RetrievalResult) -> None:
        """g takes its top-n unused candidates."""
        for _ in range(self.top_n):
            best = self.head(g)
            if best is None:
                return
            s, u = best
            self.used[u] = True
            result.gen.append(g)
            result.und.append(u)
            result.sim.append(s)


def retrieve(
    gen: torch.Tensor,
    und: torch.Tensor,
    *,
    threshold: float = 0.6,
    top_n: int = 1,
    order: str = "best-first",
    max_candidates: int = 16,
    progress: bool = False,
) -> RetrievalResult:
    """Greedy thresholded matching. gen (n_g, d), und (n_u, d) float32, L2-normalised.

    Returns the matched (g, u, s) triples, g and u indexing the rows of `gen` and `und`.
    """
    if order not in ("best-first", "dataset"):
        raise ValueError(f"unknown retrieval order {order!r}; use `best-first` or `dataset`")
    r = _Retriever(gen, und, threshold, top_n, max_candidates)
    r.scan(progress)
    result = RetrievalResult()
    if order == "dataset":
        for g in range(gen.shape[0]):
            r.take(g, result)
    else:
        _best_first(r, result)
    result.refills = r.refills
    return result


def _best_first(r: _Retriever, result: RetrievalResult) -> None:
    heap: list[tuple[float, int, int]] = []
    for g in range(len(r.cands)):
        best = r.head(g)
        if best is not None:
            heap.append((-best[0], g, best[1]))
    heapq.heapify(heap)
    visited = np.zeros(len(r.cands), dtype=bool)
    while heap:
        _, g, u = heapq.heappop(heap)
        if visited[g]:
            continue
        if r.used[u]:
            # stale: g's best was taken meanwhile; its new best can only be lower
            best = r.head(g)
            if best is not None:
                heapq.heappush(heap, (-best[0], g, best[1]))
            continue
        visited[g] = True
        r.take(g, result)
