"""Chapter 8's graded questions: online softmax, tiled attention, linear attention.

References come from ``attention_course.attention.efficient``. The mistake models below are the
wrong answers students write for these algorithms (tests/test_grader_ch08.py holds the
catalogue): the running sum not rescaled when the maximum grows, the output accumulator rescaled
by the wrong factor, the last partial block dropped, causal key blocks stopped one block too
early or too late, linear attention without its normaliser, a causal linear attention that looks
ahead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attention_course.attention.efficient import linear_attention as _linear_reference
from attention_course.attention.efficient import online_softmax as _online_reference
from attention_course.attention.efficient import tiled_attention as _tiled_reference

from ..kit import (
    EDGE_SHAPES,
    Question,
    attention_mistakes,
    bool_mask,
    call_args,
    float_mask,
    grad_args,
    grad_test,
    hints,
    outputs_test,
    randn,
    shape_test,
)

NEG_INF = float("-inf")

# --------------------------------------------------------------------------- chapter-8 hints
NO_RESCALE_SUM = (
    "when a block raises the running maximum, the terms already in the running sum were "
    "computed against the OLD maximum: the sum must be rescaled before the block is added"
)
INVERSE_RESCALE = (
    "the rescaling factor is upside down: moving a term exp(x - m_old) to the new maximum "
    "m_new >= m_old makes it smaller, never larger"
)
LAST_BLOCK = (
    "the last, shorter block is missing: when the length is not a multiple of block_size the "
    "final block holds the remaining positions and must be visited too"
)
ACC_RESCALE = (
    "the output accumulator is a sum of exp(score - m) * value terms: when the maximum changes "
    "it needs the same rescaling as the running sum"
)
CAUSAL_EARLY = (
    "causal key blocks stop one block too early: the block that holds the diagonal (keys up to "
    "the last query of the block) must be visited, with the mask applied inside it"
)
CAUSAL_LATE = (
    "causal key blocks go one block too far without a mask: keys after a query must get no "
    "weight, also in the block after the diagonal one"
)
NO_NORMALISER = (
    "linear attention's output is a weighted MEAN: divide by the normaliser, the query's "
    "feature vector dotted with the sum of the keys' feature vectors"
)
LOOKS_AHEAD = (
    "the causal version looks ahead: query i may only use the keys and values at positions "
    "j <= i (running sums up to i, not the totals)"
)
EXCLUSIVE = "query i also attends to key i itself: the running sums include position i"
FEATURE_MAP = "apply the feature map phi(x) = elu(x) + 1 to both the queries and the keys"
IS_SOFTMAX = (
    "this is softmax attention: linear attention replaces exp(q.k / sqrt(E)) by the kernel "
    "phi(q).phi(k)"
)
NEEDS_FINITE = (
    "a row whose scores are all -inf so far has running maximum -inf, and exp(-inf - (-inf)) "
    "is NaN: use 0 in place of a maximum that is still -inf"
)


# --------------------------------------------------------------------------- online softmax
def online_variant(scores, dim=-1, block_size=4, *, rescale="right", drop_last=False,
                   stable=True, empty="zero"):  # fmt: skip
    """The blocked online softmax with one mistake switched on."""
    x = scores.movedim(dim, -1)
    n = x.shape[-1]
    m = x.new_full((*x.shape[:-1], 1), NEG_INF)
    total = x.new_zeros((*x.shape[:-1], 1))
    stop = n - n % block_size if drop_last and n % block_size else n
    for start in range(0, stop, block_size):
        block = x[..., start : start + block_size]
        if not stable:
            total = total + torch.exp(block).sum(-1, keepdim=True)
            continue
        new = torch.maximum(m, block.amax(-1, keepdim=True))
        ref = torch.where(torch.isfinite(new), new, torch.zeros_like(new))
        factor = {
            "right": torch.exp(m - ref),
            "none": torch.ones_like(m),
            "inverse": torch.exp(ref - torch.where(torch.isfinite(m), m, ref)),
        }[rescale]
        total = total * factor + torch.exp(block - ref).sum(-1, keepdim=True)
        m = new
    if not stable:
        out = torch.exp(x) / total
    else:
        ref = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        safe = torch.where(total > 0, total, torch.ones_like(total)) if empty == "zero" else total
        out = torch.exp(x - ref) / safe
    return out.movedim(-1, dim)


def online_mistakes(scores, dim=-1, block_size=4):
    def model(**kw):
        return lambda: online_variant(scores, dim, block_size, **kw)

    mistakes = [
        (NO_RESCALE_SUM, model(rescale="none")),
        (INVERSE_RESCALE, model(rescale="inverse")),
        (LAST_BLOCK, model(drop_last=True)),
        (hints.NAN_EMPTY, model(empty="nan")),
        (hints.OVERFLOW, model(stable=False)),
    ]
    if dim % scores.dim() != scores.dim() - 1:
        mistakes.append((hints.IGNORES_DIM, lambda: online_variant(scores, -1, block_size)))
    return mistakes


def _softmax_cases(g, make=call_args):
    cases = []
    for shape, dim, block in (
        ((3, 10), -1, 4),  # 10 = 4 + 4 + 2: a partial last block
        ((2, 3, 9), -1, 2),
        ((2, 7, 5), 1, 3),  # another axis
        ((4, 6), 0, 4),
        ((2, 1), -1, 3),  # n = 1
        ((2, 5), -1, 1),  # block 1: the element-by-element recurrence
        ((3, 6), -1, 50),  # block longer than the axis
    ):
        # an increasing trend makes the maximum grow from block to block
        trend = torch.arange(shape[dim], dtype=torch.float32).reshape(
            [-1 if i == dim % len(shape) else 1 for i in range(len(shape))]
        )
        cases.append(make(randn(g, *shape, scale=3.0) + trend, dim, block))
    return cases


def _softmax_large(g):
    return [call_args(randn(g, 3, 11, scale=300.0), -1, 4)]  # exp(x) overflows float32


def _softmax_empty(g):
    x = randn(g, 4, 9)
    x[1] = NEG_INF  # a slice with no finite score: zeros, not NaN
    x[2, :5] = NEG_INF  # the first blocks are all -inf, then finite scores arrive
    return [call_args(x, -1, 2)]


ONLINE_SOFTMAX = Question(
    id="ch08.online_softmax",
    answer="online_softmax",
    timeout=10.0,  # block loops in Python are the point here; the machine may be busy
    reference=_online_reference,
    arg_names=("scores", "dim", "block_size"),
    title="online_softmax(scores, dim=-1, block_size=64) -> softmax of scores over dim",
    tests=(
        shape_test("returns the shape and dtype of scores", _softmax_cases),
        outputs_test(
            "equals torch.softmax (partial blocks, any dim, block 1, block > n)",
            _softmax_cases,
            mistakes=online_mistakes,
        ),  # fmt: skip
        outputs_test("stable on scores in the hundreds", _softmax_large, mistakes=online_mistakes),
        outputs_test(
            "an all -inf slice gives zeros; leading -inf blocks are fine",
            _softmax_empty,
            mistakes=online_mistakes,
            nan_hint=NEEDS_FINITE,
        ),  # fmt: skip
        grad_test(
            "gradients flow to the scores", lambda g: _softmax_cases(g, grad_args), ("scores",)
        ),  # fmt: skip
    ),
)


# --------------------------------------------------------------------------- tiled attention
def _full_mask(L, S, block, kind, device=None):
    """Boolean (L, S) mask of what a causal tiled answer with the given bug attends to."""
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    if kind == "early":  # key blocks stop before the diagonal block: j < start of i's block
        return j < (i // block) * block
    # "late": the diagonal tile is masked, the block after it is visited unmasked
    q_end = (i // block + 1) * block  # end of the query block of i
    return (j <= i) | ((j >= q_end) & (j < q_end + block))


def tiled_variant(query, key, value, attn_mask=None, is_causal=False, block_size=4, *,
                  acc="right", total="right", drop_last=False, causal=None):  # fmt: skip
    """Tiled attention with one mistake switched on (loops like a student's answer)."""
    L, E = query.shape[-2:]
    S = key.shape[-2]
    if causal is not None:  # causal blocks mis-ended: the same as attention with that mask
        allowed = _full_mask(L, S, block_size, causal, query.device)
        return _tiled_reference(query, key, value, attn_mask=allowed, block_size=block_size)
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    if attn_mask is not None:
        attn_mask = attn_mask.expand(torch.broadcast_shapes(attn_mask.shape, (*batch, L, S)))
    out = []
    for q0 in range(0, L, block_size):
        q = query[..., q0 : q0 + block_size, :]
        m = q.new_full((*batch, q.shape[-2], 1), NEG_INF)
        s = q.new_zeros((*batch, q.shape[-2], 1))
        o = q.new_zeros((*batch, q.shape[-2], value.shape[-1]))
        k_end = min(S, q0 + q.shape[-2]) if is_causal else S
        stop = k_end - k_end % block_size if drop_last and k_end % block_size else k_end
        for k0 in range(0, stop, block_size):
            k1 = min(k0 + block_size, k_end)
            sc = q @ key[..., k0:k1, :].transpose(-2, -1) / math.sqrt(E)
            if attn_mask is not None:
                tile = attn_mask[..., q0 : q0 + q.shape[-2], k0:k1]
                sc = sc.masked_fill(~tile, NEG_INF) if tile.dtype == torch.bool else sc + tile
            if is_causal:
                rows = torch.arange(q0, q0 + q.shape[-2])[:, None]
                sc = sc.masked_fill(torch.arange(k0, k1)[None, :] > rows, NEG_INF)
            new = torch.maximum(m, sc.amax(-1, keepdim=True))
            ref = torch.where(torch.isfinite(new), new, torch.zeros_like(new))
            right = torch.exp(m - ref)
            p = torch.exp(sc - ref)
            s = (s * right if total == "right" else s) + p.sum(-1, keepdim=True)
            factor = {"right": right, "none": 1.0, "inverse": 1.0 / right.clamp_min(1e-30)}[acc]
            o = o * factor + p @ value[..., k0:k1, :]
            m = new
        out.append(o / torch.where(s > 0, s, torch.ones_like(s)))
    return torch.cat(out, dim=-2) if out else query.new_zeros((*batch, 0, value.shape[-1]))


def tiled_mistakes(query, key, value, attn_mask=None, is_causal=False, block_size=4):
    def model(**kw):
        return lambda: tiled_variant(query, key, value, attn_mask, is_causal, block_size, **kw)

    mistakes = [
        (ACC_RESCALE, model(acc="none")),
        (ACC_RESCALE, model(acc="inverse")),
        (NO_RESCALE_SUM, model(total="none")),
        (LAST_BLOCK, model(drop_last=True)),
    ]
    if is_causal:
        mistakes += [(CAUSAL_EARLY, model(causal="early")), (CAUSAL_LATE, model(causal="late"))]
    if not is_causal:  # the generic attention mistakes (scale, axis, mask polarity, NaN rows)
        mistakes += [(h, lambda m=m: m()[0]) for h, m in attention_mistakes(
            query, key, value, attn_mask)]  # fmt: skip
    return mistakes


BLOCKS = (3, 2, 4, 1, 5, 4)  # one block size per EDGE_SHAPES entry: partial blocks, block 1


def _attention_cases(g, make=call_args, mask=None, causal=False):
    cases = []
    for (B, L, S, E), block in zip(EDGE_SHAPES, BLOCKS):
        q, k, v = randn(g, B, L, E), randn(g, B, S, E), randn(g, B, S, E + 1)
        m = {"bool": bool_mask(g, B, L, S), "float": float_mask(g, B, L, S), None: None}[mask]
        cases.append(make(q, k, v, m, causal, block))
    return cases


def _causal_cases(g, make=call_args):
    cases = []
    for L, S, block in ((9, 9, 3), (7, 7, 2), (5, 11, 2), (11, 5, 3), (6, 6, 4), (1, 4, 2)):
        q, k, v = randn(g, 2, L, 4), randn(g, 2, S, 4), randn(g, 2, S, 3)
        cases.append(make(q, k, v, None, True, block))
    return cases


def _empty_row_cases(g):
    q, k, v = randn(g, 2, 5, 3), randn(g, 2, 7, 3), randn(g, 2, 7, 2)
    return [
        call_args(q, k, v, bool_mask(g, 2, 5, 7, empty_rows=2), False, 3),
        call_args(q, k, v, float_mask(g, 2, 5, 7, empty_rows=2), False, 3),
    ]


def _heads_cases(g):  # (B, h, L, d) with a (L, S) mask broadcast over batch and heads
    q, k, v = randn(g, 2, 3, 6, 4), randn(g, 2, 3, 8, 4), randn(g, 2, 3, 8, 5)
    return [call_args(q, k, v, bool_mask(g, 6, 8), False, 3)]


ARGS = ("query", "key", "value", "attn_mask", "is_causal", "block_size")
NAMES = ("output",)

TILED_ATTENTION = Question(
    id="ch08.tiled_attention",
    answer="tiled_attention",
    timeout=10.0,  # block loops in Python are the point here; the machine may be busy
    reference=_tiled_reference,
    arg_names=ARGS,
    title="tiled_attention(query, key, value, attn_mask=None, is_causal=False, block_size=64)",
    tests=(
        shape_test("returns the output (..., L, Ev) only", _attention_cases),
        outputs_test(
            "equals softmax(Q K^T / sqrt(E)) V for any block size",
            _attention_cases,
            mistakes=tiled_mistakes,
        ),  # fmt: skip
        outputs_test(
            "a boolean mask (True = may attend)",
            lambda g: _attention_cases(g, mask="bool"),
            mistakes=tiled_mistakes,
        ),  # fmt: skip
        outputs_test(
            "a float mask is added to the scaled scores",
            lambda g: _attention_cases(g, mask="float"),
            mistakes=tiled_mistakes,
        ),  # fmt: skip
        outputs_test(
            "is_causal: query i sees keys j <= i (top-left when L != S)",
            _causal_cases,
            mistakes=tiled_mistakes,
        ),  # fmt: skip
        outputs_test(
            "a query with no allowed key gets zeros",
            _empty_row_cases,
            mistakes=tiled_mistakes,
            nan_hint=hints.NAN_EMPTY,
        ),  # fmt: skip
        outputs_test(
            "any leading dims, (L, S) mask broadcast", _heads_cases, mistakes=tiled_mistakes
        ),  # fmt: skip
        grad_test(
            "gradients reach query, key and value",
            lambda g: _attention_cases(g, grad_args, mask="bool"),
            ARGS,
        ),  # fmt: skip
    ),
)


# --------------------------------------------------------------------------- linear attention
def linear_variant(query, key, value, causal=False, *, normalise=True, phi="elu",
                   causal_mode="right"):  # fmt: skip
    """Linear attention written the quadratic way, with one mistake switched on."""
    fmap = {"elu": lambda x: F.elu(x) + 1, "none": lambda x: x, "exp": torch.exp,
            "relu": F.relu}[phi]  # fmt: skip
    sim = fmap(query) @ fmap(key).transpose(-2, -1)  # (..., L, S)
    if causal and causal_mode != "ahead":
        L, S = sim.shape[-2:]
        offset = -1 if causal_mode == "exclusive" else 0
        sim = sim * torch.ones(L, S, dtype=sim.dtype).tril(offset)
    if normalise:
        total = sim.sum(-1, keepdim=True)
        sim = sim / torch.where(total == 0, torch.ones_like(total), total)
    return sim @ value


def linear_mistakes(query, key, value, causal=False):
    def model(**kw):
        return lambda: linear_variant(query, key, value, causal, **kw)

    mistakes = [
        (NO_NORMALISER, model(normalise=False)),
        (FEATURE_MAP, model(phi="none")),
        (FEATURE_MAP, model(phi="relu")),
        (FEATURE_MAP, model(phi="exp")),
        (IS_SOFTMAX, lambda: F.scaled_dot_product_attention(query, key, value, is_causal=causal)),
    ]
    if causal:
        mistakes += [
            (LOOKS_AHEAD, model(causal_mode="ahead")),
            (EXCLUSIVE, model(causal_mode="exclusive")),
            (NO_NORMALISER, model(normalise=False, causal_mode="ahead")),
        ]
    return mistakes


def _linear_cases(g, make=call_args, causal=False):
    cases = []
    for B, L, S, E in EDGE_SHAPES:
        if causal and L > S:  # the exercise asks for L <= S when causal
            continue
        q, k, v = randn(g, B, L, E), randn(g, B, S, E), randn(g, B, S, E + 1)
        cases.append(make(q, k, v, causal=causal))
    return cases


def _linear_heads(g, causal=False):
    q, k, v = randn(g, 2, 3, 6, 4), randn(g, 2, 3, 6, 4), randn(g, 2, 3, 6, 5)
    return [call_args(q, k, v, causal=causal)]


LINEAR_ATTENTION = Question(
    id="ch08.linear_attention",
    answer="linear_attention",
    timeout=10.0,  # block loops in Python are the point here; the machine may be busy
    reference=_linear_reference,
    arg_names=("query", "key", "value", "causal"),
    title="linear_attention(query, key, value, causal=False) with phi(x) = elu(x) + 1",
    tests=(
        shape_test("returns (..., L, Ev)", _linear_cases),
        outputs_test("phi(Q) (phi(K)^T V), normalised", _linear_cases, mistakes=linear_mistakes),
        outputs_test(
            "causal: query i uses keys j <= i only",
            lambda g: _linear_cases(g, causal=True),
            mistakes=linear_mistakes,
        ),  # fmt: skip
        outputs_test(
            "any leading dims, causal and not",
            lambda g: _linear_heads(g) + _linear_heads(g, causal=True),
            mistakes=linear_mistakes,
        ),  # fmt: skip
        grad_test(
            "gradients reach query, key and value",
            lambda g: _linear_cases(g, grad_args, causal=True),
            ("query", "key", "value"),
        ),  # fmt: skip
    ),
)

QUESTIONS = [ONLINE_SOFTMAX, TILED_ATTENTION, LINEAR_ATTENTION]
