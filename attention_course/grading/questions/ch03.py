"""Chapter 3's graded questions: masked softmax and scaled dot-product attention.

This module is the worked example of how to define questions (the recipe is in the docstring of
``attention_course.grading``). Each test makes seeded inputs of several shapes, and its judge
compares the answer with the reference in ``attention_course.attention``; when the values are
wrong, *mistake models* (what a known wrong answer computes) name the mistake in the hint.
"""

from __future__ import annotations

import functools

import torch

from attention_course.attention.core import masked_softmax as reference_masked_softmax
from attention_course.attention.core import (
    scaled_dot_product_attention as reference_attention,
)

from ..core import Question, Test, call_args, grad_args
from ..hints import (
    ANY_LEADING_DIMS,
    BROADCAST,
    INVERT_FLOAT,
    NAN_EMPTY,
    NOT_EXACT_ZERO,
    NOT_NORMALISED,
    OVERFLOW,
    ROWS_NOT_ONE,
    TRANSPOSED_KEY,
    WRONG_AXIS,
)
from ..inputs import bool_mask as _bool_mask
from ..inputs import float_mask as _float_mask
from ..inputs import randn as _randn
from ..judges import Fail, expect_close, expect_sequence, expect_tensor, expect_unchanged
from ..kit import grad_test
from ..models import attention_mistakes, softmax_mistakes

NEG_INF = float("-inf")


# --------------------------------------------------------------------------- ch03.masked_softmax


def _judge_softmax(case, *, nan_hint: str = "", exact_zero: bool = False):
    scores, mask, dim = (list(case.args) + [None, -1])[:3]
    weights = case.output
    mistakes = softmax_mistakes(scores, mask, dim)
    expect_close(weights, case.expected, "weights", mistakes=mistakes, nan_hint=nan_hint)
    if exact_zero and mask is not None:
        keep = mask if mask.dtype == torch.bool else torch.isfinite(mask)
        if (weights.masked_select(~keep.expand_as(weights)) != 0).any():
            raise Fail(NOT_EXACT_ZERO)


def _judge_softmax_unchanged(case):
    expect_unchanged(case, ["scores", "mask", "dim"])
    _judge_softmax(case)


def _softmax_shape_inputs(g):
    return [
        call_args(_randn(g, 2, 3, 5, 7), None, -1),
        call_args(_randn(g, 4, 6, dtype=torch.float64), _bool_mask(g, 4, 6), -1),
        call_args(_randn(g, 1, 1)),
    ]


def _judge_softmax_shape(case):
    expect_tensor(case.output, case.expected, "weights")


def _softmax_plain_inputs(g):
    return [
        call_args(_randn(g, 5, 7)),
        call_args(_randn(g, 2, 3, 5, 7), None, -1),
        call_args(_randn(g, 3, 1, 9)),
        call_args(_randn(g, 4, 1), None, -1),
    ]


def _softmax_dim_inputs(g):
    return [
        call_args(_randn(g, 4, 6), None, 0),
        call_args(_randn(g, 2, 5, 3), None, 1),
        call_args(_randn(g, 2, 5, 3), None, -2),
    ]


def _softmax_mask_inputs(g):
    return [
        call_args(_randn(g, 2, 3, 5, 7), _bool_mask(g, 2, 3, 5, 7), -1),
        call_args(_randn(g, 6, 9, scale=3.0), _bool_mask(g, 6, 9), -1),
    ]


def _softmax_broadcast_inputs(g):
    return [
        call_args(_randn(g, 2, 3, 5, 7), _bool_mask(g, 5, 7), -1),
        call_args(_randn(g, 2, 3, 5, 7), _bool_mask(g, 1, 7), -1),
        call_args(_randn(g, 2, 3, 5, 7), _bool_mask(g, 3, 1, 7), -1),
        call_args(_randn(g, 4, 6), _bool_mask(g, 6), -1),
    ]


def _softmax_empty_inputs(g):
    return [
        call_args(_randn(g, 2, 5, 7), _bool_mask(g, 2, 5, 7, empty_rows=3), -1),
        call_args(_randn(g, 4, 6), _bool_mask(g, 4, 6, empty_rows=1), -1),
        call_args(_randn(g, 3, 5), _float_mask(g, 3, 5, empty_rows=1), -1),  # all -inf row
    ]


