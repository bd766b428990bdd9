"""From single-task samples, their image features and their completions to UG pairs (Algorithm 1).

    result = build_pairs(und, gen, und_feats, gen_feats, completions, cfg.pairing)
    write_records("pairug.jsonl", result.pairs)

Aligned pairs are the completed quadruples of the selected samples (weight 1, s_p = 1);
retrieved pairs join a remaining generation sample to remaining understanding samples with
s_p >= delta (weight sqrt(s_p) as written; the trainer recomputes it under
`algo.pair_weighting`). Generation samples without an image cannot be clustered or retrieved and
are counted in `BuildResult.stats["generation_without_image"]`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pairuni.data.schema import GenerationSample, Pair, Quadruple, UnderstandingSample
from pairuni.pairing.config import PairingConfig
from pairuni.pairing.retrieve import retrieve
from pairuni.pairing.select import select_aligned

CompletionKey = tuple[str, str]
"""(origin, sample id): origin is `understanding` or `generation`."""


@dataclass
class BuildResult:
    pairs: list[Pair] = field(default_factory=list)
    needs_completion: list[Any] = field(default_factory=list)
    """Selected samples that have no completed quadruple (with on_missing_completion=error)."""
    stats: dict[str, Any] = field(default_factory=dict)


def carried_columns(generation: Any, understanding: Any | None = None) -> dict[str, Any]:
    """Extra columns of the source records that a pair keeps, for reward functions: those of the
    generation side as they are (e.g. GenEval metadata for the generation reward), those of the
    understanding side under an `und_` prefix. Schema fields are never overwritten."""
    out = {k: v for k, v in (generation.model_extra or {}).items() if k not in Pair.model_fields}
    if understanding is not None:
        for key, value in (understanding.model_extra or {}).items():
            name = key if key.startswith("und_") else f"und_{key}"
            if name not in Pair.model_fields:
                out[name] = value
    return out


def aligned_pair(quad: Quadruple) -> Pair:
    """A completed quadruple as a self-referential pair: same image on both sides. The
    quadruple's extra columns (e.g. its scene, GenEval metadata) are kept, but not the
    completion job's bookkeeping (`source_sha256`)."""
    from pairuni.pairing.complete import BOOKKEEPING_FIELDS

    extras = {k: v for k, v in carried_columns(quad).items() if k not in BOOKKEEPING_FIELDS}
    return Pair(
        **extras,
        pair_id=f"aligned:{quad.origin}:{quad.id}",
        kind="aligned",
        similarity=1.0,
        weight=1.0,
        gen_prompt=quad.prompt,
        gen_image=quad.image,
        gen_source_id=quad.id if quad.origin == "generation" else None,
        und_image=quad.image,
        und_question=quad.question,
        und_options=list(quad.options),
        und_answer=quad.answer,
        und_source_id=quad.id if quad.origin == "understanding" else None,
        category=quad.category,
        origin=quad.origin,
    )


def retrieved_pair(
    g: GenerationSample,
    u: UnderstandingSample,
    similarity: float,
    *,
    weight: float | None = None,
    **extra: Any,
) -> Pair:
    s = min(max(similarity, 0.0), 1.0)  # float64 rounding can exceed 1 for identical images
    return Pair(
        pair_id=f"retrieved:{g.id}:{u.id}",
        kind="retrieved",
        similarity=s,
        weight=math.sqrt(s) if weight is None else weight,
        gen_prompt=g.prompt,
        gen_image=g.image,
        gen_source_id=g.id,
        und_image=u.image,
        und_question=u.question,
        und_options=list(u.options),
        und_answer=u.answer,
        und_source_id=u.id,
        category=g.category,
        und_category=u.category,
        **{**carried_columns(g, u), **extra},
    )


