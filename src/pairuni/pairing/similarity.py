"""Exact dot products for selection and retrieval.

`exact_dots`: the float64 dot products of float32 rows, the reference every decision of
selection and retrieval follows (products of float32 are exact in float64; the sum is torch's
float64 reduction, the same for any chunking or thread count). The fast candidate searches in
front of it are float32 BLAS with a proven error bound (`select.exact_assign`,
`retrieve.knn_inner_product`); int8 and float16 filters were measured slower on CPUs without
AVX512-VNNI / AMX (benchmarks/RESULTS.md, "Pairing").
"""

from __future__ import annotations

import torch


def exact_dots(a: torch.Tensor, b: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Row-wise float64 dot products of a (m, d) and b (m, d) -> (m,) float64 (the same values
    for any `chunk`: each row is reduced on its own)."""
    out = torch.empty(a.shape[0], dtype=torch.float64)
    for start in range(0, a.shape[0], chunk):
        stop = start + chunk
        out[start:stop] = (a[start:stop].double() * b[start:stop].double()).sum(dim=1)
    return out
