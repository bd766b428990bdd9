"""`pairs stats`: the histogram's axis and labels, and the counts on the HTML page."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from PIL import Image

from pairuni.data.io import write_records
from pairuni.data.schema import Pair
from pairuni.pairing.stats import write_histogram, write_report


def pair(i: int, kind: str = "retrieved", **changes: object) -> Pair:
    fields: dict[str, object] = {
        "pair_id": f"p{i}",
        "kind": kind,
        "gen_prompt": f"prompt {i}",
        "und_image": "u.png",
        "und_question": f"question {i}?",
        "und_answer": "A",
        "und_options": ["cat", "dog"],
    }
    if kind == "retrieved":
        fields["similarity"] = 0.7
    fields.update(changes)
    return Pair.model_validate(fields)


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures `write_histogram` saves, kept for inspection."""
    figures: list[Figure] = []
    save = Figure.savefig

    def spy(self: Figure, *args: object, **kwargs: object) -> None:
        figures.append(self)
        save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return figures


def test_histogram_axis_starts_at_zero_with_plain_labels(
    tmp_path: Path, drawn: list[Figure]
) -> None:
    pairs = [pair(i, similarity=s) for i, s in enumerate([0.99991, 0.99995, 0.99999, 1.0])]
    write_histogram(pairs, tmp_path / "h.png")
    (ax,) = drawn[0].axes
    assert ax.get_xlim()[0] == pytest.approx(0.0, abs=1e-9)
    assert ax.get_xlim()[1] >= 1.0
    formatter = ax.xaxis.get_major_formatter()
    assert formatter.get_offset() == ""  # no "+9.999e-1" offset label
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"[01]\.\d+|0|1", s) for s in labels), labels
    # every value is counted in the bars
    assert sum(p.get_height() for p in ax.patches) == len(pairs)


def test_histogram_of_no_retrieved_pairs(tmp_path: Path, drawn: list[Figure]) -> None:
    write_histogram([pair(0, kind="aligned")], tmp_path / "h.png")
    assert drawn[0].axes[0].get_xlim()[0] == pytest.approx(0.0, abs=1e-9)


def _png(path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def test_the_page_shows_the_counts_and_the_category_table(tmp_path: Path) -> None:
    _png(tmp_path / "u.png")
    pairs = [
        pair(0, kind="aligned", category="Math"),
        pair(1, category="Math", similarity=0.7),
        pair(2, category="GenEval <counting>", similarity=0.9),
        pair(3, similarity=0.6),
        pair(4, kind="aligned", category="GenEval <counting>"),
        pair(5, kind="aligned", category="GenEval <counting>"),
    ]
    path = write_records(tmp_path / "pairs.jsonl", pairs)
    summary = write_report(path, tmp_path / "report", examples=1)
    assert "6 pairs" in summary
    page = (tmp_path / "report" / "index.html").read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    assert re.search(r"pairs: 6 aligned: 3 retrieved: 3", text), text
    assert re.search(r"s_p of retrieved pairs: min 0\.600, median 0\.700, max 0\.900", text)
    rows = re.findall(r"<tr[^>]*>\s*<td>([^<]*)</td>\s*<td>(\d+)</td>\s*<td>(\d+)</td>", page)
    table = {name: (int(a), int(r)) for name, a, r in rows}
    assert table == {
        "GenEval &lt;counting&gt;": (2, 1),
        "Math": (1, 1),
        "(none)": (0, 1),
    }
    # the examples follow (one per kind here)
    assert page.count("question 0?") == 1 and "question 1?" in page


def test_the_page_does_not_letter_options_twice(tmp_path: Path) -> None:
    _png(tmp_path / "u.png")
    pairs = [pair(0, und_options=["A. first", "B. second"])]
    path = write_records(tmp_path / "pairs.jsonl", pairs)
    write_report(path, tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<li>first</li><li>second</li>" in page
    assert "A. first" not in page
