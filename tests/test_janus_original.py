"""DeepSeek's original Janus release -> the HF layout (`pairuni convert-janus`).

The original-layout checkpoint is written here from a tiny HF model by a hand-written inverse of
the key map (DeepSeek's module names as `modeling_vlm.py`, `siglip_vit.py` and `vq_model.py` make
them, fused qkv, a batch axis on `pos_embed`, the pooling head and codebook counter the map
drops, `.bin` shards with their index, DeepSeek's config, processor and tokenizer files).
Converting it back must give the very tensors, logits, image decodes and processor outputs of
the model it was made from; bad input must name the file and the key."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from janus_helpers import images, load
from pairuni.cli import app
from pairuni.policy.janus import CheckpointError, JanusPolicy
from pairuni.policy.janus_original import (
    convert_original_janus,
    is_original_release,
    map_key,
    original_name,
)
from pairuni.policy.tiny import build_tiny_janus

TOWER = "vision_model.vision_tower"
SHARDS = ("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin")

# ----------------------------------------------------------------------------- the fixtures


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint, made more like Janus-Pro: the output head untied from the input
    embeddings, and VQ levels of different widths (so the res blocks have `nin_shortcut`)."""
    from transformers import JanusConfig, JanusForConditionalGeneration

    torch.set_num_threads(2)
    root = build_tiny_janus(tmp_path_factory.mktemp("hf") / "janus")
    config = JanusConfig.from_pretrained(root)
    config.tie_word_embeddings = False
    config.vq_config.channel_multiplier = [1, 2, 2]
    torch.manual_seed(1)
    model = JanusForConditionalGeneration(config)
    model.generation_config = JanusForConditionalGeneration.from_pretrained(root).generation_config
    (root / "model.safetensors").unlink()
    model.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def original_dir(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_original_release(hf_dir, tmp_path_factory.mktemp("original") / "Janus-Pro-tiny")


@pytest.fixture(scope="module")
def converted_dir(original_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "Janus-Pro-tiny-hf"
    convert_original_janus(original_dir, out)
    return out


# ----------------------------------------------------------------------------- the inverse map


def deepseek_name(hf_key: str) -> str:
    """transformers' name -> DeepSeek's, written from DeepSeek's module tree (not from KEY_MAP)."""
    if hf_key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if hf_key.startswith("model.language_model."):
        return "language_model.model." + hf_key.removeprefix("model.language_model.")
    if hf_key.startswith("model.vision_model."):
        return _tower_name(hf_key.removeprefix("model.vision_model."))
    for hf, ours in (("model.aligner.", "aligner."), ("model.generation_aligner.", "gen_aligner.")):
        if hf_key.startswith(hf):
            rest = hf_key.removeprefix(hf)
            if rest.startswith("fc1."):
                return f"{ours}layers.0.{rest.removeprefix('fc1.')}"
            k, tail = re.fullmatch(r"hidden_layers\.(\d+)\.(.+)", rest).groups()
            return f"{ours}layers.{2 * int(k) + 2}.{tail}"  # Linear, GELU, Linear, ...
    if hf_key == "model.generation_embeddings.weight":
        return "gen_embed.weight"
    if hf_key.startswith("model.generation_head."):
        rest = hf_key.removeprefix("model.generation_head.")
        return "gen_head." + rest.replace("proj_out.", "output_mlp_projector.")
    if hf_key.startswith("model.vqmodel."):
        name = "gen_vision_model." + hf_key.removeprefix("model.vqmodel.")
        name = re.sub(r"\.(down|up)\.(\d+)\.block\.", r".conv_blocks.\2.res.", name)
        name = re.sub(r"\.(down|up)\.(\d+)\.", r".conv_blocks.\2.", name)
        for hf, ours in (("block_1", "0"), ("attn_1", "1"), ("block_2", "2")):
            name = name.replace(f".mid.{hf}.", f".mid.{ours}.")
        return name
    raise AssertionError(f"no DeepSeek name for {hf_key}")


def _tower_name(rest: str) -> str:
    fixed = {
        "embeddings.patch_embedding.weight": f"{TOWER}.patch_embed.proj.weight",
        "embeddings.patch_embedding.bias": f"{TOWER}.patch_embed.proj.bias",
        "embeddings.position_embedding.weight": f"{TOWER}.pos_embed",
        "post_layernorm.weight": f"{TOWER}.norm.weight",
        "post_layernorm.bias": f"{TOWER}.norm.bias",
    }
    if rest in fixed:
        return fixed[rest]
    layer, sub = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", rest).groups()
    for hf, ours in (
        ("layer_norm1.", "norm1."),
        ("layer_norm2.", "norm2."),
        ("self_attn.projection_layer.", "attn.proj."),
        ("self_attn.q_proj.", "attn.qkv."),
        ("mlp.", "mlp."),
    ):
        if sub.startswith(hf):
            return f"{TOWER}.blocks.{layer}.{ours}{sub.removeprefix(hf)}"
    raise AssertionError(f"no DeepSeek name for vision {rest}")


def deepseek_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tiny model's tensors under DeepSeek's names, with DeepSeek's layouts and extras."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in hf.items():
        if re.search(r"vision_model\..*self_attn\.[kv]_proj\.", key):
            continue  # fused into qkv with the q rows
        if re.search(r"vision_model\..*self_attn\.q_proj\.", key):
            parts = [hf[key.replace(".q_proj.", f".{p}_proj.")] for p in "qkv"]
            tensor = torch.cat(parts)
        elif key.endswith("position_embedding.weight"):
            tensor = tensor[None]  # DeepSeek keeps a batch axis
        out[deepseek_name(key)] = tensor.clone()
    width = hf["model.vision_model.post_layernorm.weight"].shape[0]
    for name, shape in (  # SigLIP's attention-pooling head: in the release, unused by Janus
        ("latent", (1, 1, width)),
        ("q.weight", (width, width)),
        ("kv.weight", (2 * width, width)),
        ("proj.weight", (width, width)),
        ("norm.weight", (width,)),
        ("mlp.fc1.weight", (2 * width, width)),
    ):
        out[f"{TOWER}.attn_pool.{name}"] = torch.randn(shape)
    out["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)
    return out


def write_original_release(hf_dir: Path, out: Path) -> Path:
    """`hf_dir` (a tiny HF Janus) in DeepSeek's layout: config, two `.bin` shards + index,
    VLChatProcessor's configs, tokenizer files."""
    from transformers import JanusConfig

    out.mkdir(parents=True)
    config = JanusConfig.from_pretrained(hf_dir)
    state = deepseek_state_dict(load_file(hf_dir / "model.safetensors"))
    if "language_model.lm_head.weight" not in state:  # a tied head: the .bin stores both
        state["language_model.lm_head.weight"] = state["language_model.model.embed_tokens.weight"]
    keys = sorted(state)
    halves = (keys[: len(keys) // 2], keys[len(keys) // 2 :])
    for name, part in zip(SHARDS, halves, strict=True):
        torch.save({k: state[k] for k in part}, out / name)
    weight_map = {k: name for name, part in zip(SHARDS, halves, strict=True) for k in part}
    _write(out / "pytorch_model.bin.index.json", {"metadata": {}, "weight_map": weight_map})
    _write(out / "config.json", deepseek_config(config))
    processor = json.loads((hf_dir / "processor_config.json").read_text())
    pixels = processor["image_processor"]
    _write(
        out / "preprocessor_config.json",
        {
            "background_color": pixels["background_color"],
            "do_normalize": True,
            "image_mean": pixels["image_mean"],
            "image_processor_type": "VLMImageProcessor",
            "image_size": config.vision_config.image_size,
            "image_std": pixels["image_std"],
            "min_size": 14,
            "processor_class": "VLChatProcessor",
            "rescale_factor": 1 / 255,
        },
    )
    _write(
        out / "processor_config.json",
        {
            "add_special_token": False,
            "ignore_id": -100,
            "image_tag": "<image_placeholder>",
            "mask_prompt": True,
            "num_image_tokens": config.vision_config.num_image_tokens,
            "processor_class": "VLChatProcessor",
            "sft_format": "deepseek",
        },
    )
    shutil.copy(hf_dir / "tokenizer.json", out / "tokenizer.json")
    hf_tokenizer = json.loads((hf_dir / "tokenizer_config.json").read_text())
    special = {k: hf_tokenizer[k] for k in ("bos_token", "eos_token", "pad_token")}
    _write(
        out / "tokenizer_config.json",
        {**special, "model_max_length": 16384, "tokenizer_class": "LlamaTokenizerFast"},
    )
    _write(
        out / "special_tokens_map.json",
        {**special, "additional_special_tokens": ["<image_placeholder>"]},
    )
    return out


def deepseek_config(config: object) -> dict[str, object]:
    """DeepSeek's config.json for the tiny model: the six sub-configs of MultiModalityConfig."""
    text, vision, vq = config.text_config, config.vision_config, config.vq_config

    def projector(input_dim: int, depth: int) -> dict[str, object]:
        return {
            "depth": depth,
            "input_dim": input_dim,
            "n_embed": text.hidden_size,
            "projector_type": "mlp_gelu",
        }

    return {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "torch_dtype": "float32",
        "language_config": {
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "max_position_embeddings": text.max_position_embeddings,
            "model_type": "llama",
            "num_attention_heads": text.num_attention_heads,
            "num_hidden_layers": text.num_hidden_layers,
            "num_key_value_heads": text.num_key_value_heads,
            "torch_dtype": "float32",
            "vocab_size": text.vocab_size,
        },
        "vision_config": {
            "cls": "CLIPVisionTower",
            "model_type": "vision",
            # a tower siglip_vit does not know by name: its head count comes with it
            "params": {
                "image_size": vision.image_size,
                "model_name": "siglip_tiny",
                "select_feature": "same",
                "select_layer": -1,
                "heads": vision.num_attention_heads,
            },
        },
        "aligner_config": {
            "cls": "MlpProjector",
            "model_type": "aligner",
            "params": projector(vision.hidden_size, vision.depth),
        },
        "gen_vision_config": {
            "cls": "VQ-16",
            "model_type": "gen_vision",
            "params": {"image_token_size": vq.num_embeddings, "n_embed": vq.embed_dim},
        },
        "gen_aligner_config": {
            "cls": "MlpProjector",
            "model_type": "gen_aligner",
            "params": projector(vq.embed_dim, vq.num_hidden_layers),
        },
        "gen_head_config": {
            "cls": "vision_head",
            "model_type": "gen_head",
            "params": {
                "image_token_embed": text.hidden_size,
                "image_token_size": vq.num_embeddings,
                "n_embed": text.hidden_size,
            },
        },
    }


def _write(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def copy_release(original_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "release"
    shutil.copytree(original_dir, out)
    return out


# ----------------------------------------------------------------------------- the key map


DEEPSEEK_TO_HF = {  # literal names of DeepSeek's module tree and of transformers' Janus
    "language_model.lm_head.weight": ["lm_head.weight"],
    "language_model.model.layers.1.self_attn.o_proj.weight": [
        "model.language_model.layers.1.self_attn.o_proj.weight"
    ],
    "vision_model.vision_tower.blocks.0.attn.qkv.bias": [
        "model.vision_model.encoder.layers.0.self_attn.q_proj.bias",
        "model.vision_model.encoder.layers.0.self_attn.k_proj.bias",
        "model.vision_model.encoder.layers.0.self_attn.v_proj.bias",
    ],
    "vision_model.vision_tower.blocks.3.norm2.weight": [
        "model.vision_model.encoder.layers.3.layer_norm2.weight"
    ],
    "vision_model.vision_tower.blocks.0.attn.proj.weight": [
        "model.vision_model.encoder.layers.0.self_attn.projection_layer.weight"
    ],
    "vision_model.vision_tower.pos_embed": [
        "model.vision_model.embeddings.position_embedding.weight"
    ],
    "vision_model.vision_tower.norm.bias": ["model.vision_model.post_layernorm.bias"],
    "aligner.layers.2.weight": ["model.aligner.hidden_layers.0.weight"],
    "gen_aligner.layers.0.bias": ["model.generation_aligner.fc1.bias"],
    "gen_head.output_mlp_projector.weight": ["model.generation_head.proj_out.weight"],
    "gen_embed.weight": ["model.generation_embeddings.weight"],
    "gen_vision_model.decoder.conv_blocks.0.res.2.nin_shortcut.weight": [
        "model.vqmodel.decoder.up.0.block.2.nin_shortcut.weight"
    ],
    "gen_vision_model.decoder.conv_blocks.0.attn.1.proj_out.weight": [
        "model.vqmodel.decoder.up.0.attn.1.proj_out.weight"
    ],
    "gen_vision_model.encoder.conv_blocks.1.downsample.conv.weight": [
        "model.vqmodel.encoder.down.1.downsample.conv.weight"
    ],
    "gen_vision_model.encoder.mid.1.q.weight": ["model.vqmodel.encoder.mid.attn_1.q.weight"],
    "gen_vision_model.decoder.mid.2.norm1.bias": ["model.vqmodel.decoder.mid.block_2.norm1.bias"],
    "gen_vision_model.quantize.embedding.weight": ["model.vqmodel.quantize.embedding.weight"],
    "gen_vision_model.post_quant_conv.weight": ["model.vqmodel.post_quant_conv.weight"],
}


def test_key_map_on_literal_names_both_ways() -> None:
    for deepseek, hf in DEEPSEEK_TO_HF.items():
        found = map_key(deepseek)
        assert found is not None, deepseek
        assert found[1] == hf, deepseek
        assert all(original_name(name) == deepseek for name in hf)
    assert map_key("vision_model.vision_tower.attn_pool.kv.weight") is None  # dropped, not mapped


def test_the_tiny_release_has_deepseek_names(original_dir: Path) -> None:
    index = json.loads((original_dir / "pytorch_model.bin.index.json").read_text())
    names = set(index["weight_map"])
    expected = [k for k in DEEPSEEK_TO_HF if not re.search(r"blocks\.3|layers\.1\.self|res\.2", k)]
    assert set(expected) <= names
    assert "gen_vision_model.decoder.conv_blocks.2.res.0.nin_shortcut.weight" in names
    shard = torch.load(original_dir / SHARDS[1], weights_only=True)
    assert shard[f"{TOWER}.pos_embed"].shape == (1, 16, 32)
    assert shard[f"{TOWER}.blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert is_original_release(original_dir)


# ----------------------------------------------------------------------------- equivalence


def test_converted_tensors_equal_the_source_model(hf_dir: Path, converted_dir: Path) -> None:
    source = load_file(hf_dir / "model.safetensors")
    converted = load_file(converted_dir / "model.safetensors")
    assert converted.keys() == source.keys()
    assert all(torch.equal(converted[k], source[k]) for k in source)
    config = json.loads((converted_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is False  # Janus-Pro's head is its own
    assert config["vq_config"]["channel_multiplier"] == [1, 2, 2]
    assert config["vision_config"]["num_attention_heads"] == 2


def test_converted_model_gives_identical_logits_and_decodes(
    hf_dir: Path, converted_dir: Path
) -> None:
    from transformers import JanusForConditionalGeneration

    ours, theirs = (
        JanusForConditionalGeneration.from_pretrained(d).eval() for d in (converted_dir, hf_dir)
    )
    reference = load(hf_dir)
    batch = reference.encode_understanding(images(), ["what is it?", "how many shapes?"])
    codes = torch.randint(
        0, 256, (2, reference.num_image_tokens), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        for model in (ours, theirs):
            out = model(**batch, output_hidden_states=False)
            gen_in = model.prepare_embeddings_for_image_generation(codes)
            hidden = model.model.language_model(inputs_embeds=gen_in).last_hidden_state
            model.results = (
                out.logits,
                model.model.generation_head(hidden),
                model.decode_image_tokens(codes),
            )
    for mine, reference_tensor in zip(ours.results, theirs.results, strict=True):
        assert torch.equal(mine, reference_tensor)
    assert ours.results[0].abs().sum() > 0  # the logits are not trivially equal


def test_converted_checkpoint_loads_as_the_same_policy(hf_dir: Path, converted_dir: Path) -> None:
    ours, theirs = load(converted_dir), load(hf_dir)
    assert ours.ids == theirs.ids
    questions = ["what colour is it?", "where is the circle?"]
    a = ours.encode_understanding(images(), questions)
    b = theirs.encode_understanding(images(), questions)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert torch.equal(
        ours.encode_generation(["a red square"])["input_ids"],
        theirs.encode_generation(["a red square"])["input_ids"],
    )
    text_a = ours.rollout_text(images()[:1], questions[:1], greedy=True)
    text_b = theirs.rollout_text(images()[:1], questions[:1], greedy=True)
    assert text_a.texts == text_b.texts
    assert ours.processor.use_default_system_prompt  # Janus-Pro's understanding default


def test_a_head_equal_to_the_embeddings_is_stored_tied(tiny_dir: Path, tmp_path: Path) -> None:
    release = write_original_release(tiny_dir, tmp_path / "release")  # the .bin has both
    result = convert_original_janus(release, tmp_path / "out")
    assert result.tied_embeddings
    source = load_file(tiny_dir / "model.safetensors")
    converted = load_file(tmp_path / "out" / "model.safetensors")
    assert "lm_head.weight" not in converted
    assert converted.keys() == source.keys()
    assert all(torch.equal(converted[k], source[k]) for k in source)


def test_a_missing_bos_in_tokenizer_json_is_prepended(original_dir: Path, tmp_path: Path) -> None:
    release = copy_release(original_dir, tmp_path)
    tokenizer = json.loads((release / "tokenizer.json").read_text())
    tokenizer["post_processor"] = None  # the Llama tokenizer class adds BOS itself
    _write(release / "tokenizer.json", tokenizer)
    convert_original_janus(release, tmp_path / "out")
    policy = load(tmp_path / "out")
    ids = policy.processor.tokenizer("hello")["input_ids"]
    assert ids[0] == policy.ids.bos and ids.count(policy.ids.bos) == 1


def test_large_checkpoints_are_sharded(original_dir: Path, hf_dir: Path, tmp_path: Path) -> None:
    result = convert_original_janus(original_dir, tmp_path / "out", max_shard_bytes=400_000)
    assert len(result.weight_files) > 1
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(result.weight_files)
    source = load_file(hf_dir / "model.safetensors")
    assert set(index["weight_map"]) == set(source)
    JanusPolicy.load(tmp_path / "out")


# ----------------------------------------------------------------------------- errors


def test_policy_load_names_the_convert_command(original_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="multi_modality") as err:
        JanusPolicy.load(original_dir)
    assert f"pairuni convert-janus {original_dir} {original_dir}-hf" in str(err.value)


def _edit_shard(release: Path, shard: str, edit: object) -> None:
    path = release / shard
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def test_a_missing_key_names_the_files_and_the_key(original_dir: Path, tmp_path: Path) -> None:
    release = copy_release(original_dir, tmp_path)
    index = json.loads((release / "pytorch_model.bin.index.json").read_text())
    key = "gen_head.vision_head.weight"
    shard = index["weight_map"].pop(key)
    _write(release / "pytorch_model.bin.index.json", index)
    _edit_shard(release, shard, lambda state: state.pop(key))
    with pytest.raises(CheckpointError, match=re.escape(key)) as err:
        convert_original_janus(release, tmp_path / "out")
    assert SHARDS[0] in str(err.value) and "model.generation_head.vision_head.weight" in str(
        err.value
    )
    assert not (tmp_path / "out").exists()  # nothing written before everything is checked


def test_a_key_the_index_lists_but_its_shard_lacks(original_dir: Path, tmp_path: Path) -> None:
    release = copy_release(original_dir, tmp_path)
    index = json.loads((release / "pytorch_model.bin.index.json").read_text())
    key = "gen_embed.weight"
    shard = index["weight_map"][key]
    _edit_shard(release, shard, lambda state: state.pop(key))
    with pytest.raises(CheckpointError, match=f"{re.escape(shard)}: {re.escape(key)}"):
        convert_original_janus(release, tmp_path / "out")


def test_a_wrong_shape_names_the_file_and_the_key(original_dir: Path, tmp_path: Path) -> None:
    release = copy_release(original_dir, tmp_path)
    index = json.loads((release / "pytorch_model.bin.index.json").read_text())
    key = "gen_head.vision_head.weight"
    shard = index["weight_map"][key]
    _edit_shard(release, shard, lambda state: state.update({key: state[key][:-1]}))
    with pytest.raises(CheckpointError, match=f"{re.escape(shard)}: {re.escape(key)}") as err:
        convert_original_janus(release, tmp_path / "out")
    assert "(255, 64)" in str(err.value) and "(256, 64)" in str(err.value)


def test_a_qkv_that_does_not_split_in_three(original_dir: Path, tmp_path: Path) -> None:
    release = copy_release(original_dir, tmp_path)
    index = json.loads((release / "pytorch_model.bin.index.json").read_text())
    key = f"{TOWER}.blocks.0.attn.qkv.weight"
    shard = index["weight_map"][key]
    _edit_shard(release, shard, lambda state: state.update({key: state[key][:-1]}))
    with pytest.raises(CheckpointError, match=f"{re.escape(shard)}: {re.escape(key)}.*q, k, v"):
        convert_original_janus(release, tmp_path / "out")


def test_an_unknown_key_and_a_missing_shard(original_dir: Path, tmp_path: Path) -> None:
    release = copy_release(original_dir, tmp_path)
    _edit_shard(release, SHARDS[0], lambda state: state.update({"flow_head.w": torch.ones(1)}))
    with pytest.raises(CheckpointError, match=f"{re.escape(SHARDS[0])}: flow_head.w"):
        convert_original_janus(release, tmp_path / "out")
    (release / SHARDS[1]).unlink()
    with pytest.raises(CheckpointError, match=f"lists {re.escape(SHARDS[1])}, missing"):
        convert_original_janus(release, tmp_path / "out")


def test_a_tower_without_a_known_name_needs_its_heads(original_dir: Path, tmp_path: Path) -> None:
    release = copy_release(original_dir, tmp_path)
    config = json.loads((release / "config.json").read_text())
    del config["vision_config"]["params"]["heads"]
    _write(release / "config.json", config)
    with pytest.raises(CheckpointError, match=r"vision_config\.params\.heads"):
        convert_original_janus(release, tmp_path / "out")


def test_an_existing_destination_is_not_overwritten(original_dir: Path, hf_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        convert_original_janus(original_dir, hf_dir)


# ----------------------------------------------------------------------------- the command


def test_convert_janus_command(original_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "converted"
    result = runner.invoke(app, ["convert-janus", str(original_dir), str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    JanusPolicy.load(out)
    again = runner.invoke(app, ["convert-janus", str(original_dir), str(out)])
    assert again.exit_code != 0 and "already holds a checkpoint" in again.output


def test_another_model_type_is_named(tmp_path: Path) -> None:
    from pairuni.policy.janus import check_checkpoint_dir

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llada"}))
    with pytest.raises(CheckpointError, match=r"config\.json says model_type='llada'"):
        check_checkpoint_dir(tmp_path)
