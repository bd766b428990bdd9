"""Janus-Pro's chat format without a chat template: the fallback `janus_pro_chat_text` must give
the token ids the checkpoint's template gives (understanding and generation prompts, with the
default, a custom and no system prompt), DeepSeek's format written out by hand, and the template
`pairuni convert-janus` writes; and `generate` / `answer` must run on such a checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from janus_helpers import QUESTIONS, images, load
from pairuni.cli import app
from pairuni.policy.janus import (
    JANUS_PRO_CHAT_TEMPLATE,
    JanusPolicy,
    has_chat_template,
    janus_pro_chat_text,
)
from pairuni.policy.tiny import EOS

SYSTEM_PROMPTS = [None, "", "Answer briefly."]
OPTIONS = [None, ["a red square", "a blue circle", "  padded option  "]]
PROMPTS = ["a red square", "  two blue circles\non a green field  "]


@pytest.fixture(scope="module")
def bare_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with its chat template removed, as some converted checkpoints are."""
    out = tmp_path_factory.mktemp("bare") / "janus"
    shutil.copytree(tiny_dir, out)
    (out / "chat_template.jinja").unlink()
    return out


@pytest.fixture(scope="module")
def bare(bare_dir: Path) -> JanusPolicy:
    return load(bare_dir)


def _with_system(policy: JanusPolicy, system: str | None) -> JanusPolicy:
    policy.rollout_config = policy.rollout_config.model_copy(update={"system_prompt": system})
    return policy


@pytest.mark.parametrize("system", SYSTEM_PROMPTS)
def test_understanding_ids_match_the_template(
    policy: JanusPolicy, bare: JanusPolicy, system: str | None
) -> None:
    assert has_chat_template(policy.processor) and not has_chat_template(bare.processor)
    with_template, fallback = _with_system(policy, system), _with_system(bare, system)
    for options in OPTIONS:
        opts = [options] * len(QUESTIONS)
        a = with_template.encode_understanding(images(), QUESTIONS, opts)
        b = fallback.encode_understanding(images(), QUESTIONS, opts)
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["attention_mask"], b["attention_mask"])
    if system is None:  # the processor's default system prompt is there, after BOS
        first = with_template.understanding_prompt("q")
        assert first.startswith("You are a helpful language and vision assistant.")


def test_generation_ids_match_the_template(policy: JanusPolicy, bare: JanusPolicy) -> None:
    a = policy.encode_generation(PROMPTS)
    b = bare.encode_generation(PROMPTS)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["attention_mask"], b["attention_mask"])
    assert (b["input_ids"][:, -1] == bare.ids.boi).all()


def test_the_fallback_writes_deepseeks_format() -> None:
    # VLChatProcessor's "deepseek" format: "<|User|>: " + content.strip() + "\n\n", then the
    # empty assistant turn "<|Assistant|>:"; an answered assistant turn ends with EOS.
    image = {"type": "image"}
    assert (
        janus_pro_chat_text(
            [{"role": "user", "content": [image, {"type": "text", "text": " What is it? "}]}],
            end_of_turn=EOS,
        )
        == "<|User|>: <image_placeholder>\n What is it?\n\n<|Assistant|>:"
    )
    assert (
        janus_pro_chat_text(
            [{"role": "user", "content": "  a cat  "}, {"role": "assistant", "content": "ok"}],
            end_of_turn=EOS,
            add_generation_prompt=False,
        )
        == f"<|User|>: a cat\n\n<|Assistant|>: ok{EOS}"
    )


CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}],
    [
        {
            "role": "user",
            "content": [{"type": "text", "text": " a "}, {"type": "text", "text": "b "}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "and?"}, {"type": "image"}]},
    ],
    [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_the_converter_template_writes_the_same_text(
    policy: JanusPolicy, conversation: list[dict], add_generation_prompt: bool
) -> None:
    rendered = policy.processor.apply_chat_template(
        conversation,
        chat_template=JANUS_PRO_CHAT_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
    )
    expected = janus_pro_chat_text(
        conversation, end_of_turn=EOS, add_generation_prompt=add_generation_prompt
    )
    assert rendered == expected


def test_generate_and_answer_run_without_a_template(bare_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    grid = tmp_path / "grid.png"
    images()[0].save(tmp_path / "photo.png")
    common = ["--model", str(bare_dir), "--device", "cpu"]
    generated = runner.invoke(
        app, ["generate", *common, "--prompt", "a red square", "-n", "1", "--out", str(grid)]
    )
    assert generated.exit_code == 0, generated.output
    assert grid.is_file()
    photo = str(tmp_path / "photo.png")
    question = ["--image", photo, "--question", "What?", "--max-new-tokens", "3", "--greedy"]
    answered = runner.invoke(app, ["answer", *common, *question])
    assert answered.exit_code == 0, answered.output
