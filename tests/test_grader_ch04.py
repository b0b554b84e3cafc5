"""The chapter-4 graders: every plausible wrong answer loses points with the matching hint, and
differently written correct answers score full marks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graderkit import assert_caught, assert_full_marks
from torch import nn

from attention_course.attention import MultiHeadAttention as PackageMultiHeadAttention
from attention_course.grading import grade, list_questions
from attention_course.grading.questions import ch04

QUESTION_IDS = [
    "ch04.sinusoidal_positions",
    "ch04.causal_mask",
    "ch04.split_heads",
    "ch04.merge_heads",
    "ch04.MultiHeadAttention",
]


def test_questions_are_registered():
    assert set(QUESTION_IDS) <= set(list_questions("ch04"))


def not_implemented(*args, **kwargs):
    raise NotImplementedError("stub")


@pytest.mark.parametrize("question_id", QUESTION_IDS)
def test_a_stub_scores_zero(question_id):
    result = grade(question_id, not_implemented)
    assert result.score == 0 and result.not_implemented, result.report()


# --------------------------------------------------------------------------- sinusoidal_positions


def pe_vectorised(length, dim):
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2).float() / dim)
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * frequency)
    pe[:, 1::2] = torch.cos(position * frequency)
    return pe


def pe_loops(length, dim):
    table = np.zeros((length, dim))
    for pos in range(length):
        for i in range(0, dim, 2):
            angle = pos / 10000 ** (i / dim)
            table[pos, i] = math.sin(angle)
            table[pos, i + 1] = math.cos(angle)
    return torch.tensor(table, dtype=torch.float32)


def pe_stacked(length, dim):
    pos = torch.arange(length).double().unsqueeze(1)
    inv = 1.0 / 10000 ** (torch.arange(dim // 2).double() * 2 / dim)
    angle = pos * inv  # (length, dim/2)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(length, dim).float()


@pytest.mark.parametrize("answer", [pe_vectorised, pe_loops, pe_stacked])
def test_sinusoidal_correct_variants(answer):
    assert_full_marks("ch04.sinusoidal_positions", answer)


def pe_swapped(length, dim):
    pe = pe_vectorised(length, dim)
    return torch.stack([pe[:, 1::2], pe[:, 0::2]], -1).reshape(length, dim)


def pe_blocks(length, dim):
    pe = pe_vectorised(length, dim)
    return torch.cat([pe[:, 0::2], pe[:, 1::2]], dim=1)  # tensor2tensor's layout, not the paper's


def pe_own_index(length, dim):
    pos = torch.arange(length).float()[:, None]
    angle = pos / 10000 ** (torch.arange(dim).float() / dim)  # each feature its own frequency
    pe = torch.cos(angle)
    pe[:, 0::2] = torch.sin(angle[:, 0::2])
    return pe


def pe_missing_two(length, dim):
    pos = torch.arange(length).float()[:, None]
    angle = pos / 10000 ** (torch.arange(dim // 2).float() / dim)  # i/dim instead of 2i/dim
    return torch.stack([angle.sin(), angle.cos()], -1).reshape(length, dim)


def pe_multiplied(length, dim):
    pos = torch.arange(length).float()[:, None]
    angle = pos * 10000 ** (torch.arange(0, dim, 2).float() / dim)
    return torch.stack([angle.sin(), angle.cos()], -1).reshape(length, dim)


def pe_from_one(length, dim):
    return pe_vectorised(length + 1, dim)[1:]


def pe_transposed(length, dim):
    return pe_vectorised(length, dim).T


def pe_numpy(length, dim):
    return pe_vectorised(length, dim).numpy()


def pe_float64(length, dim):
    return pe_vectorised(length, dim).double()


@pytest.mark.parametrize(
    "answer, hint",
    [
        (pe_swapped, ch04.SIN_COS_SWAPPED),
        (pe_blocks, ch04.NOT_INTERLEAVED),
        (pe_own_index, ch04.PAIR_EXPONENT),
        (pe_missing_two, ch04.MISSING_TWO),
        (pe_multiplied, ch04.MULTIPLIED_FREQ),
        (pe_from_one, ch04.FROM_ONE),
        (pe_transposed, ch04.TRANSPOSED_PE),
        (pe_numpy, "NumPy array"),
        (pe_float64, "dtype"),
    ],
)
def test_sinusoidal_mistakes(answer, hint):
    assert_caught("ch04.sinusoidal_positions", answer, hint)


# --------------------------------------------------------------------------- causal_mask


def causal_tril(length):
    return torch.tril(torch.ones(length, length, dtype=torch.bool))


def causal_compare(length):
    i = torch.arange(length)
    return i[:, None] >= i[None, :]


def causal_from_torch(length):
    return ~torch.triu(torch.ones(length, length), diagonal=1).bool()


@pytest.mark.parametrize("answer", [causal_tril, causal_compare, causal_from_torch])
def test_causal_correct_variants(answer):
    assert_full_marks("ch04.causal_mask", answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (lambda n: torch.ones(n, n, dtype=torch.bool).triu(1), ch04.CAUSAL_FLIPPED),
        (lambda n: torch.ones(n, n, dtype=torch.bool).triu(), ch04.CAUSAL_TRANSPOSED),
        (lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1), ch04.CAUSAL_NO_DIAGONAL),
        (lambda n: torch.ones(n, n, dtype=torch.bool).tril(1), ch04.CAUSAL_PEEKS),
        (lambda n: torch.ones(n, n).tril(), ch04.CAUSAL_DTYPE),
        (lambda n: nn.Transformer.generate_square_subsequent_mask(n), ch04.CAUSAL_DTYPE),
    ],
    ids=["flipped", "transposed", "no-diagonal", "peeks", "float01", "additive"],
)
def test_causal_mistakes(answer, hint):
    assert_caught("ch04.causal_mask", answer, hint)


# --------------------------------------------------------------------------- split / merge heads


def split_view_transpose(x, num_heads):
    B, L, E = x.shape
    return x.view(B, L, num_heads, E // num_heads).transpose(1, 2)


def split_unflatten_permute(x, num_heads):
    return x.unflatten(-1, (num_heads, -1)).permute(0, 2, 1, 3)


def split_stack_slices(x, num_heads):
    d = x.shape[-1] // num_heads
    return torch.stack([x[..., i * d : (i + 1) * d] for i in range(num_heads)], dim=1)


@pytest.mark.parametrize(
    "answer", [split_view_transpose, split_unflatten_permute, split_stack_slices]
)
def test_split_correct_variants(answer):
    assert_full_marks("ch04.split_heads", answer)


def split_view_only(x, num_heads):
    B, L, E = x.shape
    return x.view(B, num_heads, L, E // num_heads)


def split_no_transpose(x, num_heads):
    B, L, E = x.shape
    return x.view(B, L, num_heads, E // num_heads)


def split_interleaved(x, num_heads):
    B, L, E = x.shape
    return x.view(B, L, E // num_heads, num_heads).permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (split_view_only, ch04.SPLIT_VIEW),
        (split_no_transpose, ch04.SPLIT_NO_TRANSPOSE),
        (split_interleaved, ch04.SPLIT_INTERLEAVED),
    ],
)
def test_split_mistakes(answer, hint):
    assert_caught("ch04.split_heads", answer, hint)


def merge_transpose_reshape(x):
    B, h, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, h * d)


def merge_contiguous_view(x):
    B, h, L, d = x.shape
    return x.permute(0, 2, 1, 3).contiguous().view(B, L, h * d)


def merge_cat(x):
    return torch.cat(x.unbind(dim=1), dim=-1)


@pytest.mark.parametrize("answer", [merge_transpose_reshape, merge_contiguous_view, merge_cat])
def test_merge_correct_variants(answer):
    assert_full_marks("ch04.merge_heads", answer)


def merge_reshape_only(x):
    B, h, L, d = x.shape
    return x.reshape(B, L, h * d)


def merge_view_after_transpose(x):
    B, h, L, d = x.shape
    return x.transpose(1, 2).view(B, L, h * d)


def merge_interleaved(x):
    B, h, L, d = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, L, h * d)


def merge_in_place(x):
    B, h, L, d = x.shape
    x.mul_(1.0).add_(0.0)
    x[:] = x.clone()
    out = x.transpose(1, 2).reshape(B, L, h * d).clone()
    x.zero_()
    return out


@pytest.mark.parametrize(
    "answer, hint",
    [
        (merge_reshape_only, ch04.MERGE_NO_TRANSPOSE),
        (merge_view_after_transpose, ch04.NOT_CONTIGUOUS),
        (merge_interleaved, ch04.MERGE_INTERLEAVED),
        (merge_in_place, "in place"),
    ],
)
def test_merge_mistakes(answer, hint):
    assert_caught("ch04.merge_heads", answer, hint)


# --------------------------------------------------------------------------- MultiHeadAttention


class EinsumMultiHeadAttention(nn.Module):
    """A differently written correct answer: einsum, one combined mask, masked_fill."""

    def __init__(self, embed_dim, num_heads, bias=True):
        super().__init__()
        self.h, self.d = num_heads, embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None,
                need_weights=True, average_attn_weights=True):  # fmt: skip
        B, L, E = query.shape
        S = key.shape[1]
        q = self.q_proj(query).view(B, L, self.h, self.d)
        k = self.k_proj(key).view(B, S, self.h, self.d)
        v = self.v_proj(value).view(B, S, self.h, self.d)
        scores = torch.einsum("blhd,bshd->bhls", q, k) / math.sqrt(self.d)
        allowed = torch.ones(B, 1, L, S, dtype=torch.bool)
        if attn_mask is not None:
            allowed = allowed & attn_mask
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask[:, None, None, :]
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        context = torch.einsum("bhls,bshd->blhd", weights, v).reshape(B, L, E)
        out = self.out_proj(context)
        return out, (weights.mean(1) if average_attn_weights else weights)


class SdpaMultiHeadAttention(nn.Module):
    """Another correct answer: F.scaled_dot_product_attention for the output, weights apart."""

    def __init__(self, embed_dim, num_heads, bias=True):
        super().__init__()
        self.num_heads = num_heads
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, nn.Linear(embed_dim, embed_dim, bias=bias))

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None,
                need_weights=True, average_attn_weights=True):  # fmt: skip
        B, L, E = query.shape
        h = self.num_heads
        q, k, v = (
            p(x).unflatten(-1, (h, E // h)).transpose(1, 2)
            for p, x in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value))
        )
        mask = None
        if attn_mask is not None:
            mask = attn_mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            mask = pad if mask is None else mask & pad
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        scores = q @ k.transpose(-1, -2) / math.sqrt(E // h)
        if mask is not None:
            scores = scores.masked_fill(~mask, -math.inf)
        weights = torch.softmax(scores, dim=-1)
        out = self.out_proj(context.transpose(1, 2).flatten(2))
        return out, weights.mean(dim=1) if average_attn_weights else weights


@pytest.mark.parametrize(
    "answer", [PackageMultiHeadAttention, EinsumMultiHeadAttention, SdpaMultiHeadAttention]
)
def test_multihead_correct_variants(answer):
    assert_full_marks("ch04.MultiHeadAttention", answer)


def test_the_reference_is_torch_and_agrees_with_the_package():
    """The grader's reference is nn.MultiheadAttention; the package class matches it."""
    reference = ch04.TorchMultiheadReference(8, 2)
    assert isinstance(reference.layer, nn.MultiheadAttention) and reference.layer.batch_first


