"""Evaluation during training (`train.eval_every`): the current policy on a subset of the
benchmarks before the first step (step 0: the baseline), every N steps and at the last, with
`pairuni eval`'s own runner (same prompts, sampling, scorers).

Each evaluation is an ordinary eval run folder, `out_dir/eval/step-{N}/`, so it resumes like one:
a run killed while evaluating step N re-runs what is missing of step N's evaluation when it
resumes from checkpoint-N. The scores are logged as `eval/{benchmark}/{metric}` in a second
metrics.jsonl line of step N.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pairuni.config import PairUniConfig
    from pairuni.eval.config import EvalConfig
    from pairuni.policy.base import UnifiedPolicy
    from pairuni.policy.config import ModelConfig

logger = logging.getLogger(__name__)


class TrainingEval:
    """What, when and where to evaluate during a run."""

    def __init__(self, config: PairUniConfig, out_dir: Path) -> None:
        self.every = config.train.eval_every
        self.max_steps = config.train.max_steps
        self.benchmarks = list(config.train.eval_benchmarks)
        self.eval_config: EvalConfig = config.eval.model_copy(
            update={"limit": config.train.eval_limit}
        )
        self.root = out_dir / "eval"

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def check(self, device: str) -> None:
        """Load the chosen benchmarks and build their judges now, so that a missing data folder
        or judge key fails before the first step, not at step N (raises the eval errors)."""
        if not self.enabled:
            return
        from pairuni.eval.benchmarks import load_benchmarks
        from pairuni.eval.scoring import build_judges

        loaded = load_benchmarks(self.benchmarks, self.eval_config)
        self.judges = build_judges(loaded, self.eval_config, device)

    def due(self, step: int) -> bool:
        return self.enabled and (step % self.every == 0 or step == self.max_steps)

    def folder(self, step: int) -> Path:
        return self.root / f"step-{step}"

    def finished(self, step: int) -> bool:
        """Whether step N's evaluation wrote its results for every chosen benchmark."""
        import json

        results = self.folder(step) / "results.json"
        if not results.is_file():
            return False
        done = json.loads(results.read_text(encoding="utf-8")).get("benchmarks", {})
        return all(name in done for name in self.benchmarks)

    def run(self, step: int, policy: UnifiedPolicy, model: ModelConfig) -> dict[str, float]:
        """Evaluate `policy` at `step` (resuming a partial evaluation); returns the metrics to
        log, `eval/{benchmark}/{metric}`."""
        from pairuni.eval.runner import run_eval

        judges = getattr(self, "judges", None)
        outcome = run_eval(
            self.eval_config,
            model_path=None,
            model_config=model,
            out_dir=self.folder(step),
            benchmarks=self.benchmarks,
            policy=policy,
            name=f"step-{step}",
            detector=judges.detector if judges else None,
            judge=judges.judge if judges else None,
        )
        metrics: dict[str, float] = {}
        for name, entry in outcome.results["benchmarks"].items():
            for key, value in entry["metrics"].items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    metrics[f"eval/{name}/{key}"] = float(value)
        logger.info("step %d: evaluated %s in %s", step, ", ".join(self.benchmarks), self.root)
        return metrics
