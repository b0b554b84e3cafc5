"""Chapter 3's further questions: scorers, per-head scaled weights, entropy, Monte-Carlo context.

The references live in ``attention_course.attention`` (the scoring zoo, ``masked_softmax``,
``attention_entropy``, ``monte_carlo_context``). As in ``ch03.py``, the judges compare with the
reference and, when the values are wrong, try *mistake models* (what a known wrong answer
computes) so that the hint names the mistake. ``monte_carlo_context`` is random, so its tests
judge statistics (support, bias, variance, reproducibility) instead of exact values.
"""

from __future__ import annotations

import functools
import math

import torch

from attention_course.attention.core import masked_softmax as reference_masked_softmax
from attention_course.attention.multihead import split_heads
from attention_course.attention.scoring import (
    AdditiveAttention,
    GeneralAttention,
    attention_entropy,
    monte_carlo_context,
)

from ..core import Question, Test, call_args
from ..hints import (
    FLIPPED,
    MASK_AFTER,
    NAN_EMPTY,
    NOT_EXACT_ZERO,
    OVERFLOW,
    UNIFORM_EMPTY,
    ZERO_ONE,
)
from ..inputs import bool_mask as _bool_mask
from ..inputs import randn as _randn
from ..judges import Fail, expect_close, expect_sequence, expect_tensor, expect_unchanged
from ..kit import random_test, seeded_args
from ..models import softmax_variant as _softmax

NEG_INF = float("-inf")

# --------------------------------------------------------------------------- hints
# One per plausible mistake; tests/test_grader_ch03_zoo.py checks that each is named when made.
RETURN_SCORES = (
    "return the raw scores (..., L, S), not softmax weights: the softmax, the mask and the "
    "weighted sum are shared by every scorer"
)
SCORES_TRANSPOSED = "the scores are (B, L, S): one row per query, one column per key"
NO_TANH = "apply tanh to W_q q + W_k k before the dot product with v: v^T tanh(W_q q + W_k k)"
TANH_OUTSIDE = "tanh goes inside, around W_q q + W_k k; v^T is applied after it"
LINEAR_LAYOUT = (
    "the matrices have nn.Linear's layout (out, in): W_q q for a batch of row vectors is "
    "query @ W_q.T"
)
SWAPPED_PROJECTIONS = "W_q projects the query and W_k the keys, not the other way round"
GENERAL_TRANSPOSED_W = "the general score is q^T W k = query @ W @ keys^T, not query @ W.T @ keys^T"
GENERAL_NO_W = "that is the dot score q^T k: the general score puts the learned W in between"
GENERAL_SCALED = "the general score has no 1/sqrt(d): Luong's q^T W k is not scaled"
SCALE_D_MODEL = (
    "divide by sqrt(d), d the width of ONE head (E split over the heads), not by sqrt(E): each "
    "head's dot product sums d terms"
)
NO_SCALE = "scale each head's scores by 1/sqrt(d), d the width of one head, before the softmax"
SCALE_D = "the scaling is 1/sqrt(d), not 1/d"
SCALE_AFTER = "divide the scores by sqrt(d) before the softmax, not the weights after it"
BAD_SPLIT = (
    "split the last axis into heads, then move the head axis forward: "
    "(B, L, E) -> (B, L, h, d) -> (B, h, L, d); reshaping (B, L, E) straight "
    "to (B, h, L, d) mixes positions"
)
INTERLEAVED = (
    "head i owns the contiguous features i*d:(i+1)*d of E: reshape (B, L, E) to (B, L, h, d), "
    "not (B, L, d, h)"
)
WRONG_AXIS = "normalise over the keys (the last axis, S): each query's weights must sum to 1"
ENTROPY_BITS = "use the natural logarithm (nats, torch.log), not log2 (bits)"
ENTROPY_SIGN = "entropy is -sum p log p: a minus sign is missing (it must be >= 0)"
ENTROPY_AXIS = "sum over the keys (the last axis), one entropy per query row"
ENTROPY_MEAN = "sum p log p over the keys; a mean divides by S"
ENTROPY_NAN = (
    "0 * log 0 is NaN in floating point but 0 in the limit: give zero weights a zero "
    "contribution (torch.where(p > 0, p * log p, 0), or torch.xlogy)"
)
ENTROPY_KEEPDIM = "return one entropy per row, shape (..., L): sum without keepdim"
MC_EXACT = (
    "that is the exact expectation sum_s p_s v_s; a Monte-Carlo estimate averages the values "
    "at num_samples positions DRAWN from p (torch.multinomial)"
)
MC_ZERO_WEIGHT = (
    "a position with zero weight was drawn: sample with probabilities p_s (torch.multinomial "
    "on the weights), not uniformly"
)
MC_UNIFORM = (
    "the estimate is centred on the plain average of the values: the positions must be drawn "
    "with probability p_s, not uniformly"
)
MC_ARGMAX = (
    "always taking the position of the largest weight is biased: draw positions at random "
    "with probability p_s"
)
MC_ONE_SAMPLE = "the spread is that of a single draw: average num_samples draws per query, not one"
MC_TOO_FEW = (
    "the estimates vary less than independent draws would: draw the num_samples positions "
    "WITH replacement (replacement=True)"
)
MC_GENERATOR = (
    "the same seeded `generator` must give the same estimate: every random draw must take "
    "the `generator` argument"
)
MC_ONE_VALUE = (
    "with num_samples=1 the estimate is hard attention: exactly one value vector of the same "
    "batch element"
)


