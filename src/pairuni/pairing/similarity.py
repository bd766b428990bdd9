"""Exact dot products for selection and retrieval on CPU BLAS.

- `exact_dots`: the float64 dot products of float32 rows, the reference every decision of
  selection and retrieval follows (products of float32 are exact in float64; the sum is
  torch's float64 reduction, the same for any chunking or thread count).
- `int8_matmul`: the exact int32 products of int8 matrices (k-means steps). `torch._int_mm` is
  fast only where oneDNN has an int8 kernel (AVX512-VNNI, AMX); elsewhere (AVX2) it is ~100x
  slower than float32, so the same integers are computed by float32 matmuls over blocks of at
  most 1,024 columns, where every partial sum is an integer below 1024 * 127^2 < 2^24 and
  therefore exact in float32, whatever the summation order. Both give identical results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT8_MAX = 127.0
INT8_BLOCK = 1024
"""Columns per float32 block of `int8_matmul`: 1024 * 127^2 = 16,516,096 < 2^24."""


@dataclass
class Int8Keys:
    """Keys (n, d) quantised once with one global scale (entries in [-127, 127]), laid out
    (d, n) as `int8_matmul` takes them."""

    q8_t: torch.Tensor
    """(d, n) int8."""
    scale: float

    @classmethod
    def from_float(cls, keys: torch.Tensor) -> Int8Keys:
        keys = keys.float()
        peak = float(keys.abs().max()) if keys.numel() else 0.0
        scale = peak / INT8_MAX if peak > 0 else 1.0
        q8_t = torch.round(keys.t() / scale).to(torch.int8).contiguous()
        return cls(q8_t=q8_t, scale=scale)

    @property
    def n(self) -> int:
        return self.q8_t.shape[1]


_INT_MM_FAST: bool | None = None


def int_mm_is_fast() -> bool:
    """Whether `torch._int_mm` beats float32 on this CPU (timed once, on a small product)."""
    global _INT_MM_FAST
    if _INT_MM_FAST is None:
        import time

        a8 = torch.ones(64, 512, dtype=torch.int8)
        b8 = torch.ones(512, 64, dtype=torch.int8)
        a, b = a8.float(), b8.float()
        best = {}
        for name, fn in (("int8", lambda: torch._int_mm(a8, b8)), ("f32", lambda: a @ b)):
            fn()
            start = time.perf_counter()
            for _ in range(3):
                fn()
            best[name] = time.perf_counter() - start
        _INT_MM_FAST = best["int8"] < best["f32"]
    return _INT_MM_FAST


def int8_matmul(a8: torch.Tensor, b8: torch.Tensor, use_int_mm: bool | None = None) -> torch.Tensor:
    """Exact a8 (m, d) @ b8 (d, n) -> (m, n) int32 for int8 entries in [-127, 127].

    `use_int_mm`: `torch._int_mm` (True), float32 blocks (False), or whichever is faster here
    (None). The integers are the same either way."""
    if use_int_mm is None:
        use_int_mm = int_mm_is_fast()
    if use_int_mm:
        return torch._int_mm(a8, b8)
    out = None
    for start in range(0, a8.shape[1], INT8_BLOCK):
        stop = start + INT8_BLOCK
        part = (a8[:, start:stop].float() @ b8[start:stop].float()).to(torch.int32)
        out = part if out is None else out.add_(part)
    if out is None:
        return torch.zeros(a8.shape[0], b8.shape[1], dtype=torch.int32)
    return out


def exact_dots(a: torch.Tensor, b: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Row-wise float64 dot products of a (m, d) and b (m, d) -> (m,) float64 (the same values
    for any `chunk`: each row is reduced on its own)."""
    out = torch.empty(a.shape[0], dtype=torch.float64)
    for start in range(0, a.shape[0], chunk):
        stop = start + chunk
        out[start:stop] = (a[start:stop].double() * b[start:stop].double()).sum(dim=1)
    return out
