"""Image features for pairing: extractors by name, batched, L2-normalised, cached by image hash.

    extractor = make_extractor(cfg.pairing.features)
    feats = extract_features([r.image for r in records], extractor, cache_dir, batch_size=32)

Extractors (all outputs L2-normalised, float32):
- `resnet50`: transformers `ResNetModel`, the pooled penultimate features (2048-d for ResNet-50):
  the classification head removed, as in the paper.
- `dinov2`: `Dinov2Model` pooled output (the layer-normed CLS token).
- `clip`: `CLIPVisionModelWithProjection` image embeddings.
- `siglip`: `SiglipVisionModel` pooled output.
- `pixels` (no weights): the RGB image resized to side x side (bilinear), scaled to [0, 1],
  flattened to 3 side^2 values, minus its own mean, L2-normalised. A flat image (all values
  equal) maps to the zero vector, whose cosine with anything is 0.

The cache is one `.npz` shard per computed batch under `<cache_dir>/<extractor id>/`, holding the
image sha256 keys and their features; the extractor id is the name plus a hash of the model
directory (file names, sizes, and the first and last MiB of every file), so a changed model never
reuses stale features. A second run reads the shards and runs no forward pass.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pairuni.data.schema import ImageRef
from pairuni.pairing.config import FeaturesConfig

HF_EXTRACTORS = ("resnet50", "dinov2", "clip", "siglip")


class FeatureExtractor(Protocol):
    """Turns PIL images into L2-normalised feature rows."""

    cache_id: str
    forward_calls: int

    def embed(self, images: list[Any]) -> np.ndarray:
        """images: RGB PIL images -> (len(images), d) float32, rows of unit norm (or zero)."""
        ...


NORM_FLOOR = 1e-10
"""Rows with a smaller norm are rounding noise (e.g. a flat image minus its mean): set to 0."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm; (near-)zero rows become zero. x (n, d) -> (n, d) float32."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    safe = np.where(norms > NORM_FLOOR, norms, np.inf)
    return (x / safe).astype(np.float32)


class PixelExtractor:
    """Weight-free features: downsampled RGB, centred per image, L2-normalised."""

    def __init__(self, side: int = 16) -> None:
        self.side = side
        self.cache_id = f"pixels-{side}"
        self.forward_calls = 0

    def embed(self, images: list[Any]) -> np.ndarray:
        from PIL import Image

        self.forward_calls += 1
        rows = []
        for img in images:
            small = img.convert("RGB").resize((self.side, self.side), Image.Resampling.BILINEAR)
            flat = np.asarray(small, dtype=np.float64).reshape(-1) / 255.0
            rows.append(flat - flat.mean())
        return l2_normalise(np.stack(rows)) if rows else np.zeros((0, 3 * self.side**2), "f4")


class HFExtractor:
    """A transformers vision model + its image processor (PIL backend) from a local folder."""

    def __init__(self, name: str, model_dir: str, device: str = "cpu") -> None:
        import transformers
        from transformers import AutoImageProcessor

        classes = {
            "resnet50": "ResNetModel",
            "dinov2": "Dinov2Model",
            "clip": "CLIPVisionModelWithProjection",
            "siglip": "SiglipVisionModel",
        }
        folder = Path(model_dir)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"features.model_dir {folder} is not a directory; point it at a local "
                f"`save_pretrained` folder of a {classes[name]} (nothing is downloaded)"
            )
        self.name = name
        self.device = device
        self.processor = AutoImageProcessor.from_pretrained(str(folder), backend="pil")
        model_cls = getattr(transformers, classes[name])
        self.model = model_cls.from_pretrained(str(folder)).to(device).eval()
        self.cache_id = f"{name}-{model_dir_hash(folder)}"
        self.forward_calls = 0

    def embed(self, images: list[Any]) -> np.ndarray:
        import torch

        self.forward_calls += 1
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device)
        with torch.inference_mode():
            out = self.model(pixel_values=pixel_values)
        pooled = out.image_embeds if self.name == "clip" else out.pooler_output
        return l2_normalise(pooled.reshape(pooled.shape[0], -1).float().cpu().numpy())


def model_dir_hash(folder: Path, edge_bytes: int = 1 << 20) -> str:
    """A short content fingerprint of a model folder (names, sizes, first/last MiB of files)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder)}\0{size}\0".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(edge_bytes))
            if size > 2 * edge_bytes:
                fh.seek(-edge_bytes, os.SEEK_END)
                digest.update(fh.read(edge_bytes))
    return digest.hexdigest()[:16]


def make_extractor(cfg: FeaturesConfig) -> FeatureExtractor:
    """The extractor named by `cfg.extractor`."""
    if cfg.extractor == "pixels":
        return PixelExtractor(cfg.pixels_size)
    if cfg.model_dir is None:
        raise ValueError(
            f"pairing.features.extractor={cfg.extractor!r} needs pairing.features.model_dir (a "
            "local folder with the model and its image processor); or use extractor: pixels"
        )
    return HFExtractor(cfg.extractor, cfg.model_dir, cfg.device)


class FeatureCache:
    """Features by image sha256 for one extractor id, stored as append-only .npz shards."""

    def __init__(self, cache_dir: str | Path, cache_id: str) -> None:
        self.folder = Path(cache_dir) / cache_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.table: dict[str, np.ndarray] = {}
        for shard in sorted(self.folder.glob("*.npz")):
            with np.load(shard) as data:
                for key, row in zip(data["keys"], data["features"], strict=True):
                    self.table[str(key)] = row

    def add(self, keys: list[str], feats: np.ndarray) -> None:
        """Store a batch durably (temporary file, then an atomic rename)."""
        name = f"shard-{uuid.uuid4().hex}.npz"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=np.asarray(keys), features=feats.astype(np.float32))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.folder / name)
        self.table.update(zip(keys, feats, strict=True))


def extract_features(
    images: Sequence[ImageRef],
    extractor: FeatureExtractor,
    cache_dir: str | Path,
    *,
    batch_size: int = 32,
    base_dir: Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """(len(images), d) float32 features, computing only images missing from the cache."""
    hashes = [ref.sha256(base_dir) for ref in images]
    cache = FeatureCache(cache_dir, extractor.cache_id)
    first_ref: dict[str, ImageRef] = {}
    for digest, ref in zip(hashes, images, strict=True):
        if digest not in cache.table:
            first_ref.setdefault(digest, ref)
    todo = list(first_ref)
    starts = range(0, len(todo), batch_size)
    if progress and todo:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"features ({extractor.cache_id})", unit="batch")
    for start in starts:
        keys = todo[start : start + batch_size]
        pil = [first_ref[k].open(base_dir) for k in keys]
        cache.add(keys, extractor.embed(pil))
    if not hashes:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([cache.table[h] for h in hashes]).astype(np.float32)