# --------------------------------------------------------------------------- input makers


# --------------------------------------------------------------------------- ch03.additive_score


def reference_additive_score(query, keys, W_q, W_k, v):
    """v^T tanh(W_q q + W_k k_s) through the package's AdditiveAttention (Bahdanau et al.)."""
    with torch.random.fork_rng(devices=[]):  # building a layer must not move the global RNG
        layer = AdditiveAttention(W_q.shape[1], W_k.shape[1], W_q.shape[0]).to(query.dtype)
    with torch.no_grad():
        layer.query_proj.weight.copy_(W_q)
        layer.key_proj.weight.copy_(W_k)
        layer.v.weight.copy_(v.reshape(1, -1))
        return layer.score(query, keys)


def _additive_variant(query, keys, W_q, W_k, v, *, tanh="inside", layout="linear", swap=False):
    q, k = query.double(), keys.double()
    Wq, Wk, vv = W_q.double(), W_k.double(), v.double()
    if swap:
        Wq, Wk = Wk, Wq
    if layout == "linear":
        pq, pk = q @ Wq.T, k @ Wk.T  # (B, L, A), (B, S, A)
    else:
        pq, pk = q @ Wq, k @ Wk
    hidden = pq.unsqueeze(-2) + pk.unsqueeze(-3)  # (B, L, S, A)
    if tanh == "inside":
        return torch.tanh(hidden) @ vv
    if tanh == "none":
        return hidden @ vv
    return torch.tanh(hidden @ vv)


def _additive_mistakes(query, keys, W_q, W_k, v):
    right = functools.partial(_additive_variant, query, keys, W_q, W_k, v)
    return [
        (NO_TANH, functools.partial(right, tanh="none")),
        (TANH_OUTSIDE, functools.partial(right, tanh="outside")),
        (LINEAR_LAYOUT, functools.partial(right, layout="math")),
        (SWAPPED_PROJECTIONS, functools.partial(right, swap=True)),
        (RETURN_SCORES, lambda: torch.softmax(right(), dim=-1)),
        (SCORES_TRANSPOSED, lambda: right().transpose(-2, -1)),
    ]


def _judge_additive(case):
    query, keys, W_q, W_k, v = case.args
    expect_close(
        case.output, case.expected, "scores", mistakes=_additive_mistakes(query, keys, W_q, W_k, v)
    )


def _judge_additive_shape(case):
    expect_tensor(case.output, case.expected, "scores")


def _judge_additive_unchanged(case):
    expect_unchanged(case, ["query", "keys", "W_q", "W_k", "v"])
    _judge_additive(case)


def _additive_case(g, B, L, S, Dq, Dk, A, dtype=torch.float32):
    return call_args(
        _randn(g, B, L, Dq, dtype=dtype),
        _randn(g, B, S, Dk, dtype=dtype),
        _randn(g, A, Dq, scale=0.5, dtype=dtype),
        _randn(g, A, Dk, scale=0.5, dtype=dtype),
        _randn(g, A, dtype=dtype),
    )


def _additive_shape_inputs(g):
    return [
        _additive_case(g, 2, 3, 5, 4, 6, 7),
        _additive_case(g, 1, 1, 4, 3, 3, 5, dtype=torch.float64),
    ]


def _additive_value_inputs(g):
    return [
        _additive_case(g, 3, 4, 4, 6, 6, 6),  # square everything: layout and swap mistakes run
        _additive_case(g, 2, 3, 5, 4, 6, 7),  # every width different
        _additive_case(g, 1, 1, 1, 2, 3, 4),  # L = S = 1
    ]


