"""Selection (k-means medoids) and retrieval (greedy thresholded matching) against naive
float64 reimplementations, planted data with known answers, and property tests."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pairuni.config import ConfigError, load_config
from pairuni.pairing import select
from pairuni.pairing.config import SelectConfig
from pairuni.pairing.retrieve import dot_error_bound, knn_inner_product, retrieve
from pairuni.pairing.select import (
    DEFAULT_ITERATIONS,
    assign_error_bound,
    cluster_means,
    exact_assign,
    init_indices,
    kmeans,
    kmeans_plus_plus,
    medoids,
    reseed_empty,
    select_aligned,
    sq_distances,
)
from pairuni.pairing.similarity import exact_dots


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


def test_float32_search_error_is_within_the_bound():
    """faiss's float32 scores are within gamma_d |q| |k| of the float64 dot products (the bound
    every retrieval decision relies on), on rows built to accumulate rounding."""
    q = torch.cat([unit(64, 2048, 0), torch.nn.functional.normalize(torch.rand(64, 2048), dim=1)])
    k = torch.cat([unit(50, 2048, 1), torch.rand(20, 2048) * 3, torch.eye(2048)[:10]])
    scores, index = knn_inner_product(q.numpy(), k.numpy(), k.shape[0])
    exact = (q.double() @ k.double().T).numpy()
    err = np.abs(scores - np.take_along_axis(exact, index, axis=1))
    norms = np.linalg.norm(q.double().numpy(), axis=1)[:, None] * float(k.norm(dim=1).max())
    assert (err <= dot_error_bound(2048) * norms).all()
    assert (np.diff(scores, axis=1) <= 0).all()  # sorted, as `_lists` assumes


def brute_assign(points: torch.Tensor, centers: torch.Tensor) -> np.ndarray:
    """Naive float64 nearest centre: argmin_j ||f - c_j||^2 (numpy's argmin: ties to the lower
    index), one centre at a time."""
    f, c = points.double().numpy(), centers.double().numpy()
    dist = np.stack([((f - c[j]) ** 2).sum(axis=1) for j in range(c.shape[0])], axis=1)
    return dist.argmin(axis=1)


def brute_inertia(points: torch.Tensor, centers: torch.Tensor) -> float:
    """sum_i min_j ||f_i - c_j||^2 in float64, written independently of `pairuni`."""
    f, c = points.double().numpy(), centers.double().numpy()
    dist = np.stack([((f - c[j]) ** 2).sum(axis=1) for j in range(c.shape[0])], axis=1)
    return float(dist.min(axis=1).sum())


def float32_assign(points: torch.Tensor, centers: torch.Tensor) -> np.ndarray:
    """What a plain float32 nearest-centre search answers (the approximation we must beat)."""
    return (points @ centers.T - centers.square().sum(1) / 2).argmax(1).numpy()


def naive_lloyd(feats: torch.Tensor, seeds: np.ndarray, iterations: int):
    """Lloyd's algorithm in plain numpy float64: brute-force assignment, means rounded to
    float32, empty centres (in order) moved onto the farthest samples (ties: lower index),
    stop when the assignment repeats with no empty centre moved."""
    f = feats.double().numpy()
    centers = feats.numpy()[seeds].copy()
    history, previous, moved = [], None, False
    for step in range(iterations + 1):
        labels = brute_assign(feats, torch.from_numpy(centers))
        dist = ((f - centers[labels].astype(np.float64)) ** 2).sum(axis=1)
        history.append(float(dist.sum()))
        if step == iterations or (
            previous is not None and not moved and (labels == previous).all()
        ):
            break
        new = np.zeros_like(centers)
        empty = []
        for j in range(len(centers)):
            members = f[labels == j]
            if len(members):
                new[j] = members.mean(axis=0).astype(np.float32)
            else:
                empty.append(j)
        far = sorted(range(len(f)), key=lambda i: (-dist[i], i))
        for j, i in zip(empty, far, strict=False):
            new[j] = feats.numpy()[i]
        centers, previous, moved = new, labels, bool(empty)
    return centers, labels, history


def test_exact_assign_matches_float64_argmin_distance():
    pts = unit(500, 40, 2)
    centers = unit(37, 40, 3) * torch.rand(37, 1)  # unequal norms, like real centroids
    centers[5] = centers[4]  # an exact tie: the lower index must win
    dist = torch.cdist(pts.double(), centers.double())
    # argmin of the distance with ties to the lower index, written independently
    expected = [min(range(37), key=lambda j: (round(float(dist[i, j]), 12), j)) for i in range(500)]
    assert exact_assign(pts, centers).tolist() == expected


def test_exact_assign_decides_near_ties_below_float32_resolution():
    """Centres in groups of near-copies whose distances to a point differ by ~1e-7, below the
    float32 error at d = 2,048 (~1e-6): float32 alone picks wrong, exact_assign never does."""
    base = realistic(4, 2048, 40)
    centers = near_ties(base, 6, 41, 1e-5)
    points = near_ties(base, 10, 42, 1e-5)
    expected = brute_assign(points, centers)
    assert (float32_assign(points, centers) != expected).any()  # the test has teeth
    assert exact_assign(points, centers).tolist() == expected.tolist()


def test_float32_assignment_scores_are_within_the_bound():
    """fl32(f . c - ||c||^2 / 2) as `exact_assign` computes it (numpy's gemm, then the
    subtraction) and fused into one torch addmm, both stay within `assign_error_bound` of the
    float64 value, for unit rows, non-negative rows and centres of unequal norms (some above 1)."""
    points = torch.cat([unit(64, 2048, 20), realistic(64, 2048, 21)])
    centers = torch.cat(
        [unit(30, 2048, 22) * 3, realistic(30, 2048, 23) * 0.7, torch.eye(2048)[:5]]
    )
    half = exact_dots(centers, centers) / 2
    split = torch.from_numpy(points.numpy() @ centers.numpy().T) - half.float()
    fused = torch.addmm((-half).float(), points, centers.t())
    exact = points.double() @ centers.double().T - half
    bound = assign_error_bound(exact_dots(points, points), float(half.max()), 2048)
    for score in (split, fused):
        assert ((score.double() - exact).abs() <= bound[:, None]).all()


def test_decide_finds_the_float64_winner_against_adversarial_float32_errors():
    """Float32 scores wrong by up to 0.99 of the bound, always against the true winner: the
    float32 argmax is often wrong, the decision never."""
    base = realistic(3, 512, 60)
    points, centers = near_ties(base, 8, 61, 1e-5), near_ties(base, 5, 62, 1e-5)
    half = exact_dots(centers, centers) / 2
    rows, cols = torch.meshgrid(torch.arange(24), torch.arange(15), indexing="ij")
    s = (exact_dots(points[rows.reshape(-1)], centers[cols.reshape(-1)]).reshape(24, 15)) - half
    expected = [min(range(15), key=lambda j: (-float(s[i, j]), j)) for i in range(24)]
    bound = assign_error_bound(exact_dots(points, points), float(half.max()), 512)
    push = torch.full_like(s, 0.99) * bound[:, None]
    push[torch.arange(24), torch.tensor(expected)] *= -1  # the winner down, every other one up
    adversarial = (s + push).float()
    assert (adversarial.argmax(1) != torch.tensor(expected)).any()  # the test has teeth
    decided = select._decide(points, centers, half, adversarial, bound)
    assert decided.tolist() == expected


def test_cluster_means_are_float64_means_and_empty_centres_take_the_farthest_samples():
    feats = realistic(50, 32, 43)
    far = -torch.nn.functional.normalize(torch.ones(32), dim=0)  # rows are non-negative
    feats[1] = feats[49] = far  # both in cluster 1: an exact tie for "farthest"
    labels = torch.arange(50) % 4  # k = 6: clusters 4 and 5 are empty
    centers, counts = cluster_means(feats, labels, 6)
    assert counts.tolist() == [13, 13, 12, 12, 0, 0]
    for j in range(4):
        mean = feats[labels == j].double().numpy().mean(axis=0)
        np.testing.assert_allclose(centers[j].double().numpy(), mean, rtol=2**-24, atol=0)
    sq_dist = sq_distances(feats, centers, labels)
    naive = ((feats.double() - centers[labels].double()) ** 2).sum(1)
    torch.testing.assert_close(sq_dist, naive, rtol=1e-12, atol=0)
    expected = sorted(range(50), key=lambda i: (-float(naive[i]), i))[:2]
    assert expected == [1, 49]
    taken = reseed_empty(centers, counts, feats, sq_dist)
    assert taken.tolist() == expected
    assert torch.equal(centers[4], feats[1]) and torch.equal(centers[5], feats[49])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_is_naive_float64_lloyd(seed):
    """Ours = the numpy reference step by step (labels, centres, inertia), on data with exact
    duplicates, so that seeds collide and empty centres are re-seeded."""
    feats = realistic(60, 48, 50 + seed, concepts=6).repeat(5, 1)  # 300 rows, 60 distinct
    k = 40
    found = kmeans(feats, k, iterations=4, seed=seed, init="random")
    centers, labels, history = naive_lloyd(feats, init_indices(300, k, seed), 4)
    assert found.reseeded > 0  # the empty-centre path ran
    assert found.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(found.centers.numpy(), centers, rtol=2**-23, atol=1e-9)
    np.testing.assert_allclose(found.inertia, history, rtol=1e-12)


def test_inertia_never_increases_and_is_the_independent_float64_inertia():
    """Lloyd's property: run t is a prefix of run t + 1, and its inertia (brute force, float64,
    over every centre) never goes up from one iteration to the next."""
    feats = realistic(600, 128, 44, concepts=20)
    runs = [kmeans(feats, 25, iterations=t, seed=3) for t in range(6)]
    independent = [brute_inertia(feats, run.centers) for run in runs]
    for t, run in enumerate(runs):
        assert run.inertia[-1] == pytest.approx(independent[t], rel=1e-12)
        assert run.inertia == runs[-1].inertia[: len(run.inertia)]
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(independent))
    assert independent[1] < 0.97 * independent[0]  # the first update really moves the centres


def test_kmeans_labels_are_exact_on_near_ties():
    """Near-copies of a few rows, more centres than groups: centres and samples stay within
    float32's resolution of each other at every iteration."""
    feats = near_ties(realistic(5, 2048, 45), 16, 46, 1e-5)
    float32_wrong = 0
    for t in (0, 1, 2):
        found = kmeans(feats, 15, iterations=t, seed=0, init="random")
        expected = brute_assign(feats, found.centers)
        assert found.labels.tolist() == expected.tolist()
        float32_wrong += int((float32_assign(feats, found.centers) != expected).sum())
    assert float32_wrong > 0  # the test has teeth


