"""The run folder `train.out_dir`: which run owns it, its branches, and what a start may touch.

A *branch* is one unbroken line of training steps. Every checkpoint records the branch that
wrote it and where that branch started (`trainer_state.json`: `branch`, `parent`), and
`out_dir/run.json` names the folder's current branch (its *head*). From that:

- rotation (`train.save_total_limit`) deletes only checkpoints of the branch being trained, never
  an earlier run's nor another branch's;
- a fresh run over a folder that holds another run's checkpoints or metrics refuses to start
  unless `train.existing_run` says `overwrite` (delete that run's files) or `move_aside` (move
  them to a sibling folder `<out_dir>.previous-<time>`);
- `--resume` continues the head branch from its newest checkpoint, whatever step numbers other
  branches reached;
- resuming from a checkpoint that is not the newest in the folder starts a new branch: the
  folder's later checkpoints, and a copy of its metrics and TensorBoard events, move to
  `out_dir/superseded/<branch>-after-<step>/`, so the folder shows one line of steps again and
  nothing is lost.

Everything here is read-only except `prepare` (main process only), so every process can reach
the same decision before any of them changes a file.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pairuni.training import checkpoint as ckpt

RUN_FILE = "run.json"
SUPERSEDED = "superseded"
ExistingRun = Literal["refuse", "overwrite", "move_aside"]

RUN_ARTIFACTS = (RUN_FILE, "metrics.jsonl", "config.yaml", "tensorboard", "samples", "eval")
"""What `pairuni train` writes into out_dir besides checkpoints: what `overwrite` deletes and
`move_aside` moves (other files there, e.g. the model a config points to, stay)."""


class RunFolderError(ValueError):
    """A start that would lose or mix another run's work; the message says the ways out."""


def new_branch_id() -> str:
    """Sortable by start time, unique across machines."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def branch_of(checkpoint: Path) -> str | None:
    """The branch that wrote `checkpoint` (None for checkpoints older than branches)."""
    try:
        return ckpt.read_state(checkpoint).get("branch")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_run(out_dir: Path) -> dict[str, Any]:
    path = out_dir / RUN_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def head_checkpoint(out_dir: Path) -> Path | None:
    """What `--resume` continues: the newest checkpoint of the folder's head branch, or the
    checkpoint the head branch started from when it has saved none yet; in a folder written
    before branches existed, the newest checkpoint."""
    found = ckpt.list_checkpoints(out_dir)
    head = read_run(out_dir).get("branch")
    if head is None:
        return found[-1][1] if found else None
    own = [path for _, path in found if branch_of(path) == head]
    if own:
        return own[-1]
    parent = read_run(out_dir).get("parent") or {}
    start = parent.get("checkpoint")
    return Path(start) if start and (Path(start) / ckpt.STATE_FILE).is_file() else None


def has_run(out_dir: Path) -> list[str]:
    """The names in out_dir that an earlier run of `pairuni train` left (empty: a free folder)."""
    if not out_dir.is_dir():
        return []
    names = [name for name in RUN_ARTIFACTS if (out_dir / name).exists()]
    names += [path.name for _, path in ckpt.list_checkpoints(out_dir)]
    return sorted(names)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a start does to out_dir, decided before anything is loaded."""

    out_dir: Path
    branch: str
    """The branch this run writes (its checkpoints carry it; rotation deletes only these)."""
    parent: dict[str, Any] | None
    """{branch, step, checkpoint} this branch starts from; None for a fresh run."""
    continues: bool
    """True when the run continues the checkpoint's own branch (a plain resume)."""
    clear: tuple[str, ...] = ()
    """Earlier run's artifacts to delete (`existing_run: overwrite`)."""
    move_aside_to: Path | None = None
    """Where the earlier run's artifacts move (`existing_run: move_aside`)."""
    supersede: tuple[Path, ...] = ()
    """Later checkpoints of the folder that move to `superseded/` (a new branch from an older
    checkpoint)."""
    superseded_dir: Path | None = None
    copy_metrics_from: Path | None = None
    """A parent run's metrics.jsonl whose lines up to the parent step start this folder's."""

    def describe(self) -> str:
        if self.supersede:
            steps = ", ".join(p.name for p in self.supersede)
            return (
                f"resuming from step {self.parent['step'] if self.parent else '?'} of a run that "
                f"went further: a new branch {self.branch} starts; the later checkpoints "
                f"({steps}) and a copy of the metrics moved to {self.superseded_dir}"
            )
        if self.move_aside_to is not None:
            return f"the earlier run in {self.out_dir} moved to {self.move_aside_to}"
        if self.clear:
            return f"deleted the earlier run in {self.out_dir} ({', '.join(self.clear)})"
        return ""