def _additive_unchanged_inputs(g):
    return [_additive_case(g, 2, 3, 5, 4, 6, 7)]


ADDITIVE_SCORE = Question(
    id="ch03.additive_score",
    answer="additive_score",
    reference=reference_additive_score,
    title="additive_score(query, keys, W_q, W_k, v) -> (B, L, S): v^T tanh(W_q q + W_k k)",
    arg_names=("query", "keys", "W_q", "W_k", "v"),
    error_hints=(
        (
            r"cannot be multiplied|mat1 and mat2|size mismatch",
            (
                "the shapes do not fit: W_q (A, Dq) goes with the query and W_k (A, Dk) with the "
                "keys, in nn.Linear's layout (out, in): W_q q is query @ W_q.T"
            ),
        ),
        (
            r"must match the size|broadcast",
            (
                "add the projected query as (B, L, 1, A) and the projected keys as (B, 1, S, A) so "
                "that they broadcast to (B, L, S, A)"
            ),
        ),
    ),
    tests=(
        Test(
            "returns (B, L, S) scores with the inputs' dtype",
            _additive_shape_inputs,
            _judge_additive_shape,
        ),
        Test(
            "equals v^T tanh(W_q q + W_k k) for every query and key",
            _additive_value_inputs,
            _judge_additive,
        ),
        Test("does not change its inputs", _additive_unchanged_inputs, _judge_additive_unchanged),
    ),
)


# --------------------------------------------------------------------------- ch03.general_score


def reference_general_score(query, keys, W):
    """q^T W k_s through the package's GeneralAttention (Luong et al.)."""
    with torch.random.fork_rng(devices=[]):  # building a layer must not move the global RNG
        layer = GeneralAttention(W.shape[0], W.shape[1]).to(query.dtype)
    with torch.no_grad():
        layer.key_proj.weight.copy_(W)  # key_proj(k) = W k
        return layer.score(query, keys)


def _general_mistakes(query, keys, W):
    q, k, w = query.double(), keys.double(), W.double()

    def right():
        return q @ w @ k.transpose(-2, -1)

    return [
        (GENERAL_TRANSPOSED_W, lambda: q @ w.T @ k.transpose(-2, -1)),
        (GENERAL_NO_W, lambda: q @ k.transpose(-2, -1)),
        (GENERAL_SCALED, lambda: right() / math.sqrt(q.shape[-1])),
        (GENERAL_SCALED, lambda: right() / math.sqrt(k.shape[-1])),
        (RETURN_SCORES, lambda: torch.softmax(right(), dim=-1)),
        (SCORES_TRANSPOSED, lambda: right().transpose(-2, -1)),
    ]


def _judge_general(case):
    query, keys, W = case.args
    expect_close(case.output, case.expected, "scores", mistakes=_general_mistakes(query, keys, W))


def _judge_general_shape(case):
    expect_tensor(case.output, case.expected, "scores")


def _judge_general_unchanged(case):
    expect_unchanged(case, ["query", "keys", "W"])
    _judge_general(case)


def _general_case(g, B, L, S, Dq, Dk, dtype=torch.float32):
    return call_args(
        _randn(g, B, L, Dq, dtype=dtype),
        _randn(g, B, S, Dk, dtype=dtype),
        _randn(g, Dq, Dk, dtype=dtype),
    )


def _general_shape_inputs(g):
    return [_general_case(g, 2, 3, 5, 4, 6), _general_case(g, 1, 1, 2, 3, 3, torch.float64)]


def _general_value_inputs(g):
    return [
        _general_case(g, 3, 4, 4, 5, 5),  # square W, L == S: transposes still run
        _general_case(g, 2, 3, 5, 4, 6),  # Dq != Dk
        _general_case(g, 1, 1, 1, 2, 7),
    ]


GENERAL_SCORE = Question(
    id="ch03.general_score",
    answer="general_score",
    reference=reference_general_score,
    title="general_score(query, keys, W) -> (B, L, S): Luong's q^T W k",
    arg_names=("query", "keys", "W"),
    error_hints=(
        (
            r"cannot be multiplied|mat1 and mat2|size mismatch|must match the size",
            "W is (Dq, Dk): query (B, L, Dq) @ W -> (B, L, Dk), then @ keys.transpose(-2, -1)",
        ),
    ),
    tests=(
        Test(
            "returns (B, L, S) scores with the inputs' dtype",
            _general_shape_inputs,
            _judge_general_shape,
        ),
        Test("equals q^T W k for every query and key", _general_value_inputs, _judge_general),
        Test(
            "does not change its inputs",
            lambda g: [_general_case(g, 2, 3, 5, 4, 6)],
            _judge_general_unchanged,
        ),
    ),
)


