"""How the trainer wires the PairGRPO pieces together, on the tiny random Janus: each rollout row
knows its pair, advantages are normalised over each pair's K consecutive rows and weighted by
that pair's w_p on BOTH tasks, and the loss it back-propagates uses exactly those advantages.

The rewards are chosen by the test (distinct within every group), so a wrong grouping or a
missing weight cannot hide behind tied rewards, and the expected advantages are computed by hand
from the pair records, not with the trainer's helpers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from pairuni.config import PairUniConfig
from pairuni.data.schema import Pair
from pairuni.rl.objective import TaskBatch, pairgrpo_loss
from pairuni.training.sampler import StepBatch
from pairuni.training.tiny_demo import demo_config
from pairuni.training.trainer import PairGRPOTrainer, StepRollouts, StepScores
from trainer_helpers import make_assets

K = {"und": 3, "gen": 2}  # different group sizes, so a K of the wrong task shows
PAIRS_PER_STEP = 4


class ChosenRewards:
    """Stands in for the RewardSet: fixed pseudo-random rewards in call order, distinct with
    probability 1 (so no group has zero variance and no two groups look alike)."""

    def __call__(
        self,
        task: str,
        prompts: Sequence[str],
        outputs: Sequence[Any],
        columns: Mapping[str, list[Any]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        gen = torch.Generator().manual_seed(1 if task == "understanding" else 2)
        total = torch.rand(len(outputs), generator=gen) * 4 - 1
        return total, {"chosen": total}, {}


@dataclass
class Step:
    trainer: PairGRPOTrainer
    batch: StepBatch
    rollouts: StepRollouts
    scores: StepScores


@pytest.fixture(scope="module")
def step(tmp_path_factory: pytest.TempPathFactory) -> Step:
    # one thread: the tiny model gains nothing from more, and on a busy machine competing
    # threads slowed these rollouts down twentyfold
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("wiring")
    assets = make_assets(root)
    raw = demo_config(
        assets["model"],
        assets["pairs"],
        root / "run",
        algo={"num_generations_und": K["und"], "num_generations_gen": K["gen"]},
        # two rollout calls a task (their groups are offset and concatenated); micro-batches of
        # 5 split both tasks' rows unevenly
        train={
            "pairs_per_step": PAIRS_PER_STEP,
            "rollout_pairs_per_call": 2,
            "micro_batch_size": 5,
        },
    )
    rewards: Any = ChosenRewards()  # duck-types the RewardSet call
    trainer = PairGRPOTrainer(PairUniConfig.model_validate(raw), reward_set=rewards)
    batch = trainer._sample_batch(0)
    kinds = [p.kind for p in batch.und]
    # w_p must matter: an aligned pair (w = 1) next to retrieved ones with distinct s_p < 1
    assert "aligned" in kinds and kinds.count("retrieved") >= 2, kinds
    assert len({p.similarity for p in batch.und if p.kind == "retrieved"}) >= 2
    rollouts = trainer._rollout(batch)
    return Step(trainer, batch, rollouts, trainer._score(batch, rollouts))


def pair_weight(pair: Pair) -> float:
    """The paper's w_p (Eq. 3): 1 for an aligned pair, sqrt(s_p) for a retrieved one."""
    if pair.kind == "aligned":
        return 1.0
    assert pair.similarity is not None
    return math.sqrt(pair.similarity)


def hand_advantages(
    rewards: torch.Tensor, pairs: Sequence[Pair], k: int, eps: float
) -> torch.Tensor:
    """Rows p*k .. p*k + k - 1 are pair p's group: (r - mean) / (sample std + eps) * w_p."""
    out = []
    for p, pair in enumerate(pairs):
        group = rewards[p * k : (p + 1) * k].double()
        out.append(pair_weight(pair) * (group - group.mean()) / (group.std() + eps))
    return torch.cat(out).float()


def expected(step: Step, task: str) -> torch.Tensor:
    pairs = step.batch.und if task == "und" else step.batch.gen
    eps = step.trainer.algo.advantage_epsilon
    return hand_advantages(step.scores.total[task], pairs, K[task], eps)


def test_every_rollout_row_knows_its_pair(step: Step) -> None:
    assert [task.spec.key for task in step.rollouts] == ["und", "gen"]
    for task in step.rollouts:
        rollout, slots = task.rollout, task.slots
        assert task.spec.num_samples == K[task.spec.key]
        # row r of a task belongs to pair r // K: the K samples of a pair are consecutive
        want = [p for p in range(PAIRS_PER_STEP) for _ in range(K[task.spec.key])]
        assert slots.tolist() == want, task.spec.key
        assert rollout.group.tolist() == want, task.spec.key  # the policy's own record agrees


def test_advantages_are_normalised_per_pair_and_weighted_on_both_tasks(step: Step) -> None:
    advantages = step.trainer._advantages(step.batch, step.scores)
    assert set(advantages) == {"und", "gen"}
    for task, adv in advantages.items():
        torch.testing.assert_close(adv.advantages, expected(step, task), rtol=1e-5, atol=1e-5)
        pairs = step.batch.und if task == "und" else step.batch.gen
        weights = torch.tensor([pair_weight(p) for p in pairs]).repeat_interleave(K[task])
        torch.testing.assert_close(adv.weights, weights)


def flat_grad(loss: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def test_the_backpropagated_loss_uses_those_advantages(
    step: Step, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer, rollouts = step.trainer, step.rollouts
    und_ro, gen_ro = rollouts["und"].rollout, rollouts["gen"].rollout
    # the gradient of the objective on the hand advantages, both tasks' whole batches at once
    und_logp = trainer.policy.text_logprobs(und_ro)
    gen_logp = trainer.policy.image_logprobs(gen_ro)
    und = TaskBatch(und_logp, und_ro.completion_mask.bool(), expected(step, "und"))
    gen = TaskBatch(gen_logp, torch.ones_like(gen_logp, dtype=torch.bool), expected(step, "gen"))
    want = flat_grad(pairgrpo_loss(und, gen, trainer.algo).loss, trainer.params)
    assert want.norm() > 0

    grads: list[torch.Tensor] = []

    def capture() -> dict[str, float]:
        # stands in for the optimiser step: the parameters stay as they are for other tests
        grads.append(trainer._take_grads())
        return {}

    monkeypatch.setattr(trainer, "_optimizer_step", capture)
    trainer._update(rollouts, trainer._advantages(step.batch, step.scores), 0)
    assert len(grads) == 1
    torch.testing.assert_close(grads[0], want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
