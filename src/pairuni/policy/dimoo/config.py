"""`rollout.dimoo`: the masked-diffusion backend's sampler and log-prob settings (docs/dimoo.md).

The settings both backends share stay in `rollout` (`max_new_tokens` = the answer length in
masks, `text_temperature`, `image_temperature`, `cfg_scale` in Janus's convention, which this
backend maps to DiMOO's w = cfg_scale - 1).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pairuni.configbase import Section

Estimator = Literal["trajectory", "mean_field", "random_mask"]


class DimooRolloutConfig(Section):
    """Sampling and log-probs of Lumina-DiMOO (`model.backend: dimoo`). The defaults are the
    PairUni paper's (§7: 2 text steps, 35 image steps)."""

    text_steps: int = Field(2, ge=1)
    """Unmasking steps of an answer, over all its blocks (the paper: 2)."""

    text_block_length: int | None = Field(None, ge=1)
    """Tokens per semi-autoregressive block; it must divide `rollout.max_new_tokens`. `null`: one
    block (the whole answer)."""

    image_steps: int = Field(35, ge=1)
    """MaskGIT steps of an image (the paper: 35; DiMOO's default 64)."""

    image_size: int = Field(512, ge=16)
    """Side of generated images, px (512 -> 32 x 32 codes at the VQ's 16x downsampling); also
    the side understanding images are resized to before they are tokenised."""

    logprob: Estimator = "trajectory"
    """The log-prob estimator of the policy ratio: `trajectory` (replay the recorded unmasking;
    exact for the sampler's choices of tokens), `mean_field` (one forward with the whole
    completion masked) or `random_mask` (`random_mask_copies` noisy copies, each mask with its
    complement). docs/dimoo.md, "Log-probs for the ratio", gives their cost and what each
    estimates."""

    trajectory_shrink: int = Field(1, ge=1)
    """`trajectory`: consecutive sampler steps scored by one forward (1: every step, the exact
    replay; T / shrink forwards per branch)."""

    trajectory_backward_groups: int | None = Field(1, ge=1)
    """`trajectory`: replay groups whose graphs the loss's backward holds at once. 1 (the
    default): one backward per group, so the activations of one forward (per guidance branch)
    are alive at a time instead of those of all T / shrink of them; the summed gradient is the
    same, and so is the compute (one extra forward pass without gradient, only for
    sequence-level ratios off policy). `null`: one backward through the whole replay."""

    random_mask_copies: int = Field(2, ge=2, multiple_of=2)
    """`random_mask`: noisy copies per row, in coupled pairs (a mask and its complement), so that
    every token is scored once per pair; the log-prob of a token is its mean over the pairs."""

    edit_text_guidance: float = Field(2.5, ge=0.0)
    """Editing (ImgEdit): text guidance w in DiMOO's convention (its default 2.5)."""

    edit_image_guidance: float = Field(4.0, ge=0.0)
    """Editing: image guidance w_img (DiMOO's default 4)."""
