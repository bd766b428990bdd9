"""Selection (k-means medoids) and retrieval (greedy thresholded matching) against naive
float64 reimplementations, planted data with known answers, and property tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pairuni.pairing.retrieve import retrieve
from pairuni.pairing.select import (
    batch_schedule,
    exact_assign,
    kmeans,
    kmeans_plus_plus,
    medoids,
    minibatch_update,
    select_aligned,
)
from pairuni.pairing.similarity import Int8Keys, int8_bound, int8_products


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=1)


# ---------- naive references (float64, plain loops) ----------


def naive_retrieve(gen: np.ndarray, und: np.ndarray, threshold: float, top_n: int, order: str):
    sims = gen.astype(np.float64) @ und.astype(np.float64).T
    used = np.zeros(und.shape[0], dtype=bool)
    done = np.zeros(gen.shape[0], dtype=bool)
    out = []

    def ranked(g):
        ok = [u for u in range(und.shape[0]) if not used[u] and sims[g, u] >= threshold]
        return sorted(ok, key=lambda u: (-sims[g, u], u))

    for step in range(gen.shape[0]):
        if order == "dataset":
            g = step
        else:
            best = None
            for cand in range(gen.shape[0]):
                r = ranked(cand) if not done[cand] else []
                if r and (best is None or (-sims[cand, r[0]], cand) < best[0]):
                    best = ((-sims[cand, r[0]], cand), cand)
            if best is None:
                break
            g = best[1]
        done[g] = True
        for u in ranked(g)[:top_n]:
            used[u] = True
            out.append((g, u, sims[g, u]))
    return out


def as_triples(result):
    return list(zip(result.gen, result.und, result.sim, strict=True))


def assert_same(fast, naive):
    assert [(g, u) for g, u, _ in fast] == [(g, u) for g, u, _ in naive]
    np.testing.assert_allclose([s for *_, s in fast], [s for *_, s in naive], atol=1e-12)


# ---------- the error bounds the fast paths rely on ----------


def test_int8_bound_holds_on_adversarial_rows():
    q = torch.cat([unit(64, 96, 0), torch.nn.functional.normalize(torch.rand(64, 96), dim=1)])
    k = torch.cat([unit(50, 96, 1), torch.eye(96)[:10], torch.rand(20, 96)])
    keys = Int8Keys.from_float(k)
    ints, factor = int8_products(q, keys)
    approx = ints.double() * factor[:, None]
    exact = q.double() @ k.double().T
    err = (approx - exact).abs().amax(dim=1)
    assert (err <= int8_bound(q, keys)).all()


def test_exact_assign_matches_float64_argmin_distance():
    pts = unit(500, 40, 2)
    centers = unit(37, 40, 3) * torch.rand(37, 1)  # unequal norms, like real centroids
    centers[5] = centers[4]  # an exact tie: the lower index must win
    dist = torch.cdist(pts.double(), centers.double())
    # argmin of the distance with ties to the lower index, written independently
    expected = [min(range(37), key=lambda j: (round(float(dist[i, j]), 12), j)) for i in range(500)]
    assert exact_assign(pts, centers).tolist() == expected


def test_minibatch_update_is_running_mean():
    rng = np.random.default_rng(0)
    centers = torch.tensor(rng.normal(size=(3, 4)), dtype=torch.float32)
    counts = torch.tensor([0.0, 2.0, 5.0], dtype=torch.float64)
    batch = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    expected = centers.double().clone()
    # by hand: centre 0 was empty -> mean of its two members; others weighted by old counts
    expected[0] = batch[:2].double().mean(0)
    expected[1] = (2 * expected[1] + batch[2].double()) / 3
    expected[2] = (5 * expected[2] + batch[3:].double().sum(0)) / 8
    minibatch_update(centers, counts, batch, labels)
    torch.testing.assert_close(centers.double(), expected, atol=1e-6, rtol=0)
    assert counts.tolist() == [2.0, 3.0, 8.0]


def test_batch_schedule_covers_every_sample_each_epoch():
    batches = batch_schedule(10, 4, 2.0, seed=3)
    assert len(batches) == 5
    first_epoch = np.concatenate(batches[:3])
    assert sorted(first_epoch.tolist()) == list(range(10))


def test_medoids_match_naive_argmax():
    feats = unit(300, 16, 4)
    centers = unit(9, 16, 5)
    labels = exact_assign(feats, centers)
    expected = []
    for c in sorted(set(labels.tolist())):
        members = [i for i in range(300) if labels[i] == c]
        scores = {i: float(feats[i].double() @ centers[c].double()) for i in members}
        expected.append(max(members, key=lambda i: (scores[i], -i)))
    assert medoids(feats, centers, labels).tolist() == expected


def test_kmeans_recovers_planted_clusters_and_their_most_central_member():
    """8 tight clusters; the member closest to the true centre is planted exactly on it."""
    truth = unit(8, 32, 6)
    noise = unit(8 * 25, 32, 7) * 0.05
    feats = torch.nn.functional.normalize(truth.repeat_interleave(25, 0) + noise, dim=1)
    planted = [c * 25 + 3 for c in range(8)]
    feats[planted] = truth
    _, labels = kmeans(feats, 8, batch_size=64, epochs=5, seed=0)
    groups = {tuple(sorted(np.flatnonzero(labels.numpy() == c))) for c in range(8)}
    assert groups == {tuple(range(c * 25, c * 25 + 25)) for c in range(8)}
    assert select_aligned(feats, num_clusters=8, batch_size=64, epochs=5).tolist() == planted


def test_kmeans_plus_plus_gives_distinct_indices_even_with_duplicates():
    feats = torch.cat([unit(5, 8, 16)] * 4)  # 20 rows, only 5 distinct points
    idx = kmeans_plus_plus(feats, 12, seed=0, dim=4)
    assert len(set(idx.tolist())) == 12
    distinct_points = {tuple(feats[i].tolist()) for i in idx[:5]}
    assert len(distinct_points) == 5  # D^2 sampling never re-picks a covered point first


def test_selection_is_deterministic_for_a_seed_and_random_method_differs():
    feats = unit(400, 24, 8)
    a = select_aligned(feats, num_clusters=20, batch_size=50, seed=1)
    b = select_aligned(feats, num_clusters=20, batch_size=50, seed=1)
    assert a.tolist() == b.tolist()
    r = select_aligned(feats, method="random", num_clusters=20, seed=1)
    assert len(r) == 20 and len(set(r.tolist())) == 20


# ---------- retrieval ----------


def test_retrieval_recovers_planted_neighbours_exactly():
    """Each generation image is a noisy copy of one understanding image; the rest are far."""
    und = unit(200, 64, 9)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(1))[:60]
    gen = torch.nn.functional.normalize(und[perm] + 0.3 * unit(60, 64, 10), dim=1)
    result = retrieve(gen, und, threshold=0.6)
    assert sorted(zip(result.gen, result.und, strict=True)) == [
        (g, int(perm[g])) for g in range(60)
    ]
    assert all(s >= 0.6 for s in result.sim)


@pytest.mark.parametrize("order", ["best-first", "dataset"])
@pytest.mark.parametrize("top_n", [1, 2, 3])
def test_retrieval_matches_naive_loop_on_contested_data(order, top_n):
    """Few understanding samples near many generation samples: heavy competition, refills."""
    base = unit(6, 12, 11)
    gen = torch.nn.functional.normalize(base.repeat(8, 1) + 0.35 * unit(48, 12, 12), dim=1)
    und = torch.nn.functional.normalize(base.repeat(5, 1) + 0.35 * unit(30, 12, 13), dim=1)
    fast = retrieve(gen, und, threshold=0.55, top_n=top_n, order=order, max_candidates=2)
    naive = naive_retrieve(gen.numpy(), und.numpy(), 0.55, top_n, order)
    assert_same(as_triples(fast), naive)
    assert fast.refills > 0  # the fallback path was exercised


def test_best_first_is_greedy_edge_order_for_one_neighbour():
    """n = 1: accepted pairs come out in descending similarity (greedy matching by edges)."""
    gen, und = unit(40, 8, 14), unit(30, 8, 15)
    result = retrieve(gen, und, threshold=0.2)
    assert result.sim == sorted(result.sim, reverse=True)


def test_exact_tie_goes_to_lower_generation_index():
    und = torch.tensor([[1.0, 0.0]])
    gen = torch.tensor([[0.8, 0.6], [0.8, 0.6]])
    result = retrieve(gen, und, threshold=0.5)
    assert as_triples(result)[0][:2] == (0, 0) and len(result.gen) == 1


def test_threshold_is_inclusive_and_empty_inputs_work():
    und = torch.tensor([[1.0, 0.0]])
    gen = torch.tensor([[0.6, 0.8]])  # cosine exactly representable? 0.6 in float32 ~ 0.6000000238
    s = float(gen.double()[0] @ und.double()[0])
    assert retrieve(gen, und, threshold=s).gen == [0]
    assert retrieve(gen, und, threshold=np.nextafter(s, 2)).gen == []
    assert retrieve(gen[:0], und, threshold=0.1).gen == []
    assert retrieve(gen, und[:0], threshold=0.1).gen == []


@settings(max_examples=40, deadline=None)
@given(
    n_g=st.integers(1, 25),
    n_u=st.integers(1, 25),
    dim=st.integers(2, 6),
    threshold=st.floats(-0.5, 0.95),
    top_n=st.integers(1, 3),
    order=st.sampled_from(["best-first", "dataset"]),
    seed=st.integers(0, 10_000),
    max_candidates=st.integers(1, 4),
)
def test_properties_threshold_without_replacement_and_naive_agreement(
    n_g, n_u, dim, threshold, top_n, order, seed, max_candidates
):
    gen, und = unit(n_g, dim, seed), unit(n_u, dim, seed + 1)
    result = retrieve(
        gen, und, threshold=threshold, top_n=top_n, order=order, max_candidates=max_candidates
    )
    triples = as_triples(result)
    # threshold: every pair at or above delta, and s is the float64 cosine
    for g, u, s in triples:
        assert s >= threshold
        assert s == pytest.approx(float(gen[g].double() @ und[u].double()), abs=1e-12)
    # without replacement: each understanding sample once, each generation at most top_n
    assert len(set(result.und)) == len(result.und)
    assert max(np.bincount(result.gen, minlength=1)) <= top_n
    # maximality: no unmatched (g with room, unused u) pair left above the threshold
    counts = np.bincount(result.gen, minlength=n_g)
    sims = gen.double() @ und.double().T
    free_u = set(range(n_u)) - set(result.und)
    for g in range(n_g):
        if counts[g] < top_n:
            assert all(float(sims[g, u]) < threshold for u in free_u)
    assert_same(triples, naive_retrieve(gen.numpy(), und.numpy(), threshold, top_n, order))
