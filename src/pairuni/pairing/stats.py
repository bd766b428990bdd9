"""`pairuni pairs stats`: what a PairUG file holds.

Writes to the output folder: `stats.json` (counts by kind, by category and kind, similarity
quantiles), `similarity.png` (histogram of s_p of retrieved pairs) and `index.html` (example pairs
side by side: generation image and prompt, understanding image, question, options, answer, s_p).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from pairuni.data.schema import ImageRef, Pair


def pair_counts(pairs: list[Pair]) -> dict[str, Any]:
    """Counts by kind and by (category, kind), and the s_p quantiles of retrieved pairs."""
    by_kind = Counter(p.kind for p in pairs)
    by_category: dict[str, dict[str, int]] = {}
    for p in pairs:
        row = by_category.setdefault(p.category or "(none)", {"aligned": 0, "retrieved": 0})
        row[p.kind] += 1
    sims = sorted(p.similarity for p in pairs if p.kind == "retrieved" and p.similarity is not None)

    def quantile(q: float) -> float | None:
        return sims[min(len(sims) - 1, int(q * len(sims)))] if sims else None

    return {
        "pairs": len(pairs),
        "by_kind": dict(by_kind),
        "by_category": dict(sorted(by_category.items(), key=lambda kv: -sum(kv[1].values()))),
        "retrieved_similarity": {
            "min": sims[0] if sims else None,
            "median": quantile(0.5),
            "max": sims[-1] if sims else None,
        },
    }


def write_histogram(pairs: list[Pair], path: Path, bins: int = 40) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sims = [p.similarity for p in pairs if p.kind == "retrieved" and p.similarity is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(sims, bins=bins, range=(min(sims, default=0.0), 1.0), color="#4477aa")
    ax.set_xlabel("s_p (cosine of image features)")
    ax.set_ylabel("retrieved pairs")
    ax.set_title(f"{len(sims)} retrieved pairs")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _thumbnail(ref: ImageRef | None, base: Path, side: int = 192) -> str:
    if ref is None:
        return "<em>no image</em>"
    try:
        img = ref.open(base)
    except (OSError, ValueError):
        return f"<em>missing image {html.escape(ref.path or '')}</em>"
    img.thumbnail((side, side))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def write_html(pairs: list[Pair], path: Path, base: Path, examples: int) -> None:
    """A page with up to `examples` pairs of each kind."""
    e = html.escape
    rows = []
    for kind in ("aligned", "retrieved"):
        for p in [q for q in pairs if q.kind == kind][:examples]:
            options = "".join(f"<li>{e(o)}</li>" for o in p.und_options)
            rows.append(
                f"<tr><td>{e(p.kind)}<br>s_p = {p.similarity:.3f}<br>w = {p.weight:.3f}"
                f"<br>{e(p.category or '')}</td>"
                f"<td>{_thumbnail(p.gen_image, base)}</td><td>{e(p.gen_prompt)}</td>"
                f"<td>{_thumbnail(p.und_image, base)}</td>"
                f"<td>{e(p.und_question)}<ol type='A'>{options}</ol>"
                f"<b>answer:</b> {e(p.und_answer)}</td></tr>"
            )
    page = (
        "<!doctype html><meta charset='utf-8'><title>PairUG examples</title>"
        "<style>td{vertical-align:top;padding:6px;border-bottom:1px solid #ccc;max-width:320px}"
        "</style><h1>PairUG examples</h1><img src='similarity.png'>"
        "<table><tr><th>pair</th><th>generation image</th><th>prompt</th>"
        "<th>understanding image</th><th>question / answer</th></tr>" + "".join(rows) + "</table>"
    )
    path.write_text(page, encoding="utf-8")


def write_report(pairs_path: Path, out_dir: Path, *, examples: int = 12) -> str:
    """Write stats.json, similarity.png and index.html; return a one-paragraph summary."""
    from pairuni.data.io import read_records

    records = read_records(pairs_path, Pair)
    pairs = list(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = pair_counts(pairs)
    (out_dir / "stats.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    write_histogram(pairs, out_dir / "similarity.png")
    write_html(pairs, out_dir / "index.html", records.base_dir, examples)
    kinds = ", ".join(f"{k} {v}" for k, v in counts["by_kind"].items())
    return f"{counts['pairs']} pairs ({kinds}); report in {out_dir}"