def build_pairs(
    und: list[UnderstandingSample],
    gen: list[GenerationSample],
    und_feats: np.ndarray,
    gen_feats: np.ndarray,
    completions: Mapping[CompletionKey, Quadruple],
    cfg: PairingConfig,
    *,
    progress: bool = False,
) -> BuildResult:
    """The pairs of `cfg.variant`. und_feats (n_u, d) and gen_feats (n_g, d) are the
    L2-normalised image features of `und` and `gen` (rows of generation samples without an image
    are ignored)."""
    if len(und_feats) != len(und) or len(gen_feats) != len(gen):
        raise ValueError("one feature row per sample is needed (features and samples differ)")
    result = BuildResult()
    with_image = [i for i, g in enumerate(gen) if g.image is not None]
    result.stats["generation_without_image"] = len(gen) - len(with_image)
    und_pool = np.arange(len(und))
    gen_pool = np.asarray(with_image, dtype=np.int64)
    feats = _as_tensor(und_feats, gen_feats, gen_pool)
    if cfg.variant in ("random-pairs", "unpaired"):
        result.pairs = _random_pairs(und, gen, feats, gen_pool, cfg)
        return _finish(result)
    if cfg.variant in ("pairug", "aligned-only"):
        und_pool, gen_pool = _select(und, gen, feats, gen_pool, completions, cfg, result, progress)
        if result.needs_completion:
            return result
    if cfg.variant in ("pairug", "retrieved-only"):
        found = retrieve(
            feats["gen"][torch.from_numpy(gen_pool)],
            feats["und"][torch.from_numpy(und_pool)],
            threshold=cfg.retrieve.threshold,
            top_n=cfg.retrieve.top_n,
            order=cfg.retrieve.order,
            progress=progress,
        )
        for g, u, s in zip(found.gen, found.und, found.sim, strict=True):
            result.pairs.append(retrieved_pair(gen[gen_pool[g]], und[und_pool[u]], s))
        result.stats["retrieval_refills"] = found.refills
    return _finish(result)


def _as_tensor(
    und_feats: np.ndarray, gen_feats: np.ndarray, gen_pool: np.ndarray
) -> dict[str, torch.Tensor]:
    d = und_feats.shape[1] if len(und_feats) else (gen_feats.shape[1] if len(gen_feats) else 1)
    und_t = torch.from_numpy(np.ascontiguousarray(und_feats, dtype=np.float32).reshape(-1, d))
    gen_t = torch.zeros(len(gen_feats), d)
    if len(gen_pool):
        gen_t[torch.from_numpy(gen_pool)] = torch.from_numpy(
            np.ascontiguousarray(gen_feats[gen_pool], dtype=np.float32)
        )
    return {"und": und_t, "gen": gen_t}


