"""The graders of chapter 3's further questions are themselves tested.

For every question: a catalogue of plausible wrong answers, each of which must lose points with
the hint written for that mistake, and several differently written correct answers, each of
which must get full marks.
"""

from __future__ import annotations

import math

import pytest
import torch
from graderkit import assert_caught as caught
from graderkit import assert_full_marks as full_marks

from attention_course.grading import grade
from attention_course.grading.questions import ch03_zoo as Z
from attention_course.grading.registry import import_errors

NEG_INF = float("-inf")


def test_the_questions_are_registered():
    assert not import_errors()
    for question in Z.QUESTIONS:
        assert question.id.startswith("ch03.")
        full_marks(question.id, question.reference)


# --------------------------------------------------------------------------- additive_score


def additive_einsum(query, keys, W_q, W_k, v):
    q = torch.einsum("bld,ad->bla", query, W_q)
    k = torch.einsum("bsd,ad->bsa", keys, W_k)
    return torch.einsum("blsa,a->bls", torch.tanh(q[:, :, None] + k[:, None]), v)


def additive_loop(query, keys, W_q, W_k, v):
    B, L, _ = query.shape
    S = keys.shape[1]
    out = torch.empty(B, L, S, dtype=query.dtype)
    for s in range(S):
        hidden = torch.tanh(query @ W_q.T + (keys[:, s] @ W_k.T)[:, None, :])  # (B, L, A)
        out[:, :, s] = hidden @ v
    return out


def additive_linear(query, keys, W_q, W_k, v):
    hidden = torch.nn.functional.linear(query, W_q).unsqueeze(2) + torch.nn.functional.linear(
        keys, W_k
    ).unsqueeze(1)
    return (hidden.tanh() * v).sum(-1)


@pytest.mark.parametrize("answer", [additive_einsum, additive_loop, additive_linear])
def test_additive_correct_variants(answer):
    full_marks("ch03.additive_score", answer)


def _additive_no_tanh(query, keys, W_q, W_k, v):
    return ((query @ W_q.T)[:, :, None] + (keys @ W_k.T)[:, None]) @ v


def _additive_tanh_outside(query, keys, W_q, W_k, v):
    return torch.tanh(((query @ W_q.T)[:, :, None] + (keys @ W_k.T)[:, None]) @ v)


def _additive_math_layout(query, keys, W_q, W_k, v):
    return torch.tanh((query @ W_q)[:, :, None] + (keys @ W_k)[:, None]) @ v


def _additive_swapped(query, keys, W_q, W_k, v):
    return torch.tanh((query @ W_k.T)[:, :, None] + (keys @ W_q.T)[:, None]) @ v


def _additive_softmaxed(query, keys, W_q, W_k, v):
    return torch.softmax(additive_einsum(query, keys, W_q, W_k, v), dim=-1)


def _additive_transposed(query, keys, W_q, W_k, v):
    return additive_einsum(query, keys, W_q, W_k, v).transpose(1, 2)


def _additive_in_place(query, keys, W_q, W_k, v):
    query.unsqueeze_(2)  # (B, L, 1, Dq): "saves" a reshape, and changes the caller's tensor
    return torch.tanh(query @ W_q.T + (keys @ W_k.T)[:, None]) @ v


@pytest.mark.parametrize(
    "answer, hint",
    [
        (_additive_no_tanh, Z.NO_TANH),
        (_additive_tanh_outside, Z.TANH_OUTSIDE),
        (_additive_math_layout, Z.LINEAR_LAYOUT),
        (_additive_swapped, Z.SWAPPED_PROJECTIONS),
        (_additive_softmaxed, Z.RETURN_SCORES),
        (_additive_transposed, Z.SCORES_TRANSPOSED),
        (_additive_in_place, "in place"),
    ],
)
def test_additive_catalogue(answer, hint):
    caught("ch03.additive_score", answer, hint)


# --------------------------------------------------------------------------- general_score


def general_matmul(query, keys, W):
    return query @ W @ keys.transpose(-2, -1)


def general_einsum(query, keys, W):
    return torch.einsum("bld,de,bse->bls", query, W, keys)


def general_project_keys(query, keys, W):
    return torch.bmm(query, (keys @ W.T).transpose(1, 2))


