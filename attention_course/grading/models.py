"""Mistake models: what a known wrong answer computes, so a judge can NAME the mistake.

One masked softmax and one scaled dot-product attention, each with switches (the defaults give
the right answer):

- ``polarity=False``: the boolean mask read the wrong way round (True = may NOT attend);
- ``mask_as``: how the mask is applied: ``"inf"`` (right), ``"finite"`` (a fill such as -1e9,
  see ``fill``), ``"add01"`` (a bool mask added as 0/1), ``"multiply"``, ``"after"`` (weights
  masked after the softmax), ``"float_as_bool"`` (a float mask turned into a boolean one);
- ``dim`` / ``axis``: the softmax axis;  ``scale``: ``"sqrt_e"`` (right), ``"none"``, ``"e"``,
  ``"sqrt_ev"``; ``after``: scaling applied to the weights;
- ``stable=False``: no max subtraction (exp overflows); ``normalise=False``;
- ``empty``: a row with no allowed key gives ``"zeros"`` (the course) or ``"nan"``;
- ``transposed`` (key not transposed), ``mask_first`` (float mask before scaling),
  ``across_batch`` (attention over the batch axis).

``softmax_mistakes(scores, mask, dim)`` and ``attention_mistakes(query, key, value, mask)``
return the (hint, thunk) list for ``judges.expect_close(..., mistakes=...)``, most specific first.
A chapter question whose answer contains a masked softmax or an attention step reuses them.
"""

from __future__ import annotations

import functools
import math

import torch

from .hints import (
    ACROSS_BATCH,
    FLIPPED,
    FLOAT_AS_BOOL,
    IGNORES_DIM,
    MASK_AFTER,
    MASK_BEFORE_SCALE,
    MULTIPLIED,
    NAN_EMPTY,
    NO_SCALE,
    NOT_NORMALISED,
    OVERFLOW,
    SCALE_AFTER,
    SCALE_E,
    SCALE_EV,
    TRANSPOSED_KEY,
    UNIFORM_EMPTY,
    WRONG_AXIS,
    ZERO_ONE,
)

__all__ = ["attention_mistakes", "attention_variant", "softmax_mistakes", "softmax_variant"]

NEG_INF = float("-inf")


def softmax_variant(
    scores,
    mask,
    dim=-1,
    *,
    polarity=True,
    mask_as="inf",
    stable=True,
    empty="zeros",
    fill=-1e9,
    normalise=True,
):
    """The masked softmax with one mistake switched on (the defaults give the right answer)."""
    x = scores  # in the input's dtype, as a student's code would compute it
    if mask is not None:
        if mask.dtype == torch.bool:
            keep = mask if polarity else ~mask
            if mask_as == "inf":
                x = x.masked_fill(~keep, NEG_INF)
            elif mask_as == "finite":
                x = x.masked_fill(~keep, fill)
            elif mask_as == "add01":
                x = x + keep
            elif mask_as == "multiply":
                x = x * keep
        elif mask_as == "float_as_bool":
            x = x.masked_fill(mask == 0, NEG_INF)
        elif mask_as == "multiply":
            x = x * mask
        else:
            x = x + mask
    if stable:
        row_max = x.amax(dim=dim, keepdim=True)
        x = x - torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(x)
    if not normalise:
        return e
    out = e / e.sum(dim=dim, keepdim=True)
    if empty == "zeros":
        out = torch.nan_to_num(out, nan=0.0)
    if mask is not None and mask.dtype == torch.bool and mask_as == "after":
        out = scores.softmax(dim) * (mask if polarity else ~mask)
    return out


