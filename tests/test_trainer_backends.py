"""The trainer drives any backend through the `TrainablePolicy` protocol: a toy policy with no
Janus in it (two tables of logits, its own rollout records without prompt fields), registered
under a test name, trains two steps with KL, two updates a step and a checkpoint while importing
`pairuni.policy.janus` is made impossible. Also the record concatenation and the protocol check
that refuses a policy lacking members."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import pairuni.training.tiny_demo as demo
from pairuni.config import PairUniConfig
from pairuni.policy import registry
from pairuni.policy.base import (
    FsdpLayout,
    RolloutBatch,
    TextRollout,
    TrainablePolicy,
    UnifiedPolicy,
    missing_members,
)
from pairuni.policy.config import ModelConfig, RolloutConfig
from pairuni.training.trainer import PairGRPOTrainer, TrainingSetupError, concat_rollouts

BACKEND = "test-toy"
EOS, PAD = 0, 9
LETTERS = {1: "A", 2: "B", 3: "C", 4: " "}  # a space: answers differ in toy_letter_fraction
SIDE = 4  # images of SIDE x SIDE codes, one code per pixel
CODES = 4


@dataclasses.dataclass
class ToyTextRecord(RolloutBatch):
    """Only what the protocol asks of a text record (no prompt fields)."""

    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    texts: list[str]
    group: torch.Tensor


@dataclasses.dataclass
class ToyImageRecord(RolloutBatch):
    image_ids: torch.Tensor
    logprobs: torch.Tensor
    images: list[Image.Image]
    group: torch.Tensor


class ToyModel(torch.nn.Module):
    """Position-wise logits: text (L, 5) and image (N, CODES); nothing conditions on the
    prompt, which the rewards' group normalisation does not need."""

    def __init__(self, length: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.text = torch.nn.Parameter(torch.randn(length, len(LETTERS) + 1, generator=gen))
        self.image = torch.nn.Parameter(torch.randn(SIDE * SIDE, CODES, generator=gen))


class ToyPolicy:
    """A complete `TrainablePolicy` in sixty lines, loaded through the registry."""

    def __init__(self, model: ToyModel, model_config: ModelConfig, rollout: RolloutConfig) -> None:
        self.model, self.model_config, self.rollout_config = model, model_config, rollout
        self.model.eval()

    @classmethod
    def load(
        cls,
        path: str | Path | None,
        model_config: ModelConfig,
        rollout_config: RolloutConfig | None = None,
        *,
        for_training: bool = False,
    ) -> ToyPolicy:
        rollout = rollout_config or RolloutConfig()
        model = ToyModel(rollout.max_new_tokens)
        weights = Path(path if path is not None else str(model_config.path)) / "toy.pt"
        if weights.is_file():
            model.load_state_dict(torch.load(weights))
        return cls(model, model_config, rollout)

    # sampling ------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, rows: int, generator: Any) -> torch.Tensor:
        probs = torch.softmax(logits.detach(), -1).expand(rows, *logits.shape)
        flat = torch.multinomial(probs.reshape(-1, logits.shape[-1]), 1, generator=generator)
        return flat.reshape(rows, logits.shape[0])

    def rollout_text(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        num_samples: int = 1,
        *,
        options: Any = None,
        greedy: bool = False,
        generator: Any = None,
    ) -> ToyTextRecord:
        rows = len(questions) * num_samples
        tokens = self._sample(self.model.text, rows, generator)
        ended = (tokens == EOS).long().cumsum(1)
        mask = ((ended == 0) | ((ended == 1) & (tokens == EOS))).long()
        ids = torch.where(mask.bool(), tokens, PAD)
        texts = [
            "".join(LETTERS.get(int(t), "") for t in row[m.bool()])
            for row, m in zip(ids, mask, strict=True)
        ]
        record = ToyTextRecord(
            ids,
            mask,
            torch.zeros(rows, tokens.shape[1]),
            texts,
            self._groups(len(questions), num_samples),
        )
        record.logprobs = self.text_logprobs(record).detach()
        return record

    def rollout_image(
        self,
        prompts: Sequence[str],
        num_samples: int = 1,
        *,
        greedy: bool = False,
        generator: Any = None,
        decode: bool = True,
    ) -> ToyImageRecord:
        rows = len(prompts) * num_samples
        codes = self._sample(self.model.image, rows, generator)
        images = self.decode_images(codes) if decode else []
        record = ToyImageRecord(
            codes, torch.zeros(codes.shape), images, self._groups(len(prompts), num_samples)
        )
        record.logprobs = self.image_logprobs(record).detach()
        return record

    @staticmethod
    def _groups(count: int, k: int) -> torch.Tensor:
        return torch.arange(count).repeat_interleave(k)

    def text_logprobs(self, rollout: Any) -> torch.Tensor:
        table = torch.log_softmax(self.model.text.float(), -1)
        ids = torch.where(rollout.completion_mask.bool(), rollout.completion_ids, EOS)
        picked = table.expand(ids.shape[0], *table.shape).gather(2, ids.unsqueeze(2)).squeeze(2)
        return picked * rollout.completion_mask

    def image_logprobs(self, rollout: Any) -> torch.Tensor:
        table = torch.log_softmax(self.model.image.float(), -1)
        ids = rollout.image_ids
        return table.expand(ids.shape[0], *table.shape).gather(2, ids.unsqueeze(2)).squeeze(2)

    def decode_images(self, image_ids: torch.Tensor) -> list[Image.Image]:
        red = (image_ids.reshape(-1, SIDE, SIDE).float() * 255 / (CODES - 1)).to(torch.uint8)
        return [
            Image.merge(
                "RGB", [Image.fromarray(r.numpy())] + [Image.fromarray((255 - r).numpy())] * 2
            )
            for r in red
        ]

    # training members ----------------------------------------------------
    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"language_model": [self.model.text], "generation_head": [self.model.image]}

    def save(self, out_dir: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(state_dict or self.model.state_dict(), Path(out_dir) / "toy.pt")

    device = property(lambda self: self.model.text.device)
    dtype = property(lambda self: self.model.text.dtype)
    pad_id = property(lambda self: PAD)
    module = property(lambda self: self.model)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def eval(self) -> None:
        self.model.eval()

    def cast_trainable(self, dtype: torch.dtype) -> int:
        changed = 0
        for param in self.model.parameters():
            if param.dtype != dtype:
                param.data, changed = param.data.to(dtype), changed + param.numel()
        return changed

    def reference(self, dtype: str | None = None) -> ToyPolicy:
        self.reference_calls = getattr(self, "reference_calls", 0) + 1
        ref = ToyPolicy.load(None, self.model_config, self.rollout_config)  # the INITIAL one
        ref.model.requires_grad_(False)
        return ref

    def recorded_logprobs_are_exact(self, task: str) -> bool:
        return True

    def fsdp_layout(self, trainable: Sequence[str]) -> FsdpLayout:
        raise NotImplementedError("the toy backend is not sharded")


@pytest.fixture
def toy_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BACKENDS, BACKEND, f"{__name__}:ToyPolicy")


