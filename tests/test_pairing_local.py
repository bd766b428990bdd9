"""The `local` completion backend on a real transformers VLM from a local folder (tiny Janus).

The tiny model's words are random, so the annotator must reject them the way it rejects a bad
server reply; what is checked is the plumbing: image and text reach the model through its own
chat template, the reply and token counts come back, and an unusable reply is a reason."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from pairuni.pairing.annotators import LocalChat, make_annotator
from pairuni.pairing.config import CompleteConfig
from pairuni.policy.tiny import build_tiny_janus


@pytest.fixture(scope="module")
def local_cfg(tmp_path_factory: pytest.TempPathFactory) -> CompleteConfig:
    folder = build_tiny_janus(tmp_path_factory.mktemp("vlm") / "janus")
    return CompleteConfig(backend="local", local_model_dir=str(folder), max_tokens=6)


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_local_chat_runs_the_model_on_image_and_text(local_cfg: CompleteConfig) -> None:
    chat = LocalChat(local_cfg)
    uri = "data:image/png;base64," + base64.b64encode(png((200, 10, 10))).decode()
    with_image = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": uri}},
                {"type": "text", "text": "Describe the image."},
            ],
        }
    ]
    text_only = [{"role": "user", "content": "Describe the image."}]
    reply = asyncio.run(chat.chat(with_image))
    plain = asyncio.run(chat.chat(text_only))
    assert isinstance(reply.text, str)
    assert reply.completion_tokens == 6
    # the image expands into the model's image tokens inside the prompt
    assert reply.prompt_tokens - plain.prompt_tokens >= chat.processor.num_image_tokens


def test_local_annotator_turns_an_unusable_reply_into_a_reason(local_cfg: CompleteConfig) -> None:
    annotator = make_annotator(local_cfg.model_copy(update={"max_attempts": 1}))
    record = {
        "id": "u1",
        "image": "x.png",
        "question": "What colour?",
        "answer": "A",
        "options": ["red", "blue"],
    }
    outcome = asyncio.run(annotator.complete("understanding", record, png((10, 10, 200))))
    assert outcome.fields is None
    assert outcome.reason


def test_local_backend_needs_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="local_model_dir"):
        LocalChat(CompleteConfig(backend="local", local_model_dir=str(tmp_path / "none")))
