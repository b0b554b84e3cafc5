"""The chapter-3 graders, tested: plausible wrong answers lose points with the matching hint,
differently written correct answers score full marks.

Each wrong answer below is a mistake students make (or that courses report they make); the
string next to it is a fragment of the hint the student must read for it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attention_course.grading import grade

SOFTMAX = "ch03.masked_softmax"
ATTENTION = "ch03.scaled_dot_product_attention"
NEG_INF = float("-inf")


def _fill(scores, mask, value=NEG_INF):
    """Correct mask handling: bool True = keep; float = add."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, value)
    return scores + mask


def _safe_softmax(x, dim):
    return torch.nan_to_num(torch.softmax(x, dim=dim), nan=0.0)


# --------------------------------------------------------------------------- masked_softmax


def softmax_wrong_axis(scores, mask=None, dim=-1):
    return _safe_softmax(_fill(scores, mask), dim=-2 if scores.dim() > 1 else 0)


def softmax_ignores_dim(scores, mask=None, dim=-1):
    return _safe_softmax(_fill(scores, mask), dim=-1)


def softmax_flipped(scores, mask=None, dim=-1):
    if mask is not None and mask.dtype == torch.bool:
        mask = ~mask
    return _safe_softmax(_fill(scores, mask), dim)


def softmax_add01(scores, mask=None, dim=-1):
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=dim)


def softmax_multiply(scores, mask=None, dim=-1):
    if mask is not None:
        scores = scores * mask
    return torch.softmax(scores, dim=dim)


def softmax_mask_after(scores, mask=None, dim=-1):
    weights = torch.softmax(scores, dim=dim)
    if mask is not None and mask.dtype == torch.bool:
        weights = weights * mask
    elif mask is not None:
        weights = torch.softmax(scores + mask, dim=dim)
    return weights


def softmax_finite_fill(scores, mask=None, dim=-1):
    return torch.softmax(_fill(scores, mask, -1e9), dim=dim)


def softmax_small_fill(scores, mask=None, dim=-1):
    return _safe_softmax(_fill(scores, mask, -30.0), dim=dim)


def softmax_nan_on_empty(scores, mask=None, dim=-1):
    return torch.softmax(_fill(scores, mask), dim=dim)


def softmax_unstable(scores, mask=None, dim=-1):
    e = torch.exp(_fill(scores, mask))
    return e / e.sum(dim=dim, keepdim=True)


def softmax_unstable_guarded(scores, mask=None, dim=-1):
    e = torch.exp(_fill(scores, mask))
    total = e.sum(dim=dim, keepdim=True)
    return torch.where(total > 0, e / total, torch.zeros_like(e))


def softmax_in_place(scores, mask=None, dim=-1):
    if mask is not None and mask.dtype == torch.bool:
        scores.masked_fill_(~mask, NEG_INF)
    elif mask is not None:
        scores += mask
    return _safe_softmax(scores, dim)


def softmax_numpy(scores, mask=None, dim=-1):
    x = _fill(scores, mask).numpy()
    x = x - np.nan_to_num(x.max(axis=dim, keepdims=True), neginf=0.0)
    e = np.exp(x)
    return e / np.maximum(e.sum(axis=dim, keepdims=True), 1e-30)


def softmax_transposed_output(scores, mask=None, dim=-1):
    return _safe_softmax(_fill(scores, mask), dim).transpose(-2, -1)


def softmax_flattened(scores, mask=None, dim=-1):
    return _safe_softmax(_fill(scores, mask), dim).reshape(-1)


def softmax_float_as_bool(scores, mask=None, dim=-1):
    if mask is not None:
        scores = scores.masked_fill(~mask.bool(), NEG_INF)
    return _safe_softmax(scores, dim)


def softmax_inverts_float(scores, mask=None, dim=-1):
    if mask is not None:
        scores = scores.masked_fill(~mask, NEG_INF)
    return _safe_softmax(scores, dim)