def _softmax_grad_inputs(g):
    return [
        grad_args(_randn(g, 2, 4, 6), _bool_mask(g, 2, 4, 6), -1, wrt=[0]),
        grad_args(_randn(g, 1, 1, 5), None, -1, wrt=[0]),
        grad_args(_randn(g, 3, 5), _float_mask(g, 3, 5), -1, wrt=[0]),
    ]


def _softmax_large_inputs(g):
    return [
        call_args(_randn(g, 3, 8, scale=300.0)),
        call_args(_randn(g, 2, 4, 6, scale=1000.0), _bool_mask(g, 2, 4, 6), -1),
    ]


def _softmax_float_mask_inputs(g):
    return [
        call_args(_randn(g, 2, 5, 7), _float_mask(g, 2, 5, 7), -1),
        call_args(_randn(g, 3, 4), _float_mask(g, 3, 4), -1),
    ]


def _softmax_unchanged_inputs(g):
    return [
        call_args(_randn(g, 2, 5, 7), _bool_mask(g, 2, 5, 7), -1),
        call_args(_randn(g, 3, 4, scale=100.0), None, -1),
    ]


MASKED_SOFTMAX = Question(
    id="ch03.masked_softmax",
    answer="masked_softmax",
    reference=reference_masked_softmax,
    title="masked_softmax(scores, mask=None, dim=-1): a numerically stable softmax with a mask",
    arg_names=("scores", "mask", "dim"),
    error_hints=(
        (r"operator\.invert|bitwise_not", INVERT_FLOAT),
        (
            r"must match the size|shape mismatch|broadcast|doesn't match|shape of the mask",
            BROADCAST,
        ),
    ),
    tests=(
        Test(
            "returns a tensor with the shape and dtype of `scores`",
            _softmax_shape_inputs,
            _judge_softmax_shape,
        ),
        Test(
            "without a mask: the softmax over the last axis", _softmax_plain_inputs, _judge_softmax
        ),
        Test("normalises over the `dim` argument", _softmax_dim_inputs, _judge_softmax),
        Test(
            "masked keys (mask False) get exactly zero weight, the rest sum to 1",
            _softmax_mask_inputs,
            functools.partial(_judge_softmax, exact_zero=True),
        ),
        Test(
            "a mask broadcasts against the scores",
            _softmax_broadcast_inputs,
            functools.partial(_judge_softmax, exact_zero=True),
        ),
        Test(
            "a row with no allowed key gives zeros, not NaN",
            _softmax_empty_inputs,
            functools.partial(_judge_softmax, nan_hint=NAN_EMPTY),
        ),
        Test(
            "large scores do not overflow",
            _softmax_large_inputs,
            functools.partial(_judge_softmax, nan_hint=OVERFLOW),
        ),
        Test(
            "a float mask is added to the scores",
            _softmax_float_mask_inputs,
            functools.partial(_judge_softmax, exact_zero=True),
        ),
        Test("does not change its inputs", _softmax_unchanged_inputs, _judge_softmax_unchanged),
        grad_test("gradients flow back to the scores", _softmax_grad_inputs, ("scores",)),
    ),
)


# ---------------------------------------------------- ch03.scaled_dot_product_attention


def _qkv(g, *batch: int, L: int, S: int, E: int, Ev: int, scale: float = 1.0):
    """query (..., L, E), key (..., S, E), value (..., S, Ev)."""
    return (
        _randn(g, *batch, L, E, scale=scale),
        _randn(g, *batch, S, E, scale=scale),
        _randn(g, *batch, S, Ev),
    )


def _judge_attention(case, *, nan_hint: str = "", exact_zero: bool = False):
    query, key, value, mask = (list(case.args) + [None])[:4]
    expect_sequence(case.output, 2, "(output, weights)", case.expected)
    output, weights = case.output
    expected_output, expected_weights = case.expected
    mistakes = attention_mistakes(query, key, value, mask)
    # the output first: a wrong-shaped weights tensor (e.g. attention over the batch) still
    # leaves an output whose values a mistake model can name
    expect_close(
        output,
        expected_output,
        "output",
        mistakes=[(hint, lambda m=m: m()[0]) for hint, m in mistakes],
        nan_hint=nan_hint,
    )
    expect_close(
        weights,
        expected_weights,
        "weights",
        mistakes=[(hint, lambda m=m: m()[1]) for hint, m in mistakes],
        nan_hint=nan_hint,
    )
    if exact_zero and mask is not None:
        keep = mask if mask.dtype == torch.bool else torch.isfinite(mask)
        if (weights.masked_select(~keep.expand_as(weights)) != 0).any():
            raise Fail(NOT_EXACT_ZERO)