def mutant(**changes):
    """A MultiHeadAttention class with one mistake, written the way a student might."""

    class Mutant(nn.Module):
        def __init__(self, embed_dim, num_heads, bias=True):
            super().__init__()
            self.h, self.E = num_heads, embed_dim
            self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
            self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
            self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
            self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

        def split(self, x):
            B, n, E = x.shape
            if changes.get("split") == "view":
                return x.view(B, self.h, n, E // self.h)
            return x.view(B, n, self.h, E // self.h).transpose(1, 2)

        def forward(self, query, key, value, attn_mask=None, key_padding_mask=None,
                    need_weights=True, average_attn_weights=True):  # fmt: skip
            if changes.get("seq_first"):  # PyTorch's internal (L, B, E) habit
                query, key, value = (t.transpose(0, 1) for t in (query, key, value))
            B, L, E = query.shape
            S = key.shape[1]
            q, k, v = (
                self.split(self.q_proj(query)),
                self.split(self.k_proj(key)),
                self.split(self.v_proj(value)),
            )
            width = {"model": E, "none": 1}.get(changes.get("scale"), E // self.h)
            scores = q @ k.transpose(-2, -1) / math.sqrt(width)
            if attn_mask is not None:
                keep = ~attn_mask if changes.get("attn_flipped") else attn_mask
                scores = scores.masked_fill(~keep, float("-inf"))
            if key_padding_mask is not None:
                keep = ~key_padding_mask if changes.get("pad_flipped") else key_padding_mask
                shape = (B, 1, S, 1) if changes.get("pad_axis") else (B, 1, 1, S)
                scores = scores.masked_fill(~keep.view(shape), float("-inf"))
            weights = scores.softmax(dim=-1)
            context = weights @ v
            if changes.get("merge") == "reshape":
                merged = context.reshape(B, L, E)
            else:
                merged = context.transpose(1, 2).reshape(B, L, E)
            out = merged if changes.get("no_out_proj") else self.out_proj(merged)
            if changes.get("seq_first"):
                out = out.transpose(0, 1)
            if average_attn_weights:
                average = changes.get("average", "heads")
                if average == "heads":
                    weights = weights.mean(1)
                elif average == "batch":
                    weights = weights.mean(0)
                elif average == "keys":
                    weights = weights.mean(-1)
                elif average == "sum":
                    weights = weights.sum(1)
            elif changes.get("always_average"):
                weights = weights.mean(1)
            return out, weights

    return Mutant


class WrongNames(nn.Module):
    def __init__(self, embed_dim, num_heads, bias=True):
        super().__init__()
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, query, key, value, **kwargs):
        return query, None


class NoBiasArgument(PackageMultiHeadAttention):
    def __init__(self, embed_dim, num_heads):
        super().__init__(embed_dim, num_heads)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (mutant(split="view"), ch04.SPLIT_VIEW),
        (mutant(merge="reshape"), ch04.MERGE_NO_TRANSPOSE),
        (mutant(scale="model"), ch04.MHA_MODEL_SCALE),
        (mutant(scale="none"), ch04.MHA_NO_SCALE),
        (mutant(seq_first=True), ch04.MHA_BATCH_FIRST),
        (mutant(no_out_proj=True), ch04.MHA_NO_OUT_PROJ),
        (mutant(attn_flipped=True), ch04.MHA_ATTN_FLIPPED),
        (mutant(pad_flipped=True), ch04.MHA_PAD_FLIPPED),
        (mutant(pad_axis=True), ch04.MHA_PAD_AXIS),
        (mutant(average="batch"), ch04.MHA_AVERAGE_AXIS),
        (mutant(average="keys"), ch04.MHA_AVERAGE_AXIS),
        (mutant(average="none"), ch04.MHA_AVERAGE_MISSING),
        (mutant(average="sum"), ch04.MHA_SUMMED),
        (mutant(always_average=True), ch04.MHA_PER_HEAD),
        (WrongNames, ch04.MHA_NAMES),
        (NoBiasArgument, ch04.MHA_SIGNATURE),
    ],
    ids=[
        "view-without-transpose",
        "merge-without-transpose",
        "model-width-scale",
        "no-scale",
        "batch-first-false",
        "no-out-proj",
        "attn-mask-flipped",
        "padding-flipped",
        "padding-on-queries",
        "average-over-batch",
        "average-over-keys",
        "no-average",
        "sum-over-heads",
        "ignores-average-flag",
        "wrong-names",
        "no-bias-argument",
    ],
)
def test_multihead_mistakes(answer, hint):
    assert_caught("ch04.MultiHeadAttention", answer, hint)