def softmax_float32(scores, mask=None, dim=-1):
    return _safe_softmax(_fill(scores, mask), dim).float()


def softmax_not_normalised(scores, mask=None, dim=-1):
    x = _fill(scores, mask)
    return torch.exp(x - torch.nan_to_num(x.amax(dim=dim, keepdim=True), neginf=0.0))


def softmax_boolean_indexing(scores, mask=None, dim=-1):
    scores = scores.clone()
    if mask is not None and mask.dtype == torch.bool:
        scores[~mask] = NEG_INF  # needs the mask's full shape
    elif mask is not None:
        scores = scores + mask
    return _safe_softmax(scores, dim)


WRONG_SOFTMAX = [
    (softmax_wrong_axis, "wrong axis"),
    (softmax_ignores_dim, "`dim` argument"),
    (softmax_flipped, "polarity is flipped"),
    (softmax_add01, "not a 0/1 bias"),
    (softmax_multiply, "multiplying the scores by the mask"),
    (softmax_mask_after, "after the softmax"),
    (softmax_finite_fill, "uniform"),
    (softmax_small_fill, "exactly zero weight"),
    (softmax_nan_on_empty, "NaN"),
    (softmax_unstable, "overflows"),
    (softmax_unstable_guarded, "overflows"),
    (softmax_in_place, "in place"),
    (softmax_numpy, "NumPy array"),
    (softmax_transposed_output, "wrong order"),
    (softmax_flattened, "has shape"),
    (softmax_float_as_bool, "float mask is a bias ADDED"),
    (softmax_inverts_float, "`~` only works on a boolean mask"),
    (softmax_float32, "dtype"),
    (softmax_not_normalised, "sum over the axis"),
    (softmax_boolean_indexing, "broadcast"),
]


@pytest.mark.parametrize("answer, hint", WRONG_SOFTMAX, ids=[f.__name__ for f, _ in WRONG_SOFTMAX])
def test_wrong_masked_softmax_loses_points_with_the_hint(answer, hint):
    result = grade(SOFTMAX, answer)
    assert result.score < result.max_score, f"{answer.__name__} was not caught"
    messages = [t.message for t in result.tests if not t.passed]
    assert any(hint.lower() in m.lower() for m in messages), "\n".join(messages)


def softmax_where(scores, mask=None, dim=-1):
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = torch.where(mask, scores, torch.tensor(NEG_INF, dtype=scores.dtype))
        else:
            scores = scores + mask
    biggest = scores.max(dim=dim, keepdim=True).values
    biggest = torch.where(biggest == NEG_INF, torch.zeros_like(biggest), biggest)
    numerator = (scores - biggest).exp()
    denominator = numerator.sum(dim=dim, keepdim=True)
    return torch.where(denominator == 0, torch.zeros_like(numerator), numerator / denominator)


def softmax_builtin(scores, mask=None, dim=-1):
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(mask.logical_not(), NEG_INF)
    elif mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=dim).nan_to_num(0.0)


def softmax_logsumexp(scores, mask=None, dim=-1):
    x = scores.double()
    if mask is not None:
        x = x.masked_fill(~mask, NEG_INF) if mask.dtype == torch.bool else x + mask.double()
    log_z = torch.logsumexp(x, dim=dim, keepdim=True)
    weights = torch.exp(x - log_z)
    weights = torch.where(torch.isneginf(log_z), torch.zeros_like(weights), weights)
    return weights.to(scores.dtype)


