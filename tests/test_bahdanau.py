"""Chapter 2: Bahdanau's additive attention, checked against loops, chapter 3's scorer and SDPA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attention_course.attention import AdditiveAttention as ZooAdditiveAttention
from attention_course.bahdanau import AdditiveAttention

B, S, Q, K, A = 3, 7, 5, 6, 4


@pytest.fixture
def setup():
    torch.manual_seed(0)
    attention = AdditiveAttention(Q, K, A)
    query = torch.randn(B, Q)
    keys = torch.randn(B, S, K)
    lengths = torch.tensor([7, 4, 1])
    mask = torch.arange(S)[None, :] < lengths[:, None]  # (B, S), True = real token
    return attention, query, keys, mask


def loop_reference(attention, query, keys, mask):
    """e_ij, alpha_ij and c_i exactly as the paper writes them, one scalar at a time."""
    W = attention.query_proj.weight  # (A, Q)
    U = attention.key_proj.weight  # (A, K)
    v = attention.v  # (A,)
    contexts, weights = [], []
    for b in range(query.shape[0]):
        positions = [j for j in range(keys.shape[1]) if mask is None or mask[b, j]]
        e = {j: float(v @ torch.tanh(W @ query[b] + U @ keys[b, j])) for j in positions}
        top = max(e.values())
        total = sum(math.exp(x - top) for x in e.values())
        alpha = torch.zeros(keys.shape[1])
        for j in positions:
            alpha[j] = math.exp(e[j] - top) / total
        weights.append(alpha)
        contexts.append(sum(alpha[j] * keys[b, j] for j in range(keys.shape[1])))
    return torch.stack(contexts), torch.stack(weights)


def test_matches_loop_reference_with_mask(setup):
    attention, query, keys, mask = setup
    with torch.no_grad():
        context, weights = attention(query, keys, mask)
        ref_context, ref_weights = loop_reference(attention, query, keys, mask)
    assert context.shape == (B, K) and weights.shape == (B, S)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(context, ref_context, atol=1e-6, rtol=1e-5)
    assert torch.all(weights[~mask] == 0), "padding must get exactly zero weight"
    torch.testing.assert_close(weights.sum(-1), torch.ones(B))


def test_precomputed_keys_give_the_same_result(setup):
    attention, query, keys, mask = setup
    projected = attention.precompute(keys)
    assert projected.shape == (B, S, A)
    torch.testing.assert_close(
        attention(query, keys, mask, projected_keys=projected), attention(query, keys, mask)
    )


def test_agrees_with_chapter_3_scoring_zoo(setup):
    attention, query, keys, mask = setup
    zoo = ZooAdditiveAttention(Q, K, A)
    with torch.no_grad():
        zoo.query_proj.weight.copy_(attention.query_proj.weight)
        zoo.key_proj.weight.copy_(attention.key_proj.weight)
        zoo.v.weight.copy_(attention.v[None, :])
        context, weights = attention(query, keys, mask)
        # The zoo takes L queries at once: one query per sequence here, so L = 1.
        zoo_context, zoo_weights = zoo(query[:, None, :], keys, keys, mask[:, None, :])
    torch.testing.assert_close(weights, zoo_weights[:, 0])
    torch.testing.assert_close(context, zoo_context[:, 0])


def test_softmax_and_context_agree_with_pytorch_sdpa(setup):
    # SDPA computes softmax(q k^T / sqrt(d) + bias) V. With zero queries the dot products vanish
    # and the float bias carries our additive scores (-inf on padding): the result must be ours.
    attention, query, keys, mask = setup
    with torch.no_grad():
        context, weights = attention(query, keys, mask)
        scores = attention.score(query, attention.precompute(keys))  # (B, S)
        bias = scores.masked_fill(~mask, float("-inf"))[:, None, :]  # (B, 1, S)
        zeros = torch.zeros(B, 1, 1)
        expected = F.scaled_dot_product_attention(zeros, torch.zeros(B, S, 1), keys, bias)
    torch.testing.assert_close(context, expected[:, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights, torch.softmax(bias[:, 0], dim=-1))


def test_gradients_flow_to_every_parameter(setup):
    attention, query, keys, mask = setup
    context, _ = attention(query, keys, mask)
    context.sum().backward()
    for name, parameter in attention.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