# --------------------------------------------------------------------------- ch03.multihead_weights


def reference_multihead_weights(query, key, num_heads, attn_mask=None):
    """softmax(Q_i K_i^T / sqrt(d)) for every head i, d = E // num_heads; (B, h, L, S)."""
    q, k = split_heads(query, num_heads), split_heads(key, num_heads)  # (B, h, L, d), (B, h, S, d)
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, h, L, S)
    return reference_masked_softmax(scores, attn_mask, dim=-1)


def _multihead_variant(
    query,
    key,
    num_heads,
    mask=None,
    *,
    scale="sqrt_d",
    split="right",
    axis=-1,
    after=False,
    **softmax_kw,
):
    q, k = query.double(), key.double()
    B, L, E = q.shape
    S = k.shape[1]
    h, d = num_heads, E // num_heads
    if split == "right":
        qh, kh = split_heads(q, h), split_heads(k, h)
    elif split == "reshape":  # (B, L, E) -> (B, h, L, d) without the transpose
        qh, kh = q.reshape(B, h, L, d), k.reshape(B, h, S, d)
    else:  # interleaved: head i gets features i, i + h, i + 2h, ...
        qh = q.reshape(B, L, d, h).permute(0, 3, 1, 2)
        kh = k.reshape(B, S, d, h).permute(0, 3, 1, 2)
    factor = {"sqrt_d": math.sqrt(d), "sqrt_E": math.sqrt(E), "none": 1.0, "d": float(d)}[scale]
    scores = qh @ kh.transpose(-2, -1)
    if not after:
        scores = scores / factor
    if not softmax_kw.get("stable", True):
        scores = scores.to(query.dtype)  # overflow happens in the answer's dtype, not in float64
    weights = _softmax(scores, mask, axis, **softmax_kw)
    return weights / factor if after else weights


def _multihead_mistakes(query, key, num_heads, mask=None):
    def model(**kw):
        return functools.partial(_multihead_variant, query, key, num_heads, mask, **kw)

    mistakes = [
        (SCALE_D_MODEL, model(scale="sqrt_E")),
        (NO_SCALE, model(scale="none")),
        (SCALE_D, model(scale="d")),
        (SCALE_AFTER, model(after=True)),
        (BAD_SPLIT, model(split="reshape")),
        (INTERLEAVED, model(split="interleaved")),
        (WRONG_AXIS, model(axis=-2)),
    ]
    if mask is not None:
        mistakes += [
            (FLIPPED, model(polarity=False)),
            (FLIPPED, model(polarity=False, empty="nan")),
            (ZERO_ONE, model(mask_as="add01")),
            (MASK_AFTER, model(mask_as="after")),
            (UNIFORM_EMPTY, model(mask_as="finite")),
        ]
    mistakes += [(OVERFLOW, model(stable=False)), (NAN_EMPTY, model(empty="nan"))]
    return mistakes


def _judge_multihead(case, *, nan_hint="", exact_zero=False):
    query, key, num_heads, mask = (list(case.args) + [case.kwargs.get("attn_mask")])[:4]
    expect_close(
        case.output,
        case.expected,
        "weights",
        mistakes=_multihead_mistakes(query, key, num_heads, mask),
        nan_hint=nan_hint,
    )
    if exact_zero and mask is not None:
        masked = case.output.masked_select(~mask.expand_as(case.output))
        if (masked != 0).any():
            raise Fail(NOT_EXACT_ZERO)


def _judge_multihead_shape(case):
    expect_tensor(case.output, case.expected, "weights")


def _judge_multihead_rows(case):
    expect_tensor(case.output, case.expected, "weights")
    sums = case.output.double().sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
        raise Fail(WRONG_AXIS)


def _judge_multihead_unchanged(case):
    expect_unchanged(case, ["query", "key", "num_heads", "attn_mask"])
    _judge_multihead(case)


def _mh(g, B, L, S, E, h, mask=None, scale=1.0, dtype=torch.float32):
    args = [
        _randn(g, B, L, E, scale=scale, dtype=dtype),
        _randn(g, B, S, E, scale=scale, dtype=dtype),
        h,
    ]
    if mask is not None:
        args.append(mask)
    return call_args(*args)


