"""The scoring-function zoo: each scorer against its formula written out directly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attention_course.attention import (
    AdditiveAttention,
    CosineAttention,
    DotAttention,
    GeneralAttention,
    LocationAttention,
    ScaledDotAttention,
    ScoredAttention,
    attention_entropy,
    monte_carlo_context,
)

B, L, S, D = 3, 4, 5, 6


def _inputs(seed: int = 0, dq: int = D, dk: int = D, dv: int = 7):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, L, dq, generator=g)
    keys = torch.randn(B, S, dk, generator=g)
    values = torch.randn(B, S, dv, generator=g)
    return query, keys, values


def _loop_scores(fn, query, keys):
    """Score every (batch, query, key) triple one at a time, the slowest and plainest way."""
    out = torch.empty(query.shape[0], query.shape[1], keys.shape[1])
    for b in range(query.shape[0]):
        for i in range(query.shape[1]):
            for s in range(keys.shape[1]):
                out[b, i, s] = fn(query[b, i], keys[b, s])
    return out


def _zoo():
    torch.manual_seed(0)
    return {
        "dot": DotAttention(),
        "scaled_dot": ScaledDotAttention(),
        "general": GeneralAttention(D, D),
        "additive": AdditiveAttention(D, D, 8),
        "cosine": CosineAttention(beta=3.0),
        "location": LocationAttention(D, max_source_len=9),
    }


def test_dot_score_formula():
    q, k, _ = _inputs()
    expected = _loop_scores(lambda a, b: (a * b).sum(), q, k)
    torch.testing.assert_close(DotAttention().score(q, k), expected)


def test_scaled_dot_score_formula():
    q, k, _ = _inputs()
    expected = _loop_scores(lambda a, b: (a * b).sum() / math.sqrt(D), q, k)
    torch.testing.assert_close(ScaledDotAttention().score(q, k), expected)


def test_general_score_formula_with_different_widths():
    q, k, _ = _inputs(dq=4, dk=6)
    layer = GeneralAttention(query_dim=4, key_dim=6)
    W = layer.key_proj.weight  # (Dq, Dk)
    expected = _loop_scores(lambda a, b: a @ W @ b, q, k)
    torch.testing.assert_close(layer.score(q, k), expected)


def test_additive_score_formula():
    q, k, _ = _inputs(dq=4, dk=6)
    layer = AdditiveAttention(query_dim=4, key_dim=6, attn_dim=5)
    Wq, Wk, v = layer.query_proj.weight, layer.key_proj.weight, layer.v.weight[0]
    expected = _loop_scores(lambda a, b: v @ torch.tanh(Wq @ a + Wk @ b), q, k)
    torch.testing.assert_close(layer.score(q, k), expected)


def test_cosine_score_formula_and_beta():
    q, k, _ = _inputs()
    layer = CosineAttention(beta=2.5, learn_beta=False)
    expected = _loop_scores(lambda a, b: 2.5 * F.cosine_similarity(a, b, dim=0), q, k)
    torch.testing.assert_close(layer.score(q, k), expected)
    assert not any(p.requires_grad for p in layer.parameters())
    assert sum(p.numel() for p in CosineAttention(beta=2.5).parameters()) == 1
    # cosine ignores the norms: rescaling a key changes nothing
    torch.testing.assert_close(layer.score(q, 10 * k), layer.score(q, k))


def test_location_score_ignores_key_content_and_uses_first_S_rows():
    q, k, _ = _inputs()
    layer = LocationAttention(D, max_source_len=9)
    W, bias = layer.position_proj.weight, layer.position_proj.bias
    expected = (q @ W.T + bias)[..., :S]
    torch.testing.assert_close(layer.score(q, k), expected)
    torch.testing.assert_close(layer.score(q, torch.randn_like(k)), expected)
    with pytest.raises(ValueError, match="at most 9"):
        layer.score(q, torch.randn(B, 10, D))


def test_scaled_dot_matches_pytorch_sdpa_with_and_without_mask():
    q, k, v = _inputs()
    ctx, _ = ScaledDotAttention()(q, k, v)
    torch.testing.assert_close(ctx, F.scaled_dot_product_attention(q, k, v))
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(B, L, S, generator=g) > 0.4
    mask[..., 0] = True  # every row keeps a key, so PyTorch gives no NaN to compare against
    ctx, _ = ScaledDotAttention()(q, k, v, mask=mask)
    torch.testing.assert_close(ctx, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("name", list(_zoo()))
def test_every_scorer_rows_sum_to_one_over_keys_and_masked_keys_get_zero(name):
    layer = _zoo()[name]
    q, k, v = _inputs(dv=D)
    ctx, w = layer(q, k, v)
    assert ctx.shape == (B, L, D) and w.shape == (B, L, S)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, L))
    # context is the expectation of the values under the weights
    torch.testing.assert_close(ctx, torch.einsum("bls,bsd->bld", w, v))
    # key padding mask, broadcast over queries: True = may attend
    lengths = torch.tensor([5, 3, 1])
    mask = (torch.arange(S) < lengths[:, None])[:, None, :]  # (B, 1, S)
    ctx, w = layer(q, k, v, mask=mask)
    assert torch.all(w.masked_select(~mask.expand(B, L, S)) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, L))
    # padding values never leak into the context
    v2 = v.clone()
    v2[~mask[:, 0, :]] = 1e6
    torch.testing.assert_close(layer(q, k, v2, mask=mask)[0], ctx)


@pytest.mark.parametrize("name", list(_zoo()))
def test_every_scorer_fully_masked_row_gives_zeros_not_nan(name):
    layer = _zoo()[name]
    q, k, v = _inputs(dv=D)
    mask = torch.ones(B, L, S, dtype=torch.bool)
    mask[0, 1] = False
    ctx, w = layer(q, k, v, mask=mask)
    assert not torch.isnan(w).any() and not torch.isnan(ctx).any()
    assert torch.all(w[0, 1] == 0) and torch.all(ctx[0, 1] == 0)


@pytest.mark.parametrize("name", list(_zoo()))
def test_every_scorer_is_differentiable_and_the_base_hook_is_abstract(name):
    layer = _zoo()[name]
    q, k, v = _inputs(dv=D)
    q.requires_grad_(True)
    ctx, _ = layer(q, k, v)
    ctx.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with pytest.raises(NotImplementedError):
        ScoredAttention()(q, k, v)


def test_values_default_to_keys():
    q, k, _ = _inputs()
    ctx, w = DotAttention()(q, k)
    torch.testing.assert_close(ctx, w @ k)


def test_attention_entropy():
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    torch.testing.assert_close(attention_entropy(w), torch.tensor([0.0, math.log(4), math.log(2)]))
    g = torch.Generator().manual_seed(0)
    w = torch.softmax(torch.randn(2, 3, 4, 5, generator=g), dim=-1)
    expected = -(w * w.log()).sum(-1)
    torch.testing.assert_close(attention_entropy(w), expected)
    assert attention_entropy(torch.zeros(2, 3)).eq(0).all()  # a fully masked row: 0, not NaN


def test_monte_carlo_context_is_unbiased_and_one_sample_is_a_value_row():
    g = torch.Generator().manual_seed(0)
    weights = torch.softmax(torch.randn(2, 3, S, generator=g), dim=-1)
    weights[0, 0] = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])  # a one-hot row
    values = torch.randn(2, S, 4, generator=g)
    exact = weights @ values
    one = monte_carlo_context(weights, values, 1, generator=g)
    assert one.shape == (2, 3, 4)
    torch.testing.assert_close(one[0, 0], values[0, 1])
    # each one-sample context is one of that batch's value rows
    for b in range(2):
        for i in range(3):
            assert torch.isclose(values[b], one[b, i]).all(-1).any()
    many = monte_carlo_context(weights, values, 20_000, generator=g)
    torch.testing.assert_close(many, exact, atol=0.05, rtol=0)
    # reproducible with a seeded generator
    a = monte_carlo_context(weights, values, 7, generator=torch.Generator().manual_seed(3))
    b = monte_carlo_context(weights, values, 7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_additive_attention_is_another_name_of_additive_scored_attention():
    from attention_course.attention import AdditiveScoredAttention
    from attention_course.bahdanau import AdditiveAttention as StepwiseAdditive

    assert AdditiveAttention is AdditiveScoredAttention
    assert AdditiveScoredAttention is not StepwiseAdditive  # chapter 2's step-wise layer


# Chapter 3's experiments, re-run at seeds the chapter does not use (it asserts at seed 0).
# Thresholds: the chapter's, from a sweep over seeds 0-11 (reported in the commit notes).
UNSEEN_SEEDS = [1, 2]


@pytest.mark.parametrize("seed", UNSEEN_SEEDS)
def test_scorer_zoo_splits_position_from_content(seed):
    from attention_course.scoring_experiments import scorer_zoo

    zoo = scorer_zoo(seed=seed)
    accuracy, baseline = zoo.accuracy, zoo.baseline
    for name in zoo.CONTENT_SCORERS:
        assert accuracy[name, "recall"] >= 0.85, (name, accuracy[name, "recall"])
        assert accuracy[name, "copy"] <= baseline["copy"] + 0.1, (name, accuracy[name, "copy"])
    assert accuracy["location", "copy"] >= 0.95
    assert accuracy["location", "recall"] <= baseline["recall"] + 0.1
    assert accuracy["scaled dot + positions in keys", "copy"] >= 0.95
    assert accuracy["scaled dot + positions in keys", "recall"] >= 0.95


@pytest.mark.parametrize("seed", UNSEEN_SEEDS)
def test_luong_comparison_dot_learns_slowest(seed):
    from attention_course.scoring_experiments import luong_comparison

    luong = luong_comparison(seed=seed)
    others = [name for name in luong.final_accuracy if name != "dot"]
    for name in others:
        assert luong.steps_to[name] is not None and luong.steps_to[name] <= 150, luong.steps_to
        assert luong.final_accuracy[name] >= 0.99, (name, luong.final_accuracy)
    slowest_other = max(luong.steps_to[name] for name in others)
    dot_steps = luong.steps_to["dot"] if luong.steps_to["dot"] is not None else luong.steps
    assert dot_steps > 2 * slowest_other, luong.steps_to
    assert luong.curve("dot")[99] < min(luong.curve(name)[99] for name in others) - 0.2


@pytest.mark.parametrize("seed", UNSEEN_SEEDS)
def test_scaling_decides_whether_recall_is_learned_at_large_dk(seed):
    from attention_course.scoring_experiments import scaling_comparison

    scaling = scaling_comparison(seed=seed)
    assert scaling.initial_score_std["unscaled"] > 10 * scaling.initial_score_std["scaled"]
    assert scaling.initial_entropy["unscaled"] < 0.5 * scaling.initial_entropy["scaled"]
    assert scaling.mean_accuracy("scaled", 150, 200) >= 0.95
    assert scaling.mean_accuracy("unscaled", 150, 200) <= 0.65
    assert scaling.final_accuracy["scaled"] >= 0.95 and scaling.final_accuracy["unscaled"] <= 0.65
