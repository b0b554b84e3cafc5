"""Chapter 8's graders: the wrong answers students write must lose points with the matching hint;
differently written correct answers must get full marks."""

import math

import pytest
import torch
import torch.nn.functional as F
from graderkit import assert_caught, assert_full_marks

from attention_course.attention import linear_attention, online_softmax, tiled_attention
from attention_course.grading.questions import ch08

# --------------------------------------------------------------------------- online softmax


def _online(rescale="right", drop_last=False, stable=True, guard=True, use_dim=True):
    """A student's blocked online softmax with the given slip."""

    def answer(scores, dim=-1, block_size=64):
        x = scores.movedim(dim if use_dim else -1, -1)
        n = x.shape[-1]
        m = torch.full_like(x[..., :1], float("-inf"))
        total = torch.zeros_like(x[..., :1])
        end = (n // block_size) * block_size if drop_last else n
        for start in range(0, end, block_size):
            block = x[..., start : start + block_size]
            if not stable:
                total = total + block.exp().sum(-1, keepdim=True)
                continue
            new = torch.maximum(m, block.max(-1, keepdim=True).values)
            ref = torch.where(new == float("-inf"), torch.zeros_like(new), new)
            if rescale == "right":
                total = total * torch.exp(m - ref)
            elif rescale == "inverse":
                total = total * torch.exp(ref - torch.where(m == float("-inf"), ref, m))
            total = total + torch.exp(block - ref).sum(-1, keepdim=True)
            m = new
        if not stable:
            return (x.exp() / total).movedim(-1, dim if use_dim else -1)
        ref = torch.where(m == float("-inf"), torch.zeros_like(m), m)
        if guard:
            total = torch.where(total == 0, torch.ones_like(total), total)
        return (torch.exp(x - ref) / total).movedim(-1, dim if use_dim else -1)

    return answer


def online_logaddexp(scores, dim=-1, block_size=64):
    """Correct, written another way: a running log-sum-exp combined with logaddexp."""
    x = scores.transpose(dim, -1)
    lse = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype)
    for start in range(0, x.shape[-1], block_size):
        lse = torch.logaddexp(lse, torch.logsumexp(x[..., start : start + block_size], dim=-1))
    out = torch.exp(x - lse.unsqueeze(-1)).nan_to_num(nan=0.0)
    return out.transpose(dim, -1)


@pytest.mark.parametrize("answer", [online_softmax, _online(), online_logaddexp])
def test_online_softmax_correct_answers(answer):
    assert_full_marks("ch08.online_softmax", answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (_online(rescale="none"), "must be rescaled"),
        (_online(rescale="inverse"), "upside down"),
        (_online(drop_last=True), "last, shorter block"),
        (_online(stable=False), "overflows"),
        (_online(guard=False), "NaN"),
        (_online(use_dim=False), "`dim`"),
    ],
)
def test_online_softmax_catalogue(answer, hint):
    assert_caught("ch08.online_softmax", answer, hint)


def test_online_softmax_plain_softmax_misses_empty_rows():
    # torch.softmax gives NaN on an all -inf slice: the question asks for zeros there
    assert_caught("ch08.online_softmax", lambda s, dim=-1, block_size=64: s.softmax(dim), "NaN")


# --------------------------------------------------------------------------- tiled attention


