"""ShapesWorld rewards: the exact GenEval-style check of a generated image by the shapes detector.

Registered with the reward core by module path (`rewards.base.BUILTIN_REWARD_MODULES`), so
the core never imports the miniature. They read each prompt's GenEval metadata from a column
(`geneval` by default, as ShapesWorld generation samples and the pairs built from them carry it).
"""

from __future__ import annotations

from typing import Any

from pairuni.rewards.base import register_reward


def _with_metadata(columns: dict[str, Any], metadata_column: str) -> dict[str, Any]:
    if metadata_column not in columns:
        raise KeyError(
            f"the ShapesWorld reward needs the column {metadata_column!r} (GenEval metadata of "
            "each prompt); build the pairs from ShapesWorld data or set kwargs.metadata_column"
        )
    return {**columns, "geneval": columns[metadata_column]}


@register_reward("shapes_geneval", task="generation")
def shapes_geneval(
    prompts: list[str], images: list[Any], metadata_column: str = "geneval", **columns: Any
) -> list[float | None]:
    """1.0 when the ShapesWorld detector finds the image satisfies its prompt's GenEval rules."""
    from pairuni.shapes.geneval import geneval_reward

    return geneval_reward(prompts, images, **_with_metadata(columns, metadata_column))


@register_reward("shapes_geneval_partial", task="generation")
def shapes_geneval_partial(
    prompts: list[str], images: list[Any], metadata_column: str = "geneval", **columns: Any
) -> list[float | None]:
    """The fraction of the prompt's GenEval clauses the image satisfies (a denser signal)."""
    from pairuni.shapes.geneval import geneval_partial_reward

    return geneval_partial_reward(prompts, images, **_with_metadata(columns, metadata_column))