def test_kmeans_is_identical_for_any_thread_count_and_chunking(monkeypatch):
    feats = realistic(700, 256, 47, concepts=30)
    threads = torch.get_num_threads()

    def run(n_threads: int, chunk: int, sum_rows: int, pairs: int):
        monkeypatch.setattr(select, "CHUNK_ROWS", chunk)
        monkeypatch.setattr(select, "SUM_ROWS", sum_rows)
        monkeypatch.setattr(select, "RESCORE_PAIRS", pairs)
        torch.set_num_threads(n_threads)  # torch's ops and, through threadpoolctl, numpy's BLAS
        found = kmeans(feats, 40, iterations=3, seed=5)
        return found, medoids(feats, found.centers, found.labels)

    try:
        (a, ma), (b, mb) = run(1, 4096, 8192, 8192), run(2, 37, 50, 3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.centers, b.centers) and torch.equal(a.labels, b.labels)
    assert a.inertia == b.inertia and ma.tolist() == mb.tolist()


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


def test_medoids_are_exact_on_near_ties():
    """Members whose dot products with their centre differ below float32's resolution, and
    exact duplicates (ties to the lower index)."""
    base = realistic(8, 2048, 48)
    feats = near_ties(base, 20, 49, 1e-5)
    feats = torch.cat([feats, feats[:5]])  # duplicates of earlier rows tie exactly
    labels = torch.from_numpy(brute_assign(feats, base))
    exact = exact_dots(feats, base[labels]).numpy()
    float32 = (feats * base[labels]).sum(1).numpy()
    expected, float32_beaten = [], 0
    for c in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels.numpy() == c)
        expected.append(int(max(members, key=lambda i: (exact[i], -i))))
        float32_beaten += float32[expected[-1]] < float32[members].max()
    assert float32_beaten > 0  # the test has teeth: float32 alone ranks a winner below another
    assert medoids(feats, base, labels).tolist() == expected


