"""The reply diagnostic of benchmarks/understanding_replies.py against hand-counted replies."""

import importlib.util
from pathlib import Path

import pytest

from pairuni.shapes.build import understanding_record
from pairuni.shapes.scene import Scene

_PATH = Path(__file__).parents[1] / "benchmarks" / "understanding_replies.py"
_SPEC = importlib.util.spec_from_file_location("understanding_replies", _PATH)
diag = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(diag)


def _truth(record):
    return [o.describe() for o in Scene.from_dict(record["scene"]).objects]


def test_think_items_reads_the_listed_objects():
    reply = "<think>small red circle,  large blue square</think><answer>blue</answer>"
    assert diag.think_items(reply) == ["small red circle", "large blue square"]
    assert diag.think_items("<think>small red") == ["small red"]  # cut off before </think>
    assert diag.think_items("<answer>A</answer>") == []


def test_reply_statistics_counts_what_it_says():
    records = [understanding_record(i, 5353) for i in range(4)]
    answers = [r["options"][ord(r["answer"]) - ord("A")] for r in records]
    perfect = [
        f"<think>{', '.join(_truth(r))}</think><answer>{a}</answer>"
        for r, a in zip(records[:2], answers, strict=False)
    ]
    # one reply listing one wrong object and answering outside the options, twice
    wrong = ["<think>tiny green star</think><answer>purple elephant</answer>"] * 2
    stats = diag.reply_statistics(records, perfect + wrong)
    true_objects = [len(_truth(r)) for r in records]
    assert stats["accuracy"] == pytest.approx(0.5)
    assert stats["in_options"] == pytest.approx(0.5)
    assert stats["think_objects"] == pytest.approx((true_objects[0] + true_objects[1] + 2) / 4)
    assert stats["true_objects"] == pytest.approx(sum(true_objects) / 4)
    assert stats["think_precision"] == pytest.approx(
        (true_objects[0] + true_objects[1]) / (true_objects[0] + true_objects[1] + 2)
    )
    assert stats["think_recall"] == pytest.approx(
        (true_objects[0] + true_objects[1]) / sum(true_objects)
    )
    assert stats["think_count_exact"] == pytest.approx(0.5)  # the two scenes hold 2 and 3
    assert stats["think_distinct"] == pytest.approx(3 / 4)
