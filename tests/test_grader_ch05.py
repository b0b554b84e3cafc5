"""The chapter-5 graders: every plausible wrong answer loses points with the matching hint, and
differently written correct answers score full marks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from graderkit import assert_caught, assert_full_marks

from attention_course.attention import causal_mask, merge_heads, split_heads
from attention_course.grading import grade, list_questions
from attention_course.grading.questions import ch05

QUESTION_IDS = ["ch05.feed_forward", "ch05.encoder_layer", "ch05.decoder_layer", "ch05.cache_step"]


def test_questions_are_registered():
    assert set(QUESTION_IDS) <= set(list_questions("ch05"))


def not_implemented(*args, **kwargs):
    raise NotImplementedError("stub")


@pytest.mark.parametrize("question_id", QUESTION_IDS)
def test_a_stub_scores_zero(question_id):
    result = grade(question_id, not_implemented)
    assert result.score == 0 and result.not_implemented, result.report()


# --------------------------------------------------------------------------- feed_forward


def ff_linear(x, w1, b1, w2, b2, activation="relu"):
    act = F.relu if activation == "relu" else F.gelu
    return F.linear(act(F.linear(x, w1, b1)), w2, b2)


def ff_matmul(x, w1, b1, w2, b2, activation="relu"):
    hidden = x @ w1.T + b1
    hidden = hidden.clamp(min=0) if activation == "relu" else F.gelu(hidden)
    return hidden @ w2.T + b2


def test_feed_forward_correct_answers():
    assert_full_marks("ch05.feed_forward", ff_linear)
    assert_full_marks("ch05.feed_forward", ff_matmul)


def ff_no_activation(x, w1, b1, w2, b2, activation="relu"):
    return F.linear(F.linear(x, w1, b1), w2, b2)


def ff_activation_after(x, w1, b1, w2, b2, activation="relu"):
    act = F.relu if activation == "relu" else F.gelu
    return act(F.linear(act(F.linear(x, w1, b1)), w2, b2))


def ff_always_relu(x, w1, b1, w2, b2, activation="relu"):
    return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)


def ff_not_transposed(x, w1, b1, w2, b2, activation="relu"):
    act = F.relu if activation == "relu" else F.gelu
    return act(x @ w1 + b1) @ w2 + b2


def ff_no_bias(x, w1, b1, w2, b2, activation="relu"):
    act = F.relu if activation == "relu" else F.gelu
    return F.linear(act(F.linear(x, w1)), w2)


def ff_in_place(x, w1, b1, w2, b2, activation="relu"):
    x.mul_(1.0)
    return ff_linear(x.relu_() * 0 + x, w1, b1, w2, b2, activation)


def ff_no_grad(x, w1, b1, w2, b2, activation="relu"):
    with torch.no_grad():
        return ff_linear(x, w1, b1, w2, b2, activation)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (ff_no_activation, "apply the activation between"),
        (ff_activation_after, "no activation after the second"),
        (ff_always_relu, "activation the `activation` argument names"),
        (ff_not_transposed, "nn.Linear's layout"),
        (ff_no_bias, "add the biases"),
        (ff_in_place, "in place"),
        (ff_no_grad, "gradient"),
    ],
)
def test_feed_forward_mistakes(answer, hint):
    assert_caught("ch05.feed_forward", answer, hint)


# --------------------------------------------------------------------------- encoder_layer


def sa(attn, x, padding=None, mask=None):
    return attn(x, x, x, attn_mask=mask, key_padding_mask=padding)[0]


def encoder_branches(x, self_attention, feed_forward, norm1, norm2, norm_first=False,
                     key_padding_mask=None):  # fmt: skip
    if norm_first:
        x = x + sa(self_attention, norm1(x), key_padding_mask)
        return x + feed_forward(norm2(x))
    x = norm1(x + sa(self_attention, x, key_padding_mask))
    return norm2(x + feed_forward(x))


def encoder_generic(x, self_attention, feed_forward, norm1, norm2, norm_first=False,
                    key_padding_mask=None):  # fmt: skip
    def branch(x, norm, sublayer):
        return x + sublayer(norm(x)) if norm_first else norm(x + sublayer(x))

    x = branch(x, norm1, lambda y: self_attention(y, y, y, key_padding_mask=key_padding_mask)[0])
    return branch(x, norm2, feed_forward)


def test_encoder_layer_correct_answers():
    assert_full_marks("ch05.encoder_layer", encoder_branches)
    assert_full_marks("ch05.encoder_layer", encoder_generic)


def encoder_always_post(x, a, f, n1, n2, norm_first=False, key_padding_mask=None):
    return encoder_branches(x, a, f, n1, n2, False, key_padding_mask)


def encoder_swapped(x, a, f, n1, n2, norm_first=False, key_padding_mask=None):
    return encoder_branches(x, a, f, n1, n2, not norm_first, key_padding_mask)


def encoder_residual_after_norm(x, a, f, n1, n2, norm_first=False, key_padding_mask=None):
    if norm_first:  # the skip carries the normalised x
        x = n1(x)
        x = x + sa(a, x, key_padding_mask)
        x = n2(x)
        return x + f(x)
    x = n1(sa(a, x, key_padding_mask)) + x
    return n2(f(x)) + x


def encoder_no_residual(x, a, f, n1, n2, norm_first=False, key_padding_mask=None):
    if norm_first:
        return f(n2(sa(a, n1(x), key_padding_mask)))
    return n2(f(n1(sa(a, x, key_padding_mask))))


def encoder_torch_polarity(x, a, f, n1, n2, norm_first=False, key_padding_mask=None):
    flipped = None if key_padding_mask is None else ~key_padding_mask  # as for nn.Multihead...
    return encoder_branches(x, a, f, n1, n2, norm_first, flipped)


def encoder_ignores_padding(x, a, f, n1, n2, norm_first=False, key_padding_mask=None):
    return encoder_branches(x, a, f, n1, n2, norm_first, None)


def encoder_detached(x, a, f, n1, n2, norm_first=False, key_padding_mask=None):
    return encoder_branches(x.detach(), a, f, n1, n2, norm_first, key_padding_mask).detach()


def encoder_mask_in_place(x, a, f, n1, n2, norm_first=False, key_padding_mask=None):
    if key_padding_mask is not None:
        key_padding_mask.logical_not_()  # "convert" it, editing the caller's mask
        key_padding_mask = ~key_padding_mask
    return encoder_branches(x, a, f, n1, n2, norm_first, key_padding_mask)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (encoder_always_post, "layer norm is in the wrong place"),
        (encoder_swapped, "layer norm is in the wrong place"),
        (encoder_residual_after_norm, "residual skips the wrong thing"),
        (encoder_no_residual, "residual branch"),
        (encoder_torch_polarity, "padding mask polarity"),
        (encoder_ignores_padding, "key padding mask was not used"),
        (encoder_detached, "gradient"),
    ],
)
def test_encoder_layer_mistakes(answer, hint):
    assert_caught("ch05.encoder_layer", answer, hint)


def test_encoder_layer_in_place_mask_edit_loses_points():
    result = grade("ch05.encoder_layer", encoder_mask_in_place)
    assert result.score < result.max_score, result.report()


# --------------------------------------------------------------------------- decoder_layer


def decoder_branches(tgt, memory, self_attention, cross_attention, feed_forward, norm1, norm2,
                     norm3, norm_first=False, memory_key_padding_mask=None, *, causal="ok",
                     cross_source="memory"):  # fmt: skip
    L = tgt.shape[1]
    mask = {
        "ok": causal_mask(L), "none": None, "diag": causal_mask(L).tril(-1),
        "peek": torch.ones(L, L, dtype=torch.bool).tril(1), "torch": ~causal_mask(L),
    }[causal]  # fmt: skip

    def self_branch(y):
        return self_attention(y, y, y, attn_mask=mask)[0]

    def cross_branch(y):
        source = memory if cross_source == "memory" else y
        padding = memory_key_padding_mask if cross_source == "memory" else None
        return cross_attention(y, source, source, key_padding_mask=padding)[0]

    x = tgt
    for norm, sublayer in ((norm1, self_branch), (norm2, cross_branch), (norm3, feed_forward)):
        x = x + sublayer(norm(x)) if norm_first else norm(x + sublayer(x))
    return x


def decoder_unrolled(tgt, memory, self_attention, cross_attention, feed_forward, norm1, norm2,
                     norm3, norm_first=False, memory_key_padding_mask=None):  # fmt: skip
    L = tgt.shape[1]
    allowed = torch.tril(torch.ones(L, L)).bool()
    x = tgt
    if norm_first:
        y = norm1(x)
        x = x + self_attention(y, y, y, attn_mask=allowed)[0]
        y = norm2(x)
        x = x + cross_attention(y, memory, memory, key_padding_mask=memory_key_padding_mask)[0]
        return x + feed_forward(norm3(x))
    x = norm1(x + self_attention(x, x, x, attn_mask=allowed)[0])
    x = norm2(x + cross_attention(x, memory, memory,
                                  key_padding_mask=memory_key_padding_mask)[0])  # fmt: skip
    return norm3(x + feed_forward(x))


def test_decoder_layer_correct_answers():
    assert_full_marks("ch05.decoder_layer", decoder_branches)
    assert_full_marks("ch05.decoder_layer", decoder_unrolled)


def _decoder(**switches):
    def answer(tgt, memory, sa_, ca, ff, n1, n2, n3, norm_first=False,
               memory_key_padding_mask=None):  # fmt: skip
        first = switches.get("norm_first", norm_first)
        pad = memory_key_padding_mask
        if switches.get("flip_padding") and pad is not None:
            pad = ~pad
        return decoder_branches(tgt, memory, sa_, ca, ff, n1, n2, n3, first, pad,
                                causal=switches.get("causal", "ok"),
                                cross_source=switches.get("cross", "memory"))  # fmt: skip

    return answer


@pytest.mark.parametrize(
    "answer, hint",
    [
        (_decoder(cross="decoder"), "keys and values from the encoder"),
        (_decoder(causal="none"), "needs a causal mask"),
        (_decoder(causal="diag"), "may attend to itself"),
        (_decoder(causal="peek"), "not to i + 1"),
        (_decoder(causal="torch"), "causal mask polarity"),
        (_decoder(norm_first=False), "layer norm is in the wrong place"),
        (_decoder(flip_padding=True), "padding mask polarity"),
    ],
)
def test_decoder_layer_mistakes(answer, hint):
    assert_caught("ch05.decoder_layer", answer, hint)


# --------------------------------------------------------------------------- cache_step


def cache_reference_style(x_new, positions, self_attention, past_keys, past_values):
    t = past_keys.shape[2]
    x = x_new + positions[t]
    h = self_attention.num_heads
    k = split_heads(self_attention.k_proj(x), h)
    v = split_heads(self_attention.v_proj(x), h)
    keys, values = torch.cat([past_keys, k], dim=2), torch.cat([past_values, v], dim=2)
    q = split_heads(self_attention.q_proj(x), h)
    context = F.scaled_dot_product_attention(q, keys, values)  # one query, no mask needed
    return self_attention.out_proj(merge_heads(context)), keys, values


def cache_by_hand(x_new, positions, self_attention, past_keys, past_values):
    B, _, E = x_new.shape
    h = self_attention.num_heads
    d = E // h
    x = x_new + positions[past_keys.shape[2] : past_keys.shape[2] + 1]  # (1, E) row
    q = self_attention.q_proj(x).view(B, 1, h, d).transpose(1, 2)
    k = self_attention.k_proj(x).view(B, 1, h, d).transpose(1, 2)
    v = self_attention.v_proj(x).view(B, 1, h, d).transpose(1, 2)
    keys, values = torch.cat((past_keys, k), 2), torch.cat((past_values, v), 2)
    weights = torch.softmax(q @ keys.transpose(-1, -2) / d**0.5, dim=-1)
    context = (weights @ values).transpose(1, 2).reshape(B, 1, E)
    return self_attention.out_proj(context), keys, values


def test_cache_step_correct_answers():
    assert_full_marks("ch05.cache_step", cache_reference_style)
    assert_full_marks("ch05.cache_step", cache_by_hand)


def _cache(offset=None, top_left=False, append=True, raw=False, no_position=False):
    def answer(x_new, positions, attn, past_keys, past_values):
        t = past_keys.shape[2]
        index = t if offset is None else offset(t)
        x = x_new if no_position else x_new + positions[index]
        h = attn.num_heads
        if raw:
            k = v = split_heads(x, h)
        else:
            k, v = split_heads(attn.k_proj(x), h), split_heads(attn.v_proj(x), h)
        keys, values = torch.cat([past_keys, k], 2), torch.cat([past_values, v], 2)
        used_k, used_v = (keys, values) if append else (past_keys, past_values)
        q = split_heads(attn.q_proj(x), h)
        context = F.scaled_dot_product_attention(q, used_k, used_v, is_causal=top_left)
        return attn.out_proj(merge_heads(context)), keys, values

    return answer


@pytest.mark.parametrize(
    "answer, hint",
    [
        (_cache(offset=lambda t: 0), "not at position 0"),
        (_cache(offset=lambda t: t + 1), "position off by one"),
        (_cache(no_position=True), "add the position encoding"),
        (_cache(top_left=True), "top-left"),
        (_cache(append=False), "append the new token's key"),
        (_cache(raw=True), "projections"),
    ],
)
def test_cache_step_mistakes(answer, hint):
    assert_caught("ch05.cache_step", answer, hint)


def test_hints_do_not_hold_the_solution():
    texts = [v for k, v in vars(ch05).items() if k.isupper() and isinstance(v, str)]
    for text in texts:
        assert "positions[t]" not in text and "torch.cat" not in text and "tril()" not in text
