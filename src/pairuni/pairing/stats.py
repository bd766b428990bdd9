"""`pairuni pairs stats`: what a PairUG file holds.

Writes to the output folder: `stats.json` (counts by kind, by category and kind, similarity
quantiles), `similarity.png` (histogram of s_p of retrieved pairs, axis 0 to 1) and `index.html`
(the same counts and per-category table, the histogram, and example pairs side by side:
generation image and prompt, understanding image, question, options, answer, s_p).
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
    """Histogram of s_p over the retrieved pairs on a fixed [0, 1] axis (bins of 1/`bins`), with
    plain tick labels: pairs near 1 show as a bar at the right, not as an offset axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    sims = [p.similarity for p in pairs if p.kind == "retrieved" and p.similarity is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(sims, bins=bins, range=(0.0, 1.0), color="#4477aa")
    ax.set_xlim(0.0, 1.0)
    ax.set_xticks([i / 10 for i in range(11)])
    ax.xaxis.set_major_formatter(FormatStrFormatter("%.1f"))
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


def counts_html(counts: dict[str, Any]) -> str:
    """The numbers of `stats.json` as HTML: totals, s_p quantiles and the per-category table."""
    e = html.escape
    totals = [f"<li>pairs: {counts['pairs']}</li>"]
    totals += [f"<li>{e(kind)}: {n}</li>" for kind, n in sorted(counts["by_kind"].items())]
    for kind in ("aligned", "retrieved"):
        if kind not in counts["by_kind"]:
            totals.append(f"<li>{kind}: 0</li>")
    sim = counts["retrieved_similarity"]
    if sim["min"] is not None:
        totals.append(
            f"<li>s_p of retrieved pairs: min {sim['min']:.3f}, median {sim['median']:.3f}, "
            f"max {sim['max']:.3f}</li>"
        )
    rows = "".join(
        f"<tr class='category'><td>{e(name)}</td><td>{row.get('aligned', 0)}</td>"
        f"<td>{row.get('retrieved', 0)}</td><td>{sum(row.values())}</td></tr>"
        for name, row in counts["by_category"].items()
    )
    return (
        "<h2>Counts</h2><ul class='counts'>" + "".join(totals) + "</ul>"
        "<table class='categories'><tr class='head'><th>category</th><th>aligned</th>"
        "<th>retrieved</th><th>total</th></tr>" + rows + "</table>"
    )


def write_html(
    pairs: list[Pair],
    path: Path,
    base: Path,
    examples: int,
    counts: dict[str, Any] | None = None,
) -> None:
    """A page with the counts (those of stats.json), the histogram and up to `examples` pairs of
    each kind."""
    from pairuni.pairing.sources import strip_option_letters

    e = html.escape
    rows = []
    for kind in ("aligned", "retrieved"):
        for p in [q for q in pairs if q.kind == kind][:examples]:
            # the list letters the options: options already carrying letters lose theirs
            shown = strip_option_letters(p.und_options)
            options = "".join(f"<li>{e(o)}</li>" for o in shown)
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
        "table.categories td{text-align:right}table.categories td:first-child{text-align:left}"
        "</style><h1>PairUG</h1>"
        + counts_html(counts if counts is not None else pair_counts(pairs))
        + "<h2>Similarity of retrieved pairs</h2><img src='similarity.png'>"
        "<h2>Examples</h2>"
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
    write_html(pairs, out_dir / "index.html", records.base_dir, examples, counts)
    kinds = ", ".join(f"{k} {v}" for k, v in counts["by_kind"].items())
    return f"{counts['pairs']} pairs ({kinds}); report in {out_dir}"