def _multihead_shape_inputs(g):
    return [_mh(g, 2, 3, 5, 8, 2), _mh(g, 1, 1, 4, 6, 3, dtype=torch.float64)]


def _multihead_value_inputs(g):
    return [
        _mh(g, 2, 3, 5, 8, 2),
        _mh(g, 2, 4, 4, 12, 3),  # L == S: the query-axis softmax still runs
        _mh(g, 1, 1, 6, 8, 4),  # one query
        _mh(g, 3, 5, 7, 8, 1),  # one head: d = E
    ]


def _multihead_rows_inputs(g):
    return [_mh(g, 2, 3, 5, 8, 2), _mh(g, 2, 6, 6, 12, 4)]


def _multihead_mask_inputs(g):
    return [
        _mh(g, 2, 3, 5, 8, 2, mask=_bool_mask(g, 2, 2, 3, 5)),  # (B, h, L, S)
        _mh(g, 2, 4, 6, 12, 3, mask=_bool_mask(g, 2, 1, 1, 6)),  # key padding (B, 1, 1, S)
        _mh(g, 3, 4, 4, 8, 2, mask=_bool_mask(g, 4, 4)),  # (L, S), broadcast over B and h
    ]


def _multihead_empty_inputs(g):
    return [
        _mh(g, 2, 5, 6, 8, 2, mask=_bool_mask(g, 2, 1, 5, 6, empty_rows=3)),
        _mh(g, 1, 3, 4, 6, 3, mask=_bool_mask(g, 1, 3, 3, 4, empty_rows=2)),
    ]


def _multihead_large_inputs(g):
    return [
        _mh(g, 2, 3, 5, 8, 2, scale=20.0),
        _mh(g, 2, 4, 6, 8, 4, mask=_bool_mask(g, 2, 1, 4, 6), scale=30.0),
    ]


MULTIHEAD_WEIGHTS = Question(
    id="ch03.multihead_weights",
    answer="multihead_weights",
    reference=reference_multihead_weights,
    title="multihead_weights(query, key, num_heads, attn_mask=None) -> (B, h, L, S)",
    arg_names=("query", "key", "num_heads", "attn_mask"),
    error_hints=(
        (
            r"invalid for input of size|shape '\[",
            (
                "cut E into num_heads blocks of width d (heads next to d), then move the head "
                "axis before L"
            ),
        ),
        (
            r"must match the size|broadcast|doesn't match",
            (
                "the mask broadcasts against the (B, h, L, S) weights: masked_fill and torch.where "
                "broadcast, boolean indexing does not"
            ),
        ),
    ),
    tests=(
        Test(
            "returns (B, h, L, S) weights with the inputs' dtype",
            _multihead_shape_inputs,
            _judge_multihead_shape,
        ),
        Test(
            "each head: softmax(Q_i K_i^T / sqrt(d)) with d = E // num_heads",
            _multihead_value_inputs,
            _judge_multihead,
        ),
        Test(
            "every query's weights sum to 1 over the keys",
            _multihead_rows_inputs,
            _judge_multihead_rows,
        ),
        Test(
            "boolean mask, True = may attend, broadcast to (B, h, L, S)",
            _multihead_mask_inputs,
            functools.partial(_judge_multihead, exact_zero=True),
        ),
        Test(
            "a query with no allowed key gets zero weights, not NaN",
            _multihead_empty_inputs,
            functools.partial(_judge_multihead, nan_hint=NAN_EMPTY),
        ),
        Test(
            "large scores do not overflow",
            _multihead_large_inputs,
            functools.partial(_judge_multihead, nan_hint=OVERFLOW),
        ),
        Test(
            "does not change its inputs",
            lambda g: [_mh(g, 2, 3, 5, 8, 2, mask=_bool_mask(g, 2, 1, 3, 5))],
            _judge_multihead_unchanged,
        ),
    ),
)


# --------------------------------------------------------------------------- ch03.attention_entropy


def _entropy_mistakes(weights):
    p = weights.double()
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    return [
        (ENTROPY_BITS, lambda: -plogp.sum(-1) / math.log(2)),
        (ENTROPY_SIGN, lambda: plogp.sum(-1)),
        (ENTROPY_AXIS, lambda: -plogp.sum(-2)),
        (ENTROPY_MEAN, lambda: -plogp.mean(-1)),
        (ENTROPY_KEEPDIM, lambda: -plogp.sum(-1, keepdim=True)),
    ]


