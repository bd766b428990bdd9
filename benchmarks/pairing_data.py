"""Features for `bench_pairing.py`: shaped like pooled ResNet-50 features, or real ones.

`synthetic_features` (the default data). Pooled ResNet features are non-negative (a ReLU, then
an average), every channel has a typical activation level that all images share, and images
fall into domains (photos, charts, renders ...) made of concepts (objects, scenes). So each
row is, before L2 normalisation,

    floor * phi  +  w_domain * D[domain(c)]  +  w_concept * C[c]  +  w_noise * N_i

with phi ~ Gamma(2, 0.5) per channel (the shared floor), D (30 domains) and C (3,000 concepts,
each in one domain) sparse non-negative patterns (Bernoulli(p) x Exponential(1) per channel,
p = 0.2 and 0.06), N_i a per-image pattern (p = 0.3) and the concept of each row drawn
uniformly. The weights are set so that, at 107,000 rows, about 3.4 % of the generation x
understanding pairs reach cosine 0.6 and the median nearest-neighbour cosine is about 0.8
(`cosine_stats` prints the measured values). Random unit vectors, by contrast, have cosines
~N(0, 1/d): no pair reaches 0.6.

`shapes_features`: ShapesWorld renders (`pairuni.shapes`), random scenes of 1-4 objects, through
the `pixels` extractor (3 x 26^2 = 2,028 dims) or a tiny random-weight ResNet (transformers
`ResNetModel`, 4 bottleneck stages ending at 2,048 channels: pooled, non-negative). Renders of
the same scene repeat, so exact ties occur.
"""

from __future__ import annotations

import numpy as np

SYNTHETIC = {
    "domains": 30,
    "concepts": 3000,
    "floor": 0.3,
    "w_domain": 1.55,
    "w_concept": 1.8,
    "w_noise": 1.15,
    "p_domain": 0.2,
    "p_concept": 0.06,
    "p_noise": 0.3,
}


def synthetic_features(n: int, dim: int = 2048, seed: int = 0, **overrides: float) -> np.ndarray:
    """(n, dim) float32 L2-normalised rows, see the module docstring."""
    p = {**SYNTHETIC, **overrides}
    rng = np.random.default_rng(seed)
    domains, concepts = int(p["domains"]), int(p["concepts"])
    phi = rng.gamma(2.0, 0.5, dim)
    dom = (rng.random((domains, dim)) < p["p_domain"]) * rng.exponential(1.0, (domains, dim))
    con = (rng.random((concepts, dim)) < p["p_concept"]) * rng.exponential(1.0, (concepts, dim))
    concept_domain = rng.integers(0, domains, concepts)
    label = rng.integers(0, concepts, n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):
        lab = label[start : start + 8192]
        noise = (rng.random((len(lab), dim)) < p["p_noise"]) * rng.exponential(1.0, (len(lab), dim))
        rows = (
            p["floor"] * phi
            + p["w_domain"] * dom[concept_domain[lab]]
            + p["w_concept"] * con[lab]
            + p["w_noise"] * noise
        )
        out[start : start + len(lab)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def shapes_images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    """(n, size, size, 3) uint8 ShapesWorld renders of random scenes."""
    from pairuni.shapes.render import render_scene
    from pairuni.shapes.scene import sample_scene

    rng = np.random.default_rng(seed)
    return np.stack([render_scene(sample_scene(rng, 1, 4), size) for _ in range(n)])


def shapes_features(n: int, extractor: str, seed: int = 0, batch: int = 1024) -> np.ndarray:
    """ShapesWorld renders through `pixels` (side 26) or `tiny-resnet` -> (n, d) float32."""
    import torch
    from PIL import Image

    from pairuni.pairing.features import PixelExtractor, l2_normalise

    images = shapes_images(n, seed)
    if extractor == "pixels":
        pix = PixelExtractor(26)
        return np.concatenate(
            [
                pix.embed([Image.fromarray(im) for im in images[s : s + batch]])
                for s in range(0, n, batch)
            ]
        )
    if extractor != "tiny-resnet":
        raise ValueError(f"unknown extractor {extractor!r}")
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.ResNetConfig(
        embedding_size=16,
        hidden_sizes=[32, 64, 128, 2048],
        depths=[1, 1, 1, 1],
        layer_type="bottleneck",
    )
    model = tf.ResNetModel(cfg).eval()
    out = []
    with torch.inference_mode():
        for s in range(0, n, batch):
            x = torch.from_numpy(images[s : s + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            out.append(model(pixel_values=x).pooler_output.flatten(1).numpy())
    return l2_normalise(np.concatenate(out))


def cosine_stats(feats: np.ndarray, n_und: int, delta: float, seed: int = 0) -> dict:
    """Share of generation x understanding pairs with cosine >= delta (2,000 sampled generation
    rows against every understanding row), percentiles of those cosines, and the median
    nearest-neighbour cosine (2,000 sampled rows against all others)."""
    rng = np.random.default_rng(seed)
    und, gen = feats[:n_und], feats[n_und:]
    rows = gen[rng.choice(len(gen), min(2000, len(gen)), replace=False)]
    sims = rows @ und.T
    pick = rng.choice(len(feats), min(2000, len(feats)), replace=False)
    nn = feats[pick] @ feats.T
    nn[np.arange(len(pick)), pick] = -np.inf
    return {
        "cross_pairs_ge_delta": float((sims >= delta).mean()),
        "cross_cosine_p5_p50_p95": [round(float(v), 4) for v in np.percentile(sims, [5, 50, 95])],
        "nearest_neighbour_median": float(np.median(nn.max(axis=1))),
        "negative_entries": float((feats < 0).mean()),
    }