def toy_config(tmp_path: Path, **sections: Any) -> PairUniConfig:
    initial = tmp_path / "initial"
    ToyPolicy(ToyModel(5), ModelConfig(), RolloutConfig(max_new_tokens=5)).save(initial)
    pairs = demo.write_demo_pairs(tmp_path / "data", num_pairs=4)
    raw = demo.demo_config(initial, pairs, tmp_path / "run", **sections)
    cfg = PairUniConfig.model_validate(raw)
    # `model.backend` accepts only the real backends' names; a test one goes in after validation
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"backend": BACKEND})})


def test_a_toy_backend_trains_through_the_protocol_without_janus(
    toy_backend: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pairuni.policy.janus", None)  # any import of it fails
    cfg = toy_config(
        tmp_path,
        algo={"beta": 0.1, "num_iterations": 2},
        logging={"grad_agreement_every": 1, "image_grid_every": 1},
    )
    trainer = PairGRPOTrainer(cfg)
    assert isinstance(trainer.policy, ToyPolicy) and isinstance(trainer.policy, TrainablePolicy)
    assert trainer.policy.reference_calls == 1
    before = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters()}
    metrics = trainer.train()

    assert trainer.step == 2
    for name, param in trainer.policy.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not train"
    for key in ("und/kl", "gen/kl", "und/ratio/mean", "gen/ratio/mean", "grad_cosine", "loss"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert lines[0]["gen/completions/mean_length"] == SIDE * SIDE
    assert lines[0]["und/completions/max_length"] <= 5
    assert (tmp_path / "run" / "samples" / "step-2.png").is_file()
    # pi_ref stayed the initial model (the toy's reference loads model.path, frozen)
    assert trainer.ref_policy is not None
    for name, param in trainer.ref_policy.model.named_parameters():  # type: ignore[attr-defined]
        assert torch.equal(param, before[name]) and not param.requires_grad
    rollouts = trainer._rollout(trainer._sample_batch(2))
    initial = ToyPolicy.load(None, cfg.model, cfg.rollout)
    for task in rollouts:
        ref = trainer._ref_logprobs(task)
        want = task.spec.logprobs(initial, task.rollout).detach()
        torch.testing.assert_close(ref, want, rtol=0, atol=1e-6)
        assert not torch.allclose(want, task.spec.logprobs(trainer.policy, task.rollout))
    # the checkpoint is the toy's own format, and loads back through the registry
    saved = tmp_path / "run" / "checkpoint-2" / "model"
    again = registry.load_policy(saved, cfg.model, cfg.rollout)
    for name, param in again.model.named_parameters():  # type: ignore[attr-defined]
        assert torch.equal(param, dict(trainer.policy.model.named_parameters())[name])


def test_the_first_update_of_a_step_is_exactly_on_policy_for_the_toy(
    toy_backend: None, tmp_path: Path
) -> None:
    trainer = PairGRPOTrainer(toy_config(tmp_path, algo={"num_iterations": 2}))
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    # the record holds pi_old: the sampling log-probs, which the toy says are exact
    assert trainer._old_logprobs(rollouts["und"]) is rollouts["und"].rollout.logprobs
    first = trainer._update(rollouts, advantages, 0)
    assert rollouts["gen"].old_logp is rollouts["gen"].rollout.logprobs  # kept by the update
    assert first["und/ratio/min"] == first["und/ratio/max"] == 1.0
    assert first["gen/ratio/min"] == first["gen/ratio/max"] == 1.0
    second = trainer._update(rollouts, advantages, 1)
    assert second["gen/ratio/min"] != 1.0 or second["gen/ratio/max"] != 1.0


class InexactToy(ToyPolicy):
    """Records sampling log-probs that are not what `image_logprobs` computes (as Janus's do
    without `cfg_in_logprob`, or DiMOO's under an approximate estimator), and says so."""

    def rollout_image(self, *args: Any, **kwargs: Any) -> ToyImageRecord:
        record = super().rollout_image(*args, **kwargs)
        record.logprobs = record.logprobs - 0.25
        return record

    def recorded_logprobs_are_exact(self, task: str) -> bool:
        return task == "understanding"


def test_inexact_recorded_logprobs_are_recomputed_into_the_step_record(
    toy_backend: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKENDS, BACKEND, f"{__name__}:InexactToy")
    trainer = PairGRPOTrainer(toy_config(tmp_path, algo={"num_iterations": 2}))
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    advantages = trainer._advantages(batch, trainer._score(batch, rollouts))
    gen = rollouts["gen"]
    old = trainer._old_logprobs(gen)
    assert old is not None and old is not gen.rollout.logprobs
    torch.testing.assert_close(old, gen.rollout.logprobs + 0.25)
    assert trainer._old_logprobs(gen) is old  # computed once per step
    first = trainer._update(rollouts, advantages, 0)
    assert first["gen/ratio/min"] == first["gen/ratio/max"] == 1.0


def test_loss_passes_run_in_training_mode_only_when_asked(
    toy_backend: None, tmp_path: Path
) -> None:
    # gradient checkpointing (like LoRA dropout) needs training mode in the loss's forward;
    # rollouts, old and reference log-probs stay in eval mode, and so does the policy after
    model = {"gradient_checkpointing": True}
    trainer = PairGRPOTrainer(toy_config(tmp_path, model=model, algo={"num_iterations": 2}))
    seen: list[tuple[bool, bool]] = []  # (grad enabled, training mode) of each log-prob call
    real = trainer.policy.text_logprobs

    def spy(rollout: Any) -> torch.Tensor:
        seen.append((torch.is_grad_enabled(), trainer.policy.module.training))
        return real(rollout)

    trainer.policy.text_logprobs = spy  # type: ignore[method-assign]
    # pi_old recomputed: a no-grad pass of the policy itself, which must run in eval mode
    trainer.policy.recorded_logprobs_are_exact = lambda task: False  # type: ignore[method-assign]
    batch = trainer._sample_batch(0)
    rollouts = trainer._rollout(batch)
    seen.clear()  # the toy's sampler scores its own records
    trainer._update(rollouts, trainer._advantages(batch, trainer._score(batch, rollouts)), 0)
    assert {grad for grad, _ in seen} == {True, False}, seen
    assert all(grad == training for grad, training in seen), seen
    assert not trainer.policy.module.training


def test_a_policy_lacking_training_members_is_refused_with_their_names(
    toy_backend: None, tmp_path: Path
) -> None:
    policy = ToyPolicy.load(None, ModelConfig(), RolloutConfig(max_new_tokens=5))
    assert isinstance(policy, TrainablePolicy) and missing_members(policy) == []
    sampling = ("rollout_text", "rollout_image", "text_logprobs", "image_logprobs")
    members = {k: getattr(ToyPolicy, k) for k in (*sampling, "decode_images", "parameter_groups")}
    sampling_only = type("SamplingOnly", (), {**members, "save": ToyPolicy.save})()
    assert missing_members(sampling_only, UnifiedPolicy) == []
    lacking = (
        "cast_trainable, device, dtype, eval, fsdp_layout, module, pad_id, "
        "recorded_logprobs_are_exact, reference, train of the TrainablePolicy protocol"
    )
    with pytest.raises(TrainingSetupError, match=f"SamplingOnly .*lacks {lacking}"):
        PairGRPOTrainer(toy_config(tmp_path), policy=sampling_only)  # type: ignore[arg-type]


def test_fsdp_refuses_a_backend_without_a_layout(toy_backend: None) -> None:
    from pairuni.training.sharding import ShardingError, ShardingPlan

    plan = ShardingPlan("fsdp", type("Dist", (), {"world_size": 2})())  # type: ignore[arg-type]
    policy = ToyPolicy.load(None, ModelConfig(), RolloutConfig(max_new_tokens=5))
    with pytest.raises(ShardingError, match=r"toy backend is not sharded.*zero1"):
        plan.wrap(policy, ["language_model"])


def text_record(rows: int, width: int, group: int) -> TextRollout:
    ids = torch.arange(rows * width).reshape(rows, width) + 1
    ones = torch.ones(rows, width, dtype=torch.long)
    return TextRollout(
        ids, ones, torch.zeros(rows, 3, 2, 2), ids, ones, ones.float(), ["t"] * rows,
        torch.full((rows,), group),
    )  # fmt: skip


def test_concat_pads_by_the_record_class_rule_and_offsets_groups() -> None:
    @dataclasses.dataclass
    class Committed(RolloutBatch):
        commit_step: torch.Tensor
        group: torch.Tensor

        @classmethod
        def pad_rule(cls, name: str, pad_id: int) -> tuple[float, bool]:
            return -1, False  # a backend's own fill: "never committed"

    a = Committed(torch.zeros(1, 2, dtype=torch.long), torch.tensor([0]))
    b = Committed(torch.ones(2, 3, dtype=torch.long), torch.tensor([0, 1]))
    out = concat_rollouts([a, b], pad_id=7)
    assert out.commit_step.tolist() == [[0, 0, -1], [1, 1, 1], [1, 1, 1]]
    assert out.group.tolist() == [0, 1, 2]
    # the default rule: prompts left-padded with the pad id, completions right-padded
    both = TextRollout.concat([text_record(1, 2, 0), text_record(1, 3, 0)], pad_id=7)
    assert both.prompt_ids.tolist() == [[7, 1, 2], [1, 2, 3]]
    assert both.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert both.completion_ids.tolist() == [[1, 2, 7], [1, 2, 3]]
    assert both.logprobs.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_janus_is_a_trainable_policy_through_the_registry(tmp_path: Path) -> None:
    path = registry.write_tiny("janus", tmp_path / "tiny")
    config = ModelConfig(path=str(path), device="cpu", trainable=["language_model"])
    policy = registry.load_policy(None, config, RolloutConfig(cfg_in_logprob=False))
    assert missing_members(policy) == []
    assert policy.pad_id == policy.ids.pad  # type: ignore[attr-defined]
    assert policy.module is policy.model  # type: ignore[attr-defined]
    assert policy.recorded_logprobs_are_exact("understanding")  # type: ignore[attr-defined]
    assert not policy.recorded_logprobs_are_exact("generation")  # type: ignore[attr-defined]
    layout = policy.fsdp_layout(["language_model", "generation_head"])  # type: ignore[attr-defined]
    lm = policy.model.model.language_model  # type: ignore[attr-defined]
    units = [u for u in layout.units if not isinstance(u, list)]
    assert units[: len(lm.layers)] == list(lm.layers) and lm in units
    assert policy.model.model.generation_head in units  # type: ignore[attr-defined]
    replicated = {id(m) for m in layout.replicated}
    for name in ("vqmodel", "vision_model", "generation_embeddings", "aligner"):
        assert id(getattr(policy.model.model, name)) in replicated, name  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"unknown model\.backend 'nope'"):
        registry.load_policy(None, config.model_copy(update={"backend": "nope"}))
