"""Which pairs each step trains on: the data modes of the paper's ablations, deterministic in
(seed, step) so that every process, and a resumed run, draws exactly the same global batch.

A step's batch has B slots. Slot i holds an understanding item (question side of some pair) and
a generation item (prompt side of some pair), either of which may be absent:

    pairs               und = gen = pair order[i]                  weight w_p of that pair
    unpaired            und = pair order_u[i], gen = pair order_g[i] (two independent shuffles)
    random_pairs        und = pair order[i], gen = pair partner[order[i]] (re-paired once)
    understanding_only  und = pair order[i], no gen
    generation_only     no und, gen = pair order[i]

Position `step * B + i` of a stream lies in epoch `pos // P` of a P-pair file, at `pos % P` of that
epoch's permutation (seeded from (seed, stream, epoch)); so the data position of a run is just
its step.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pairuni.data.schema import Pair
from pairuni.training.config import DataConfig

# Independent random streams, so changing one mode's use of randomness never shifts another's.
_STREAM_ORDER, _STREAM_GEN_ORDER, _STREAM_PARTNER = 0, 1, 2


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple (stable across processes and Python runs, unlike hash())."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def make_generator(*parts: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen


@dataclass(frozen=True)
class StepBatch:
    """The global batch of one step (every process holds the same one).

    Attributes:
        step: the step it is for.
        und: B pairs whose question side is trained, or [] when understanding is off.
        gen: B pairs whose prompt side is trained, or [] when generation is off.
        similarity: (B,) float, s_p of slot i (1 where pair weights do not apply).
        aligned: (B,) bool, True where the slot gets weight 1 whatever the weighting.
    """

    step: int
    und: list[Pair]
    gen: list[Pair]
    similarity: torch.Tensor
    aligned: torch.Tensor

    @property
    def size(self) -> int:
        return max(len(self.und), len(self.gen))


def filter_pairs(pairs: Sequence[Pair], config: DataConfig) -> list[Pair]:
    """The pairs `data.kinds` and `data.min_similarity` keep, in file order."""
    return [pair for pair in pairs if _rejecting_filter(pair, config) is None]


def _rejecting_filter(pair: Pair, config: DataConfig) -> str | None:
    """The setting that drops `pair` (None: it is kept)."""
    if config.kinds != "all" and pair.kind != config.kinds:
        return f"data.kinds={config.kinds}"
    low = config.min_similarity
    if low is not None and pair.kind == "retrieved" and (pair.similarity or 0.0) < low:
        return f"data.min_similarity={low}"
    return None


def filter_report(pairs: Sequence[Pair], config: DataConfig) -> str:
    """How many of `pairs` each data filter removes, e.g. `data.kinds=aligned removed 12 of
    12`: what an empty training set is explained with."""
    removed = Counter(_rejecting_filter(pair, config) for pair in pairs)
    removed.pop(None, None)
    parts = [f"{name} removed {count} of {len(pairs)}" for name, count in removed.most_common()]
    kinds = Counter(pair.kind for pair in pairs)
    held = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    return f"{'; '.join(parts) or 'no filter removed any'} (the file holds {held})"


class PairSampler:
    """Draws the B-slot batch of any step from a list of pairs, for one data mode."""

    def __init__(
        self, pairs: Sequence[Pair], config: DataConfig, pairs_per_step: int, seed: int
    ) -> None:
        if not pairs:
            raise ValueError(
                "no pairs to train on (data.kinds="
                f"{config.kinds}, data.min_similarity={config.min_similarity})"
            )
        self.pairs = list(pairs)
        self.config = config
        self.batch_size = pairs_per_step
        self.seed = seed
        self._orders: dict[tuple[int, int], list[int]] = {}
        self._partner: list[int] | None = None
        if config.mode == "random_pairs":
            perm = torch.randperm(len(self.pairs), generator=make_generator(seed, _STREAM_PARTNER))
            self._partner = perm.tolist()

    def _order(self, stream: int, epoch: int) -> list[int]:
        key = (stream, epoch)
        if key not in self._orders:
            if len(self._orders) > 8:  # only the current epoch or two are ever needed
                self._orders.clear()
            n = len(self.pairs)
            if self.config.shuffle:
                gen = make_generator(self.seed, stream, epoch)
                self._orders[key] = torch.randperm(n, generator=gen).tolist()
            else:
                self._orders[key] = list(range(n))
        return self._orders[key]

    def indices(self, step: int, stream: int = _STREAM_ORDER) -> list[int]:
        """Pair indices of the B slots of `step` in one stream."""
        n = len(self.pairs)
        out = []
        for pos in range(step * self.batch_size, (step + 1) * self.batch_size):
            out.append(self._order(stream, pos // n)[pos % n])
        return out

    def batch(self, step: int) -> StepBatch:
        mode = self.config.mode
        order = self.indices(step)
        und_idx: list[int] = order
        gen_idx: list[int] = order
        if mode == "unpaired":
            gen_idx = self.indices(step, _STREAM_GEN_ORDER)
        elif mode == "random_pairs":
            assert self._partner is not None
            gen_idx = [self._partner[i] for i in order]
        if mode == "understanding_only":
            gen_idx = []
        elif mode == "generation_only":
            und_idx = []
        size = self.batch_size
        if mode in ("pairs", "understanding_only", "generation_only"):
            chosen = [self.pairs[i] for i in order]
            similarity = torch.tensor([float(p.similarity or 0.0) for p in chosen])
            aligned = torch.tensor([p.kind == "aligned" for p in chosen], dtype=torch.bool)
        else:  # the two sides come from different pairs: no similarity to weight by
            similarity = torch.ones(size)
            aligned = torch.ones(size, dtype=torch.bool)
        return StepBatch(
            step=step,
            und=[self.pairs[i] for i in und_idx],
            gen=[self.pairs[i] for i in gen_idx],
            similarity=similarity,
            aligned=aligned,
        )