def test_kmeans_recovers_planted_clusters_and_their_most_central_member():
    """8 tight clusters; the member closest to the true centre is planted exactly on it."""
    truth = unit(8, 32, 6)
    noise = unit(8 * 25, 32, 7) * 0.05
    feats = torch.nn.functional.normalize(truth.repeat_interleave(25, 0) + noise, dim=1)
    planted = [c * 25 + 3 for c in range(8)]
    feats[planted] = truth
    labels = kmeans(feats, 8, iterations=5, seed=0).labels
    groups = {tuple(sorted(np.flatnonzero(labels.numpy() == c))) for c in range(8)}
    assert groups == {tuple(range(c * 25, c * 25 + 25)) for c in range(8)}
    assert select_aligned(feats, num_clusters=8, iterations=5).tolist() == planted


def test_kmeans_stops_when_the_assignment_repeats_and_zero_iterations_keeps_the_seeds():
    truth = unit(6, 16, 17)
    feats = torch.nn.functional.normalize(truth.repeat(30, 1) + 0.05 * unit(180, 16, 18), dim=1)
    found = kmeans(feats, 6, iterations=50, seed=0)
    assert found.iterations < 50
    # a fixed point: one more update would give the same centres
    assert torch.equal(cluster_means(feats, found.labels, 6)[0], found.centers)
    seeds = kmeans(feats, 6, iterations=0, seed=0, init="random")
    assert torch.equal(seeds.centers, feats[torch.from_numpy(init_indices(180, 6, 0))])
    with pytest.raises(ValueError, match="iterations"):
        kmeans(feats, 6, iterations=-1)


