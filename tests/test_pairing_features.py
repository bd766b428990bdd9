"""Image feature extractors (tiny random models of each family, saved and reloaded from a
folder), normalisation, and the on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pairuni.data.schema import ImageRef
from pairuni.pairing.config import FeaturesConfig
from pairuni.pairing.features import (
    PixelExtractor,
    extract_features,
    l2_normalise,
    make_extractor,
)


def solid_and_noise(tmp_path, count: int = 5) -> list[ImageRef]:
    rng = np.random.default_rng(0)
    refs = []
    for i in range(count):
        arr = rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(path)
        refs.append(ImageRef(path=str(path)))
    return refs


def test_pixels_matches_hand_computation():
    img = Image.fromarray(np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 10)
    got = PixelExtractor(side=2).embed([img])[0]
    flat = np.arange(12, dtype=np.float64) * 10 / 255.0  # already 2x2: resize is the identity
    centred = flat - flat.mean()
    np.testing.assert_allclose(got, centred / np.sqrt((centred**2).sum()), atol=1e-6)


def test_flat_image_gives_zero_vector_and_l2_normalise_keeps_zero_rows():
    got = PixelExtractor(side=4).embed([Image.new("RGB", (9, 9), (7, 7, 7))])
    assert got.shape == (1, 48) and not got.any()
    x = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]])


def test_cache_second_run_makes_no_forward_call(tmp_path):
    refs = solid_and_noise(tmp_path)
    refs.append(refs[0])  # the same image twice is computed once
    first = PixelExtractor(side=8)
    a = extract_features(refs, first, tmp_path / "cache", batch_size=2, progress=False)
    assert first.forward_calls == 3  # 5 distinct images in batches of 2
    again = PixelExtractor(side=8)
    b = extract_features(refs, again, tmp_path / "cache", batch_size=2, progress=False)
    assert again.forward_calls == 0
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], a[-1])
    other = PixelExtractor(side=4)  # another extractor id never reads these shards
    extract_features(refs, other, tmp_path / "cache", batch_size=2, progress=False)
    assert other.forward_calls == 3


def test_hf_extractor_needs_a_model_dir():
    with pytest.raises(ValueError, match="model_dir"):
        make_extractor(FeaturesConfig(extractor="resnet50"))


def _save_tiny(kind: str, folder) -> int:
    """Save a tiny random model of the family plus its PIL image processor; return its dim."""
    import transformers as tf

    if kind == "resnet50":
        cfg = tf.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck"
        )
        model, proc, dim = (
            tf.ResNetModel(cfg),
            tf.ConvNextImageProcessorPil(size={"shortest_edge": 32}),
            16,
        )
    elif kind == "dinov2":
        cfg = tf.Dinov2Config(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=28,
            patch_size=14,
        )
        model = tf.Dinov2Model(cfg)
        proc = tf.BitImageProcessorPil(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        )
        dim = 16
    elif kind == "clip":
        cfg = tf.CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=12,
        )
        model = tf.CLIPVisionModelWithProjection(cfg)
        proc = tf.CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
        dim = 12
    else:
        cfg = tf.SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
        model = tf.SiglipVisionModel(cfg)
        proc = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
        dim = 16
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return dim


@pytest.mark.parametrize("kind", ["resnet50", "dinov2", "clip", "siglip"])
def test_tiny_hf_models_give_normalised_features_and_cache(kind, tmp_path):
    dim = _save_tiny(kind, tmp_path / "model")
    refs = solid_and_noise(tmp_path, count=3)
    cfg = FeaturesConfig(extractor=kind, model_dir=str(tmp_path / "model"))
    extractor = make_extractor(cfg)
    feats = extract_features(refs, extractor, tmp_path / "cache", batch_size=2, progress=False)
    assert feats.shape == (3, dim) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert extractor.forward_calls == 2
    # the same folder again: same id, all cached
    again = make_extractor(cfg)
    assert again.cache_id == extractor.cache_id
    np.testing.assert_array_equal(
        extract_features(refs, again, tmp_path / "cache", progress=False), feats
    )
    assert again.forward_calls == 0