def _tiled(acc="right", total="right", drop_last=False, causal_end="right", guard=True,
           flip=False, scale=True, in_place=False):  # fmt: skip
    """A student's tiled attention with the given slip."""

    def answer(query, key, value, attn_mask=None, is_causal=False, block_size=64):
        polarity_flipped = flip
        L, E = query.shape[-2:]
        S = key.shape[-2]
        if in_place and attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = attn_mask.logical_not_()  # True = masked now, but the caller's mask too
            polarity_flipped = True
        if attn_mask is not None:
            batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
            attn_mask = attn_mask.expand(*batch, L, S)
        pieces = []
        for q0 in range(0, L, block_size):
            q1 = min(q0 + block_size, L)
            q = query[..., q0:q1, :]
            m = torch.full((*q.shape[:-1], 1), float("-inf"))
            m = m.expand(*torch.broadcast_shapes(q.shape[:-1], key.shape[:-2] + (1,)), 1)
            l_ = torch.zeros(m.shape)
            o = torch.zeros(*m.shape[:-1], value.shape[-1])
            if is_causal:
                end = {"right": min(S, q1), "early": min(S, q0), "late": min(S, q1 + block_size)}
                k_end = end[causal_end]
            else:
                k_end = S
            if drop_last:
                k_end = (k_end // block_size) * block_size
            for k0 in range(0, k_end, block_size):
                k1 = min(k0 + block_size, k_end)
                s = q @ key[..., k0:k1, :].transpose(-2, -1)
                if scale:
                    s = s / math.sqrt(E)
                if attn_mask is not None:
                    t = attn_mask[..., q0:q1, k0:k1]
                    if t.dtype == torch.bool:
                        s = s.masked_fill(t if polarity_flipped else ~t, float("-inf"))
                    else:
                        s = s + t
                if is_causal and (causal_end != "late" or k0 == q0):
                    i = torch.arange(q0, q1).unsqueeze(1)
                    j = torch.arange(k0, k1).unsqueeze(0)
                    s = s.masked_fill(j > i, float("-inf"))
                new = torch.maximum(m, s.max(-1, keepdim=True).values)
                ref = torch.where(torch.isinf(new), torch.zeros_like(new), new)
                p = torch.exp(s - ref)
                c = torch.exp(m - ref)
                l_ = (l_ * c if total == "right" else l_) + p.sum(-1, keepdim=True)
                if acc == "right":
                    o = o * c
                elif acc == "inverse":
                    o = o / c.clamp_min(1e-30)
                o = o + p @ value[..., k0:k1, :]
                m = new
            if guard:
                l_ = torch.where(l_ == 0, torch.ones_like(l_), l_)
            pieces.append(o / l_)
        return torch.cat(pieces, dim=-2)

    return answer


def tiled_all_queries(query, key, value, attn_mask=None, is_causal=False, block_size=64):
    """Correct, written another way: all queries at once, log-sum-exp weights per key block."""
    L, E = query.shape[-2:]
    S = key.shape[-2]
    i = torch.arange(L).unsqueeze(-1)
    lse, out = None, None
    for k0 in range(0, S, block_size):
        k1 = min(k0 + block_size, S)
        s = query @ key[..., k0:k1, :].mT * E**-0.5
        if attn_mask is not None:
            t = attn_mask[..., k0:k1] if attn_mask.shape[-1] != 1 else attn_mask
            s = torch.where(t, s, float("-inf")) if t.dtype == torch.bool else s + t
        if is_causal:
            s = torch.where(torch.arange(k0, k1) <= i, s, float("-inf"))
        block_lse = torch.logsumexp(s, dim=-1, keepdim=True)
        part = torch.exp(s - block_lse).nan_to_num(0.0) @ value[..., k0:k1, :]
        if lse is None:
            lse, out = block_lse, part
            continue
        new = torch.logaddexp(lse, block_lse)
        out = (torch.exp(lse - new).nan_to_num(0.0) * out
               + torch.exp(block_lse - new).nan_to_num(0.0) * part)  # fmt: skip
        lse = new
    return out


@pytest.mark.parametrize("answer", [tiled_attention, _tiled(), tiled_all_queries])
def test_tiled_correct_answers(answer):
    assert_full_marks("ch08.tiled_attention", answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (_tiled(acc="none"), "output accumulator"),
        (_tiled(acc="inverse"), "output accumulator"),
        (_tiled(total="none"), "must be rescaled"),
        (_tiled(drop_last=True), "last, shorter block"),
        (_tiled(causal_end="early"), "one block too early"),
        (_tiled(causal_end="late"), "one block too far"),
        (_tiled(guard=False), "NaN"),
        (_tiled(flip=True), "polarity"),
        (_tiled(scale=False), "1/sqrt(E)"),
        (_tiled(in_place=True), "in place"),
    ],
)
def test_tiled_catalogue(answer, hint):
    assert_caught("ch08.tiled_attention", answer, hint)


