"""The scoring-function zoo (chapter 3): every attention variant is a choice of ``score()``.

Attention turns a query and S keys into a probability mass function over the S positions and
returns the expected value under it: ``p = softmax(score(q, K))``, ``c = E_p[V] = sum_s p_s v_s``.
The variants of the literature differ ONLY in the score, so here they differ only in one
method: :class:`ScoredAttention` does the masking, the softmax and the weighted sum once, and
each subclass overrides ``score(query, keys) -> (B, L, S)``.

================================  ===============================  ===========================
class                             score(q, k_s)                    source
================================  ===============================  ===========================
:class:`CosineAttention`          beta * cos(q, k_s)               Graves et al. 2014 (NTM)
:class:`AdditiveScoredAttention`  v^T tanh(W_q q + W_k k_s)        Bahdanau et al. 2014
:class:`GeneralAttention`         q^T W k_s                        Luong et al. 2015
:class:`DotAttention`             q^T k_s                          Luong et al. 2015
:class:`ScaledDotAttention`       q^T k_s / sqrt(d)                Vaswani et al. 2017
:class:`LocationAttention`        (W_a q)_s, ignores k_s           Luong et al. 2015
================================  ===============================  ===========================

``AdditiveAttention`` is kept as another name of :class:`AdditiveScoredAttention`. It is NOT
chapter 2's ``bahdanau.AdditiveAttention``, which scores ONE decoder step's query against keys
projected once per sequence; the scorer here scores all L queries at once through ``score()``.

Shapes (the book's legend): B batch [N], L queries [L], S keys [S], Dq query width,
Dk key width, Dv value width. Masks are boolean, broadcastable to ``(B, L, S)``, and True means
the query MAY attend to the key (the ``F.scaled_dot_product_attention`` convention).

Also here, because later chapters and the exercises reuse them: :func:`attention_entropy`
(how spread out each row of weights is) and :func:`monte_carlo_context` (the context estimated
by sampling positions from p instead of summing over them; one sample is hard attention).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .core import masked_softmax

__all__ = [
    "AdditiveAttention",
    "AdditiveScoredAttention",
    "CosineAttention",
    "DotAttention",
    "GeneralAttention",
    "LocationAttention",
    "ScaledDotAttention",
    "ScoredAttention",
    "attention_entropy",
    "monte_carlo_context",
]


class ScoredAttention(nn.Module):
    """Base class: ``p = masked_softmax(score(q, K))`` over keys, context ``c = p @ V``.

    Subclasses override :meth:`score` only. Everything else (mask, softmax over the key axis,
    the expectation of the values) is shared, so the difference between two scorers is exactly
    the difference between their ``score`` methods.
    """

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores: query ``(B, L, Dq)``, keys ``(B, S, Dk)`` -> ``(B, L, S)``."""
        raise NotImplementedError

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from each query to the keys and return ``(context, weights)``.

        Args:
            query: ``(B, L, Dq)``.
            keys: ``(B, S, Dk)``.
            values: ``(B, S, Dv)``; the keys themselves when omitted.
            mask: optional boolean, broadcastable to ``(B, L, S)``: True = the query MAY
                attend to the key (``F.scaled_dot_product_attention``'s convention, the
                opposite of ``nn.MultiheadAttention``). A query with no allowed key gets
                all-zero weights and a zero context, never NaN.

        Returns:
            context ``(B, L, Dv)`` and weights ``(B, L, S)`` (each row sums to 1 over keys).
        """
        if values is None:
            values = keys
        scores = self.score(query, keys)  # (B, L, S)
        weights = masked_softmax(scores, mask, dim=-1)  # (B, L, S), rows sum to 1 over S
        context = weights @ values  # (B, L, S) @ (B, S, Dv) -> (B, L, Dv)
        return context, weights


class DotAttention(ScoredAttention):
    """Luong et al. (2015) "dot": score(q, k) = q^T k. No parameters; needs Dq == Dk."""

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return query @ keys.transpose(-2, -1)  # (B, L, D) @ (B, D, S) -> (B, L, S)


class ScaledDotAttention(ScoredAttention):
    """Vaswani et al. (2017): score(q, k) = q^T k / sqrt(d), d the query/key width."""

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        d = query.shape[-1]
        # (B, L, d) @ (B, d, S) -> (B, L, S)
        return query @ keys.transpose(-2, -1) / math.sqrt(d)


class GeneralAttention(ScoredAttention):
    """Luong et al. (2015) "general": score(q, k) = q^T W k, with W a learned (Dq, Dk) matrix."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        # Stored as a Linear from keys to query space: key_proj(k) = W k.
        self.key_proj = nn.Linear(key_dim, query_dim, bias=False)

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        projected = self.key_proj(keys)  # (B, S, Dk) -> (B, S, Dq)
        return query @ projected.transpose(-2, -1)  # (B, L, Dq) @ (B, Dq, S) -> (B, L, S)


