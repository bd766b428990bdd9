"""The Lumina-DiMOO checkpoint: released layout -> transformers Llama modules (bidirectional),
the VQ image tokenizer, the tiny checkpoint writer, save/load round trip and the errors.

The central test compares `DimooModel.logits` with an independent forward written here in
plain torch from the documented math, reading the safetensors by their released names."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pairuni.policy.dimoo.ids import DimooIds
from pairuni.policy.dimoo.model import (
    DimooCheckpointError,
    attention_bias,
    backend_of,
    crop_sizes,
    llama_to_released,
    load_dimoo,
    preprocess_image,
    released_to_llama,
)
from pairuni.policy.dimoo.tiny import SPECIAL_TOKENS, VOCAB_SIZE, build_tiny_vq, write_tiny_dimoo

PREFIX = "model.transformer."
INDEX = "model.safetensors.index.json"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dimoo(tmp_path_factory.mktemp("dimoo") / "tiny")


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tied head and 108 padding rows past vocab_size (the next multiple of 128)."""
    return write_tiny_dimoo(
        tmp_path_factory.mktemp("dimoo") / "tied",
        seed=1,
        weight_tying=True,
        embedding_size=134656,
        num_shards=1,
    )


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    return load_dimoo(tiny_dir)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded rows of lengths 9 and 5 with text, special and image-code ids."""
    ids = DimooIds()
    long = [126080, 40, 41, 126340, ids.mask, ids.image_offset + 7, ids.newline, ids.boi, 8000]
    short = [126080, 50, ids.mask, ids.image_offset + 8191, ids.eoi]
    input_ids = torch.full((2, len(long)), ids.answer_pad, dtype=torch.long)
    mask = torch.zeros((2, len(long)), dtype=torch.long)
    for b, row in enumerate((long, short)):
        input_ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return input_ids, mask


# ----------------------------------------------------------------------------- reference


def _released_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / INDEX
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    out: dict[str, torch.Tensor] = {}
    for file in files:
        out.update({k: v.float() for k, v in load_file(str(folder / file)).items()})
    return out


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotary(x: torch.Tensor, theta: float, interleaved: bool) -> torch.Tensor:
    """x (B, H, S, hd) rotated by position; rotate-half (LLaDA / Llama) over the full head
    dim, or the GPT-J interleaved pairing (a planted bug)."""
    head_dim, length = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None, :]
    if interleaved:
        angles = angles.repeat_interleave(2, dim=-1)
        pairs = x.reshape(*x.shape[:-1], head_dim // 2, 2)
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(x.shape)
    else:
        angles = torch.cat((angles, angles), dim=-1)
        first, second = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        rotated = torch.cat((-second, first), dim=-1)
    return x * angles.cos().float() + rotated * angles.sin().float()


def reference_logits(
    folder: Path,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    causal: bool = False,
    interleaved_rotary: bool = False,
    swap_gate_up: bool = False,
) -> torch.Tensor:
    """DiMOO's backbone from the documented math, float32. The keyword flags plant bugs."""
    config = json.loads((folder / "config.json").read_text())
    w = _released_weights(folder)
    d, heads, kv_heads = config["d_model"], config["n_heads"], config["n_kv_heads"]
    head_dim, eps, theta = d // heads, config["rms_norm_eps"], config["rope_theta"]
    batch, length = input_ids.shape
    x = w[PREFIX + "wte.weight"][input_ids]
    allowed = attention_mask.bool()[:, None, None, :].expand(batch, 1, length, length)
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool).tril()
    for i in range(config["n_layers"]):
        p = f"{PREFIX}blocks.{i}."
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "q_proj.weight"].T).view(batch, length, heads, head_dim).transpose(1, 2)
        k = (h @ w[p + "k_proj.weight"].T).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        v = (h @ w[p + "v_proj.weight"].T).view(batch, length, kv_heads, head_dim).transpose(1, 2)
        q, k = _rotary(q, theta, interleaved_rotary), _rotary(k, theta, interleaved_rotary)
        k = k.repeat_interleave(heads // kv_heads, dim=1)  # query head j reads kv head j // g
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        scores = (q @ k.transpose(-1, -2)) / head_dim**0.5
        scores = scores.masked_fill(~allowed, float("-inf"))
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, d)
        x = x + att @ w[p + "attn_out.weight"].T
        h = _rms(x, w[p + "ff_norm.weight"], eps)
        gate, up = h @ w[p + "ff_proj.weight"].T, h @ w[p + "up_proj.weight"].T
        if swap_gate_up:
            gate, up = up, gate
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "ff_out.weight"].T
    x = _rms(x, w[PREFIX + "ln_f.weight"], eps)
    head = w[PREFIX + "wte.weight"] if config["weight_tying"] else w[PREFIX + "ff_out.weight"]
    return x @ head.T


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest |a - b| over the real (mask 1) positions."""
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


# ----------------------------------------------------------------------------- (a) forward


def test_logits_equal_the_reference_forward(tiny, tiny_dir: Path) -> None:
    input_ids, mask = _batch()
    with torch.no_grad():
        ours = tiny.logits(input_ids, mask)
    ref = reference_logits(tiny_dir, input_ids, mask)
    assert ours.dtype == torch.float32 and ours.shape == (2, 9, VOCAB_SIZE)
    assert _max_diff(ours, ref, mask) < 1e-5
    assert torch.isfinite(ours).all()  # padding rows too
    assert ref[mask.bool()].std() > 0.3  # logits that vary: the comparison has teeth


def test_padding_does_not_change_real_positions(tiny, tiny_dir: Path) -> None:
    input_ids, mask = _batch()
    short = input_ids[1:, :5]
    with torch.no_grad():
        batched = tiny.logits(input_ids, mask)[1, :5]
        alone = tiny.logits(short, torch.ones_like(short))[0]
    ref_alone = reference_logits(tiny_dir, short, torch.ones_like(short))[0]
    assert (batched - alone).abs().max().item() < 1e-5
    assert (alone - ref_alone).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "bug", ["causal", "interleaved_rotary", "swap_gate_up"], ids=lambda bug: bug
)
def test_reference_comparison_catches_planted_bugs(tiny, tiny_dir: Path, bug: str) -> None:
    """Each planted bug moves the logits far beyond the 1e-5 tolerance, so a model with that
    bug fails `test_logits_equal_the_reference_forward`."""
    input_ids, mask = _batch()
    with torch.no_grad():
        ours = tiny.logits(input_ids, mask)
    buggy = reference_logits(tiny_dir, input_ids, mask, **{bug: True})
    assert _max_diff(ours, buggy, mask) > 1e-3


def test_attention_is_bidirectional_even_through_the_backbone(tiny) -> None:
    """The last token changes the logits of the first (no causal mask), also when the backbone
    is called directly with a 2-D mask or none."""
    input_ids, _ = _batch()
    row, ones = input_ids[:1], torch.ones_like(input_ids[:1])
    changed = row.clone()
    changed[0, -1] = 60
    with torch.no_grad():
        first = tiny.logits(row, ones)[0, 0]
        assert (first - tiny.logits(changed, ones)[0, 0]).abs().max() > 1e-3
        direct_2d = tiny.backbone(input_ids=row, attention_mask=ones).logits[0, 0]
        direct_none = tiny.backbone(input_ids=row).logits[0, 0]
    assert (first - direct_2d).abs().max() < 1e-5
    assert (first - direct_none).abs().max() < 1e-5


def test_positions_select_rows_of_the_full_logits(tiny) -> None:
    input_ids, mask = _batch()
    positions = torch.tensor([[4, 5, 8], [2, 3, 0]])
    with torch.no_grad():
        full = tiny.logits(input_ids, mask)
        picked = tiny.logits(input_ids, mask, positions=positions)
    expected = full.gather(1, positions[..., None].expand(-1, -1, full.shape[-1]))
    assert torch.allclose(picked, expected, atol=1e-6)


def test_attention_bias_is_zero_on_real_keys_and_min_on_padding() -> None:
    mask = torch.tensor([[1, 1, 0]])
    bias = attention_bias(mask, torch.float32)
    assert bias.shape == (1, 1, 3, 3)
    assert (bias[..., :2] == 0).all()
    assert (bias[..., 2] == torch.finfo(torch.float32).min).all()


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir: Path) -> None:
    input_ids, mask = _batch()

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = load_dimoo(tiny_dir)
        if checkpointing:
            model.backbone.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        model.backbone.train()
        logits = model.logits(input_ids, mask)
        logits[mask.bool()].logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in model.backbone.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], atol=1e-6), name
    assert plain["model.layers.0.mlp.gate_proj.weight"].abs().sum() > 0


def test_key_map_round_trips() -> None:
    for rest in ["wte.weight", "ln_f.weight", "ff_out.weight", "blocks.3.ff_proj.weight"]:
        assert llama_to_released(released_to_llama(PREFIX + rest)) == PREFIX + rest
    assert (
        released_to_llama(PREFIX + "blocks.1.ff_proj.weight")
        == "model.layers.1.mlp.gate_proj.weight"
    )
    assert (
        released_to_llama(PREFIX + "blocks.1.ff_out.weight")
        == "model.layers.1.mlp.down_proj.weight"
    )
    assert released_to_llama(PREFIX + "ff_out.weight") == "lm_head.weight"


# ----------------------------------------------------------------------------- tokenizer and ids


def test_tokenizer_holds_the_real_special_ids(tiny) -> None:
    assert tiny.ids == DimooIds()
    vocab = tiny.tokenizer.get_vocab()
    for token, token_id in SPECIAL_TOKENS.items():
        assert vocab[token] == token_id
        assert tiny.tokenizer.encode(token, add_special_tokens=False) == [token_id]
    text = "<system>Generate an image.</system><user><uncondition></user>"
    encoded = tiny.tokenizer.encode(text)
    assert encoded[0] == SPECIAL_TOKENS["<|startoftext|>"]  # BOS prepended, nothing appended
    assert tiny.ids.uncondition in encoded and encoded[-1] == SPECIAL_TOKENS["</user>"]
    assert (
        tiny.tokenizer.decode(tiny.tokenizer.encode("a red square", add_special_tokens=False))
        == "a red square"
    )


def test_a_text_to_image_layout_runs_through_the_model(tiny) -> None:
    from pairuni.policy.dimoo.sequence import text_to_image_layout

    layout = text_to_image_layout(tiny.tokenizer, ["a red square", "a blue circle"], 2, 3, tiny.ids)
    branch = layout.cond
    with torch.no_grad():
        logits = tiny.logits(branch.input_ids, branch.attention_mask, positions=branch.positions)
    assert logits.shape == (2, 6, VOCAB_SIZE) and torch.isfinite(logits).all()


# ----------------------------------------------------------------------------- (b) tying


def test_weight_tying_and_padding_rows(tied_dir: Path) -> None:
    with safe_open(str(tied_dir / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        assert handle.get_slice(PREFIX + "wte.weight").get_shape() == [134656, 32]
    assert PREFIX + "ff_out.weight" not in keys
    model = load_dimoo(tied_dir)
    assert model.arch.vocab_size == VOCAB_SIZE and model.vocab_size == 134656
    backbone = model.backbone
    assert backbone.lm_head.weight is backbone.model.embed_tokens.weight
    input_ids, mask = _batch()
    with torch.no_grad():
        ours = model.logits(input_ids, mask)
        assert ours.shape[-1] == 134656
        assert _max_diff(ours, reference_logits(tied_dir, input_ids, mask), mask) < 1e-5
        backbone.model.embed_tokens.weight[-1].add_(1.0)  # a padding row: the head row moves too
        assert (model.logits(input_ids, mask)[..., -1] - ours[..., -1]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- (c) round trip


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _keys(folder: Path) -> dict[str, tuple[str, list[int]]]:
    out = {}
    for file in folder.glob("model*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                sliced = handle.get_slice(key)
                out[key] = (sliced.get_dtype(), sliced.get_shape())
    return out


def test_save_then_load_is_identical(tiny_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(tiny_dir, source)
    (source / "modeling_llada.py").write_text("# remote code named in auto_map\n")
    model = load_dimoo(source, dtype=torch.bfloat16)
    with torch.no_grad():  # a "trained" weight: the change must survive the round trip
        model.backbone.model.layers[1].mlp.up_proj.weight.mul_(1.5)
    out = model.save(tmp_path / "saved")
    assert _tree(out) == _tree(source)
    assert _keys(out) == _keys(source)  # same names, dtypes (bf16) and shapes
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (source / "config.json").read_text()
    )
    index = json.loads((out / INDEX).read_text())
    assert index["weight_map"] == json.loads((source / INDEX).read_text())["weight_map"]
    again = load_dimoo(out, dtype=torch.bfloat16)
    input_ids, mask = _batch()
    with torch.no_grad():
        assert torch.equal(model.logits(input_ids, mask), again.logits(input_ids, mask))
    codes = torch.tensor([[[1, 2], [3, 8191]]])
    assert torch.equal(model.vq.decode_pixels(codes), again.vq.decode_pixels(codes))
    with pytest.raises(ValueError, match="loaded from"):
        again.save(out)


def test_save_with_one_shard(tiny, tmp_path: Path) -> None:
    out = tiny.save(tmp_path / "one", num_shards=1)
    assert (out / "model.safetensors").is_file() and not (out / INDEX).exists()
    again = load_dimoo(out)
    input_ids, mask = _batch()
    with torch.no_grad():
        assert torch.equal(tiny.logits(input_ids, mask), again.logits(input_ids, mask))


# ----------------------------------------------------------------------------- (d) VQ


def _noise_images(count: int, width: int, height: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for _ in range(count)
    ]


def test_vq_encode_decode_shapes_and_ranges(tiny) -> None:
    assert tiny.vq.downsample == 16 and tiny.vq.codebook_size == 8192
    images = _noise_images(2, 48, 32)  # 3 x 2 codes
    codes = tiny.vq.encode(images)
    assert codes.shape == (2, 2, 3) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < 8192
    assert len(set(codes.flatten().tolist())) > 1  # not a collapsed codebook
    pixels = tiny.vq.decode_pixels(codes)
    assert pixels.shape == (2, 3, 32, 48) and pixels.min() >= 0.0 and pixels.max() <= 1.0
    decoded = tiny.vq.decode(codes)
    assert [im.size for im in decoded] == [(48, 32), (48, 32)]
    assert all(im.mode == "RGB" for im in decoded)


def test_vq_rejects_bad_input(tiny) -> None:
    with pytest.raises(ValueError, match="multiple of the VQ downsampling 16"):
        tiny.vq.encode(_noise_images(1, 40, 32))
    with pytest.raises(ValueError, match="different sizes"):
        tiny.vq.encode([*_noise_images(1, 32, 32), *_noise_images(1, 48, 32)])
    with pytest.raises(ValueError, match="image_offset"):
        tiny.vq.decode(torch.tensor([[[126356]]]))


def test_preprocess_crops_like_dimoo() -> None:
    assert crop_sizes(64, 32) == [
        (128, 32),
        (96, 32),
        (64, 32),
        (64, 64),
        (32, 64),
        (32, 96),
        (32, 128),
    ]
    image = _noise_images(1, 300, 200)[0]
    assert preprocess_image(image, target_size=64).size == (64, 32)  # closest aspect to 3:2
    big = preprocess_image(_noise_images(1, 1000, 700)[0], target_size=512)
    assert big.size[0] % 32 == 0 and big.size[1] % 32 == 0
    assert big.size[0] * big.size[1] <= 512 * 512


# ----------------------------------------------------------------------------- (e) errors


def _copy(tiny_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, folder)
    return folder


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _shard_of(folder: Path, key: str) -> Path:
    return folder / json.loads((folder / INDEX).read_text())["weight_map"][key]


def _rewrite_shard(
    folder: Path, key: str, tensor: torch.Tensor | None, new_key: str | None
) -> None:
    """Drop `key` from its shard (tensor None), or add `new_key` = tensor beside it; keep the
    index in step."""
    shard = _shard_of(folder, key)
    tensors = load_file(str(shard))
    index = json.loads((folder / INDEX).read_text())
    if tensor is None:
        del tensors[key]
        del index["weight_map"][key]
    else:
        tensors[new_key] = tensor
        index["weight_map"][new_key] = shard.name
    save_file(tensors, str(shard), {"format": "pt"})
    (folder / INDEX).write_text(json.dumps(index))


def _expect(folder: Path, *fragments: str) -> None:
    with pytest.raises(DimooCheckpointError) as info:
        load_dimoo(folder)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_error_missing_config(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    (folder / "config.json").unlink()
    _expect(folder, "config.json", "tiny-model --backend dimoo")


def test_error_missing_weights(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    for file in folder.glob("model*"):
        file.unlink()
    _expect(folder, "model.safetensors", INDEX)


def test_error_missing_shard(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    (folder / "model-00002-of-00002.safetensors").unlink()
    _expect(folder, INDEX, "model-00002-of-00002.safetensors")


def test_error_missing_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    (folder / "tokenizer.json").unlink()
    _expect(folder, "tokenizer.json")


def test_error_missing_vqvae(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    shutil.rmtree(folder / "vqvae")
    _expect(folder, "vqvae", "VQModel")


def test_error_missing_key(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    key = PREFIX + "blocks.1.up_proj.weight"
    _rewrite_shard(folder, key, None, None)
    _expect(folder, INDEX, repr(key), "missing")


def test_error_key_in_index_but_not_in_shard(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    key = PREFIX + "blocks.0.q_proj.weight"
    shard = _shard_of(folder, key)
    tensors = load_file(str(shard))
    del tensors[key]
    save_file(tensors, str(shard), {"format": "pt"})
    _expect(folder, repr(key), shard.name, "does not hold it")


def test_error_extra_key(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    anchor = PREFIX + "blocks.0.q_proj.weight"
    extra = PREFIX + "blocks.0.extra.weight"
    _rewrite_shard(folder, anchor, torch.zeros(2), extra)
    _expect(folder, _shard_of(folder, anchor).name, repr(extra), "unexpected")


def test_error_untied_head_with_weight_tying_true(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    _edit_config(folder, weight_tying=True)
    _expect(folder, repr(PREFIX + "ff_out.weight"), "weight_tying false")


def test_error_shape_disagrees_with_config(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    _edit_config(folder, mlp_hidden_size=48)
    key = PREFIX + "blocks.0.ff_proj.weight"
    _expect(folder, _shard_of(folder, key).name, repr(key), "mlp_hidden_size", "(48, 32)")
    _edit_config(folder, mlp_hidden_size=64, n_kv_heads=4)
    _expect(folder, repr(PREFIX + "blocks.0.k_proj.weight"), "n_kv_heads")


def test_error_block_type(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    _edit_config(folder, block_type="sequential")
    _expect(folder, "config.json", "'block_type'", "'sequential'")


def test_error_biases(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    anchor = PREFIX + "blocks.0.q_proj.weight"
    bias = PREFIX + "blocks.0.q_proj.bias"
    _rewrite_shard(folder, anchor, torch.zeros(32), bias)
    _expect(folder, _shard_of(folder, anchor).name, repr(bias), "bias", "include_bias false")
    _edit_config(folder, include_bias=True)
    _expect(folder, "config.json", "'include_bias'")


def test_error_janus_checkpoint_names_the_janus_backend(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    _edit_config(folder, model_type="janus")
    _expect(folder, "config.json", "Janus backend")
    assert backend_of(folder) == "janus" and backend_of(tiny_dir) == "dimoo"


def test_error_other_model_type(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    _edit_config(folder, model_type="llama")
    _expect(folder, "config.json", "'model_type'", "'llama'")


def test_error_mask_id_disagrees_with_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    _edit_config(folder, mask_token_id=5)
    _expect(folder, "config.json", "'mask_token_id'", "tokenizer.json", "126336")


def test_error_codebook_size(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path)
    shutil.rmtree(folder / "vqvae")
    build_tiny_vq(0, levels=2, codebook_size=256).save_pretrained(str(folder / "vqvae"))
    _expect(folder, "vqvae/config.json", "'num_vq_embeddings'", "256")


def test_error_embedding_too_small_for_the_image_codes(tmp_path: Path) -> None:
    folder = write_tiny_dimoo(tmp_path / "small", vocab_size=1000, num_shards=1)
    _expect(folder, "config.json", "'embedding_size'", "134548")


# ----------------------------------------------------------------------------- (f) writer and CLI


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_tiny_writer_layout_and_determinism(tiny_dir: Path, tmp_path: Path) -> None:
    assert _tree(tiny_dir) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        INDEX,
        "tokenizer.json",
        "tokenizer_config.json",
        "vqvae/config.json",
        "vqvae/diffusion_pytorch_model.safetensors",
    ]
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "llada" and config["block_type"] == "llama"
    assert "AutoModel" in config["auto_map"] and config["mask_token_id"] == 126336
    assert all(key.startswith(PREFIX) for key in _keys(tiny_dir))
    assert sum(p.stat().st_size for p in tiny_dir.rglob("*") if p.is_file()) < 30e6
    assert _digest(write_tiny_dimoo(tmp_path / "again")) == _digest(tiny_dir)
    other = _digest(write_tiny_dimoo(tmp_path / "seed1", seed=1))
    assert (
        other["model-00001-of-00002.safetensors"]
        != _digest(tiny_dir)["model-00001-of-00002.safetensors"]
    )


def test_cli_tiny_model_dimoo(tiny_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pairuni.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["tiny-model", "--backend", "dimoo", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "Lumina-DiMOO" in result.output
    assert _digest(tmp_path / "cli") == _digest(tiny_dir)
    bad = runner.invoke(app, ["tiny-model", "--backend", "bagel", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "janus or dimoo" in bad.output


def test_the_janus_backend_names_the_dimoo_backend(tiny_dir: Path) -> None:
    from pairuni.policy.janus import CheckpointError, check_checkpoint_dir

    with pytest.raises(CheckpointError, match="DiMOO backend"):
        check_checkpoint_dir(tiny_dir)