@pytest.mark.parametrize("answer", [general_matmul, general_einsum, general_project_keys])
def test_general_correct_variants(answer):
    full_marks("ch03.general_score", answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (lambda q, k, W: q @ W.T @ k.transpose(-2, -1), Z.GENERAL_TRANSPOSED_W),
        (lambda q, k, W: q @ k.transpose(-2, -1), Z.GENERAL_NO_W),
        (lambda q, k, W: q @ W @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), Z.GENERAL_SCALED),
        (lambda q, k, W: torch.softmax(q @ W @ k.transpose(-2, -1), -1), Z.RETURN_SCORES),
        (lambda q, k, W: k @ W.T @ q.transpose(-2, -1), Z.SCORES_TRANSPOSED),
    ],
    ids=["W-transposed", "no-W", "scaled", "softmaxed", "transposed-output"],
)
def test_general_catalogue(answer, hint):
    caught("ch03.general_score", answer, hint)


# --------------------------------------------------------------------------- multihead_weights


def multihead_reshape(query, key, num_heads, attn_mask=None):
    B, L, E = query.shape
    S, d = key.shape[1], E // num_heads
    q = query.reshape(B, L, num_heads, d).transpose(1, 2)  # (B, h, L, d)
    k = key.reshape(B, S, num_heads, d).transpose(1, 2)  # (B, h, S, d)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, NEG_INF)
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


def multihead_einsum(query, key, num_heads, attn_mask=None):
    B, L, E = query.shape
    d = E // num_heads
    q = query.view(B, L, num_heads, d)
    k = key.view(B, key.shape[1], num_heads, d)
    scores = torch.einsum("blhd,bshd->bhls", q, k) * d**-0.5
    if attn_mask is not None:
        scores = torch.where(attn_mask, scores, torch.tensor(NEG_INF, dtype=scores.dtype))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    e = torch.exp(scores - top)
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def multihead_chunks(query, key, num_heads, attn_mask=None):
    heads = []
    for q, k in zip(query.chunk(num_heads, dim=-1), key.chunk(num_heads, dim=-1)):
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, L, S)
        heads.append(scores)
    scores = torch.stack(heads, dim=1)  # (B, h, L, S)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, NEG_INF)
        allowed = attn_mask.expand_as(scores).any(-1, keepdim=True)
        return torch.where(allowed, torch.softmax(scores, -1), torch.zeros_like(scores))
    return torch.softmax(scores, -1)


@pytest.mark.parametrize("answer", [multihead_reshape, multihead_einsum, multihead_chunks])
def test_multihead_correct_variants(answer):
    full_marks("ch03.multihead_weights", answer)


def _mh(
    scale="sqrt_d",
    split="right",
    dim=-1,
    after=False,
    mask_mode="inf",
    polarity=True,
    nan_to_num=True,
    stable=True,
):
    """A multi-head answer with one mistake switched on."""

    def answer(query, key, num_heads, attn_mask=None):
        B, L, E = query.shape
        S, d = key.shape[1], E // num_heads
        if split == "right":
            q = query.reshape(B, L, num_heads, d).transpose(1, 2)
            k = key.reshape(B, S, num_heads, d).transpose(1, 2)
        else:
            q, k = query.reshape(B, num_heads, L, d), key.reshape(B, num_heads, S, d)
        factor = {"sqrt_d": math.sqrt(d), "sqrt_E": math.sqrt(E), "none": 1.0, "d": d}[scale]
        scores = q @ k.transpose(-2, -1)
        if not after:
            scores = scores / factor
        if attn_mask is not None:
            keep = attn_mask if polarity else ~attn_mask
            if mask_mode == "inf":
                scores = scores.masked_fill(~keep, NEG_INF)
            elif mask_mode == "finite":
                scores = scores.masked_fill(~keep, -1e9)
            elif mask_mode == "add01":
                scores = scores + keep.float()
        if stable:
            weights = torch.softmax(scores, dim=dim)
        else:
            e = torch.exp(scores)
            weights = e / e.sum(dim, keepdim=True)
        if attn_mask is not None and mask_mode == "after":
            weights = weights * attn_mask
        if nan_to_num:
            weights = torch.nan_to_num(weights, nan=0.0)
        return weights / factor if after else weights

    return answer