def _judge_entropy(case, *, nan_hint=""):
    (weights,) = case.args
    output = case.output
    if isinstance(output, torch.Tensor) and tuple(output.shape) == tuple(weights.shape[:-1]) + (1,):
        raise Fail(ENTROPY_KEEPDIM)
    expect_close(
        output,
        case.expected,
        "entropy",
        mistakes=_entropy_mistakes(weights),
        nan_hint=nan_hint,
        atol=1e-5,
        rtol=1e-4,
    )


def _judge_entropy_shape(case):
    output, (weights,) = case.output, case.args
    if isinstance(output, torch.Tensor) and tuple(output.shape) == tuple(weights.shape[:-1]) + (1,):
        raise Fail(ENTROPY_KEEPDIM)
    if isinstance(output, torch.Tensor) and tuple(output.shape) == tuple(
        weights.shape[:-2] + weights.shape[-1:]
    ):
        raise Fail(ENTROPY_AXIS)
    expect_tensor(output, case.expected, "entropy")


def _judge_entropy_unchanged(case):
    expect_unchanged(case, ["weights"])
    _judge_entropy(case)


def _softmax_rows(g, *shape, dtype=torch.float32, scale=1.0):
    return torch.softmax(_randn(g, *shape, scale=scale, dtype=torch.float64), -1).to(dtype)


def _masked_rows(g, *shape, empty_rows=0):
    scores = _randn(g, *shape, dtype=torch.float64)
    weights = reference_masked_softmax(scores, _bool_mask(g, *shape, empty_rows=empty_rows))
    return weights.float()


def _entropy_shape_inputs(g):
    return [
        call_args(_softmax_rows(g, 2, 3, 5)),
        call_args(_softmax_rows(g, 2, 4, 3, 6, dtype=torch.float64)),
    ]


def _entropy_value_inputs(g):
    one_hot = torch.eye(5)[torch.randint(0, 5, (2, 3), generator=g)]  # (2, 3, 5)
    uniform = torch.full((4, 6), 1 / 6)
    return [
        call_args(_softmax_rows(g, 6, 6)),  # L == S: the query-axis sum still runs
        call_args(_softmax_rows(g, 2, 3, 5)),
        call_args(_softmax_rows(g, 2, 4, 4, 7, scale=2.0)),  # (B, h, L, S)
        call_args(uniform),  # log 6
        call_args(one_hot.clamp_min(1e-3) / one_hot.clamp_min(1e-3).sum(-1, keepdim=True)),
    ]


def _entropy_zero_inputs(g):
    return [
        call_args(_masked_rows(g, 2, 4, 6)),  # masked keys have weight exactly 0
        call_args(torch.eye(5)[torch.randint(0, 5, (3, 4), generator=g)]),  # one-hot rows: 0
        call_args(_masked_rows(g, 3, 5, 7, empty_rows=2)),  # all-zero rows: entropy 0
    ]


ATTENTION_ENTROPY = Question(
    id="ch03.attention_entropy",
    answer="attention_entropy",
    reference=attention_entropy,
    title="attention_entropy(weights) -> (..., L): -sum_s p_s log p_s in nats, one per query",
    arg_names=("weights",),
    tests=(
        Test(
            "returns one entropy per query row, shape (..., L)",
            _entropy_shape_inputs,
            _judge_entropy_shape,
        ),
        Test(
            "equals -sum_s p_s log p_s (nats) for every row", _entropy_value_inputs, _judge_entropy
        ),
        Test(
            "zero weights (masked keys, one-hot or empty rows) contribute 0, not NaN",
            _entropy_zero_inputs,
            functools.partial(_judge_entropy, nan_hint=ENTROPY_NAN),
        ),
        Test(
            "does not change its input",
            lambda g: [call_args(_masked_rows(g, 2, 3, 5))],
            _judge_entropy_unchanged,
        ),
    ),
)


# ------------------------------------------------------------------ ch03.monte_carlo_context


def run_monte_carlo(answer, inputs):
    """Call ``answer(weights, values, num_samples, generator)`` with a generator seeded from the
    case; for the reproducibility test, call it twice with identically seeded generators."""
    weights, values, num_samples = inputs["args"]
    seed = inputs["kwargs"]["seed"]
    first = answer(weights, values, num_samples, torch.Generator().manual_seed(seed))
    if not inputs["kwargs"].get("twice"):
        return first
    second = answer(weights, values, num_samples, torch.Generator().manual_seed(seed))
    return [first, second]