def _judge_attention_shapes(case):
    expect_sequence(case.output, 2, "(output, weights)", case.expected)
    expected_output, expected_weights = case.expected
    expect_tensor(case.output[0], expected_output, "output")
    expect_tensor(case.output[1], expected_weights, "weights")


def _judge_rows_sum_to_one(case):
    expect_sequence(case.output, 2, "(output, weights)", case.expected)
    weights = case.output[1]
    expect_tensor(weights, case.expected[1], "weights")
    ones = torch.ones(weights.shape[:-1], dtype=torch.float64)
    if not torch.allclose(weights.double().sum(-1), ones, atol=1e-5):
        columns = torch.ones(weights.shape[:-2] + weights.shape[-1:], dtype=torch.float64)
        if weights.shape[-2] > 1 and torch.allclose(weights.double().sum(-2), columns, atol=1e-5):
            raise Fail(WRONG_AXIS)
        raise Fail(NOT_NORMALISED if weights.shape[-2] == 1 else ROWS_NOT_ONE)


def _judge_attention_unchanged(case):
    expect_unchanged(case, ["query", "key", "value", "attn_mask"])
    _judge_attention(case)


def _attention_shape_inputs(g):
    return [
        call_args(*_qkv(g, 2, L=5, S=7, E=4, Ev=3)),
        call_args(*_qkv(g, 3, L=1, S=6, E=8, Ev=2)),
        call_args(*_qkv(g, 1, L=4, S=1, E=3, Ev=2)),  # B = 1, S = 1: no axis may vanish
        call_args(*_qkv(g, 1, L=1, S=1, E=1, Ev=1), _bool_mask(g, 1, 1, 1)),
    ]


def _attention_grad_inputs(g):
    return [
        grad_args(*_qkv(g, 2, L=3, S=5, E=4, Ev=3), _bool_mask(g, 2, 3, 5), wrt=[0, 1, 2]),
        grad_args(*_qkv(g, 1, L=1, S=4, E=2, Ev=2), wrt=[0, 1, 2]),
    ]


def _attention_value_inputs(g):
    return [
        # first L == S == E: a transposed key, or attending over the batch, still runs here
        call_args(*_qkv(g, 2, L=6, S=6, E=6, Ev=5)),
        call_args(*_qkv(g, 2, L=5, S=7, E=4, Ev=3)),
        call_args(*_qkv(g, 3, L=1, S=6, E=8, Ev=2)),
        call_args(*_qkv(g, 4, L=3, S=5, E=16, Ev=16)),
    ]


def _attention_rows_inputs(g):
    return [
        call_args(*_qkv(g, 2, L=5, S=7, E=4, Ev=3)),
        call_args(*_qkv(g, 2, 3, L=4, S=9, E=8, Ev=8)),
    ]


def _attention_dims_inputs(g):
    return [
        call_args(*_qkv(g, L=5, S=7, E=4, Ev=3)),  # no batch dim
        call_args(*_qkv(g, 2, 3, L=5, S=7, E=8, Ev=6)),  # (B, h, ...)
        call_args(*_qkv(g, 2, 2, 3, L=1, S=3, E=4, Ev=4)),  # three leading dims, L = 1
    ]


def _attention_bool_mask_inputs(g):
    return [
        call_args(*_qkv(g, 2, L=5, S=7, E=4, Ev=3), _bool_mask(g, 2, 5, 7)),
        call_args(*_qkv(g, 2, 3, L=4, S=6, E=8, Ev=8), _bool_mask(g, 2, 3, 4, 6)),
    ]


