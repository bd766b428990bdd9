"""Metric sinks: `metrics.jsonl` always (one flushed line per step), TensorBoard and W&B on
request. Only the main process writes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _clean(value: float) -> float | None:
    """JSON has no NaN: an undefined metric is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after `last_step` (a run killed after its last checkpoint logged steps
    that the resumed run will log again) and a torn last line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(record.get("step", -1)) <= last_step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


class Tracker:
    """Writes one dict of scalar metrics per step to every configured sink."""

    def __init__(
        self,
        out_dir: Path,
        report_to: list[str],
        run_name: str,
        config: dict[str, Any],
        wandb_project: str = "pairuni",
        resume_step: int | None = None,
    ) -> None:
        self.path = out_dir / METRICS_FILE
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._tb: Any = None
        self._wandb: Any = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run logs steps resume_step+1.. again: TensorBoard's readers drop the
            # earlier run's events from `purge_step` on, so no tag holds a step twice
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(
                log_dir=str(out_dir / "tensorboard" / run_name), purge_step=purge
            )
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError:
                raise RuntimeError(
                    "logging.report_to lists wandb but it is not installed; "
                    "`pip install wandb` or remove it from report_to"
                ) from None
            self._wandb = wandb.init(
                project=wandb_project, name=run_name, config=config, resume="allow"
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: _clean(float(v)) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            for key, value in metrics.items():
                if math.isfinite(float(value)):
                    self._tb.add_scalar(key, float(value), step)
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)

    def log_image(self, step: int, tag: str, image: Any) -> None:
        """A PIL image to TensorBoard / W&B (the PNG on disk is written by the caller)."""
        if self._tb is not None:
            import numpy as np

            self._tb.add_image(tag, np.asarray(image), step, dataformats="HWC")
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(image)}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