def softmax_moved_axis(scores, mask=None, dim=-1):
    x = _fill(scores, mask)
    x = x.movedim(dim, -1)
    shifted = x - x.amax(-1, keepdim=True).clamp(min=torch.finfo(x.dtype).min)
    e = shifted.exp()
    out = e / e.sum(-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
    return out.movedim(-1, dim)


RIGHT_SOFTMAX = [softmax_where, softmax_builtin, softmax_logsumexp, softmax_moved_axis]


@pytest.mark.parametrize("answer", RIGHT_SOFTMAX, ids=[f.__name__ for f in RIGHT_SOFTMAX])
def test_correct_masked_softmax_variants_score_full_marks(answer):
    result = grade(SOFTMAX, answer)
    assert result.passed, result.report()


# --------------------------------------------------------------------------- attention


def _weights(scores, mask, fill=NEG_INF, safe=True):
    x = _fill(scores, mask, fill)
    weights = torch.softmax(x, dim=-1)
    return torch.nan_to_num(weights, nan=0.0) if safe else weights


def attention_no_scale(query, key, value, attn_mask=None):
    weights = _weights(query @ key.transpose(-2, -1), attn_mask)
    return weights @ value, weights


def attention_scale_by_e(query, key, value, attn_mask=None):
    weights = _weights(query @ key.transpose(-2, -1) / query.shape[-1], attn_mask)
    return weights @ value, weights


def attention_scale_by_value_width(query, key, value, attn_mask=None):
    weights = _weights(query @ key.transpose(-2, -1) / math.sqrt(value.shape[-1]), attn_mask)
    return weights @ value, weights


def attention_scale_after(query, key, value, attn_mask=None):
    weights = _weights(query @ key.transpose(-2, -1), attn_mask) / math.sqrt(query.shape[-1])
    return weights @ value, weights


def attention_wrong_axis(query, key, value, attn_mask=None):
    scores = _fill(query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1]), attn_mask)
    weights = torch.nan_to_num(torch.softmax(scores, dim=-2), nan=0.0)
    return weights @ value, weights


def attention_untransposed_key(query, key, value, attn_mask=None):
    weights = _weights(query @ key / math.sqrt(query.shape[-1]), attn_mask)
    return weights @ value, weights


def attention_bmm(query, key, value, attn_mask=None):
    scores = torch.bmm(query, key.transpose(1, 2)) / math.sqrt(query.shape[-1])
    weights = _weights(scores, attn_mask)
    return torch.bmm(weights, value), weights


def attention_transpose_1_2(query, key, value, attn_mask=None):
    scores = query @ key.transpose(1, 2) / math.sqrt(query.shape[-1])
    weights = _weights(scores, attn_mask)
    return weights @ value, weights


def attention_flipped_mask(query, key, value, attn_mask=None):
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = ~attn_mask
    weights = _weights(query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1]), attn_mask)
    return weights @ value, weights


def attention_add01_mask(query, key, value, attn_mask=None):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if attn_mask is not None:
        scores = scores + attn_mask
    weights = torch.softmax(scores, dim=-1)
    return weights @ value, weights


def attention_mask_before_scale(query, key, value, attn_mask=None):
    scores = query @ key.transpose(-2, -1)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        scores, attn_mask = scores + attn_mask, None
    weights = _weights(scores / math.sqrt(query.shape[-1]), attn_mask)
    return weights @ value, weights


def attention_float_as_bool(query, key, value, attn_mask=None):
    if attn_mask is not None:
        attn_mask = attn_mask.bool()
    weights = _weights(query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1]), attn_mask)
    return weights @ value, weights


def attention_nan_on_empty(query, key, value, attn_mask=None):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    weights = _weights(scores, attn_mask, safe=False)
    return weights @ value, weights


def attention_finite_fill(query, key, value, attn_mask=None):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, -1e9)
    elif attn_mask is not None:
        scores = scores + attn_mask.clamp(min=-1e9)
    weights = torch.softmax(scores, dim=-1)
    return weights @ value, weights


def attention_unstable(query, key, value, attn_mask=None):
    scores = _fill(query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1]), attn_mask)
    e = scores.exp()
    weights = torch.nan_to_num(e / e.sum(-1, keepdim=True), nan=0.0)  # hides 0/0, not inf/inf
    return weights @ value, weights


def attention_in_place(query, key, value, attn_mask=None):
    query.div_(math.sqrt(query.shape[-1]))
    weights = _weights(query @ key.transpose(-2, -1), attn_mask)
    return weights @ value, weights