def test_tiled_no_grad_is_caught():
    def answer(*args, **kwargs):
        with torch.no_grad():
            return tiled_attention(*args, **kwargs)

    assert_caught("ch08.tiled_attention", answer, "no gradient")


# --------------------------------------------------------------------------- linear attention


def _linear(normalise=True, phi=lambda x: F.elu(x) + 1, causal_mode="right"):
    """A student's linear attention (cumulative sums for the causal case) with the given slip."""

    def answer(query, key, value, causal=False):
        fq, fk = phi(query), phi(key)
        if causal and causal_mode != "ahead":
            kv = torch.cumsum(fk.unsqueeze(-1) * value.unsqueeze(-2), dim=-3)
            z = torch.cumsum(fk, dim=-2)
            if causal_mode == "exclusive":
                kv = kv - fk.unsqueeze(-1) * value.unsqueeze(-2)
                z = z - fk
            L = query.shape[-2]
            num = torch.einsum("...ld,...ldv->...lv", fq, kv[..., :L, :, :])
            den = (fq * z[..., :L, :]).sum(-1, keepdim=True)
        else:
            num = fq @ (fk.transpose(-2, -1) @ value)
            den = fq @ fk.sum(-2).unsqueeze(-1)
        if not normalise:
            return num
        return num / torch.where(den == 0, torch.ones_like(den), den)

    return answer


def linear_recurrent(query, key, value, causal=False):
    """Correct, written another way: the causal case as an RNN over positions."""
    fq, fk = F.elu(query) + 1, F.elu(key) + 1
    if not causal:
        return torch.einsum("...ld,...sd,...sv->...lv", fq, fk, value) / torch.einsum(
            "...ld,...sd->...l", fq, fk
        ).unsqueeze(-1)
    state = torch.zeros(*fk.shape[:-2], fk.shape[-1], value.shape[-1], dtype=value.dtype)
    norm = torch.zeros(*fk.shape[:-1][:-1], fk.shape[-1], dtype=value.dtype)
    outs = []
    for i in range(query.shape[-2]):
        state = state + fk[..., i, :, None] * value[..., i, None, :]
        norm = norm + fk[..., i, :]
        outs.append(
            (fq[..., i, :, None] * state).sum(-2) / (fq[..., i, :] * norm).sum(-1)[..., None]
        )
    return torch.stack(outs, dim=-2)


@pytest.mark.parametrize("answer", [linear_attention, _linear(), linear_recurrent])
def test_linear_correct_answers(answer):
    assert_full_marks("ch08.linear_attention", answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (_linear(normalise=False), "normaliser"),
        (_linear(causal_mode="ahead"), "looks ahead"),
        (_linear(causal_mode="exclusive"), "key i itself"),
        (_linear(phi=lambda x: x), "feature map"),
        (_linear(phi=F.relu), "feature map"),
        (
            lambda q, k, v, causal=False: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
            "softmax attention",
        ),
    ],
)
def test_linear_catalogue(answer, hint):
    assert_caught("ch08.linear_attention", answer, hint)


def test_linear_detached_is_caught():
    def answer(q, k, v, causal=False):
        return linear_attention(q.detach(), k.detach(), v.detach(), causal=causal)

    assert_caught("ch08.linear_attention", answer, "gradient")


def test_hints_do_not_hold_solution_lines():
    for name in dir(ch08):
        text = getattr(ch08, name)
        if name.isupper() and isinstance(text, str):
            assert "cumsum" not in text and "masked_fill" not in text and "torch.exp(" not in text