@pytest.mark.parametrize(
    "answer, hint",
    [
        (_mh(scale="sqrt_E"), Z.SCALE_D_MODEL),
        (_mh(scale="none"), Z.NO_SCALE),
        (_mh(scale="d"), Z.SCALE_D),
        (_mh(after=True), Z.SCALE_AFTER),
        (_mh(split="reshape"), Z.BAD_SPLIT),
        (_mh(dim=-2), Z.WRONG_AXIS),
        (_mh(polarity=False), Z.FLIPPED),
        (_mh(polarity=False, nan_to_num=False), Z.FLIPPED),
        (_mh(mask_mode="add01"), Z.ZERO_ONE),
        (_mh(mask_mode="after"), Z.MASK_AFTER),
        (_mh(mask_mode="finite"), Z.UNIFORM_EMPTY),
        (_mh(nan_to_num=False), Z.NAN_EMPTY),
        (_mh(stable=False), Z.OVERFLOW),
        (_mh(stable=False, nan_to_num=False), Z.OVERFLOW),
    ],
    ids=[
        "d_model",
        "no-scale",
        "scale-d",
        "scale-after-softmax",
        "reshape-without-transpose",
        "softmax-over-queries",
        "mask-flipped",
        "mask-flipped-nan",
        "mask-0/1-added",
        "mask-after-softmax",
        "mask-finite-fill",
        "nan-empty-row",
        "unstable",
        "unstable-nan",
    ],
)
def test_multihead_catalogue(answer, hint):
    caught("ch03.multihead_weights", answer, hint)


def test_multihead_interleaved_heads():
    def interleaved(query, key, num_heads, attn_mask=None):
        B, L, E = query.shape
        d = E // num_heads
        q = query.reshape(B, L, d, num_heads).permute(0, 3, 1, 2)
        k = key.reshape(B, key.shape[1], d, num_heads).permute(0, 3, 1, 2)
        return multihead_reshape_from_heads(q, k, d, attn_mask)

    caught("ch03.multihead_weights", interleaved, Z.INTERLEAVED)


def multihead_reshape_from_heads(q, k, d, attn_mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, NEG_INF)
    return torch.nan_to_num(torch.softmax(scores, -1), nan=0.0)


def test_multihead_mask_exact_zero():
    def finite_everywhere(query, key, num_heads, attn_mask=None):
        B, L, E = query.shape
        d = E // num_heads
        q = query.reshape(B, L, num_heads, d).transpose(1, 2)
        k = key.reshape(B, key.shape[1], num_heads, d).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -30.0)  # "small enough"
            weights = torch.softmax(scores, -1) * attn_mask.expand_as(scores).any(-1, True)
            return weights
        return torch.softmax(scores, -1)

    result = grade("ch03.multihead_weights", finite_everywhere)
    assert not result.passed


# --------------------------------------------------------------------------- attention_entropy


def entropy_xlogy(weights):
    return -torch.xlogy(weights, weights).sum(-1)


def entropy_where(weights):
    logs = torch.log(torch.where(weights > 0, weights, torch.ones_like(weights)))
    return -(weights * logs).sum(dim=-1)


def entropy_entr(weights):
    return torch.special.entr(weights).sum(-1)


@pytest.mark.parametrize("answer", [entropy_xlogy, entropy_where, entropy_entr])
def test_entropy_correct_variants(answer):
    full_marks("ch03.attention_entropy", answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (lambda w: -torch.xlogy(w, w).sum(-1) / math.log(2), Z.ENTROPY_BITS),
        (lambda w: -(w * torch.log2(w.clamp_min(1e-30))).sum(-1), Z.ENTROPY_BITS),
        (lambda w: torch.xlogy(w, w).sum(-1), Z.ENTROPY_SIGN),
        (lambda w: -torch.xlogy(w, w).sum(-2), Z.ENTROPY_AXIS),
        (lambda w: -torch.xlogy(w, w).mean(-1), Z.ENTROPY_MEAN),
        (lambda w: -torch.xlogy(w, w).sum(-1, keepdim=True), Z.ENTROPY_KEEPDIM),
        (lambda w: -(w * torch.log(w)).sum(-1), Z.ENTROPY_NAN),
    ],
    ids=["bits", "log2", "no-minus", "query-axis", "mean", "keepdim", "nan-0log0"],
)
def test_entropy_catalogue(answer, hint):
    caught("ch03.attention_entropy", answer, hint)


def test_entropy_in_place_and_numpy():
    def in_place(weights):
        weights.clamp_(min=1e-12)
        return -(weights * weights.log()).sum(-1)

    caught("ch03.attention_entropy", in_place, "in place")

    def numpy_answer(weights):
        import numpy as np

        w = weights.numpy()
        return -(w * np.log(np.where(w > 0, w, 1))).sum(-1)

    caught("ch03.attention_entropy", numpy_answer, "NumPy")


# --------------------------------------------------------------------------- monte_carlo_context


def mc_multinomial(weights, values, num_samples, generator=None):
    B, L, S = weights.shape
    idx = torch.multinomial(weights.reshape(B * L, S), num_samples, True, generator=generator)
    idx = idx.reshape(B, L, num_samples)
    picked = values[torch.arange(B)[:, None, None], idx]  # (B, L, N, Dv)
    return picked.mean(dim=2)