def reference_monte_carlo_context(weights, values, num_samples, generator=None):
    return monte_carlo_context(weights, values, num_samples, generator)


def _mc_case(g, weights, values, num_samples, twice=False):
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    return call_args(weights, values, num_samples, seed=seed, twice=twice)


def _mc_weights(g, B, L, S, zero_keys=True):
    """Softmax rows, with some keys masked to exactly 0 weight (never a whole row)."""
    scores = _randn(g, B, L, S, dtype=torch.float64)
    mask = _bool_mask(g, B, L, S) if zero_keys else None
    return reference_masked_softmax(scores, mask).float()


def _mc_repeated(g, R, L, S, Dv, num_samples):
    """The SAME weights and values repeated R times along the batch axis: the R estimates are
    independent draws, so their spread measures the estimator's variance."""
    weights = _mc_weights(g, 1, L, S).expand(R, L, S).contiguous()
    values = _randn(g, 1, S, Dv).expand(R, S, Dv).contiguous()
    return _mc_case(g, weights, values, num_samples)


def _mc_shape_inputs(g):
    return [
        _mc_case(g, _mc_weights(g, 2, 3, 5), _randn(g, 2, 5, 4), 3),
        _mc_case(g, _mc_weights(g, 1, 1, 6), _randn(g, 1, 6, 2), 1),
    ]


def _mc_one_sample_inputs(g):
    return [
        _mc_case(g, _mc_weights(g, 3, 4, 6), _randn(g, 3, 6, 5), 1),
        _mc_case(g, _mc_weights(g, 2, 5, 7), _randn(g, 2, 7, 3), 1),
    ]


def _mc_bias_inputs(g):
    return [_mc_repeated(g, 2000, 2, 5, 3, 4)]


def _mc_variance_inputs(g):
    return [_mc_repeated(g, 2000, 2, 5, 3, 16)]


def _mc_seed_inputs(g):
    return [_mc_case(g, _mc_weights(g, 2, 3, 5), _randn(g, 2, 5, 4), 6, twice=True)]


def _mc_exact(weights, values):
    return weights.double() @ values.double()  # (B, L, Dv)


def _mc_is_value_row(output, weights, values):
    """(B, L) booleans: the output row equals some value row of its batch element; and
    (B, L) booleans: ...one whose weight for that query is > 0."""
    close = (output.double().unsqueeze(2) - values.double().unsqueeze(1)).abs().amax(-1) < 1e-5
    # close: (B, L, S) - output row (b, l) equals value row (b, s)
    return close.any(-1), (close & (weights > 0)).any(-1)


def _judge_mc_shape(case):
    expect_tensor(case.output, case.expected, "context")


def _judge_mc_one_sample(case):
    weights, values, _ = case.args
    expect_tensor(case.output, case.expected, "context")
    output = case.output
    if torch.isnan(output).any():
        raise Fail("`context` contains NaN")
    is_value, is_allowed = _mc_is_value_row(output, weights, values)
    if is_value.all() and not is_allowed.all():
        raise Fail(MC_ZERO_WEIGHT)
    if not is_value.all():
        if torch.allclose(output.double(), _mc_exact(weights, values), atol=1e-5):
            raise Fail(MC_EXACT)
        raise Fail(MC_ONE_VALUE)


def _mc_stats(case):
    weights, values, num_samples = case.args
    expect_tensor(case.output, case.expected, "context")
    output = case.output.double()
    if torch.isnan(output).any():
        raise Fail("`context` contains NaN")
    exact = _mc_exact(weights[:1], values[:1])[0]  # (L, Dv): every batch row is the same
    variance = (
        weights[0].double() * (values[0].double().unsqueeze(0) - exact.unsqueeze(1)).pow(2).sum(-1)
    ).sum(-1)  # (L,) sum_s p_s |v_s - c|^2: one draw's variance
    return output, exact, variance, num_samples


