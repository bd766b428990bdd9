"""The `shapes` settings: how `pairuni shapes data` generates a ShapesWorld dataset (its
options, a `--config` YAML, and the shapes.yaml it writes beside the data)."""

from __future__ import annotations

from pydantic import Field, model_validator

from pairuni.configbase import Section


class ShapesConfig(Section):
    """ShapesWorld, the synthetic world with exact rewards (`pairuni shapes data`): 1-4 coloured
    shapes per image, multiple-choice questions in five categories and generation prompts in
    GenEval's six. See docs/shapes.md."""

    image_size: int = Field(32, ge=16, le=1024)
    """Side of the rendered images in pixels. Match what the policy's image decoder produces
    (the tiny Janus decodes to 32 px, `num_patches * 2**(levels - 1)`); 32 and 64 are tested."""

    n_und: int = Field(2000, ge=0)
    """Understanding samples (image, four-option question, answer) to write."""

    n_gen: int = Field(2000, ge=0)
    """Generation samples (GenEval-style prompt, metadata, reference image) to write."""

    max_objects: int = Field(4, ge=1, le=4)
    """Most objects in an understanding scene (each has 1 to this many). Generation scenes hold
    exactly the objects their prompt names (1-4)."""

    seed: int | None = None
    """Seed of the dataset (the same seed writes the same data); null: 0."""

    @model_validator(mode="after")
    def _check_counts(self) -> ShapesConfig:
        if self.n_und == 0 and self.n_gen == 0:
            raise ValueError(
                "n_und and n_gen are both 0, so nothing would be written; set one above 0"
            )
        return self