def _select(
    und: list[UnderstandingSample],
    gen: list[GenerationSample],
    feats: dict[str, torch.Tensor],
    gen_pool: np.ndarray,
    completions: Mapping[CompletionKey, Quadruple],
    cfg: PairingConfig,
    result: BuildResult,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned pairs from U ∪ G (understanding rows first, then generation rows with an image);
    returns the understanding and generation indices left for retrieval."""
    n_u = len(und)
    joint = torch.cat([feats["und"], feats["gen"][torch.from_numpy(gen_pool)]])
    sc = cfg.select
    chosen = select_aligned(
        joint,
        method=sc.method,
        num_clusters=sc.num_clusters,
        iterations=sc.iterations,
        seed=sc.seed,
        init=sc.init,
        progress=progress,
    )
    taken_u: set[int] = set()
    taken_g: set[int] = set()
    result.stats["stale_completions"] = 0
    for j in chosen.tolist():
        origin, sample = (
            ("understanding", und[j]) if j < n_u else ("generation", gen[gen_pool[j - n_u]])
        )
        quad, stale = matching_completion(completions, origin, sample)
        result.stats["stale_completions"] += stale
        if quad is None:
            if cfg.on_missing_completion == "error":
                result.needs_completion.append(sample)
            continue  # `drop`: no aligned pair; the sample stays in the retrieval pool
        result.pairs.append(aligned_pair(quad))
        if j < n_u:
            taken_u.add(j)
        else:
            taken_g.add(int(gen_pool[j - n_u]))
    result.stats["selected"] = len(chosen)
    und_left = np.asarray([i for i in range(n_u) if i not in taken_u], dtype=np.int64)
    gen_left = np.asarray([i for i in gen_pool.tolist() if i not in taken_g], dtype=np.int64)
    return und_left, gen_left


def matching_completion(
    completions: Mapping[CompletionKey, Quadruple], origin: str, sample: Any
) -> tuple[Quadruple | None, bool]:
    """The completion of `sample` as it is now, and whether only completions of an earlier
    content of it (an edited question, answer, prompt or image) exist. A quadruple matches by
    its `source_sha256` (written by `pairs complete`), or else by the completed text fields;
    with a `CompletionTable`, every version of the sample is tried, the latest first."""
    from pairuni.pairing.complete import completes, image_sha256

    versions = getattr(completions, "versions", {}).get((origin, sample.id))
    if versions is None:
        quad = completions.get((origin, sample.id))  # type: ignore[call-overload]
        versions = [quad] if quad is not None else []
    if not versions:
        return None, False
    image_sha = image_sha256(sample)
    for quad in reversed(versions):
        if completes(quad, sample, image_sha):
            return quad, False
    return None, True


def _random_pairs(
    und: list[UnderstandingSample],
    gen: list[GenerationSample],
    feats: dict[str, torch.Tensor],
    gen_pool: np.ndarray,
    cfg: PairingConfig,
) -> list[Pair]:
    """Each generation sample (file order) joined to a distinct understanding sample drawn by a
    seeded shuffle; stops when either side runs out. Weight 1 (no similarity weighting)."""
    order = np.random.default_rng(cfg.select.seed).permutation(len(und))
    extra = {"unpaired": True} if cfg.variant == "unpaired" else {}
    pairs = []
    for g, u in zip(gen_pool.tolist(), order.tolist(), strict=False):
        s = float(feats["gen"][g].double() @ feats["und"][u].double())
        pairs.append(retrieved_pair(gen[g], und[u], s, weight=1.0, **extra))
    return pairs


def _finish(result: BuildResult) -> BuildResult:
    kinds = [p.kind for p in result.pairs]
    result.stats["aligned"] = kinds.count("aligned")
    result.stats["retrieved"] = kinds.count("retrieved")
    return result


# --------------------------------------------------------------------------- the whole job


def sample_features(records: list[Any], cfg: PairingConfig, *, progress: bool = True) -> np.ndarray:
    """(len(records), d) features of the records' images (zero rows for records without one)."""
    from pairuni.pairing.features import extract_features, make_extractor

    fc = cfg.features
    extractor = make_extractor(fc)
    has_image = [i for i, r in enumerate(records) if r.image is not None]
    feats = extract_features(
        [records[i].image for i in has_image],
        extractor,
        fc.cache_dir,
        batch_size=fc.batch_size,
        progress=progress,
    )
    if not has_image:
        return np.zeros((len(records), 1), dtype=np.float32)
    out = np.zeros((len(records), feats.shape[1]), dtype=np.float32)
    out[has_image] = feats
    return out


class CompletionTable(dict[CompletionKey, Quadruple]):
    """Completed quadruples keyed by (origin, id), the latest version of each; `versions` holds
    every version in reading order (a record completed again after an edit has several)."""

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[CompletionKey, list[Quadruple]] = {}

    def add(self, quad: Quadruple) -> None:
        key = (quad.origin, quad.id)
        self[key] = quad
        self.versions.setdefault(key, []).append(quad)


def read_completions(paths: list[str]) -> CompletionTable:
    """Completed quadruples keyed by (origin, id); a later line or file wins over an earlier
    one, and `build_pairs` takes the latest version that matches the sample's content. Ids may
    repeat: the two tasks may share a file, and an edited record is completed again."""
    from pairuni.data.io import read_records
    from pairuni.pairing.sources import absolute_image, strip_option_letters

    table = CompletionTable()
    for path in paths:
        records = read_records(path, Quadruple, on_bad_record="error", unique_ids=False)
        for quad in records:
            image = absolute_image(quad.image, records.base_dir)
            options = strip_option_letters(quad.options)  # "A. red" -> "red": lettered once
            table.add(quad.model_copy(update={"image": image, "options": options}))
    return table


def run_build(
    cfg: PairingConfig, out: str, completion_files: list[str], *, progress: bool = True
) -> BuildResult:
    """Load the sources, features and completions, build the pairs and write them to `out`
    (plus `<out>.summary.json`). With missing completions (and on_missing_completion=error)
    write the selected samples that need one to `<out>.needs-completion.<task>.jsonl` instead."""
    import json
    from pathlib import Path

    from pairuni.data.io import write_records
    from pairuni.pairing.sources import load_samples, rejects_path

    und = load_samples(
        cfg.sources.understanding,
        "understanding",
        cfg.sources,
        rejects=rejects_path(out, "understanding"),
    )
    gen = load_samples(
        cfg.sources.generation, "generation", cfg.sources, rejects=rejects_path(out, "generation")
    )
    und_feats = sample_features(und.records, cfg, progress=progress)
    gen_feats = sample_features(gen.records, cfg, progress=progress)
    if und_feats.shape[1] != gen_feats.shape[1] and len(und.records) and len(gen.records):
        raise ValueError("understanding and generation features differ in size")
    completions = read_completions(completion_files)
    result = build_pairs(
        und.records, gen.records, und_feats, gen_feats, completions, cfg, progress=progress
    )
    target = Path(out)
    result.stats["sources"] = [und.summary(), gen.summary()]
    if result.needs_completion:
        for task, model in (
            ("understanding", UnderstandingSample),
            ("generation", GenerationSample),
        ):
            todo = [r for r in result.needs_completion if isinstance(r, model)]
            if todo:
                write_records(
                    target.with_name(f"{target.name}.needs-completion.{task}.jsonl"), todo
                )
        return result
    write_records(target, result.pairs, images=cfg.images, model=Pair)
    summary = target.with_name(target.name + ".summary.json")
    summary.write_text(json.dumps(result.stats, indent=2) + "\n", encoding="utf-8")
    return result
