"""Data modes, filters and determinism of the step sampler, plus the trainer's pure helpers
(learning-rate schedule, rollout concatenation, checkpoint listing, metrics truncation)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pairuni.config import ConfigError, load_config
from pairuni.data.schema import Pair
from pairuni.policy.base import TextRollout
from pairuni.training import checkpoint as ckpt
from pairuni.training import runs
from pairuni.training.config import DataConfig
from pairuni.training.sampler import PairSampler, derive_seed, filter_pairs, filter_report
from pairuni.training.tracking import truncate_metrics
from pairuni.training.trainer import concat_rollouts, lr_lambda, pair_columns


def make_pairs(n: int) -> list[Pair]:
    pairs = []
    for i in range(n):
        aligned = i % 3 == 0
        pairs.append(
            Pair(
                pair_id=f"p{i}",
                kind="aligned" if aligned else "retrieved",
                similarity=None if aligned else 0.5 + 0.04 * i,
                gen_prompt=f"prompt {i}",
                und_image=f"img{i}.png",
                und_question=f"question {i}",
                und_options=["x", "y"],
                und_answer="A",
            )
        )
    return pairs


PAIRS = make_pairs(10)


def sampler(mode: str = "pairs", batch: int = 4, seed: int = 0, **data: object) -> PairSampler:
    cfg = DataConfig(mode=mode, **data)  # type: ignore[arg-type]
    return PairSampler(filter_pairs(PAIRS, cfg), cfg, batch, seed)


def ids(pairs: list[Pair]) -> list[str]:
    return [p.pair_id for p in pairs]


def test_pairs_mode_joins_both_sides_of_the_same_pair_and_weights_by_it() -> None:
    batch = sampler().batch(3)
    assert ids(batch.und) == ids(batch.gen)
    assert len(batch.und) == 4
    expected_sim = [p.similarity for p in batch.und]
    assert batch.similarity.tolist() == pytest.approx(expected_sim)
    assert batch.aligned.tolist() == [p.kind == "aligned" for p in batch.und]


def test_every_epoch_is_a_permutation_and_batches_cross_epoch_boundaries() -> None:
    s = sampler(batch=4)
    drawn = [pid for step in range(5) for pid in ids(s.batch(step).und)]  # 20 = two epochs
    assert sorted(drawn[:10]) == sorted(ids(PAIRS))
    assert sorted(drawn[10:]) == sorted(ids(PAIRS))
    assert drawn[:10] != drawn[10:]  # each epoch reshuffled


def test_batches_depend_only_on_seed_and_step() -> None:
    a, b = sampler(seed=7), sampler(seed=7)
    assert ids(a.batch(6).und) == ids(b.batch(6).und)  # b never drew steps 0-5
    assert ids(sampler(seed=8).batch(6).und) != ids(a.batch(6).und)
    assert derive_seed(1, "x") == derive_seed(1, "x") != derive_seed(1, "y")


def test_no_shuffle_walks_the_file_in_order() -> None:
    s = sampler(shuffle=False, batch=4)
    assert ids(s.batch(0).und) == ["p0", "p1", "p2", "p3"]
    assert ids(s.batch(2).und) == ["p8", "p9", "p0", "p1"]


def test_unpaired_draws_independent_sides_with_the_same_budget() -> None:
    s = sampler("unpaired", batch=10)
    batch = s.batch(0)
    assert len(batch.und) == len(batch.gen) == 10
    assert sorted(ids(batch.und)) == sorted(ids(batch.gen)) == sorted(ids(PAIRS))
    assert ids(batch.und) != ids(batch.gen)
    assert batch.aligned.all() and torch.equal(batch.similarity, torch.ones(10))


def test_random_pairs_repairs_prompts_once_for_the_whole_run() -> None:
    s = sampler("random_pairs", batch=5)
    partner: dict[str, str] = {}
    for step in range(4):
        batch = s.batch(step)
        for u, g in zip(batch.und, batch.gen, strict=True):
            assert partner.setdefault(u.pair_id, g.pair_id) == g.pair_id  # a fixed re-pairing
    assert any(u != g for u, g in partner.items())
    assert sorted(partner.values()) == sorted(ids(PAIRS))  # a permutation of the prompts


def test_single_task_modes_leave_the_other_side_out() -> None:
    und_only = sampler("understanding_only").batch(0)
    assert len(und_only.und) == 4 and und_only.gen == []
    gen_only = sampler("generation_only").batch(0)
    assert gen_only.und == [] and len(gen_only.gen) == 4
    assert ids(gen_only.gen) == ids(sampler("pairs").batch(0).und)


def test_filters_keep_the_requested_kinds_and_similarities() -> None:
    aligned = filter_pairs(PAIRS, DataConfig(kinds="aligned"))
    assert ids(aligned) == ["p0", "p3", "p6", "p9"]
    retrieved = filter_pairs(PAIRS, DataConfig(kinds="retrieved"))
    assert all(p.kind == "retrieved" for p in retrieved) and len(retrieved) == 6
    # s_p = 0.5 + 0.04 i: >= 0.7 keeps retrieved pairs i >= 5 (5, 7, 8) and all aligned ones
    high = filter_pairs(PAIRS, DataConfig(min_similarity=0.7))
    assert ids(high) == ["p0", "p3", "p5", "p6", "p7", "p8", "p9"]
    with pytest.raises(ValueError, match="no pairs to train on"):
        sampler(kinds="retrieved", min_similarity=0.99)
    report = filter_report(PAIRS, DataConfig(kinds="retrieved", min_similarity=0.99))
    assert "data.kinds=retrieved removed 4 of 10" in report
    assert "data.min_similarity=0.99 removed 6 of 10" in report
    assert "(the file holds 4 aligned, 6 retrieved)" in report


def test_lr_schedule_matches_hand_computed_values() -> None:
    # warmup 2 of 10 updates, cosine to 0.1 of the peak
    assert lr_lambda(0, 2, 10, "cosine", 0.1) == pytest.approx(0.5)
    assert lr_lambda(1, 2, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_lambda(2, 2, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_lambda(6, 2, 10, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way
    assert lr_lambda(10, 2, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_lambda(6, 2, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_lambda(9, 0, 10, "constant", 0.0) == 1.0
    assert lr_lambda(4, 0, 8, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def _text(prompt_len: int, completion_len: int, rows: int) -> TextRollout:
    return TextRollout(
        prompt_ids=torch.full((rows, prompt_len), 5),
        prompt_mask=torch.ones(rows, prompt_len, dtype=torch.long),
        pixel_values=torch.zeros(rows, 3, 2, 2),
        completion_ids=torch.full((rows, completion_len), 7),
        completion_mask=torch.ones(rows, completion_len, dtype=torch.long),
        logprobs=torch.full((rows, completion_len), -1.0),
        texts=["t"] * rows,
        group=torch.zeros(rows, dtype=torch.long),
    )


def test_concat_rollouts_pads_prompts_left_and_completions_right() -> None:
    out = concat_rollouts([_text(3, 2, 2), _text(1, 4, 1)], pad_id=0)
    assert out.prompt_ids.tolist()[2] == [0, 0, 5]
    assert out.prompt_mask.tolist()[2] == [0, 0, 1]
    assert out.completion_ids.tolist()[0] == [7, 7, 0, 0]
    assert out.completion_mask.tolist()[0] == [1, 1, 0, 0]
    assert out.logprobs.tolist()[0] == [-1.0, -1.0, 0.0, 0.0]
    assert out.group.tolist() == [0, 0, 1]
    assert len(out.texts) == 3


def test_pair_columns_repeat_each_pair_for_its_rows() -> None:
    cols = pair_columns(PAIRS[:2], 3)
    assert cols["und_answer"] == ["A"] * 6
    assert cols["pair_id"] == ["p0", "p0", "p0", "p1", "p1", "p1"]


def test_latest_checkpoint_ignores_incomplete_and_temporary_ones(tmp_path: Path) -> None:
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        ckpt.write_state(tmp_path / f"checkpoint-{step}" / ckpt.STATE_FILE, {"step": step})
    (tmp_path / "checkpoint-12").mkdir()  # no state file: killed mid-save by an old version
    (tmp_path / ".tmp-checkpoint-14").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    runs.rotate(tmp_path, keep=1, branch="b")  # these checkpoints carry no branch: kept
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 10]
    assert not (tmp_path / ".tmp-checkpoint-14").exists()


def test_truncate_metrics_drops_steps_after_the_checkpoint_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)) + '{"st')
    truncate_metrics(path, 3)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.num_generations_und=1", "num_generations_und"),
        ("train.rollout_pairs_per_call=3", "does not divide pairs_per_step"),
        ("data.min_similarity=1.5", "min_similarity"),
        ("train.pairs_per_step=0", "pairs_per_step"),
    ],
)
def test_configs_that_cannot_run_fail_at_load(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_single_task_mode_with_zero_task_weight_fails_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"set algo\.gen_loss_weight above 0"):
        load_config(None, ["data.mode=generation_only", "algo.gen_loss_weight=0"])