def test_multihead_partial_credit_without_masks():
    """A first version without masks earns the tests that need none, and only those."""

    class NoMasks(nn.Module):
        def __init__(self, embed_dim, num_heads, bias=True):
            super().__init__()
            self.inner = PackageMultiHeadAttention(embed_dim, num_heads, bias=bias)
            self.q_proj, self.k_proj = self.inner.q_proj, self.inner.k_proj
            self.v_proj, self.out_proj = self.inner.v_proj, self.inner.out_proj

        def forward(self, query, key, value, average_attn_weights=True):
            return self.inner(query, key, value, average_attn_weights=average_attn_weights)

        def state_dict(self, *args, **kwargs):  # only the four projections
            return {
                k: v for k, v in super().state_dict(*args, **kwargs).items() if "inner" not in k
            }

        def load_state_dict(self, state_dict, strict=True, assign=False):
            return self.inner.load_state_dict(state_dict, strict=strict)

    result = grade("ch04.MultiHeadAttention", NoMasks)
    failed = {t.name for t in result.tests if not t.passed}
    assert failed and all("mask" in name for name in failed), result.report()
    assert any(ch04.MHA_SIGNATURE in t.message for t in result.tests if not t.passed)


def test_multihead_extra_buffer_and_no_grad():
    """An extra buffer of the layer's own is allowed (the contract names only the four
    projections); a layer that computes under torch.no_grad() trains nothing and loses points."""

    class WithBuffer(PackageMultiHeadAttention):
        def __init__(self, embed_dim, num_heads, bias=True):
            super().__init__(embed_dim, num_heads, bias=bias)
            self.register_buffer("calls", torch.zeros(()))

    class NoGrad(PackageMultiHeadAttention):
        def forward(self, *args, **kwargs):
            with torch.no_grad():
                return super().forward(*args, **kwargs)

    assert_full_marks("ch04.MultiHeadAttention", WithBuffer)
    assert_caught("ch04.MultiHeadAttention", NoGrad, "no gradient reaches")


def test_multihead_key_reshaped_with_the_query_length_is_named():
    class KeyWithL(PackageMultiHeadAttention):
        def forward(self, query, key, value, *args, **kwargs):
            B, L, E = query.shape
            self.k_proj(key).view(B, L, self.num_heads, E // self.num_heads)  # the slip
            return super().forward(query, key, value, *args, **kwargs)

    assert_caught("ch04.MultiHeadAttention", KeyWithL, "its OWN length")
