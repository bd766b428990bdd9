"""The Lumina-DiMOO backend: a masked discrete-diffusion unified model (docs/dimoo.md).

- `ids`: the special token ids and the image-code offset, read from the checkpoint;
- `model`: the checkpoint in the released layout -> transformers Llama modules (bidirectional)
  and diffusers' `VQModel`; `tiny`: a tiny random checkpoint in exactly that layout;
- `sequence`: the token layouts of text-to-image, understanding and editing;
- `sampling`: the batched MaskGIT image sampler and LLaDA text sampler, recording per token the
  step it was committed at and its log-prob; `logprobs`: the estimators for the policy ratio.
"""
