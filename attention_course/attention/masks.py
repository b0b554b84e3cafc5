"""Masks that turn one self-attention over ``[source; target]`` into an encoder-decoder (chapter 6).

A self-attention layer over the concatenation of a source (length S) and a target (length T)
can do an encoder-decoder's work when its ``(S+T, S+T)`` mask decides who may read whom:

- :func:`cross_attention_block_mask`: source rows read the source, target rows read ONLY the
  source. With the same projections, the target rows of that self-attention ARE the
  cross-attention of the target over the source (chapter 6 asserts it exactly).
- :func:`prefix_lm_mask`: source rows read the source, target row i reads the whole source and
  targets 0..i. One softmax then does the work of a decoder's self- AND cross-attention: this is
  the prefix language model (a decoder-only model doing an encoder-decoder's job).

Convention, as everywhere in the course: boolean, True = the query (row) MAY attend to the key
(column), like ``F.scaled_dot_product_attention``; ``nn.MultiheadAttention`` and
``nn.Transformer*`` use the opposite (convert with ``to_torch_mask``). Rows and columns are
ordered source first: positions ``0..S-1`` are the source, ``S..S+T-1`` the target.
"""

from __future__ import annotations

import torch

__all__ = ["cross_attention_block_mask", "prefix_lm_mask"]


def _check_lengths(source_length: int, target_length: int) -> None:
    if source_length < 0 or target_length < 0:
        raise ValueError(f"lengths must be >= 0, got S={source_length}, T={target_length}")


def prefix_lm_mask(
    source_length: int, target_length: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(S+T, S+T) boolean mask of a prefix LM, True where row i MAY attend to column j.

    Source rows (i < S) attend to every source column and to no target column (the source is
    read bidirectionally, like an encoder). Target row S+i attends to every source column and
    to target columns S..S+i: itself and the targets before it (causal, like a decoder).
    """
    _check_lengths(source_length, target_length)
    S, T = source_length, target_length
    mask = torch.zeros(S + T, S + T, dtype=torch.bool, device=device)
    mask[:, :S] = True  # every row reads the whole source
    mask[S:, S:] = torch.ones(T, T, dtype=torch.bool, device=device).tril()  # j <= i
    return mask


def cross_attention_block_mask(
    source_length: int, target_length: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(S+T, S+T) boolean mask, True = MAY attend: every row reads the source columns only.

    Source rows see the source (the encoder's self-attention); target rows see the source and
    no target (cross-attention). With the same projections, rows S.. of a self-attention over
    ``[source; target]`` under this mask equal the cross-attention of the target over the source.
    """
    _check_lengths(source_length, target_length)
    S, T = source_length, target_length
    mask = torch.zeros(S + T, S + T, dtype=torch.bool, device=device)
    mask[:, :S] = True
    return mask
