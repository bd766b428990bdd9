"""The one result type every scorer returns: numbers by name, plus the paper's table columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Column:
    """One column of a results table: its header, the metric it shows and how to print it.

    `scale` multiplies the stored value (accuracies are stored as fractions and printed as
    percentages where the paper does); `digits` is the number of decimals printed.
    """

    header: str
    key: str
    digits: int = 1
    scale: float = 1.0


@dataclass
class BenchmarkResult:
    """What a scorer found.

    `metrics` holds every number under a stable flat name (e.g. `acc`, `subject/Art/acc`,
    `perception_total`); `columns` picks the ones the paper's table shows, in its order;
    `details` holds per-sample judgements and counts for inspection (JSON-serialisable).
    """

    benchmark: str
    metrics: dict[str, float]
    columns: list[Column]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (for results files)."""
        return {"benchmark": self.benchmark, "metrics": dict(self.metrics), "details": self.details}

    def markdown_header(self) -> str:
        """`| Model | col1 | col2 |` and its separator line."""
        headers = ["Model", *(c.header for c in self.columns)]
        top = "| " + " | ".join(headers) + " |"
        rule = "|" + "|".join("---" for _ in headers) + "|"
        return f"{top}\n{rule}"

    def markdown_row(self, model: str) -> str:
        """`| model | value | value |`; a metric that could not be computed prints as `–`."""
        cells = [model]
        for col in self.columns:
            value = self.metrics.get(col.key)
            cells.append("–" if value is None else f"{value * col.scale:.{col.digits}f}")
        return "| " + " | ".join(cells) + " |"


def safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or 0.0 when the denominator is 0 (e.g. precision with no
    positive predictions), where the official scripts would divide by zero."""
    return numerator / denominator if denominator else 0.0
