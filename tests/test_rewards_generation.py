"""CLIP score and HPS v2.1 on tiny random models; the open_clip -> CLIPModel mapping is checked
against a naive re-implementation of open_clip's forward pass written here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pairuni.rewards.base import RewardError, build_reward
from pairuni.rewards.generation import (
    CLIP_MEAN,
    CLIP_STD,
    ClipScore,
    HpsV21,
    clip_config_from_open_clip,
    clip_from_open_clip,
    hps_pixels,
    open_clip_to_transformers,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Tiny open_clip ViT: vision width 32 (4 heads), 2 blocks, 16 px images in 4 px patches;
# text width 24 (2 heads), 2 blocks, context 12, vocab 54 (the tokenizer below), embed 16.
TINY = {"vw": 32, "vh": 4, "vl": 2, "patch": 4, "image": 16, "tw": 24, "th": 2, "tl": 2}
TINY |= {"vocab": 54, "context": 12, "embed": 16}


def tiny_tokenizer_dir(path: Path) -> Path:
    """A CLIP tokenizer over single letters; EOS is the last id (53), as in open_clip."""
    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate(LETTERS)}
    vocab |= {c + "</w>": len(LETTERS) + i for i, c in enumerate(LETTERS)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    return path


def block_tensors(prefix: str, width: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    return {
        f"{prefix}ln_1.weight": 1 + rand(width),
        f"{prefix}ln_1.bias": rand(width),
        f"{prefix}attn.in_proj_weight": rand(3 * width, width),
        f"{prefix}attn.in_proj_bias": rand(3 * width),
        f"{prefix}attn.out_proj.weight": rand(width, width),
        f"{prefix}attn.out_proj.bias": rand(width),
        f"{prefix}ln_2.weight": 1 + rand(width),
        f"{prefix}ln_2.bias": rand(width),
        f"{prefix}mlp.c_fc.weight": rand(4 * width, width),
        f"{prefix}mlp.c_fc.bias": rand(4 * width),
        f"{prefix}mlp.c_proj.weight": rand(width, 4 * width),
        f"{prefix}mlp.c_proj.bias": rand(width),
    }


def tiny_open_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with open_clip's key names (the layout of HPS_v2.1_compressed.pt)."""
    gen = torch.Generator().manual_seed(seed)
    t = TINY
    grid = t["image"] // t["patch"]
    state = {
        "visual.class_embedding": torch.randn(t["vw"], generator=gen) * 0.5,
        "visual.positional_embedding": torch.randn(grid * grid + 1, t["vw"], generator=gen) * 0.5,
        "visual.conv1.weight": torch.randn(t["vw"], 3, t["patch"], t["patch"], generator=gen) * 0.2,
        "visual.ln_pre.weight": 1 + torch.randn(t["vw"], generator=gen) * 0.1,
        "visual.ln_pre.bias": torch.randn(t["vw"], generator=gen) * 0.1,
        "visual.ln_post.weight": 1 + torch.randn(t["vw"], generator=gen) * 0.1,
        "visual.ln_post.bias": torch.randn(t["vw"], generator=gen) * 0.1,
        "visual.proj": torch.randn(t["vw"], t["embed"], generator=gen) * 0.2,
        "token_embedding.weight": torch.randn(t["vocab"], t["tw"], generator=gen) * 0.5,
        "positional_embedding": torch.randn(t["context"], t["tw"], generator=gen) * 0.5,
        "ln_final.weight": 1 + torch.randn(t["tw"], generator=gen) * 0.1,
        "ln_final.bias": torch.randn(t["tw"], generator=gen) * 0.1,
        "text_projection": torch.randn(t["tw"], t["embed"], generator=gen) * 0.2,
        "logit_scale": torch.tensor(math.log(100.0)),
    }
    for i in range(t["vl"]):
        state |= block_tensors(f"visual.transformer.resblocks.{i}.", t["vw"], gen)
    for i in range(t["tl"]):
        state |= block_tensors(f"transformer.resblocks.{i}.", t["tw"], gen)
    return state


# ------------------------------------------------------- a naive open_clip forward, for reference


