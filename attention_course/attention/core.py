"""Masked softmax and scaled dot-product attention (chapter 3), checked against PyTorch.

Shapes (the book's legend, PyTorch's names in brackets): ``...`` any batch and head dims
(B [N], h), L query length, S key length, E query/key width, Ev value width.

Mask convention, as in ``torch.nn.functional.scaled_dot_product_attention``:

- a boolean mask is True where a query MAY attend to a key (False = masked out);
- a float mask is ADDED to the scores (0 = attend, ``-inf`` = masked out; any value = a bias).

One deliberate difference from PyTorch: a query row with no allowed key gets all-zero weights
(and so an all-zero output), never NaN.
"""

from __future__ import annotations

import math

import torch

__all__ = ["masked_softmax", "scaled_dot_product_attention"]


def masked_softmax(
    scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1
) -> torch.Tensor:
    """Softmax of ``scores`` over ``dim`` that ignores masked entries; numerically stable.

    Args:
        scores: float tensor, e.g. ``(..., L, S)`` attention scores.
        mask: optional, broadcastable to ``scores``. Boolean: True = MAY attend (kept),
            False = masked out (gets weight exactly 0). Float: added to the scores first
            (``0`` keeps, ``-inf`` masks out), as in ``F.scaled_dot_product_attention``.
        dim: the axis to normalise over (the key axis ``S`` for attention).

    Returns:
        Weights with the shape and dtype of ``scores``, summing to 1 over ``dim``, except in a
        row where every entry is masked: that row is all zeros (not NaN). Inputs are not changed.
    """
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))  # same shape as scores
        else:
            scores = scores + mask  # additive mask: 0 keeps, -inf removes
    # Subtract the row maximum so exp never overflows; a fully masked row has max -inf,
    # so use 0 there instead (its entries are all -inf and exp gives exact zeros).
    row_max = scores.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(scores - row_max)
    total = exp.sum(dim=dim, keepdim=True)
    # Empty rows (total 0) divide by 1 and stay 0 instead of becoming 0 / 0 = NaN.
    return exp / torch.where(total > 0, total, torch.ones_like(total))


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Attention(Q, K, V) = softmax(Q K^T / sqrt(E)) V, Vaswani et al. (2017), eq. 1.

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``.
        value: ``(..., S, Ev)``.
        attn_mask: optional, broadcastable to ``(..., L, S)``. Boolean: True = the query MAY
            attend to the key (the ``F.scaled_dot_product_attention`` convention; the opposite
            of ``nn.MultiheadAttention``). Float: added to the scaled scores.

    Returns:
        ``(output, weights)``: output ``(..., L, Ev)`` and weights ``(..., L, S)``, each row of
        weights summing to 1 over the keys. A query with no allowed key gets zero weights and a
        zero output (PyTorch may give NaN there).
    """
    E = query.shape[-1]
    # (..., L, E) @ (..., E, S) -> (..., L, S)
    scores = query @ key.transpose(-2, -1) / math.sqrt(E)
    weights = masked_softmax(scores, attn_mask, dim=-1)  # (..., L, S)
    output = weights @ value  # (..., L, S) @ (..., S, Ev) -> (..., L, Ev)
    return output, weights