def plan_start(out_dir: Path, resume_from: Path | None, existing_run: ExistingRun) -> RunPlan:
    """Decide how this start treats out_dir; raises RunFolderError where it would lose work."""
    if resume_from is None:
        return _plan_fresh(out_dir, existing_run)
    state = ckpt.read_state(resume_from)
    step = int(state["step"])
    parent_branch = state.get("branch")
    parent = {"branch": parent_branch, "step": step, "checkpoint": str(resume_from.resolve())}
    inside = resume_from.resolve().parent == out_dir.resolve()
    if not inside:
        fresh = _plan_fresh(out_dir, existing_run, resuming=resume_from)
        metrics = resume_from.parent / "metrics.jsonl"
        return dataclasses.replace(
            fresh, parent=parent, copy_metrics_from=metrics if metrics.is_file() else None
        )
    later = tuple(path for s, path in ckpt.list_checkpoints(out_dir) if s > step)
    if not later and parent_branch is not None:
        return RunPlan(out_dir, parent_branch, parent, continues=True)
    branch = new_branch_id()
    old_head = read_run(out_dir).get("branch") or parent_branch or "unnamed"
    target = out_dir / SUPERSEDED / f"{old_head}-after-{step}"
    return RunPlan(out_dir, branch, parent, continues=False, supersede=later, superseded_dir=target)


def _plan_fresh(out_dir: Path, existing_run: ExistingRun, resuming: Path | None = None) -> RunPlan:
    found = has_run(out_dir)
    branch = new_branch_id()
    if not found:
        return RunPlan(out_dir, branch, None, continues=False)
    if existing_run == "overwrite":
        return RunPlan(out_dir, branch, None, continues=False, clear=tuple(found))
    if existing_run == "move_aside":
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = out_dir.with_name(f"{out_dir.name}.previous-{stamp}")
        return RunPlan(out_dir, branch, None, continues=False, move_aside_to=target)
    shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
    start = f"a branch from {resuming}" if resuming else "a fresh run"
    raise RunFolderError(
        f"train.out_dir {out_dir} already holds another run ({shown}); starting {start} there "
        "would delete or mix its checkpoints and metrics. Pass --resume to continue it, "
        "--overwrite to delete it, --move-aside to move it to "
        f"{out_dir.name}.previous-<time>, or set another train.out_dir"
    )


def prepare(plan: RunPlan, now_step: int) -> None:
    """Carry out the plan (main process only) and record the head branch in run.json."""
    out_dir = plan.out_dir
    if plan.move_aside_to is not None:
        plan.move_aside_to.mkdir(parents=True)
        for name in has_run(out_dir):
            (out_dir / name).rename(plan.move_aside_to / name)
    for name in plan.clear:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if plan.supersede:
        _supersede(plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan.copy_metrics_from is not None and not (out_dir / "metrics.jsonl").exists():
        shutil.copyfile(plan.copy_metrics_from, out_dir / "metrics.jsonl")  # truncated later
    record = read_run(out_dir) if plan.continues else {}
    history = list(read_run(out_dir).get("history", []))
    if not plan.continues:
        history.append({"branch": plan.branch, "parent": plan.parent, "started_at_step": now_step})
    record.update({"branch": plan.branch, "parent": plan.parent, "history": history})
    tmp = out_dir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    tmp.replace(out_dir / RUN_FILE)


def _supersede(plan: RunPlan) -> None:
    assert plan.superseded_dir is not None
    target = plan.superseded_dir
    target.mkdir(parents=True, exist_ok=True)
    for path in plan.supersede:
        path.rename(target / path.name)
    for name in ("metrics.jsonl", RUN_FILE):
        if (plan.out_dir / name).is_file():
            shutil.copyfile(plan.out_dir / name, target / name)
    step = int(plan.parent["step"]) if plan.parent else 0
    for folder, pattern in (("eval", "step-*"), ("samples", "step-*.png")):
        for path in sorted((plan.out_dir / folder).glob(pattern)):
            if _step_of(path) > step:  # the later branch's evaluations and sample grids
                (target / folder).mkdir(exist_ok=True)
                path.rename(target / folder / path.name)
    if (plan.out_dir / "tensorboard").is_dir():
        shutil.copytree(plan.out_dir / "tensorboard", target / "tensorboard", dirs_exist_ok=True)


def _step_of(path: Path) -> int:
    digits = path.name.removeprefix("step-").split(".")[0]
    return int(digits) if digits.isdigit() else -1


def rotate(out_dir: Path, keep: int | None, branch: str) -> list[Path]:
    """Delete all but the newest `keep` checkpoints OF `branch` (and stale temporary ones);
    returns what was deleted. Checkpoints of other branches and runs are never touched."""
    for stale in out_dir.glob(".tmp-checkpoint-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep is None:
        return []
    own = [path for _, path in ckpt.list_checkpoints(out_dir) if branch_of(path) == branch]
    doomed = own[:-keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