def ref_block(x: torch.Tensor, s: dict, p: str, heads: int, causal: bool) -> torch.Tensor:
    """Pre-LN residual block: x + attn(ln_1(x)); x + mlp(ln_2(x)). x: (B, L, W)."""
    batch, length, width = x.shape
    h = F.layer_norm(x, (width,), s[p + "ln_1.weight"], s[p + "ln_1.bias"], eps=1e-5)
    qkv = h @ s[p + "attn.in_proj_weight"].T + s[p + "attn.in_proj_bias"]
    q, k, v = (z.reshape(batch, length, heads, -1).transpose(1, 2) for z in qkv.split(width, -1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
    if causal:
        future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))
    attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width)
    x = x + attended @ s[p + "attn.out_proj.weight"].T + s[p + "attn.out_proj.bias"]
    h = F.layer_norm(x, (width,), s[p + "ln_2.weight"], s[p + "ln_2.bias"], eps=1e-5)
    h = F.gelu(h @ s[p + "mlp.c_fc.weight"].T + s[p + "mlp.c_fc.bias"])
    return x + h @ s[p + "mlp.c_proj.weight"].T + s[p + "mlp.c_proj.bias"]


def ref_encode_image(s: dict, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, embed): patches + class token + positions, ln_pre, blocks, ln_post."""
    patches = F.conv2d(pixels, s["visual.conv1.weight"], stride=TINY["patch"])
    x = patches.flatten(2).transpose(1, 2)
    cls = s["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + s["visual.positional_embedding"]
    x = F.layer_norm(x, (TINY["vw"],), s["visual.ln_pre.weight"], s["visual.ln_pre.bias"])
    for i in range(TINY["vl"]):
        x = ref_block(x, s, f"visual.transformer.resblocks.{i}.", TINY["vh"], causal=False)
    pooled = F.layer_norm(
        x[:, 0], (TINY["vw"],), s["visual.ln_post.weight"], s["visual.ln_post.bias"]
    )
    return pooled @ s["visual.proj"]


def ref_encode_text(s: dict, ids: torch.Tensor) -> torch.Tensor:
    """(B, context) open_clip token ids (0-padded) -> (B, embed), pooled at argmax(id) = EOT."""
    x = s["token_embedding.weight"][ids] + s["positional_embedding"]
    for i in range(TINY["tl"]):
        x = ref_block(x, s, f"transformer.resblocks.{i}.", TINY["th"], causal=True)
    x = F.layer_norm(x, (TINY["tw"],), s["ln_final.weight"], s["ln_final.bias"])
    return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ s["text_projection"]


def open_clip_ids(texts: list[str]) -> torch.Tensor:
    """open_clip's tokenisation of lower-case letter strings: SOT, one id per letter (the last of
    a word with its </w> form), EOT, zeros to the context length."""
    rows = []
    for text in texts:
        ids = [52]
        for word in text.split():
            ids += [LETTERS.index(c) for c in word[:-1]] + [26 + LETTERS.index(word[-1])]
        ids = [*ids[: TINY["context"] - 1], 53]
        rows.append(ids + [0] * (TINY["context"] - len(ids)))
    return torch.tensor(rows)


def random_images(n: int, size: tuple[int, int] = (16, 16), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)) for _ in range(n)
    ]


# ------------------------------------------------------------------------------------- the tests


def test_config_is_read_from_shapes() -> None:
    config = clip_config_from_open_clip(tiny_open_clip_state(), vision_heads=4, text_heads=2)
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (32, 2, 4)
    assert (vision.patch_size, vision.image_size, vision.intermediate_size) == (4, 16, 128)
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (24, 2, 54)
    assert (text.max_position_embeddings, text.eos_token_id, config.projection_dim) == (12, 53, 16)
    assert vision.hidden_act == text.hidden_act == "gelu"


def vit_h14_meta_state() -> dict[str, torch.Tensor]:
    """Shapes of open_clip ViT-H-14 (what HPS v2.1 is), on the meta device: no memory."""
    shapes = {
        "visual.class_embedding": (1280,),
        "visual.positional_embedding": (257, 1280),
        "visual.conv1.weight": (1280, 3, 14, 14),
        "visual.ln_pre.weight": (1280,),
        "visual.ln_pre.bias": (1280,),
        "visual.ln_post.weight": (1280,),
        "visual.ln_post.bias": (1280,),
        "visual.proj": (1280, 1024),
        "token_embedding.weight": (49408, 1024),
        "positional_embedding": (77, 1024),
        "ln_final.weight": (1024,),
        "ln_final.bias": (1024,),
        "text_projection": (1024, 1024),
        "logit_scale": (),
    }
    for prefix, width, layers in (("visual.", 1280, 32), ("", 1024, 24)):
        for i in range(layers):
            p = f"{prefix}transformer.resblocks.{i}."
            shapes |= {
                p + "ln_1.weight": (width,),
                p + "ln_1.bias": (width,),
                p + "attn.in_proj_weight": (3 * width, width),
                p + "attn.in_proj_bias": (3 * width,),
                p + "attn.out_proj.weight": (width, width),
                p + "attn.out_proj.bias": (width,),
                p + "ln_2.weight": (width,),
                p + "ln_2.bias": (width,),
                p + "mlp.c_fc.weight": (4 * width, width),
                p + "mlp.c_fc.bias": (4 * width,),
                p + "mlp.c_proj.weight": (width, 4 * width),
                p + "mlp.c_proj.bias": (width,),
            }
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def test_vit_h14_layout_maps_onto_clipmodel_without_memory() -> None:
    state = vit_h14_meta_state()
    model = clip_from_open_clip(state)  # default heads 16 / 16
    vision, text = model.config.vision_config, model.config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (
        1280,
        32,
        16,
    )
    assert (vision.patch_size, vision.image_size) == (14, 224)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (1024, 24, 16)
    assert (text.vocab_size, text.max_position_embeddings, model.config.projection_dim) == (
        49408,
        77,
        1024,
    )
    assert text.eos_token_id == 49407
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in state.values())


def test_mapped_model_equals_reference_forward() -> None:
    state = tiny_open_clip_state()
    model = clip_from_open_clip(state, vision_heads=4, text_heads=2)
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, 16, 16, generator=gen)
    with torch.inference_mode():
        ours = model.get_image_features(pixel_values=pixels).pooler_output
    assert torch.allclose(ours, ref_encode_image(state, pixels), atol=1e-5)

    texts = ["a red cube", "dog", "the quick brown fox jumps"]  # the last one is truncated
    ref_ids = open_clip_ids(texts)
    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate(LETTERS)} | {
        c + "</w>": 26 + i for i, c in enumerate(LETTERS)
    }
    tokenizer = CLIPTokenizer(vocab=vocab | {"<|startoftext|>": 52, "<|endoftext|>": 53}, merges=[])
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=12, return_tensors="pt")
    assert tokens["input_ids"][0].tolist()[:8] == ref_ids[0].tolist()[:8]  # same tokenisation
    with torch.inference_mode():
        ours_text = model.get_text_features(**tokens).pooler_output
    assert torch.allclose(ours_text, ref_encode_text(state, ref_ids), atol=1e-5)


def test_qkv_split_and_projection_transpose() -> None:
    state = tiny_open_clip_state()
    mapped = open_clip_to_transformers(state)
    packed = state["transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(mapped["text_model.encoder.layers.1.self_attn.k_proj.weight"], packed[24:48])
    assert torch.equal(mapped["visual_projection.weight"], state["visual.proj"].T)


def test_missing_and_unexpected_keys_are_listed() -> None:
    state = tiny_open_clip_state()
    extra = dict(state, **{"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(32)})
    with pytest.raises(RewardError, match=r"ls_1\.gamma"):
        open_clip_to_transformers(extra)
    missing = {k: v for k, v in state.items() if k != "transformer.resblocks.1.ln_2.bias"}
    with pytest.raises(
        RewardError,
        match=r"missing CLIPModel keys \['text_model.encoder.layers.1.layer_norm2.bias'\]",
    ):
        clip_from_open_clip(missing, vision_heads=4, text_heads=2)
    with pytest.raises(RewardError, match="missing keys"):
        clip_config_from_open_clip({"foo": torch.ones(1)})


def test_hps_pixels_square_matches_clip_processor_and_pads_non_square() -> None:
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    )
    square = random_images(2, (40, 40))
    expected = processor(images=square, return_tensors="pt")["pixel_values"]
    assert torch.allclose(hps_pixels(square, 16), expected, atol=1e-5)

    wide = random_images(1, (32, 16))[0]  # 32 wide, 16 high -> 16 x 8, padded 4 rows each side
    pixels = hps_pixels([wide], 16)[0]
    black = (0.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(pixels[:, :4, :], black[:, None, None].expand(3, 4, 16))
    assert torch.allclose(pixels[:, 12:, :], black[:, None, None].expand(3, 4, 16))
    resized = np.asarray(wide.resize((16, 8), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    middle = (resized - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    assert torch.allclose(
        pixels[:, 4:12, :], torch.from_numpy(middle.transpose(2, 0, 1)).float(), atol=1e-5
    )


def test_hps_reward_end_to_end_from_a_checkpoint_file(tmp_path: Path) -> None:
    state = tiny_open_clip_state(seed=3)
    compressed = {f"module.{k}": v.half() for k, v in state.items()}  # fp16, DataParallel names
    checkpoint = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": compressed}, checkpoint)
    tokenizer = tiny_tokenizer_dir(tmp_path / "tok")
    reward = build_reward(
        "hps_v21",
        {
            "checkpoint": str(checkpoint),
            "tokenizer_dir": str(tokenizer),
            "vision_heads": 4,
            "text_heads": 2,
            "batch_size": 2,
        },
    )
    prompts = ["a red cube", "blue ball", "cat", "green tree", "sky"]
    images = random_images(5, (24, 24), seed=4)
    scores = reward(prompts, images)
    rounded = {k: v.half().float() for k, v in state.items()}
    image_emb = ref_encode_image(rounded, hps_pixels(images, 16))
    text_emb = ref_encode_text(rounded, open_clip_ids(prompts))
    expected = F.cosine_similarity(image_emb, text_emb, dim=-1)
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
    assert reward(prompts[:1], images[:1]) == pytest.approx(scores[:1], abs=1e-6)


def test_hps_reward_errors_say_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"kwargs.checkpoint is not set.*HPS_v2.1_compressed.pt"):
        HpsV21()
    with pytest.raises(ValueError, match="does not exist"):
        HpsV21(checkpoint=str(tmp_path / "none.pt"), tokenizer_dir=str(tmp_path))
    checkpoint = tmp_path / "hps.pt"
    torch.save({"state_dict": tiny_open_clip_state()}, checkpoint)
    with pytest.raises(ValueError, match=r"tokenizer_dir.*laion/CLIP-ViT-H-14"):
        HpsV21(checkpoint=str(checkpoint), tokenizer_dir="")
    not_a_state = tmp_path / "list.pt"
    torch.save([1, 2], not_a_state)
    reward = HpsV21(checkpoint=str(not_a_state), tokenizer_dir=str(tmp_path))
    with pytest.raises(RewardError, match="not a state dict"):
        reward(["a"], random_images(1))


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    path = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": 54,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "eos_token_id": 53,
            "bos_token_id": 52,
            "pad_token_id": 53,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 28,
            "patch_size": 14,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    tiny_tokenizer_dir(path)
    CLIPImageProcessorPil(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    ).save_pretrained(path)
    return path


def test_clip_score_equals_hand_computation(tiny_clip_dir: Path) -> None:
    from transformers import AutoTokenizer, CLIPModel

    prompts = ["a red cube", "blue ball", "cat", "green tree", "sky"]
    images = random_images(5, (40, 30), seed=5)
    raw = ClipScore(model_dir=str(tiny_clip_dir), batch_size=2, scale=1.0, clamp_negative=False)
    cosines = raw(prompts, images)

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_clip_dir)(
        prompts, padding=True, return_tensors="pt"
    )
    # Independent preprocessing: shortest side to 28 (bicubic), centre crop, CLIP mean / std.
    arrays = []
    for image in images:
        resized = image.resize((37, 28), Image.Resampling.BICUBIC)  # 40x30 -> 37.33x28, rounded
        left = (37 - 28) // 2
        crop = np.asarray(resized, dtype=np.float32)[:, left : left + 28] / 255
        arrays.append(((crop - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).transpose(2, 0, 1))
    pixels = torch.from_numpy(np.stack(arrays)).float()
    with torch.inference_mode():
        vision = model.vision_model(pixel_values=pixels).pooler_output
        text = model.text_model(**tokens).pooler_output
        image_emb = vision @ model.visual_projection.weight.T
        text_emb = text @ model.text_projection.weight.T
    expected = [
        float(i @ t / (i.norm() * t.norm())) for i, t in zip(image_emb, text_emb, strict=True)
    ]
    assert cosines == pytest.approx(expected, abs=1e-4)

    default = ClipScore(model_dir=str(tiny_clip_dir), batch_size=5)(prompts, images)
    assert default == pytest.approx([100 * max(c, 0.0) for c in expected], abs=1e-2)


def test_clip_score_prompt_column_and_errors(tiny_clip_dir: Path, tmp_path: Path) -> None:
    reward = ClipScore(
        model_dir=str(tiny_clip_dir), scale=1.0, clamp_negative=False, prompt_column="raw"
    )
    images = random_images(2, seed=6)
    direct = ClipScore(model_dir=str(tiny_clip_dir), scale=1.0, clamp_negative=False)
    assert reward(["ignored", "ignored"], images, raw=["cat", "dog"]) == pytest.approx(
        direct(["cat", "dog"], images), abs=1e-6
    )
    with pytest.raises(ValueError, match="prompt_column 'raw' is not a column"):
        reward(["cat"], images[:1])
    with pytest.raises(ValueError, match="model_dir is not set"):
        ClipScore()
    with pytest.raises(ValueError, match="is not a directory"):
        ClipScore(model_dir=str(tmp_path / "nothing"))
