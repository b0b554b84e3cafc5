"""The graders of chapter 2's questions are themselves tested.

For every question: a catalogue of plausible wrong answers, each of which must lose points with
the hint written for that mistake, and differently written correct answers, each of which must
get full marks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from graderkit import assert_caught as caught
from graderkit import assert_full_marks as full_marks

from attention_course.grading.questions import ch02 as Q
from attention_course.grading.registry import import_errors

NEG_INF = float("-inf")


def test_the_questions_are_registered():
    assert not import_errors()
    assert [q.id for q in Q.QUESTIONS] == [
        "ch02.additive_scores",
        "ch02.attention_step",
        "ch02.alignment",
    ]
    for question in Q.QUESTIONS:
        full_marks(question.id, question.reference)


# --------------------------------------------------------------------------- additive_scores


def scores_broadcast(prev_state, projected_keys, W_a, v_a, mask):
    hidden = torch.tanh((prev_state @ W_a.T)[:, None, :] + projected_keys)  # (B, S, A)
    return (hidden @ v_a).masked_fill(~mask, NEG_INF)


def scores_einsum_where(prev_state, projected_keys, W_a, v_a, mask):
    query = torch.einsum("bh,ah->ba", prev_state, W_a)
    scores = torch.einsum("bsa,a->bs", torch.tanh(query.unsqueeze(1) + projected_keys), v_a)
    return torch.where(mask, scores, torch.full_like(scores, NEG_INF))


def scores_loop(prev_state, projected_keys, W_a, v_a, mask):
    B, S, _ = projected_keys.shape
    out = torch.full((B, S), NEG_INF, dtype=prev_state.dtype)
    for b in range(B):
        query = F.linear(prev_state[b], W_a)  # (A,)
        for j in range(S):
            if mask[b, j]:
                out[b, j] = (torch.tanh(query + projected_keys[b, j]) * v_a).sum()
    return out


@pytest.mark.parametrize("answer", [scores_broadcast, scores_einsum_where, scores_loop])
def test_additive_scores_correct_variants(answer):
    full_marks("ch02.additive_scores", answer)


def _query(prev_state, W_a):
    return prev_state @ W_a.T  # (B, A)


SCORES_WRONG = {
    "padding not masked": (
        lambda s, k, W, v, m: torch.tanh(_query(s, W)[:, None] + k) @ v,
        Q.NOT_MASKED,
    ),
    "mask flipped": (
        lambda s, k, W, v, m: (torch.tanh(_query(s, W)[:, None] + k) @ v).masked_fill(m, NEG_INF),
        Q.FLIPPED,
    ),
    "-1e9 instead of -inf": (
        lambda s, k, W, v, m: (torch.tanh(_query(s, W)[:, None] + k) @ v).masked_fill(~m, -1e9),
        Q.FINITE_FILL,
    ),
    "multiplied by the mask": (
        lambda s, k, W, v, m: (torch.tanh(_query(s, W)[:, None] + k) @ v) * m,
        Q.ZERO_FILL,
    ),
    "forgot tanh": (
        lambda s, k, W, v, m: ((_query(s, W)[:, None] + k) @ v).masked_fill(~m, NEG_INF),
        Q.NO_TANH,
    ),
    "tanh outside": (
        lambda s, k, W, v, m: torch.tanh((_query(s, W)[:, None] + k) @ v).masked_fill(~m, NEG_INF),
        Q.TANH_OUTSIDE,
    ),
    "W s broadcast over the wrong axis": (
        lambda s, k, W, v, m: (torch.tanh(_query(s, W) + k) @ v).masked_fill(~m, NEG_INF),
        Q.WRONG_BROADCAST,
    ),
    "W_a in math layout": (
        lambda s, k, W, v, m: (torch.tanh((s @ W)[:, None] + k) @ v).masked_fill(~m, NEG_INF),
        Q.W_LAYOUT,
    ),
    "returns the softmax": (
        lambda s, k, W, v, m: torch.softmax(
            (torch.tanh(_query(s, W)[:, None] + k) @ v).masked_fill(~m, NEG_INF), dim=-1
        ),
        Q.SOFTMAXED,
    ),
}


@pytest.mark.parametrize("name", list(SCORES_WRONG))
def test_additive_scores_wrong_answers_are_caught(name):
    answer, hint = SCORES_WRONG[name]
    caught("ch02.additive_scores", answer, hint)


def test_additive_scores_in_place_mask_fill_is_caught():
    def in_place(prev_state, projected_keys, W_a, v_a, mask):
        projected_keys += (prev_state @ W_a.T)[:, None]
        return (torch.tanh(projected_keys) @ v_a).masked_fill(~mask, NEG_INF)

    caught("ch02.additive_scores", in_place, "in place")


# --------------------------------------------------------------------------- attention_step


def step_with_masked_softmax(prev_state, states, projected_keys, W_a, v_a, mask):
    from attention_course.attention import masked_softmax

    scores = scores_broadcast(prev_state, projected_keys, W_a, v_a, mask)  # (B, S)
    weights = masked_softmax(scores, mask, dim=-1)
    return (weights.unsqueeze(-1) * states).sum(1), weights


def step_bmm(prev_state, states, projected_keys, W_a, v_a, mask):
    scores = scores_einsum_where(prev_state, projected_keys, W_a, v_a, mask)
    weights = torch.softmax(scores, dim=1)
    context = torch.bmm(weights.unsqueeze(1), states).squeeze(1)  # (B, 1, S) @ (B, S, K)
    return context, weights


def step_sdpa(prev_state, states, projected_keys, W_a, v_a, mask):
    # PyTorch's SDPA with zero queries and the additive scores as a float mask
    scores = scores_loop(prev_state, projected_keys, W_a, v_a, mask)[:, None, :]  # (B, 1, S)
    B, S, K = states.shape
    zeros_q = torch.zeros(B, 1, 1, dtype=states.dtype)
    zeros_k = torch.zeros(B, S, 1, dtype=states.dtype)
    context = F.scaled_dot_product_attention(zeros_q, zeros_k, states, attn_mask=scores)
    return context[:, 0], torch.softmax(scores[:, 0], dim=-1)


@pytest.mark.parametrize("answer", [step_with_masked_softmax, step_bmm, step_sdpa])
def test_attention_step_correct_variants(answer):
    full_marks("ch02.attention_step", answer)


def _scores(s, k, W, v, m, *, fill=True, tanh=True, wrong_axis=False):
    q = _query(s, W) if wrong_axis else _query(s, W)[:, None]
    hidden = q + k
    scores = (torch.tanh(hidden) if tanh else hidden) @ v
    return scores.masked_fill(~m, NEG_INF) if fill else scores


def _ctx(weights, values):
    return (weights.unsqueeze(-1) * values).sum(1), weights


STEP_WRONG = {
    "softmax over the batch": (
        lambda s, h, k, W, v, m: _ctx(
            torch.nan_to_num(torch.softmax(_scores(s, k, W, v, m), dim=0)), h
        ),
        Q.BATCH_AXIS,
    ),
    "padding not masked": (
        lambda s, h, k, W, v, m: _ctx(torch.softmax(_scores(s, k, W, v, m, fill=False), -1), h),
        Q.NOT_MASKED,
    ),
    "mask flipped": (
        lambda s, h, k, W, v, m: _ctx(
            torch.softmax(_scores(s, k, W, v, m, fill=False).masked_fill(m, NEG_INF), -1), h
        ),
        Q.FLIPPED,
    ),
    "mask after the softmax": (
        lambda s, h, k, W, v, m: _ctx(torch.softmax(_scores(s, k, W, v, m, fill=False), -1) * m, h),
        Q.MASK_AFTER,
    ),
    "forgot tanh": (
        lambda s, h, k, W, v, m: _ctx(torch.softmax(_scores(s, k, W, v, m, tanh=False), -1), h),
        Q.NO_TANH,
    ),
    "W s broadcast over the wrong axis": (
        lambda s, h, k, W, v, m: _ctx(
            torch.softmax(_scores(s, k, W, v, m, wrong_axis=True), -1), h
        ),
        Q.WRONG_BROADCAST,
    ),
    "context from the projected keys": (
        lambda s, h, k, W, v, m: _ctx(torch.softmax(_scores(s, k, W, v, m), -1), k),
        Q.CONTEXT_FROM_KEYS,
    ),
    "context summed over the hidden axis": (
        lambda s, h, k, W, v, m: (
            (torch.softmax(_scores(s, k, W, v, m), -1).unsqueeze(-1) * h).sum(-1),
            torch.softmax(_scores(s, k, W, v, m), -1),
        ),
        Q.CONTEXT_WRONG_AXIS,
    ),
    "softmax over a size-1 axis": (
        lambda s, h, k, W, v, m: _ctx(
            torch.softmax(_scores(s, k, W, v, m).unsqueeze(-1), dim=-1).squeeze(-1), h
        ),
        Q.SIZE_ONE_AXIS,
    ),
    "exp without normalising": (
        lambda s, h, k, W, v, m: _ctx(torch.exp(_scores(s, k, W, v, m)), h),
        Q.NOT_NORMALISED,
    ),
}


@pytest.mark.parametrize("name", list(STEP_WRONG))
def test_attention_step_wrong_answers_are_caught(name):
    answer, hint = STEP_WRONG[name]
    caught("ch02.attention_step", answer, hint)


# --------------------------------------------------------------------------- alignment


def alignment_forward(model, src, src_lengths, tgt_in):
    _, weights = model(src, src_lengths, tgt_in)
    return weights


def alignment_loop(model, src, src_lengths, tgt_in):
    enc = model.decoder.prepare(model.encoder(src, src_lengths))
    state = model.decoder.init_state(enc)
    rows = []
    for i in range(tgt_in.shape[1]):
        _, state, weights = model.decoder.step(tgt_in[:, i], state, enc)
        rows.append(weights)
    return torch.stack(rows, dim=1)


def alignment_context_hook(model, src, src_lengths, tgt_in):
    # without prepare(): context() then computes U h itself; the state update done by hand
    decoder = model.decoder
    enc = model.encoder(src, src_lengths)
    state = decoder.init_state(enc)
    out = torch.zeros(src.shape[0], tgt_in.shape[1], src.shape[1])
    for i in range(tgt_in.shape[1]):
        emb = decoder.embedding(tgt_in[:, i])
        context, out[:, i] = decoder.context(state, enc)
        state = decoder.cell(torch.cat([emb, context], dim=-1), state)
    return out


@pytest.mark.parametrize("answer", [alignment_forward, alignment_loop, alignment_context_hook])
def test_alignment_correct_variants(answer):
    full_marks("ch02.alignment", answer)


def alignment_stacked_dim0(model, src, src_lengths, tgt_in):
    return alignment_loop(model, src, src_lengths, tgt_in).transpose(0, 1)


def alignment_new_state(model, src, src_lengths, tgt_in):
    decoder = model.decoder
    enc = decoder.prepare(model.encoder(src, src_lengths))
    state = decoder.init_state(enc)
    rows = []
    for i in range(tgt_in.shape[1]):
        _, state, _ = decoder.step(tgt_in[:, i], state, enc)
        rows.append(decoder.context(state, enc)[1])  # attends with s_i
    return torch.stack(rows, dim=1)


def alignment_greedy(model, src, src_lengths, tgt_in):
    _, weights = model.greedy_decode(src, src_lengths, tgt_in.shape[1])
    return weights


def alignment_skips_eos_step(model, src, src_lengths, tgt_in):
    return alignment_forward(model, src, src_lengths, tgt_in[:, :-1])


@pytest.mark.parametrize(
    "answer, hint",
    [
        (alignment_stacked_dim0, Q.STACKED_DIM0),
        (alignment_new_state, Q.S_I),
        (alignment_greedy, Q.GREEDY),
        (alignment_skips_eos_step, Q.ONE_ROW_PER_INPUT),
    ],
)
def test_alignment_wrong_answers_are_caught(answer, hint):
    caught("ch02.alignment", answer, hint)
