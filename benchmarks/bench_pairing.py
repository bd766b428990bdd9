"""Selection + retrieval on realistic features, against faiss and scikit-learn, in one run.

    .venv/bin/python benchmarks/bench_pairing.py --out /tmp/bench/pairing.json   # 107,000 x 2,048
    .venv/bin/python benchmarks/bench_pairing.py --data shapes-tiny-resnet --n 20000 --k 1000
    .venv/bin/python benchmarks/bench_pairing.py --n 20000 --k 1000 --iterations 3

Data (`pairing_data.py`): `synthetic` (non-negative, a shared activation floor, 30 domains x
3,000 concepts; its cosine statistics are printed), or ShapesWorld renders through `pixels` or a
tiny ResNet. The first 47/107 rows are understanding, the rest generation (Orsta-47k /
BLIP3o-60k).

- ours: `kmeans` (seeding, `--iterations` Lloyd iterations with exact assignments, the exact
  final assignment) + `medoids` (= `select_aligned`), then `retrieve` over the remaining samples.
- faiss k-means: `faiss.Kmeans` (Lloyd from k random samples, no subsampling) timed as a
  selection needs it: `train` + the final assignment (`index.search(x, 1)`), then medoids in
  numpy. Three runs: niter = 1; niter = our iterations (equal iterations: the same number of
  passes over all samples x centres); niter at equal time (as many iterations as fit in our
  k-means time, estimated from the first run; skipped when it equals one of the others).
- scikit-learn: `MiniBatchKMeans(init="random")`, `--sklearn-batch` samples per step,
  `--sklearn-epochs` epochs.
- inertia: sum_i min_k ||f_i - c_k||^2 in float64 with the nearest centre found exactly
  (`select.exact_assign`), the same for every set of centres (ours: the value `kmeans` reports,
  computed the same way).
- faiss retrieval: `faiss.knn` top-32 on our remaining samples + the same greedy rule (edges by
  descending float32 score), no refill.
- checks: our labels of `--check-rows` sampled rows against a float64 brute-force nearest
  centre, our medoids against a float64 per-cluster argmax over all members, and our retrieval
  against a float64 brute-force greedy on a subsample (max_candidates 2, so that candidate lists
  run out and are refilled).
- machine: CPU flags, float32 matmul GFLOP/s (torch's BLAS and numpy's, which `exact_assign`
  uses) and `torch._int_mm` GOP/s measured in this process, the load average before and after.

All on 2 threads; timing is noisy on a shared machine, so compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pairing_data import cosine_stats, shapes_features, synthetic_features

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8")


def load(args: argparse.Namespace) -> np.ndarray:
    cache = Path(args.cache) / f"{args.data}-{args.n}-{args.dim}.npy"
    if cache.exists():
        return np.load(cache)
    if args.data == "synthetic":
        feats = synthetic_features(args.n, args.dim, seed=0)
    else:
        feats = shapes_features(args.n, args.data.removeprefix("shapes-"), seed=0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, feats)
    return feats


def machine() -> dict:
    """CPU flags and the speed of the two matmul kinds on this machine, now."""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    a, b = torch.rand(2048, 2048), torch.rand(2048, 4096)
    a_np, b_np = a.numpy(), b.numpy()
    a8 = torch.randint(-127, 128, (512, 2048), dtype=torch.int8)
    b8 = torch.randint(-127, 128, (2048, 512), dtype=torch.int8)

    def best(fn, reps: int = 3) -> float:
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    return {
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "threads": torch.get_num_threads(),
        "fp32_gflops_torch": 2 * 2048 * 2048 * 4096 / best(lambda: a @ b) / 1e9,
        "fp32_gflops_numpy": 2 * 2048 * 2048 * 4096 / best(lambda: a_np @ b_np) / 1e9,
        "int8_gops": 2 * 512 * 2048 * 512 / best(lambda: torch._int_mm(a8, b8), 2) / 1e9,
    }


def inertia(feats: torch.Tensor, centers: torch.Tensor) -> float:
    """sum_i min_k ||f_i - c_k||^2, the nearest centre found exactly, in float64."""
    from pairuni.pairing.select import exact_assign, sq_distances

    centers = centers.float().contiguous()
    return math.fsum(sq_distances(feats, centers, exact_assign(feats, centers)).tolist())


def numpy_medoids(
    x: np.ndarray, centers: np.ndarray, labels: np.ndarray, dtype: type = np.float32
) -> np.ndarray:
    """Per cluster, argmax_i f_i . c (ties: lower i), the dots summed in `dtype`."""
    score = np.concatenate(
        [
            np.einsum("ij,ij->i", x[s : s + 8192], centers[labels[s : s + 8192]], dtype=dtype)
            for s in range(0, len(x), 8192)
        ]
    )
    order = np.lexsort((np.arange(len(labels)), -score, labels))
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    return np.sort(order[first])


def greedy_edges(gen_ids, und_ids, scores) -> list[tuple[int, int]]:
    """Accept (g, u) edges by descending score (ties: lower g, lower u) while both are free."""
    order = np.lexsort((und_ids, gen_ids, -scores))
    used_g, used_u, out = set(), set(), []
    for g, u in zip(gen_ids[order].tolist(), und_ids[order].tolist(), strict=True):
        if g not in used_g and u not in used_u:
            used_g.add(g)
            used_u.add(u)
            out.append((g, u))
    return out


def brute_force(gen: torch.Tensor, und: torch.Tensor, delta: float) -> list[tuple[int, int]]:
    """Float64 brute-force greedy: every pair scored by `exact_dots` (after a float64 matmul
    prefilter 1e-9 below delta), edges accepted in descending order."""
    from pairuni.pairing.similarity import exact_dots

    approx = gen.double() @ und.double().T
    g, u = (approx >= delta - 1e-9).nonzero(as_tuple=True)
    step = 1 << 16  # pairs per exact_dots call: all pairs can pass delta (ShapesWorld)
    s = np.concatenate(
        [
            exact_dots(gen[g[i : i + step]], und[u[i : i + step]]).numpy()
            for i in range(0, len(g), step)
        ]
        or [np.zeros(0)]
    )
    keep = s >= delta
    return greedy_edges(g.numpy()[keep], u.numpy()[keep], s[keep])


def run_ours(feats: torch.Tensor, n_und: int, args: argparse.Namespace) -> tuple[dict, dict]:
    from pairuni.pairing.retrieve import retrieve
    from pairuni.pairing.select import kmeans, medoids

    t0 = time.perf_counter()
    found = kmeans(feats, args.k, iterations=args.iterations, seed=0, init=args.init)
    t_km = time.perf_counter()
    aligned = np.sort(medoids(feats, found.centers, found.labels))
    t1 = time.perf_counter()
    out = {
        "init": args.init,
        "iterations": found.iterations,
        "passes": found.iterations + 1,
        "kmeans_s": t_km - t0,
        "select_s": t1 - t0,
        "inertia_per_iteration": found.inertia,
        "reseeded": found.reseeded,
        "aligned": len(aligned),
    }
    keep = {"found": found, "aligned": aligned}
    if args.skip_retrieval:
        return out, keep
    rest = np.setdiff1d(np.arange(feats.shape[0]), aligned)
    und_idx, gen_idx = rest[rest < n_und], rest[rest >= n_und]
    gen, und = feats[torch.from_numpy(gen_idx)], feats[torch.from_numpy(und_idx)]
    result = retrieve(gen, und, threshold=args.delta)
    t2 = time.perf_counter()
    out |= {
        "retrieve_s": t2 - t1,
        "total_s": t2 - t0,
        "retrieved": len(result.gen),
        "refills": result.refills,
        "mean_similarity": float(np.mean(result.sim)) if result.sim else None,
    }
    keep |= {"gen": gen, "und": und, "pairs": list(zip(result.gen, result.und, strict=True))}
    return out, keep


def faiss_kmeans(x: np.ndarray, k: int, niter: int) -> tuple[dict, np.ndarray]:
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=1, max_points_per_centroid=10**9)
    t0 = time.perf_counter()
    km.train(x)
    t1 = time.perf_counter()
    _, lab = km.index.search(x, 1)
    t2 = time.perf_counter()
    aligned = numpy_medoids(x, km.centroids, lab[:, 0])
    run = {
        "niter": niter,
        "train_s": t1 - t0,
        "assign_s": t2 - t1,
        "kmeans_s": t2 - t0,
        "aligned": len(aligned),
    }
    return run, km.centroids.copy()


def run_faiss_kmeans(feats: torch.Tensor, ours: dict, args: argparse.Namespace) -> tuple:
    """faiss at niter 1, at our number of iterations and at our time; (runs, centres by name)."""
    import faiss

    faiss.omp_set_num_threads(2)
    x = feats.numpy()
    runs, centers = [], {}
    first, centers["faiss_niter1"] = faiss_kmeans(x, args.k, 1)
    first["compare"] = "niter 1"
    runs.append(first)
    per_iter, assign_s = first["train_s"], first["assign_s"]
    equal_time = max(1, math.floor((ours["kmeans_s"] - assign_s) / per_iter + 0.5))
    wanted = {ours["iterations"]: "equal iterations"}
    wanted[equal_time] = (
        "equal iterations + equal time" if equal_time in wanted else "equal time (estimated)"
    )
    for niter, label in sorted(wanted.items()):
        if niter == 1:
            first["compare"] += f", {label}"
            continue
        run, centers[f"faiss_niter{niter}"] = faiss_kmeans(x, args.k, niter)
        run["compare"] = label
        runs.append(run)
        print("faiss k-means", json.dumps(run), flush=True)
    return runs, centers


def run_faiss_retrieval(keep: dict, args: argparse.Namespace) -> dict:
    import faiss

    faiss.omp_set_num_threads(2)
    t0 = time.perf_counter()
    lists = faiss.knn(keep["gen"].numpy(), keep["und"].numpy(), 32, faiss.METRIC_INNER_PRODUCT)
    scores, index = lists
    g, c = np.nonzero((scores >= args.delta) & (index >= 0))
    pairs = greedy_edges(g, index[g, c], scores[g, c].astype(np.float64))
    return {
        "retrieve_s": time.perf_counter() - t0,
        "retrieved": len(pairs),
        "pairs_differing_from_ours": len(set(pairs) ^ set(keep["pairs"])),
    }


def run_sklearn(feats: torch.Tensor, args: argparse.Namespace) -> tuple[dict, torch.Tensor]:
    from sklearn.cluster import MiniBatchKMeans

    t0 = time.perf_counter()
    km = MiniBatchKMeans(
        n_clusters=args.k,
        batch_size=args.sklearn_batch,
        max_iter=args.sklearn_epochs,
        n_init=1,
        random_state=0,
        init="random",
        compute_labels=False,
        max_no_improvement=None,
        tol=0.0,
    ).fit(feats.numpy())
    run = {
        "kmeans_s": time.perf_counter() - t0,
        "batch_size": args.sklearn_batch,
        "epochs": args.sklearn_epochs,
        "note": "no final assignment (labels not computed)",
    }
    return run, torch.from_numpy(km.cluster_centers_)


def check_selection(feats: torch.Tensor, keep: dict, rows: int) -> dict:
    """Our labels on sampled rows and our medoids against float64 brute force."""
    found = keep["found"]
    pick = np.sort(np.random.default_rng(1).choice(feats.shape[0], rows, replace=False))
    f = feats[torch.from_numpy(pick)].double()
    c = found.centers.double()
    score = f @ c.T - (c * c).sum(1) / 2
    brute = score.argmax(dim=1)  # torch: the first maximum on ties
    labels = found.labels.numpy()
    medoids64 = numpy_medoids(feats.numpy(), found.centers.numpy(), labels, np.float64)
    return {
        "label_rows": rows,
        "labels_identical": bool((brute.numpy() == labels[pick]).all()),
        "medoids_identical": medoids64.tolist() == keep["aligned"].tolist(),
    }


def check_retrieval(keep: dict, args: argparse.Namespace) -> dict:
    from pairuni.pairing.retrieve import retrieve

    gen, und = keep["gen"][: args.check_rows], keep["und"][: round(args.check_rows * 0.8)]
    fast = retrieve(gen, und, threshold=args.delta, max_candidates=2)
    slow = brute_force(gen, und, args.delta)
    return {
        "rows": [gen.shape[0], und.shape[0]],
        "pairs": len(slow),
        "refills": fast.refills,
        "identical": list(zip(fast.gen, fast.und, strict=False)) == slow,
    }


def parse_args() -> argparse.Namespace:
    from pairuni.pairing.select import DEFAULT_ITERATIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default="synthetic", choices=["synthetic", "shapes-pixels", "shapes-tiny-resnet"]
    )
    parser.add_argument("--n", type=int, default=107_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--delta", type=float, default=0.6)
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument("--init", default="k-means++", choices=["k-means++", "random"])
    parser.add_argument("--sklearn-batch", type=int, default=8192)
    parser.add_argument("--sklearn-epochs", type=int, default=3)
    parser.add_argument(
        "--check-rows", type=int, default=3000, help="rows of the brute-force checks (0: skip)"
    )
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--skip-kmeans", action="store_true", help="no faiss/sklearn k-means")
    parser.add_argument("--skip-retrieval", action="store_true", help="selection only")
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--cache", default="/tmp/pairuni-bench")
    parser.add_argument("--out", help="also write the results as JSON here (after every step)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    report: dict = {"load_avg_1m_before": os.getloadavg()[0], "started": time.ctime()}

    def record(key: str, value: object) -> None:
        report[key] = value
        print(key, json.dumps(value), flush=True)
        if args.out:  # incrementally: a killed run keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    record("machine", machine())
    t0 = time.perf_counter()
    feats_np = load(args)
    n_und = round(args.n * 47 / 107)
    report |= {"data": args.data, "n": args.n, "dim": feats_np.shape[1], "k": args.k}
    report |= {"delta": args.delta, "features_s": time.perf_counter() - t0}
    record("cosines", cosine_stats(feats_np, n_und, args.delta))
    feats = torch.from_numpy(feats_np)
    ours, keep = run_ours(feats, n_und, args)
    record("ours", ours)
    if not args.no_faiss and not args.skip_retrieval:
        fa = run_faiss_retrieval(keep, args)
        record("faiss_retrieval", fa)
        record("retrieve_ratio_ours_over_faiss", ours["retrieve_s"] / fa["retrieve_s"])
    inertias = {"ours": ours["inertia_per_iteration"][-1]}
    if not args.skip_kmeans and not args.no_faiss:
        runs, centers = run_faiss_kmeans(feats, ours, args)
        for run, (name, c) in zip(runs, centers.items(), strict=True):
            run["inertia"] = inertias[name] = inertia(feats, torch.from_numpy(c))
        record("faiss_kmeans", runs)
    if not args.skip_kmeans and not args.no_sklearn:
        sk, centers_sk = run_sklearn(feats, args)
        sk["inertia"] = inertias["sklearn"] = inertia(feats, centers_sk)
        record("sklearn", sk)
    record("inertia", inertias)
    if args.check_rows:
        record("check_selection", check_selection(feats, keep, min(args.check_rows, args.n)))
        if not args.skip_retrieval:
            record("check_retrieval", check_retrieval(keep, args))
    record("load_avg_1m_after", os.getloadavg()[0])


if __name__ == "__main__":
    main()