def attention_numpy(query, key, value, attn_mask=None):
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    weights = _weights(scores, attn_mask)
    return (weights @ value).numpy(), weights.numpy()


def attention_output_only(query, key, value, attn_mask=None):
    weights = _weights(query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1]), attn_mask)
    return weights @ value


def attention_sequence_first(query, key, value, attn_mask=None):
    # reads the inputs as nn.MultiheadAttention's (L, B, E) and never turns them back
    q, k, v = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    weights = _weights(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), None)
    return weights @ v, weights


def attention_across_batch(query, key, value, attn_mask=None):
    # transposes batch and sequence in, computes, transposes back: attends across the batch
    q, k, v = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    weights = _weights(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), None)
    return (weights @ v).transpose(0, 1), weights.transpose(0, 1)


WRONG_ATTENTION = [
    (attention_no_scale, "1/sqrt(E)"),
    (attention_scale_by_e, "not 1/E"),
    (attention_scale_by_value_width, "not the width of the values"),
    (attention_scale_after, "before the softmax"),
    (attention_wrong_axis, "wrong axis"),
    (attention_untransposed_key, "last two axes swapped"),
    (attention_bmm, "torch.bmm takes only 3-D"),
    (attention_transpose_1_2, "negative axes"),
    (attention_flipped_mask, "polarity is flipped"),
    (attention_add01_mask, "not a 0/1 bias"),
    (attention_mask_before_scale, "after dividing them by sqrt(E)"),
    (attention_float_as_bool, "float mask is a bias ADDED"),
    (attention_nan_on_empty, "NaN"),
    (attention_finite_fill, "uniform"),
    (attention_unstable, "overflows"),
    (attention_in_place, "in place"),
    (attention_numpy, "NumPy array"),
    (attention_output_only, "return a tuple (output, weights)"),
    (attention_sequence_first, "wrong order"),
    (attention_across_batch, "batch axis"),
]


@pytest.mark.parametrize(
    "answer, hint", WRONG_ATTENTION, ids=[f.__name__ for f, _ in WRONG_ATTENTION]
)
def test_wrong_attention_loses_points_with_the_hint(answer, hint):
    result = grade(ATTENTION, answer)
    assert result.score < result.max_score, f"{answer.__name__} was not caught"
    messages = [t.message for t in result.tests if not t.passed]
    assert any(hint.lower() in m.lower() for m in messages), "\n".join(messages)


def attention_einsum(query, key, value, attn_mask=None):
    d = query.size(-1)
    logits = torch.einsum("...le,...se->...ls", query, key) * d**-0.5
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(attn_mask.logical_not(), NEG_INF)
        else:
            logits = logits + attn_mask
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.einsum("...ls,...sv->...lv", probs, value), probs