def test_kmeans_plus_plus_gives_distinct_indices_even_with_duplicates():
    feats = torch.cat([unit(5, 8, 16)] * 4)  # 20 rows, only 5 distinct points
    idx = kmeans_plus_plus(feats, 12, seed=0, dim=4)
    assert len(set(idx.tolist())) == 12
    distinct_points = {tuple(feats[i].tolist()) for i in idx[:5]}
    assert len(distinct_points) == 5  # D^2 sampling never re-picks a covered point first


def test_selection_is_deterministic_for_a_seed_and_random_method_differs():
    feats = unit(400, 24, 8)
    a = select_aligned(feats, num_clusters=20, seed=1)
    b = select_aligned(feats, num_clusters=20, seed=1)
    c = select_aligned(feats, num_clusters=20, seed=2)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    r = select_aligned(feats, method="random", num_clusters=20, seed=1)
    assert len(r) == 20 and len(set(r.tolist())) == 20


def test_removed_minibatch_keys_are_refused_with_the_replacement(tmp_path):
    assert SelectConfig().iterations == DEFAULT_ITERATIONS
    for key, value in (("epochs", 3.0), ("batch_size", 8192)):
        with pytest.raises(ValidationError, match="set `iterations` instead"):
            SelectConfig.model_validate({key: value})
    path = tmp_path / "pairs.yaml"
    path.write_text("pairing:\n  select:\n    epochs: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "pairs.yaml" in str(err.value) and "pairing.select" in str(err.value)
    assert "epochs was removed" in str(err.value)


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


# ---------- retrieval at float32's resolution: near ties, the threshold, exhausted lists ----------


def exact_greedy(gen: torch.Tensor, und: torch.Tensor, threshold: float):
    """Float64 brute force for n = 1, best-first: every pair scored by `exact_dots`, edges
    accepted in descending s (ties: lower g, then lower u) while both ends are free."""
    g, u = torch.meshgrid(torch.arange(gen.shape[0]), torch.arange(und.shape[0]), indexing="ij")
    g, u = g.reshape(-1), u.reshape(-1)
    s = exact_dots(gen[g], und[u]).numpy()
    keep = s >= threshold
    g, u, s = g.numpy()[keep], u.numpy()[keep], s[keep]
    out, used_g, used_u = [], set(), set()
    for i in np.lexsort((u, g, -s)):
        if g[i] not in used_g and u[i] not in used_u:
            used_g.add(g[i])
            used_u.add(u[i])
            out.append((int(g[i]), int(u[i]), float(s[i])))
    return out


def realistic(rows: int, dim: int, seed: int, concepts: int = 12) -> torch.Tensor:
    """Non-negative rows with a shared floor and a few concepts (like pooled CNN features); the
    floor and concepts depend on (dim, concepts) only, the rows on `seed`."""
    shared = np.random.default_rng(dim * 1000 + concepts)
    floor = shared.gamma(2.0, 0.5, dim)
    pattern = (shared.random((concepts, dim)) < 0.1) * shared.exponential(1.0, (concepts, dim))
    rng = np.random.default_rng(seed)
    noise = (rng.random((rows, dim)) < 0.3) * rng.exponential(1.0, (rows, dim))
    x = 0.3 * floor + 2.0 * pattern[rng.integers(0, concepts, rows)] + noise
    return torch.nn.functional.normalize(torch.tensor(x, dtype=torch.float32), dim=1)


def near_ties(base: torch.Tensor, copies: int, seed: int, scale: float) -> torch.Tensor:
    """`copies` rows per base row, each nudged in a few coordinates by ~scale: their cosines
    with a query differ by far less than the float32 error bound (~1e-4 at d = 2048)."""
    gen = torch.Generator().manual_seed(seed)
    rows = base.repeat_interleave(copies, 0).clone()
    cols = torch.randint(0, base.shape[1], (rows.shape[0], 4), generator=gen)
    rows.scatter_add_(1, cols, scale * torch.rand(rows.shape[0], 4, generator=gen))
    return torch.nn.functional.normalize(rows, dim=1)


def test_near_ties_are_ranked_by_float64_not_float32():
    """Understanding rows in groups whose cosines with the queries differ by 1e-9..1e-6 (so
    faiss's float32 order is often wrong): the matching is the float64 brute force's."""
    base = realistic(6, 2048, 30)
    und = near_ties(base, 8, 31, 1e-5)
    gen = near_ties(base, 5, 32, 1e-5)
    _approx, index = knn_inner_product(gen.numpy(), und.numpy(), und.shape[0])
    exact = np.take_along_axis((gen.double() @ und.double().T).numpy(), index, axis=1)
    assert (np.diff(exact, axis=1) > 0).any()  # float32 ranks some pairs in the wrong order
    fast = retrieve(gen, und, threshold=0.5)
    assert as_triples(fast) == exact_greedy(gen, und, 0.5)


def test_pairs_at_the_threshold_within_the_float32_error():
    """Pairs whose float64 cosine lies within ~1e-7 of delta on both sides: those >= delta are
    all kept although some float32 scores fall below delta, the others all dropped."""
    torch.manual_seed(0)
    und = realistic(200, 2048, 33, concepts=200)
    gen = []
    for u in und:  # g = a u + b w with w orthogonal to u: cosine a, up to rounding
        w = torch.nn.functional.normalize(torch.rand(2048), dim=0)
        w = torch.nn.functional.normalize(w - (w @ u) * u, dim=0)
        a = 0.6 + float(torch.empty(1).uniform_(-1e-7, 1e-7))
        gen.append(a * u + (1 - a * a) ** 0.5 * w)
    gen = torch.stack(gen)
    s = exact_dots(gen, und).numpy()
    approx, index = knn_inner_product(gen.numpy(), und.numpy(), und.shape[0])
    d = approx[index == np.arange(200)[:, None]]
    assert ((s >= 0.6) & (d < 0.6)).any() and ((s < 0.6) & (d >= 0.6)).any()
    fast = retrieve(gen, und, threshold=0.6)
    assert as_triples(fast) == exact_greedy(gen, und, 0.6)


@pytest.mark.parametrize("max_candidates", [1, 2, 5])
def test_exhausted_lists_are_refilled_and_the_result_does_not_depend_on_their_length(
    max_candidates,
):
    """Many generation rows compete for few understanding rows of the same concept, so the
    first lists run out before most rows are visited (refills), and duplicates tie exactly."""
    und = realistic(60, 256, 34, concepts=3)
    und = torch.cat([und, und[:10]])  # exact duplicates: ties go to the lower u index
    gen = realistic(150, 256, 35, concepts=3)
    gen = torch.cat([gen, gen[:10]])  # and to the lower g index
    fast = retrieve(gen, und, threshold=0.6, max_candidates=max_candidates)
    assert fast.refills > 0
    assert as_triples(fast) == exact_greedy(gen, und, 0.6)
    for order in ("best-first", "dataset"):
        for top_n in (1, 2):
            a = retrieve(gen, und, threshold=0.6, top_n=top_n, order=order, max_candidates=64)
            b = retrieve(
                gen, und, threshold=0.6, top_n=top_n, order=order, max_candidates=max_candidates
            )
            assert as_triples(a) == as_triples(b)
            naive = naive_retrieve(gen.numpy(), und.numpy(), 0.6, top_n, order)
            assert [(g, u) for g, u, _ in as_triples(b)] == [(g, u) for g, u, _ in naive]


def test_retrieval_is_the_same_on_one_and_two_threads():
    gen, und = realistic(300, 512, 36), realistic(250, 512, 37)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = as_triples(retrieve(gen, und, threshold=0.6, max_candidates=3))
        torch.set_num_threads(2)
        two = as_triples(retrieve(gen, und, threshold=0.6, max_candidates=3))
    finally:
        torch.set_num_threads(threads)
    assert one == two == exact_greedy(gen, und, 0.6)
