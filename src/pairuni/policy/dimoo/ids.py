"""Lumina-DiMOO's special token ids and image-code offset.

The released checkpoint's config.json carries `mask_token_id`, `eos_token_id` and
`pad_token_id`; the other ids are tokens of its tokenizer (`<boi>`, `<answer>` ...) and the
image codes are appended to the text vocabulary at a fixed offset. `DimooIds.from_checkpoint`
reads what the folder has and falls back to the released model's values (the table in
docs/dimoo.md) for the rest, so a tiny test checkpoint and the real one are read the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# The released model's values (Alpha-VLLM/Lumina-DiMOO), used where config.json and the
# tokenizer are silent.
RELEASED = {
    "mask": 126336,
    "newline": 126084,
    "answer_start": 126354,
    "answer_end": 126355,
    "boi": 126349,
    "eoi": 126350,
    "uncondition": 126351,
    "eos": 126081,
    "answer_pad": 126339,
    "image_offset": 126356,
    "codebook_size": 8192,
}

# Tokenizer strings of the special tokens (how `from_checkpoint` finds them in a tokenizer).
TOKEN_STRINGS = {
    "mask": "<|mdm_mask|>",
    "answer_start": "<answer>",
    "answer_end": "</answer>",
    "boi": "<boi>",
    "eoi": "<eoi>",
    "uncondition": "<uncondition>",
}

CONFIG_KEYS = {
    "mask": "mask_token_id",
    "eos": "eos_token_id",
    # Not in the release: a checkpoint with its own id layout declares it with these keys (the
    # ShapesWorld base model of `pairuni shapes pretrain --backend dimoo` has a ~1,500-row
    # vocabulary: its text head is then 100x cheaper on a CPU than the release's 126K rows).
    "newline": "image_newline_token_id",
    "answer_pad": "answer_pad_token_id",
    "image_offset": "image_token_offset",
    "codebook_size": "image_codebook_size",
}


@dataclasses.dataclass(frozen=True)
class DimooIds:
    """Token ids of one DiMOO checkpoint. Image code c (0 <= c < codebook_size) is token
    image_offset + c."""

    mask: int = RELEASED["mask"]
    newline: int = RELEASED["newline"]
    answer_start: int = RELEASED["answer_start"]
    answer_end: int = RELEASED["answer_end"]
    boi: int = RELEASED["boi"]
    eoi: int = RELEASED["eoi"]
    uncondition: int = RELEASED["uncondition"]
    eos: int = RELEASED["eos"]
    answer_pad: int = RELEASED["answer_pad"]
    image_offset: int = RELEASED["image_offset"]
    codebook_size: int = RELEASED["codebook_size"]

    @property
    def image_end(self) -> int:
        """One past the last image-code token id."""
        return self.image_offset + self.codebook_size

    def code_to_token(self, codes: Any) -> Any:
        return codes + self.image_offset

    def token_to_code(self, tokens: Any) -> Any:
        return tokens - self.image_offset

    @classmethod
    def from_values(
        cls, config: Mapping[str, Any], vocab: Mapping[str, int] | None = None, **overrides: int
    ) -> DimooIds:
        """Ids from a config.json mapping and a tokenizer vocabulary (token -> id, added tokens
        included); `overrides` win over both."""
        values: dict[str, int] = {}
        for name, token in TOKEN_STRINGS.items():
            if vocab is not None and token in vocab:
                values[name] = int(vocab[token])
        for name, key in CONFIG_KEYS.items():
            if config.get(key) is not None:
                values[name] = int(config[key])
        values.update(overrides)
        return cls(**values)