def _attention_float_mask_inputs(g):
    return [
        call_args(*_qkv(g, 2, L=5, S=7, E=4, Ev=3), _float_mask(g, 2, 5, 7)),
        call_args(*_qkv(g, 3, L=3, S=4, E=9, Ev=2), _float_mask(g, 3, 4)),
    ]


def _attention_broadcast_inputs(g):
    return [
        call_args(*_qkv(g, 2, 3, L=5, S=7, E=8, Ev=6), _bool_mask(g, 5, 7)),
        call_args(*_qkv(g, 2, 3, L=5, S=7, E=8, Ev=6), _bool_mask(g, 2, 1, 1, 7)),
    ]


def _attention_empty_inputs(g):
    q, k, v = _qkv(g, 2, L=5, S=7, E=4, Ev=3)
    float_mask = torch.zeros(5, 7).masked_fill(~_bool_mask(g, 5, 7, empty_rows=1), NEG_INF)
    return [
        call_args(q, k, v, _bool_mask(g, 2, 5, 7, empty_rows=3)),
        call_args(q, k, v, float_mask),
    ]


def _attention_large_inputs(g):
    return [
        call_args(*_qkv(g, 2, L=5, S=7, E=8, Ev=3, scale=30.0)),
        call_args(*_qkv(g, 2, L=4, S=6, E=4, Ev=4, scale=30.0), _bool_mask(g, 2, 4, 6)),
    ]


def _attention_unchanged_inputs(g):
    return [
        call_args(*_qkv(g, 2, L=5, S=7, E=4, Ev=3), _bool_mask(g, 2, 5, 7)),
        call_args(*_qkv(g, 3, L=3, S=4, E=9, Ev=2)),
    ]


SCALED_DOT_PRODUCT_ATTENTION = Question(
    id="ch03.scaled_dot_product_attention",
    answer="scaled_dot_product_attention",
    reference=reference_attention,
    title="scaled_dot_product_attention(query, key, value, attn_mask=None) -> (output, weights)",
    arg_names=("query", "key", "value", "attn_mask"),
    error_hints=(
        (r"operator\.invert|bitwise_not", INVERT_FLOAT),
        (r"3D tensor|3-D tensor|batch1 must be|dimension out of range", ANY_LEADING_DIMS),
        (
            r"cannot be multiplied|mat1 and mat2|"
            r"size of tensor a .* must match the size of tensor b .* non-singleton dimension",
            TRANSPOSED_KEY,
        ),
        (r"broadcast|shape mismatch|doesn't match|shape of the mask", BROADCAST),
    ),
    tests=(
        Test(
            "returns (output, weights) shaped (..., L, Ev) and (..., L, S)",
            _attention_shape_inputs,
            _judge_attention_shapes,
        ),
        Test(
            "output and weights equal softmax(Q K^T / sqrt(E)) V and its weights",
            _attention_value_inputs,
            _judge_attention,
        ),
        Test("the weights sum to 1 over the keys", _attention_rows_inputs, _judge_rows_sum_to_one),
        Test(
            "works with any leading dims: none, (B,), (B, h)",
            _attention_dims_inputs,
            _judge_attention,
        ),
        Test(
            "boolean mask: True means the query may attend",
            _attention_bool_mask_inputs,
            functools.partial(_judge_attention, exact_zero=True),
        ),
        Test(
            "a float mask is added to the scaled scores",
            _attention_float_mask_inputs,
            functools.partial(_judge_attention, exact_zero=True),
        ),
        Test(
            "a (L, S) mask broadcasts over batch and heads",
            _attention_broadcast_inputs,
            functools.partial(_judge_attention, exact_zero=True),
        ),
        Test(
            "a query with no allowed key gets zero weights and a zero output",
            _attention_empty_inputs,
            functools.partial(_judge_attention, nan_hint=NAN_EMPTY),
        ),
        Test(
            "large scores do not overflow",
            _attention_large_inputs,
            functools.partial(_judge_attention, nan_hint=OVERFLOW),
        ),
        Test("does not change its inputs", _attention_unchanged_inputs, _judge_attention_unchanged),
        grad_test(
            "gradients flow back to query, key and value",
            _attention_grad_inputs,
            ("query", "key", "value", "attn_mask"),
        ),
    ),
)

QUESTIONS = [MASKED_SOFTMAX, SCALED_DOT_PRODUCT_ATTENTION]
