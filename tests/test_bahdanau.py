"""Chapter 2: Bahdanau's additive attention, checked against loops, chapter 3's scorer and SDPA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attention_course.attention import AdditiveAttention as ZooAdditiveAttention
from attention_course.bahdanau import AdditiveAttention, BahdanauDecoder

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


# --------------------------------------------------------------------------- the chapter's claims
# Chapter 2's notebook trains seed 0; these re-run the very same package functions at seeds 1 and
# 2 and assert the notebook's thresholds (keep the two in step), so no claim rests on one seed.


def test_bahdanau_decoder_masks_padding_and_overrides_only_the_context_hook():
    from attention_course.bahdanau import BahdanauDecoder
    from attention_course.data import copy_task
    from attention_course.seq2seq import CopyRecipe, Decoder, build_model

    assert {"step", "init_state"}.isdisjoint(vars(BahdanauDecoder))  # chapter 1's, inherited
    assert BahdanauDecoder.step is Decoder.step
    model = build_model(CopyRecipe().config(), BahdanauDecoder, seed=0).eval()
    batch = copy_task().sample(5, (2, 9), seed=3)
    with torch.no_grad():
        logits, weights = model(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, S)
    assert weights.shape == (*batch.tgt_in.shape, batch.src.shape[1])
    assert torch.all(weights.masked_select(~batch.src_mask[:, None, :]) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch.tgt_in.shape))


@pytest.mark.parametrize("seed", [1, 2])
def test_chapter_2_claims_hold_at_more_seeds(seed):
    from attention_course.bahdanau import (
        compare_on_copy,
        date_exact_match,
        field_attention_share,
        train_date_model,
    )
    from attention_course.data import DATE_FORMATS

    torch.set_num_threads(1)
    comparison = compare_on_copy(seed, [5, 30, 45, 50], n=256, progress=False)
    plain, attention = comparison.plain_curve, comparison.attention_curve
    (attn_tok30, attn_seq30), (plain_tok30, plain_seq30) = attention.at(30), plain.at(30)
    assert attn_seq30 >= 0.80 and attn_tok30 >= 0.95, (attn_tok30, attn_seq30)
    assert plain_seq30 <= 0.05 and plain_tok30 <= 0.30, (plain_tok30, plain_seq30)
    assert plain.at(5)[1] >= 0.90 and attention.at(5)[1] >= 0.90
    assert attention.at(45)[0] >= 0.75 and plain.at(45)[0] <= 0.25
    assert attention.at(50)[1] < attn_seq30 - 0.3

    # the shift-by-one diagonal of the bidirectional encoder
    test30 = comparison.attention.task.sample(256, 30, seed=2030)
    with torch.no_grad():
        _, weights30 = comparison.attention.model(test30.src, test30.src_lengths, test30.tgt_in)
    strongest = weights30[:, 1:30].argmax(dim=-1)  # (B, 29)
    steps = torch.arange(1, 30)
    share_previous = (strongest == steps - 1).float().mean().item()
    share_same = (strongest == steps).float().mean().item()
    assert share_previous >= 0.6 and share_previous > 2 * share_same, (share_previous, share_same)

    dates = train_date_model(seed=seed, steps=200, progress=False)
    held_out = dates.task.sample(1000, "test", seed=1)
    assert date_exact_match(dates.model, held_out) >= 0.97
    with torch.no_grad():
        _, weights = dates.model(held_out.src, held_out.src_lengths, held_out.tgt_in)
    shares = field_attention_share(weights, held_out)
    chance = field_attention_share(weights, held_out, uniform=True)
    assert shares["year"] >= 0.75 and shares["month"] >= 0.60 and shares["day"] >= 0.60, shares
    assert all(shares[f] >= 2.5 * chance[f] for f in shares), (shares, chance)
    for fmt in DATE_FORMATS:  # the weakest (format, field) cell
        one_format = dates.task.sample(200, "test", seed=2, formats=[fmt])
        with torch.no_grad():
            _, w = dates.model(one_format.src, one_format.src_lengths, one_format.tgt_in)
        cell = field_attention_share(w, one_format)
        assert min(cell.values()) >= 0.45, (fmt, cell)
    # mm/dd/yy: the year is read right of the day, the day right of the month
    us = dates.task.sample(200, "test", seed=3, formats=["mm/dd/yy"])
    with torch.no_grad():
        _, w = dates.model(us.src, us.src_lengths, us.tgt_in)
    centre = (w * torch.arange(us.src.shape[1])).sum(-1)  # (B, T)
    year, month, day = centre[:, 0:4].mean(-1), centre[:, 5:7].mean(-1), centre[:, 8:10].mean(-1)
    assert ((year > day) & (day > month)).float().mean() >= 0.95


def test_translate_returns_trimmed_alignments_and_rejects_bad_input():
    from attention_course.bahdanau import translate
    from attention_course.data import DateTask
    from attention_course.seq2seq import Seq2SeqConfig, build_model

    task = DateTask(seed=0, n_test_dates=10)
    config = Seq2SeqConfig(len(task.src_vocab), len(task.tgt_vocab))
    model = build_model(config, BahdanauDecoder, seed=0)
    texts = ["11/24/26", "Tuesday, November 24, 2026"]
    for text, (output, weights) in zip(texts, translate(model, task, texts, max_len=5)):
        assert weights.shape[1] == len(text)  # no padding columns
        assert weights.shape[0] == min(len(output) + 1, 5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[0]))
    for bad in ["", "11/24/26 ☃"]:
        with pytest.raises(ValueError):
            translate(model, task, [bad])