class AdditiveScoredAttention(ScoredAttention):
    """Bahdanau et al. (2014): score(q, k) = v^T tanh(W_q q + W_k k), for L queries at once.

    Luong et al.'s "concat", v^T tanh(W [q; k]), is the same function with W = [W_q, W_k].
    Chapter 2's step-wise ``bahdanau.AdditiveAttention`` computes the same score for one decoder
    step at a time; this one is a member of the zoo: it overrides ``score()`` only.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W_q
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)  # W_k
        self.v = nn.Linear(attn_dim, 1, bias=False)  # v^T

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = self.query_proj(query).unsqueeze(2)  # (B, L, A) -> (B, L, 1, A)
        k = self.key_proj(keys).unsqueeze(1)  # (B, S, A) -> (B, 1, S, A)
        hidden = torch.tanh(q + k)  # broadcast -> (B, L, S, A)
        return self.v(hidden).squeeze(-1)  # (B, L, S, 1) -> (B, L, S)


AdditiveAttention = AdditiveScoredAttention  # the chapter's first name for it, kept working


class CosineAttention(ScoredAttention):
    """Content addressing of the Neural Turing Machine (Graves et al. 2014, eq. 5-6).

    score(q, k) = beta * cos(q, k), with beta > 0 the key strength: cosine lies in [-1, 1], so
    without beta the weights could never be sharper than exp(2) : 1 between two keys.
    In the NTM the controller emits beta at every step; here it is one learned scalar
    (``learn_beta=True``, stored as log beta so it stays positive) or a fixed number.
    """

    def __init__(self, beta: float = 1.0, learn_beta: bool = True, eps: float = 1e-8):
        super().__init__()
        log_beta = torch.tensor(math.log(beta))
        if learn_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)
        self.eps = eps  # guards the division for all-zero vectors

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = query / query.norm(dim=-1, keepdim=True).clamp_min(self.eps)  # (B, L, D) unit rows
        k = keys / keys.norm(dim=-1, keepdim=True).clamp_min(self.eps)  # (B, S, D) unit rows
        return self.beta * (q @ k.transpose(-2, -1))  # (B, L, D) @ (B, D, S) -> (B, L, S)


class LocationAttention(ScoredAttention):
    """Luong et al. (2015) "location": a_t = softmax(W_a h_t); the keys' content is ignored.

    The weights depend on the query alone: W_a maps the query to one score per source
    POSITION. A matrix needs a fixed number of rows, so W_a has ``max_source_len`` rows; for a
    source of length S <= max_source_len only the first S scores are used (the softmax then
    normalises over those S positions, and padding is removed with the mask as for every
    scorer). A source longer than ``max_source_len`` cannot be attended to: it raises.
    """

    def __init__(self, query_dim: int, max_source_len: int):
        super().__init__()
        self.max_source_len = max_source_len
        self.position_proj = nn.Linear(query_dim, max_source_len)  # W_a (with a bias)

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        S = keys.shape[-2]  # only the NUMBER of keys is used, never their content
        if S > self.max_source_len:
            raise ValueError(
                f"LocationAttention was built for at most {self.max_source_len} source "
                f"positions, got {S}"
            )
        scores = self.position_proj(query)  # (B, L, Dq) -> (B, L, max_source_len)
        return scores[..., :S]  # (B, L, S)


def attention_entropy(weights: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Entropy in nats of each distribution of attention weights: -sum_s p_s log p_s.

    Args:
        weights: ``(..., L, S)``, each row a distribution over the keys (masked keys have 0).
        dim: the key axis.

    Returns:
        ``(..., L)``: 0 for a one-hot row, log S for a uniform row over S keys. Zero weights
        contribute 0 (the limit of p log p), so masked keys never produce NaN.
    """
    logs = torch.log(weights.clamp_min(torch.finfo(weights.dtype).tiny))  # finite everywhere
    return -(torch.where(weights > 0, weights * logs, torch.zeros_like(weights))).sum(dim=dim)


def monte_carlo_context(
    weights: torch.Tensor,
    values: torch.Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Estimate the context E_p[V] by averaging the values at positions sampled from p.

    ``num_samples = 1`` is hard (stochastic) attention (Xu et al. 2015): the context is one
    value vector, chosen at random with probability p_s. The estimate is unbiased and its
    squared error shrinks like 1 / num_samples (so its RMS error like 1 / sqrt(num_samples)).

    Args:
        weights: ``(B, L, S)``, each row a distribution over the keys (rows must not be all 0).
        values: ``(B, S, Dv)``.
        num_samples: how many positions to draw, with replacement, per query.
        generator: optional ``torch.Generator`` for reproducible draws.

    Returns:
        ``(B, L, Dv)``.
    """
    B, L, S = weights.shape
    flat = weights.reshape(B * L, S)  # one distribution per row
    # (B*L, num_samples) positions in 0..S-1, drawn with replacement from each row's p
    positions = torch.multinomial(flat, num_samples, replacement=True, generator=generator)
    positions = positions.reshape(B, L * num_samples)  # (B, L*N)
    index = positions.unsqueeze(-1).expand(B, L * num_samples, values.shape[-1])  # (B, L*N, Dv)
    sampled = values.gather(1, index)  # (B, L*N, Dv): the value at each sampled position
    return sampled.reshape(B, L, num_samples, -1).mean(dim=2)  # (B, L, N, Dv) -> (B, L, Dv)
