"""The reference attention functions agree with PyTorch's, and never produce NaN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attention_course.attention import masked_softmax, scaled_dot_product_attention

# (batch dims, L, S, E, Ev): with and without head dims, L = 1, S = 1, odd sizes
SHAPES = [
    ((), 1, 1, 1, 1),
    ((), 5, 7, 4, 3),
    ((2,), 1, 9, 8, 8),
    ((3,), 7, 1, 5, 2),
    ((2, 3), 5, 11, 6, 7),
    ((1, 4), 13, 13, 16, 16),
]


def _qkv(batch, L, S, E, Ev, seed):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(*batch, L, E, generator=g)
    key = torch.randn(*batch, S, E, generator=g)
    value = torch.randn(*batch, S, Ev, generator=g)
    return query, key, value, g


def _bool_mask(shape, g, keep_one=True):
    mask = torch.rand(*shape, generator=g) > 0.4  # True = may attend
    if keep_one:
        mask[..., 0] = True  # every row keeps a key, so PyTorch gives no NaN either
    return mask


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", SHAPES)
def test_sdpa_matches_pytorch_without_mask(shape, seed):
    query, key, value, _ = _qkv(*shape, seed)
    output, weights = scaled_dot_product_attention(query, key, value)
    expected = F.scaled_dot_product_attention(query, key, value)
    torch.testing.assert_close(output, expected)
    assert weights.shape == (*shape[0], shape[1], shape[2])
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", SHAPES)
def test_sdpa_matches_pytorch_with_bool_mask(shape, seed):
    batch, L, S, _, _ = shape
    query, key, value, g = _qkv(*shape, seed)
    for mask_shape in [(L, S), (*batch, L, S), (1, S)]:
        mask = _bool_mask(mask_shape, g)
        output, weights = scaled_dot_product_attention(query, key, value, attn_mask=mask)
        expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        torch.testing.assert_close(output, expected)
        assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", SHAPES)
def test_sdpa_matches_pytorch_with_float_mask(shape, seed):
    batch, L, S, _, _ = shape
    query, key, value, g = _qkv(*shape, seed)
    bias = torch.randn(*batch, L, S, generator=g)  # an arbitrary additive bias
    bias = bias.masked_fill(~_bool_mask((L, S), g), float("-inf"))
    output, _ = scaled_dot_product_attention(query, key, value, attn_mask=bias)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    torch.testing.assert_close(output, expected)


@pytest.mark.parametrize("float_mask", [False, True])
def test_fully_masked_row_gives_zeros_not_nan(float_mask):
    query, key, value, g = _qkv((2, 3), 5, 7, 4, 6, seed=0)
    mask = _bool_mask((5, 7), g)
    mask[2] = False  # query 2 may attend to nothing
    attn_mask = torch.zeros(5, 7).masked_fill(~mask, float("-inf")) if float_mask else mask
    output, weights = scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
    assert not torch.isnan(output).any() and not torch.isnan(weights).any()
    torch.testing.assert_close(output[..., 2, :], torch.zeros(2, 3, 6))
    torch.testing.assert_close(weights[..., 2, :], torch.zeros(2, 3, 7))
    # every other row is exactly PyTorch's
    rows = [i for i in range(5) if i != 2]
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
    torch.testing.assert_close(output[..., rows, :], expected[..., rows, :])


def test_masked_softmax_matches_softmax_and_is_stable():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 3, 5, 7, generator=g)
    for dim in (-1, -2, 0, 1):
        torch.testing.assert_close(masked_softmax(scores, dim=dim), scores.softmax(dim))
    huge = torch.tensor([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]])
    weights = masked_softmax(huge)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights[0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(weights[1], torch.full((3,), 1 / 3))


def test_masked_softmax_mask_broadcasts_and_keeps_inputs():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 4, 6, generator=g)
    mask = torch.rand(1, 6, generator=g) > 0.5  # one key pattern for every query
    mask[0, 0] = True
    before_scores, before_mask = scores.clone(), mask.clone()
    weights = masked_softmax(scores, mask)
    expected = scores.masked_fill(~mask, -math.inf).softmax(-1)
    torch.testing.assert_close(weights, expected)
    assert (weights[..., ~mask[0]] == 0).all()
    assert torch.equal(scores, before_scores) and torch.equal(mask, before_mask)
    empty = masked_softmax(scores, torch.zeros(6, dtype=torch.bool))
    assert torch.equal(empty, torch.zeros_like(scores))


def test_gradients_are_finite_with_a_fully_masked_row():
    query, key, value, g = _qkv((2,), 4, 5, 8, 3, seed=3)
    query.requires_grad_(True)
    mask = _bool_mask((4, 5), g)
    mask[1] = False
    output, _ = scaled_dot_product_attention(query, key, value, attn_mask=mask)
    output.sum().backward()
    assert torch.isfinite(query.grad).all()
    assert torch.equal(query.grad[:, 1], torch.zeros(2, 8))


def test_dtype_is_kept():
    query, key, value, _ = _qkv((2,), 3, 4, 8, 8, seed=4)
    output, weights = scaled_dot_product_attention(query.double(), key.double(), value.double())
    assert output.dtype == weights.dtype == torch.float64
