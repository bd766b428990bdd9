"""The PairGRPO algorithm core: pure tensor functions with no model, no I/O and no globals.

    pairuni.rl.advantages   group-relative advantages, pair weights          (tensor -> tensor)
    pairuni.rl.losses       clipped surrogate, KL estimators, loss aggregation
    pairuni.rl.objective    the two-task PairGRPO objective over `TaskBatch`es
    pairuni.rl.config       the `algo` config section they read

The training loop that feeds them lives in `pairuni.training`; see docs/algorithm.md. Importing
this package (or its config) does not import torch, so that `pairuni --help` stays fast.
"""