def attention_matmul_where(q, k, v, mask=None):
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(k.shape[-1])
    if mask is not None:
        scores = scores + (
            torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, NEG_INF)
            if mask.dtype == torch.bool
            else mask
        )
    top = scores.amax(-1, keepdim=True)
    e = torch.exp(scores - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    z = e.sum(-1, keepdim=True)
    w = torch.where(z > 0, e / z, torch.zeros_like(e))
    return torch.matmul(w, v), w


def attention_scaled_query(query, key, value, attn_mask=None):
    B_dims = query.shape[:-2]  # any leading dims, flattened to one batch and restored
    L, E = query.shape[-2:]
    q = (query / math.sqrt(E)).reshape(-1, L, E)
    k = key.expand(*B_dims, *key.shape[-2:]).reshape(-1, *key.shape[-2:])
    v = value.expand(*B_dims, *value.shape[-2:]).reshape(-1, *value.shape[-2:])
    scores = torch.bmm(q, k.transpose(1, 2)).reshape(*B_dims, L, -1)
    weights = softmax_where(scores, attn_mask)
    output = torch.bmm(weights.reshape(-1, L, k.shape[-2]), v).reshape(*B_dims, L, -1)
    return output, weights


RIGHT_ATTENTION = [attention_einsum, attention_matmul_where, attention_scaled_query]


@pytest.mark.parametrize("answer", RIGHT_ATTENTION, ids=[f.__name__ for f in RIGHT_ATTENTION])
def test_correct_attention_variants_score_full_marks(answer):
    result = grade(ATTENTION, answer)
    assert result.passed, result.report()


def test_the_references_score_full_marks():
    from attention_course.attention import masked_softmax, scaled_dot_product_attention

    assert grade(SOFTMAX, masked_softmax).passed
    assert grade(ATTENTION, scaled_dot_product_attention).passed


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hints_hold_for_other_seeds(seed):
    """Batch grading uses other seeds than the notebook: the catalogue must not depend on one."""
    for answer, hint in WRONG_SOFTMAX[:10]:
        result = grade(SOFTMAX, answer, seed=seed)
        messages = " ".join(t.message for t in result.tests if not t.passed)
        assert result.score < result.max_score and hint.lower() in messages.lower(), answer
    for answer, hint in WRONG_ATTENTION[:15]:
        result = grade(ATTENTION, answer, seed=seed)
        messages = " ".join(t.message for t in result.tests if not t.passed)
        assert result.score < result.max_score and hint.lower() in messages.lower(), answer
    for answer in RIGHT_SOFTMAX:
        assert grade(SOFTMAX, answer, seed=seed).passed
    for answer in RIGHT_ATTENTION:
        assert grade(ATTENTION, answer, seed=seed).passed


def test_attention_hints_name_the_right_mistake():
    """A swapped (weights, output) pair is named as such (not a wrong axis), and dropout on
    the weights is not reported as a wrong softmax axis."""
    from graderkit import assert_caught

    from attention_course.attention import scaled_dot_product_attention as reference

    def swapped(query, key, value, attn_mask=None):
        output, weights = reference(query, key, value, attn_mask)
        return weights, output

    def dropout(query, key, value, attn_mask=None):
        _, weights = reference(query, key, value, attn_mask)
        weights = torch.nn.functional.dropout(weights, p=0.3, training=True)
        return weights @ value, weights

    assert_caught(ATTENTION, swapped, "wrong order")
    result = grade(ATTENTION, dropout)
    messages = " ".join(t.message for t in result.tests if not t.passed)
    assert result.score < result.max_score and "over the wrong axis" not in messages
    assert "no dropout" in messages


def test_false_passes_of_the_old_graders_now_lose_points():
    """Answers written independently of the catalogue that used to get full marks."""
    from graderkit import assert_caught

    from attention_course.attention import masked_softmax as ref_softmax
    from attention_course.attention import scaled_dot_product_attention as reference

    def float_mask_nan(scores, mask=None, dim=-1):
        if mask is not None and mask.dtype != torch.bool:
            return torch.softmax(scores + mask, dim=dim)  # NaN on an all -inf row
        return ref_softmax(scores, mask, dim)

    def edits_mask(scores, mask=None, dim=-1):
        out = ref_softmax(scores, mask, dim)
        if mask is not None and mask.dtype == torch.bool:
            mask.logical_not_().logical_not_()[..., :1] = True
        return out

    def no_grad(query, key, value, attn_mask=None):
        with torch.no_grad():
            return reference(query, key, value, attn_mask)

    def squeezes(query, key, value, attn_mask=None):
        output, weights = reference(query, key, value, attn_mask)
        return output.squeeze(), weights.squeeze()

    def leaves_requires_grad(scores, mask=None, dim=-1):
        return ref_softmax(scores.requires_grad_(), mask, dim)

    assert_caught(SOFTMAX, float_mask_nan, "NaN")
    assert_caught(SOFTMAX, edits_mask, "changed its input `mask` in place")
    assert_caught(SOFTMAX, leaves_requires_grad, "requires_grad")
    assert_caught(ATTENTION, no_grad, "no gradient reaches")
    assert_caught(ATTENTION, squeezes, "squeeze")
