"""Random inputs shared by the question modules: every question draws from a seeded
``torch.Generator``, so ``check`` in a notebook and the batch grader (another seed) are repeatable.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0, dtype=torch.float32):
    """Standard normal numbers times ``scale``, drawn in float64 (the same stream whatever the
    dtype asked for), then cast to ``dtype``."""
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def bool_mask(gen: torch.Generator, *shape: int, empty_rows: int = 0) -> torch.Tensor:
    """Random boolean mask (True = may attend): every row keeps >= 1 key and masks >= 1 key
    (when it has two), except ``empty_rows`` rows with no allowed key at all."""
    mask = torch.rand(*shape, generator=gen) < 0.6
    S = shape[-1]
    keep = torch.randint(0, S, shape[:-1], generator=gen)
    mask.scatter_(-1, keep.unsqueeze(-1), True)
    if S > 1:
        drop = (keep + torch.randint(1, S, shape[:-1], generator=gen)) % S
        mask.scatter_(-1, drop.unsqueeze(-1), False)
    rows = mask.reshape(-1, S)
    for row in torch.randperm(rows.shape[0], generator=gen)[:empty_rows]:
        rows[row] = False
    return rows.reshape(shape)


def float_mask(
    gen: torch.Generator, *shape: int, dtype=torch.float32, empty_rows: int = 0
) -> torch.Tensor:
    """Additive mask: a random bias, with -inf where a random boolean mask is False
    (``empty_rows`` rows all -inf)."""
    bias = randn(gen, *shape, dtype=dtype)
    return bias.masked_fill(~bool_mask(gen, *shape, empty_rows=empty_rows), NEG_INF)
