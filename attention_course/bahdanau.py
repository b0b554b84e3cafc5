"""Bahdanau, Cho & Bengio (2014): additive attention and the decoder that uses it (chapter 2).

The decoder of chapter 1 sees the source through one summary vector. Here it keeps every
encoder state h_j and, before each output step i, reads a fresh context from them:

    e_ij   = v^T tanh(W s_{i-1} + U h_j)          the alignment model (appendix A.1.2)
    alpha_ij = softmax_j(e_ij)                    over source positions j only (eq. 6)
    c_i    = sum_j alpha_ij h_j                   the context (eq. 5)

``U h_j`` does not depend on i, so it is computed once per source sequence (the paper's
appendix says so too) and reused at every decoder step: :meth:`AdditiveAttention.precompute`.

Shapes (the book's legend, PyTorch's names in brackets): B batch [N], S source length [S],
Q query width (the decoder state, H), K key width (an encoder state, 2 x the encoder's H for a
bidirectional encoder), A the attention width.

Masks follow the course convention (``F.scaled_dot_product_attention``'s): boolean, True = the
decoder MAY attend to that source position, False = padding that gets weight exactly 0.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention.core import masked_softmax

__all__ = ["AdditiveAttention"]


class AdditiveAttention(nn.Module):
    """Additive attention: e_ij = v^T tanh(W s_{i-1} + U h_j), then c_i = sum_j alpha_ij h_j.

    One decoder query per call (the decoder runs step by step), many source keys. The same
    scoring function, for many queries at once, is ``attention_course.attention.AdditiveAttention``
    (chapter 3's scoring zoo); the tests check that the two agree.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W: (A, Q)
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)  # U: (A, K)
        self.v = nn.Parameter(torch.empty(attn_dim))  # v: (A,)
        nn.init.uniform_(self.v, -(attn_dim**-0.5), attn_dim**-0.5)

    def precompute(self, keys: torch.Tensor) -> torch.Tensor:
        """U h_j for every source position, once per sequence: ``(B, S, K) -> (B, S, A)``."""
        return self.key_proj(keys)  # (B, S, K) -> (B, S, A)

    def score(self, query: torch.Tensor, projected_keys: torch.Tensor) -> torch.Tensor:
        """e_ij = v^T tanh(W s_{i-1} + U h_j): query (B, Q) and U h (B, S, A) -> (B, S)."""
        projected_query = self.query_proj(query)  # (B, Q) -> (B, A)
        # W s_{i-1} is the same for every source position j: broadcast it over the S axis.
        hidden = torch.tanh(projected_query.unsqueeze(1) + projected_keys)  # (B, S, A)
        return (hidden * self.v).sum(dim=-1)  # v^T over A: (B, S, A) -> (B, S)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor | None = None,
        projected_keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from the decoder state to the encoder states; return ``(context, weights)``.

        Args:
            query: ``(B, Q)``, the decoder's previous state s_{i-1}.
            keys: ``(B, S, K)``, the encoder states h_j (they are also the values).
            mask: optional boolean ``(B, S)``: True = MAY attend (a real source token),
                False = padding, which gets weight exactly 0 (the
                ``F.scaled_dot_product_attention`` convention, not ``nn.MultiheadAttention``'s).
            projected_keys: ``(B, S, A)`` from :meth:`precompute`; computed here when omitted.

        Returns:
            context ``(B, K)`` = sum_j alpha_ij h_j and weights ``(B, S)``, summing to 1 over S.
        """
        if projected_keys is None:
            projected_keys = self.precompute(keys)  # (B, S, A)
        scores = self.score(query, projected_keys)  # (B, S)
        weights = masked_softmax(scores, mask, dim=-1)  # (B, S), sums to 1 over source positions
        # sum_j alpha_ij h_j as multiply-and-sum: for one query it is faster than a (B, 1, S) bmm.
        context = (weights.unsqueeze(-1) * keys).sum(dim=1)  # (B, S, 1) * (B, S, K) -> (B, K)
        return context, weights
