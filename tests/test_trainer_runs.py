"""Long runs that cannot lose work (issue 17): the run folder's lineage and rotation, resume
that applies, warns about or refuses each changed setting, TensorBoard after resume, rewards that
misbehave, empty input. On the tiny random Janus (a step takes a fraction of a second)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import pairuni.training.tiny_demo as demo
from pairuni.config import PairUniConfig
from pairuni.rewards.base import BuiltReward, RewardError, RewardSet
from pairuni.training import checkpoint as ckpt
from pairuni.training import runs
from pairuni.training.resume import RESUME_RULES, config_changes, rule_for
from pairuni.training.trainer import PairGRPOTrainer, TrainingSetupError
from trainer_helpers import make_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(2)
    return make_assets(tmp_path_factory.mktemp("demo"))


def config(assets: dict[str, Path], out: Path, **sections: Any) -> PairUniConfig:
    train = {"save_every": 1, "save_total_limit": None, **sections.pop("train", {})}
    return PairUniConfig.model_validate(
        demo.demo_config(assets["model"], assets["pairs"], out, train=train, **sections)
    )


def steps_logged(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def checkpoint_steps(out: Path) -> list[int]:
    return [step for step, _ in ckpt.list_checkpoints(out)]


def fake_checkpoint(out: Path, step: int, branch: str | None) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    state: dict[str, Any] = {"step": step}
    if branch is not None:
        state["branch"] = branch
    ckpt.write_state(path / ckpt.STATE_FILE, state)
    return path


# ----------------------------------------------------------------------------- the run folder


def test_rotation_deletes_only_checkpoints_of_the_branch_being_trained(tmp_path: Path) -> None:
    for step in (5, 6):
        fake_checkpoint(tmp_path, step, "earlier-run")
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step, "this-run")
    fake_checkpoint(tmp_path, 9, None)  # written before branches existed
    deleted = runs.rotate(tmp_path, keep=1, branch="this-run")
    assert [p.name for p in deleted] == ["checkpoint-1", "checkpoint-2"]
    assert checkpoint_steps(tmp_path) == [3, 5, 6, 9]


def test_a_fresh_run_over_another_run_refuses_and_deletes_nothing(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    # the reported loss: the old run's checkpoint-5/6 outnumbered the new run's by step
    old = config(assets, tmp_path, train={"max_steps": 2, "save_total_limit": 2})
    PairGRPOTrainer(old).train()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TrainingSetupError, match="already holds another run") as err:
        PairGRPOTrainer(config(assets, tmp_path, train={"max_steps": 1}))
    assert "--overwrite" in str(err.value) and "--move-aside" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_overwrite_deletes_the_old_run_and_move_aside_keeps_it(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    PairGRPOTrainer(config(assets, out, train={"max_steps": 3})).train()
    (out / "notes.txt").write_text("mine")  # not the trainer's: never touched
    aside = config(assets, out, train={"max_steps": 1, "existing_run": "move_aside"})
    PairGRPOTrainer(aside).train()
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.previous-")]
    assert len(moved) == 1 and checkpoint_steps(moved[0]) == [1, 2, 3]
    assert steps_logged(moved[0]) == [1, 2, 3]
    assert checkpoint_steps(out) == [1] and steps_logged(out) == [1]
    again = config(assets, out, train={"max_steps": 2, "existing_run": "overwrite"})
    PairGRPOTrainer(again).train()
    assert checkpoint_steps(out) == [1, 2] and steps_logged(out) == [1, 2]
    assert (out / "notes.txt").read_text() == "mine"


def test_resuming_from_an_older_checkpoint_starts_a_separate_branch(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    first = config(assets, tmp_path, train={"max_steps": 4})
    PairGRPOTrainer(first).train()
    old_branch = runs.branch_of(tmp_path / "checkpoint-4")
    fork = PairGRPOTrainer(
        config(assets, tmp_path, train={"max_steps": 3}), resume=tmp_path / "checkpoint-2"
    )
    fork.train()
    new_branch = fork.run_plan.branch
    assert new_branch != old_branch
    superseded = tmp_path / runs.SUPERSEDED / f"{old_branch}-after-2"
    assert checkpoint_steps(superseded) == [3, 4]  # moved, not deleted
    assert steps_logged(superseded) == [1, 2, 3, 4]
    assert checkpoint_steps(tmp_path) == [1, 2, 3]
    assert runs.branch_of(tmp_path / "checkpoint-3") == new_branch
    assert ckpt.read_state(tmp_path / "checkpoint-3")["parent"]["step"] == 2
    assert steps_logged(tmp_path) == [1, 2, 3]
    # a later --resume continues the NEW branch, not the old one that reached step 4
    later = PairGRPOTrainer(config(assets, tmp_path, train={"max_steps": 4}), resume=True)
    assert later.step == 3 and later.run_plan.branch == new_branch
    later.train()
    assert steps_logged(tmp_path) == [1, 2, 3, 4]
    assert runs.branch_of(tmp_path / "checkpoint-4") == new_branch


def test_a_branch_keeps_its_ancestors_under_rotation(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    PairGRPOTrainer(config(assets, tmp_path, train={"max_steps": 3})).train()
    fork = config(assets, tmp_path, train={"max_steps": 5, "save_total_limit": 1})
    PairGRPOTrainer(fork, resume=tmp_path / "checkpoint-1").train()
    # the branch's own 2..5 rotate down to 5; the first run's 1 (its start) stays
    assert checkpoint_steps(tmp_path) == [1, 5]


def test_a_branch_into_another_folder_starts_with_the_parents_metrics(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    parent, child = tmp_path / "parent", tmp_path / "child"
    PairGRPOTrainer(config(assets, parent, train={"max_steps": 3})).train()
    branch = PairGRPOTrainer(
        config(assets, child, train={"max_steps": 3}), resume=parent / "checkpoint-1"
    )
    branch.train()
    assert steps_logged(child) == [1, 2, 3] and checkpoint_steps(child) == [2, 3]
    assert checkpoint_steps(parent) == [1, 2, 3] and steps_logged(parent) == [1, 2, 3]
    run = json.loads((child / runs.RUN_FILE).read_text())
    assert run["parent"]["checkpoint"] == str((parent / "checkpoint-1").resolve())


def test_train_command_refuses_then_overwrites(assets: dict[str, Path], tmp_path: Path) -> None:
    from pairuni.cli import app

    file = tmp_path / "run.yaml"
    file.write_text(json.dumps(config(assets, tmp_path / "out").model_dump(mode="json")))
    cli = CliRunner()
    assert cli.invoke(app, ["train", "--config", str(file)]).exit_code == 0
    refused = cli.invoke(app, ["train", "--config", str(file)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output, refused.output
    again = cli.invoke(app, ["train", "--config", str(file), "--overwrite"])
    assert again.exit_code == 0, again.output


# ----------------------------------------------------------------------------- resume settings


def test_a_changed_learning_rate_and_warmup_apply_on_resume(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    train = {"max_steps": 2, "warmup_steps": 10, "lr_scheduler": "constant"}
    PairGRPOTrainer(config(assets, tmp_path, train=train)).train()
    changed = {**train, "max_steps": 3, "learning_rate": 1e-5, "warmup_steps": 0}
    resumed = PairGRPOTrainer(config(assets, tmp_path, train=changed), resume=True)
    # the restored state carried lr 1e-2 and a 10-update warmup (0.3 x 1e-2 at update 2)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert resumed.scheduler.get_last_lr()[0] == pytest.approx(1e-5)
    metrics = resumed.train()
    assert metrics["learning_rate"] == pytest.approx(1e-5)
    saved = ckpt.read_state(tmp_path / "checkpoint-3")["config"]["train"]["learning_rate"]
    assert saved == pytest.approx(1e-5)


def test_a_changed_warmup_uses_the_new_base_rate(assets: dict[str, Path], tmp_path: Path) -> None:
    PairGRPOTrainer(config(assets, tmp_path, train={"max_steps": 2})).train()
    changed = {"max_steps": 3, "warmup_steps": 4, "learning_rate": 2e-3}
    resumed = PairGRPOTrainer(config(assets, tmp_path, train=changed), resume=True)
    # update 2 of a 4-update warmup: 3/4 of the NEW base rate
    assert resumed.scheduler.get_last_lr()[0] == pytest.approx(0.75 * 2e-3)


def test_resume_refuses_a_changed_trainable_set_naming_the_key(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    PairGRPOTrainer(config(assets, tmp_path, train={"max_steps": 1})).train()
    model = {"path": str(assets["model"]), "device": "cpu", "trainable": ["language_model"]}
    with pytest.raises(TrainingSetupError, match=r"model\.trainable") as err:
        PairGRPOTrainer(config(assets, tmp_path, model=model), resume=True)
    assert "--set model.trainable=" in str(err.value)


def test_resume_warns_about_a_changed_group_size(
    assets: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    PairGRPOTrainer(config(assets, tmp_path, train={"max_steps": 1})).train()
    algo = {"num_generations_und": 3, "num_generations_gen": 2}
    with caplog.at_level("WARNING", logger="pairuni.training.trainer"):
        PairGRPOTrainer(config(assets, tmp_path, algo=algo), resume=True)
    assert "algo.num_generations_und: 2 -> 3" in caplog.text


def test_every_config_key_has_a_deliberate_rule() -> None:
    """A new setting must be placed in RESUME_RULES (under a section prefix at least)."""
    flat = dict(
        __import__("pairuni.training.resume", fromlist=["flatten"]).flatten(
            PairUniConfig().model_dump(mode="json")
        )
    )
    unruled = [key for key in flat if rule_for(key)[1] == "pairuni has no rule for this key"]
    assert unruled == []
    assert RESUME_RULES["train.master_weights"][0] == "refuse"
    saved = {"train": {"learning_rate": 1e-2, "master_weights": "fp32"}}
    now = {"train": {"learning_rate": 1e-5, "master_weights": "bf16"}, "new": 1}
    rules = {c.key: c.rule for c in config_changes(saved, now)}
    assert rules == {"train.learning_rate": "apply", "train.master_weights": "refuse"}


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_holds_each_step_once_after_a_resume(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging = {"report_to": ["tensorboard"], "progress_bar": False}
    PairGRPOTrainer(config(assets, tmp_path, train={"max_steps": 3}, logging=logging)).train()
    # as if killed after step 3 was logged but resumed from checkpoint 1 (the same branch)
    for step in (2, 3):
        import shutil

        shutil.rmtree(tmp_path / f"checkpoint-{step}")
    again = config(assets, tmp_path, train={"max_steps": 3}, logging=logging)
    PairGRPOTrainer(again, resume=True).train()
    events = EventAccumulator(str(tmp_path / "tensorboard" / tmp_path.name))
    events.Reload()
    steps = [event.step for event in events.Scalars("loss")]
    assert steps == [1, 2, 3]
    assert steps_logged(tmp_path) == [1, 2, 3]


# ----------------------------------------------------------------------------- rewards


def write_reward(tmp_path: Path, body: str) -> str:
    file = tmp_path / "my_reward.py"
    file.write_text("import math, time\n\ndef reward(prompts, completions, **columns):\n" + body)
    return f"{file}:reward"


def rewards_with(spec: str, **extra: Any) -> dict[str, Any]:
    return {
        "understanding": [{"name": "toy_letter_fraction"}],
        "generation": [{"name": spec}],
        **extra,
    }


def test_an_infinite_reward_is_named(assets: dict[str, Path], tmp_path: Path) -> None:
    spec = write_reward(tmp_path, "    return [math.inf] * len(prompts)\n")
    with pytest.raises(RewardError, match=r"'reward' returned inf at index 0"):
        PairGRPOTrainer(config(assets, tmp_path / "a", rewards=rewards_with(spec))).train()
    lenient = rewards_with(spec, on_reward_error="nan", max_rewardless_steps=None)
    out = tmp_path / "b"
    PairGRPOTrainer(config(assets, out, rewards=lenient)).train()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["gen/rewards/reward/errors"] == 1.0  # counted, and it reached metrics.jsonl
    assert last["gen/rewards/reward/none"] == 4.0


def test_a_task_without_signal_stops_the_run_with_a_message(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    spec = write_reward(tmp_path, "    return [None] * len(prompts)\n")
    rewards = rewards_with(spec, max_rewardless_steps=2)
    trainer = PairGRPOTrainer(
        config(assets, tmp_path / "run", rewards=rewards, train={"max_steps": 6})
    )
    with pytest.raises(RewardError, match="generation: no finite reward on any sample for 2"):
        trainer.train()
    assert trainer.step == 2
    assert steps_logged(tmp_path / "run") == [1, 2]  # the steps it ran are logged


def test_a_reward_that_never_returns_times_out() -> None:
    def stuck(prompts: list[str], completions: list[Any], **columns: Any) -> list[float]:
        time.sleep(30)
        return [0.0] * len(prompts)

    built = {"understanding": [BuiltReward("stuck", 1.0, stuck)]}
    start = time.perf_counter()
    with pytest.raises(RewardError, match=r"did not return within rewards\.timeout_s=0\.2"):
        RewardSet(built, timeout_s=0.2)("understanding", ["q"], ["a"])
    lenient = RewardSet(built, on_reward_error="nan", timeout_s=0.2)
    total, _, metrics = lenient("understanding", ["q"], ["a"])
    assert math.isnan(float(total[0])) and metrics["rewards/stuck/errors"] == 1.0
    assert time.perf_counter() - start < 5


def test_rewards_that_can_tell_are_asked_before_the_first_rollout(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    class Down:
        def check_health(self) -> None:
            raise RewardError("http://127.0.0.1:9 is down")

        def __call__(self, prompts: list[str], completions: list[Any], **c: Any) -> list[float]:
            raise AssertionError("never called")

    reward_set = RewardSet({"generation": [BuiltReward("remote", 1.0, Down())]})
    with pytest.raises(RewardError, match=r"rewards\.generation 'remote': http://127\.0\.0\.1:9"):
        PairGRPOTrainer(config(assets, tmp_path), reward_set=reward_set)


# ----------------------------------------------------------------------------- empty input


def test_an_empty_pair_file_says_so(assets: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TrainingSetupError, match="holds no pairs to train on: the file is empty"):
        PairGRPOTrainer(config(assets, tmp_path / "out", data={"path": str(empty)}))


def test_filters_that_remove_everything_are_counted(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    data = {"path": str(assets["pairs"]), "kinds": "retrieved", "min_similarity": 0.999}
    with pytest.raises(TrainingSetupError, match="removed") as err:
        PairGRPOTrainer(config(assets, tmp_path, data=data))
    assert "data.kinds=retrieved removed" in str(err.value)
    assert "the file holds" in str(err.value)


def test_a_reward_server_that_is_down_fails_before_the_first_rollout(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    rewards = rewards_with("http", on_reward_error="nan")
    rewards["generation"] = [{"name": "http", "kwargs": {"url": url}}]
    start = time.perf_counter()
    with pytest.raises(RewardError, match=r"rewards\.generation 'http'") as err:
        PairGRPOTrainer(config(assets, tmp_path, rewards=rewards))
    assert url in str(err.value) and "pairuni reward-server" in str(err.value)
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing ran