def softmax_mistakes(scores, mask, dim=-1):
    """(hint, thunk) pairs for the masked-softmax question, most specific first."""
    ndim = scores.dim()
    axis = dim % ndim

    def model(**kw):
        return functools.partial(softmax_variant, scores, mask, dim, **kw)

    mistakes = []
    if axis != ndim - 1:
        mistakes.append((IGNORES_DIM, functools.partial(softmax_variant, scores, mask, -1)))
    for other in range(ndim):
        if other != axis:
            mistakes.append((WRONG_AXIS, functools.partial(softmax_variant, scores, mask, other)))
    if mask is not None and mask.dtype == torch.bool:
        mistakes += [
            (FLIPPED, model(polarity=False)),
            (FLIPPED, model(polarity=False, empty="nan")),
            (ZERO_ONE, model(mask_as="add01")),
            (MULTIPLIED, model(mask_as="multiply")),
            (MASK_AFTER, model(mask_as="after")),
            (UNIFORM_EMPTY, model(mask_as="finite")),
        ]
    if mask is not None and mask.dtype != torch.bool:
        mistakes += [
            (FLOAT_AS_BOOL, model(mask_as="float_as_bool")),
            (FLOAT_AS_BOOL, model(mask_as="float_as_bool", empty="nan")),
            (MULTIPLIED, model(mask_as="multiply")),
        ]
    mistakes += [
        (NAN_EMPTY, model(empty="nan")),
        (OVERFLOW, model(stable=False, empty="nan")),
        (OVERFLOW, model(stable=False)),
        (NOT_NORMALISED, model(normalise=False)),
        (NOT_NORMALISED, model(normalise=False, stable=False)),
    ]
    return mistakes


def attention_variant(
    query,
    key,
    value,
    mask=None,
    *,
    scale="sqrt_e",
    axis=-1,
    after=False,
    transposed=False,
    mask_first=False,
    across_batch=False,
    **softmax_kw,
):
    """Scaled dot-product attention with one mistake switched on; returns (output, weights)."""
    if across_batch:
        out, w = attention_variant(
            query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), mask
        )
        return out.transpose(0, 1), w.transpose(0, 1)
    q, k, v = query, key, value
    E, Ev = q.shape[-1], v.shape[-1]
    factor = {"sqrt_e": math.sqrt(E), "none": 1.0, "e": float(E), "sqrt_ev": math.sqrt(Ev)}[scale]
    scores = q @ (k if transposed else k.transpose(-2, -1))  # (..., L, S)
    if mask is not None and mask.dtype != torch.bool and mask_first:
        scores, mask = scores + mask, None
    if not after:
        scores = scores / factor
    weights = softmax_variant(scores, mask, axis, **softmax_kw)
    if after:
        weights = weights / factor
    return weights @ v, weights


def attention_mistakes(query, key, value, mask=None):
    """(hint, thunk) pairs for the attention question, most specific first."""

    def model(**kw):
        return functools.cache(functools.partial(attention_variant, query, key, value, mask, **kw))

    mistakes = [
        (NO_SCALE, model(scale="none")),
        (SCALE_E, model(scale="e")),
        (SCALE_EV, model(scale="sqrt_ev")),
        (SCALE_AFTER, model(after=True)),
        (WRONG_AXIS, model(axis=-2)),
        (TRANSPOSED_KEY, model(transposed=True)),
    ]
    if query.dim() >= 3:
        mistakes.append((ACROSS_BATCH, model(across_batch=True)))
    if mask is not None and mask.dtype == torch.bool:
        mistakes += [
            (FLIPPED, model(polarity=False)),
            (FLIPPED, model(polarity=False, empty="nan")),
            (ZERO_ONE, model(mask_as="add01")),
            (MULTIPLIED, model(mask_as="multiply")),
            (MASK_AFTER, model(mask_as="after")),
            (UNIFORM_EMPTY, model(mask_as="finite")),
        ]
    if mask is not None and mask.dtype != torch.bool:
        mistakes += [
            (MASK_BEFORE_SCALE, model(mask_first=True)),
            (FLOAT_AS_BOOL, model(mask_as="float_as_bool")),
            (FLOAT_AS_BOOL, model(mask_as="float_as_bool", empty="nan")),
        ]
    mistakes += [
        (NAN_EMPTY, model(empty="nan")),
        (OVERFLOW, model(stable=False, empty="nan")),
        (OVERFLOW, model(stable=False)),
    ]
    return mistakes
