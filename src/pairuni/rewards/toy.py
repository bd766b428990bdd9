"""The toy rewards of `configs/tiny.yaml`, registered by name (`toy_letter_fraction`,
`toy_redness`). The functions live in `pairuni.rl.demo` beside the tiny demo data; they are
registered here, not there, because tests also load that file by path (`demo.py:redness`),
which runs it again as another module and would register a second, different function under
the same name."""

from __future__ import annotations

from pairuni.rewards.base import register_reward
from pairuni.rl.demo import letter_fraction, redness

register_reward("toy_letter_fraction", task="understanding")(letter_fraction)
register_reward("toy_redness", task="generation")(redness)