def mc_inverse_cdf(weights, values, num_samples, generator=None):
    B, L, S = weights.shape
    cdf = weights.cumsum(-1)  # (B, L, S)
    cdf = cdf / cdf[..., -1:]  # exactly 1 at the end
    u = torch.rand(B, L, num_samples, generator=generator, dtype=weights.dtype)
    idx = torch.searchsorted(cdf.contiguous(), u, right=True).clamp_max(S - 1)  # (B, L, N)
    one_hot = torch.nn.functional.one_hot(idx, S).to(values.dtype)  # (B, L, N, S)
    counts = one_hot.mean(2)  # (B, L, S): the empirical distribution of the draws
    return counts @ values


def mc_loops(weights, values, num_samples, generator=None):
    B, L, S = weights.shape
    out = torch.zeros(B, L, values.shape[-1], dtype=values.dtype)
    for b in range(B):
        for i in range(L):
            draws = torch.multinomial(
                weights[b, i], num_samples, replacement=True, generator=generator
            )
            out[b, i] = values[b, draws].mean(0)
    return out


@pytest.mark.parametrize("answer", [mc_multinomial, mc_inverse_cdf, mc_loops])
def test_monte_carlo_correct_variants(answer):
    full_marks("ch03.monte_carlo_context", answer)


def _mc_exact(weights, values, num_samples, generator=None):
    return weights @ values


def _mc_uniform(weights, values, num_samples, generator=None):
    B, L, S = weights.shape
    idx = torch.randint(0, S, (B, L, num_samples), generator=generator)
    return values[torch.arange(B)[:, None, None], idx].mean(2)


def _mc_argmax(weights, values, num_samples, generator=None):
    idx = weights.argmax(-1)  # (B, L)
    return values[torch.arange(weights.shape[0])[:, None], idx]


def _mc_one_draw(weights, values, num_samples, generator=None):
    return mc_multinomial(weights, values, 1, generator)


def _mc_without_replacement(weights, values, num_samples, generator=None):
    B, L, S = weights.shape
    idx = torch.multinomial(weights.reshape(B * L, S), num_samples, False, generator=generator)
    return values[torch.arange(B)[:, None, None], idx.reshape(B, L, -1)].mean(2)


def _mc_global_rng(weights, values, num_samples, generator=None):
    return mc_multinomial(weights, values, num_samples, None)


def _mc_unnormalised_sum(weights, values, num_samples, generator=None):
    B, L, S = weights.shape
    idx = torch.multinomial(weights.reshape(B * L, S), num_samples, True, generator=generator)
    return values[torch.arange(B)[:, None, None], idx.reshape(B, L, -1)].sum(2)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (_mc_exact, Z.MC_EXACT),
        (_mc_uniform, Z.MC_ZERO_WEIGHT),
        (_mc_uniform, Z.MC_UNIFORM),
        (_mc_argmax, Z.MC_ARGMAX),
        (_mc_one_draw, Z.MC_ONE_SAMPLE),
        (_mc_without_replacement, "with replacement"),
        (_mc_global_rng, Z.MC_GENERATOR),
        (_mc_unnormalised_sum, "biased"),
    ],
    ids=[
        "exact-expectation",
        "uniform-support",
        "uniform-bias",
        "argmax",
        "one-draw",
        "without-replacement",
        "ignores-generator",
        "sum-not-mean",
    ],
)
def test_monte_carlo_catalogue(answer, hint):
    caught("ch03.monte_carlo_context", answer, hint)


def test_monte_carlo_in_place():
    def clamps_in_place(weights, values, num_samples, generator=None):
        weights.clamp_(min=1e-12)  # "avoid zero probabilities", in the caller's tensor
        return mc_multinomial(weights, values, num_samples, generator)

    caught("ch03.monte_carlo_context", clamps_in_place, "in place")


def test_stubs_score_zero():
    def stub(*args, **kwargs):
        raise NotImplementedError("write it")

    for question in Z.QUESTIONS:
        result = grade(question.id, stub)
        assert result.score == 0 and result.not_implemented, result.report()


def test_monte_carlo_that_reseeds_itself_loses_points():
    """Re-seeding inside passes "same seed, same estimate" but is not random across seeds."""

    def reseeds(weights, values, num_samples, generator=None):
        return Z.reference_monte_carlo_context(
            weights, values, num_samples, torch.Generator().manual_seed(0)
        )

    caught("ch03.monte_carlo_context", reseeds, "different generators give the same estimate")