def _judge_mc_bias(case):
    output, exact, variance, n = _mc_stats(case)
    weights, values, _ = case.args
    R = output.shape[0]
    mean = output.mean(0)  # (L, Dv)
    error = (mean - exact).pow(2).sum(-1)  # (L,)
    allowed = 25 * variance / (n * R) + 1e-8  # 5 standard errors, squared
    if (error <= allowed).all():
        return
    if (output.var(0).sum(-1) < 1e-10).all():
        uniform = values[0].double().mean(0)
        if torch.allclose(mean, exact, atol=1e-5):
            raise Fail(MC_EXACT)
        if torch.allclose(mean, uniform.expand_as(mean), atol=1e-4):
            raise Fail(MC_UNIFORM)
        top = values[0].double()[weights[0].argmax(-1)]  # (L, Dv)
        if torch.allclose(mean, top, atol=1e-4):
            raise Fail(MC_ARGMAX)
    # sampled uniformly over the allowed keys, or over all keys?
    uniform_all = values[0].double().mean(0).expand_as(mean)
    if ((mean - uniform_all).pow(2).sum(-1) <= allowed * 4).all():
        raise Fail(MC_UNIFORM)
    raise Fail(
        f"the estimate is biased: its mean over {R} independent estimates is "
        f"{float(error.sqrt().max()):.3g} away from sum_s p_s v_s (draw positions with "
        f"probability p_s, with replacement, and average their values)"
    )


def _judge_mc_variance(case):
    output, exact, variance, n = _mc_stats(case)
    spread = output.var(0).sum(-1)  # (L,) measured variance of one estimate
    expected = variance / n
    random_rows = expected > 1e-6  # a row with one allowed key has nothing to vary
    if (spread[~random_rows] > 1e-8).any():
        raise Fail(MC_ZERO_WEIGHT)
    spread, expected = spread[random_rows], expected[random_rows]
    ratio = spread / expected
    if ((ratio > 0.7) & (ratio < 1.4)).all():
        return
    if (spread < 1e-10).all():
        raise Fail(MC_EXACT)
    if ((ratio > 0.6 * n) & (ratio < 1.5 * n)).all():
        raise Fail(MC_ONE_SAMPLE)
    if (ratio < 0.7).all():
        raise Fail(MC_TOO_FEW)
    raise Fail(
        f"the estimate's variance is {float(ratio.mean()):.2f} times sum_s p_s |v_s - c|^2 / "
        f"num_samples; average num_samples independent draws from p"
    )


def _judge_mc_seed(case):
    expect_sequence(case.output, 2, "(first, second)")
    first, second = case.output
    expect_tensor(first, case.expected[0], "context")
    if not torch.equal(first, second):
        raise Fail(MC_GENERATOR)


def _judge_mc_unchanged(case):
    expect_unchanged(case, ["weights", "values", "num_samples"])
    _judge_mc_shape(case)


MONTE_CARLO_CONTEXT = Question(
    id="ch03.monte_carlo_context",
    answer="monte_carlo_context",
    reference=reference_monte_carlo_context,
    run=run_monte_carlo,
    title="monte_carlo_context(weights, values, num_samples, generator) -> (B, L, Dv)",
    arg_names=("weights", "values", "num_samples"),
    error_hints=(
        (
            r"cannot sample n_sample > prob_dist|without replacement",
            ("draw the positions WITH replacement: num_samples may exceed the number of keys"),
        ),
        (
            r"prob_dist must be 1 or 2 dim",
            (
                "torch.multinomial takes (rows, S) probabilities: reshape the (B, L, S) weights to "
                "(B * L, S) first"
            ),
        ),
    ),
    timeout=5.0,
    tests=(
        Test("returns (B, L, Dv) with the values' dtype", _mc_shape_inputs, _judge_mc_shape),
        Test(
            "one sample is hard attention: one value vector with non-zero weight",
            _mc_one_sample_inputs,
            _judge_mc_one_sample,
        ),
        Test(
            "unbiased: the mean of many estimates is sum_s p_s v_s", _mc_bias_inputs, _judge_mc_bias
        ),
        Test(
            "the variance of an estimate is Var_p[V] / num_samples",
            _mc_variance_inputs,
            _judge_mc_variance,
        ),
        Test("the same seeded generator gives the same estimate", _mc_seed_inputs, _judge_mc_seed),
        random_test(
            "another seed gives another estimate (it draws from `generator`)",
            lambda g: [
                seeded_args(_mc_weights(g, 2, 3, 6), _randn(g, 2, 6, 4), 3, seed=int(s))
                for s in torch.randint(0, 2**30, (2,), generator=g)
            ],
        ),
        Test(
            "does not change its inputs",
            lambda g: [_mc_case(g, _mc_weights(g, 2, 3, 5), _randn(g, 2, 5, 4), 4)],
            _judge_mc_unchanged,
        ),
    ),
)

QUESTIONS = [
    ADDITIVE_SCORE,
    GENERAL_SCORE,
    MULTIHEAD_WEIGHTS,
    ATTENTION_ENTROPY,
    MONTE_CARLO_CONTEXT,
]
