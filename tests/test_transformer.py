"""Chapter 5's Transformer layers against PyTorch's, and the KV cache against recomputation."""

import itertools

import pytest
import torch
from torch import nn

from attention_course.attention import causal_mask, to_torch_mask
from attention_course.transformer import (
    DecoderLayer,
    DecoderOnly,
    EncoderLayer,
    FeedForward,
    LayerCache,
    Transformer,
    TransformerConfig,
    compare_on_dates,
    gradient_norms_at_init,
    lower_right_causal_mask,
    race_on_copy,
)

E, H, F_DIM = 12, 3, 20
COMBINATIONS = list(itertools.product([False, True], ["relu", "gelu"]))


@pytest.fixture(autouse=True)
def _no_fastpath():
    """Exact comparisons: PyTorch's eval fast path (nested tensors) changes padded rows."""
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(True)


def _padding(B, S, generator):
    lengths = torch.randint(1, S + 1, (B,), generator=generator)
    lengths[0] = S  # at least one full row
    return torch.arange(S)[None, :] < lengths[:, None]  # (B, S) True = real token


@pytest.mark.parametrize("norm_first,activation", COMBINATIONS)
@pytest.mark.parametrize("masks", ["none", "causal", "padding", "both"])
def test_encoder_layer_matches_torch(norm_first, activation, masks):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    theirs = nn.TransformerEncoderLayer(
        E, H, F_DIM, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first
    ).eval()
    ours = EncoderLayer.from_torch(theirs).eval()
    assert ours.norm_first == norm_first and ours.feed_forward.activation == activation
    B, L = 3, 7
    x = torch.randn(B, L, E, generator=g)
    mask = causal_mask(L) if masks in ("causal", "both") else None  # (L, L) True = may attend
    padding = _padding(B, L, g) if masks in ("padding", "both") else None  # True = real
    with torch.no_grad():
        expected = theirs(
            x, src_mask=to_torch_mask(mask), src_key_padding_mask=to_torch_mask(padding)
        )
        got = ours(x, src_mask=mask, src_key_padding_mask=padding)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("norm_first,activation", COMBINATIONS)
@pytest.mark.parametrize("masks", ["none", "causal", "padding", "both"])
def test_decoder_layer_matches_torch(norm_first, activation, masks):
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(3)
    theirs = nn.TransformerDecoderLayer(
        E, H, F_DIM, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first
    ).eval()
    ours = DecoderLayer.from_torch(theirs).eval()
    B, L, S = 3, 5, 8  # non-square: target and source lengths differ
    tgt, memory = torch.randn(B, L, E, generator=g), torch.randn(B, S, E, generator=g)
    causal = causal_mask(L) if masks in ("causal", "both") else None
    tgt_pad = _padding(B, L, g) if masks in ("padding", "both") else None
    mem_pad = _padding(B, S, g) if masks in ("padding", "both") else None
    memory_mask = torch.rand(L, S, generator=g) > 0.3 if masks == "both" else None
    if memory_mask is not None:
        memory_mask[:, 0] = True  # no query without a key
    with torch.no_grad():
        expected = theirs(
            tgt, memory, tgt_mask=to_torch_mask(causal), memory_mask=to_torch_mask(memory_mask),
            tgt_key_padding_mask=to_torch_mask(tgt_pad),
            memory_key_padding_mask=to_torch_mask(mem_pad),
        )  # fmt: skip
        got = ours(
            tgt, memory, tgt_mask=causal, memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=mem_pad,
        )  # fmt: skip
    torch.testing.assert_close(got, expected)


def test_weights_returned_per_head_and_rows_sum_to_one():
    torch.manual_seed(0)
    enc, dec = EncoderLayer(E, H, F_DIM).eval(), DecoderLayer(E, H, F_DIM).eval()
    x, memory = torch.randn(2, 4, E), torch.randn(2, 6, E)
    out, w = enc(x, src_mask=causal_mask(4), need_weights=True)
    assert out.shape == (2, 4, E) and w.shape == (2, H, 4, 4)
    assert torch.all(w.triu(1) == 0)  # causal: nothing above the diagonal
    out, self_w, cross_w = dec(x, memory, tgt_mask=causal_mask(4), need_weights=True)
    assert self_w.shape == (2, H, 4, 4) and cross_w.shape == (2, H, 4, 6)
    torch.testing.assert_close(cross_w.sum(-1), torch.ones(2, H, 4))


def test_feed_forward_is_position_wise():
    torch.manual_seed(0)
    ff = FeedForward(E, F_DIM, activation="gelu")
    x = torch.randn(2, 5, E)
    torch.testing.assert_close(ff(x)[:, 2:3], ff(x[:, 2:3]))


def test_lower_right_causal_mask():
    assert lower_right_causal_mask(1, 4).tolist() == [[True] * 4]
    torch.testing.assert_close(lower_right_causal_mask(5, 5), causal_mask(5))
    assert lower_right_causal_mask(2, 4).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_step_equals_forward_on_prefix(norm_first):
    torch.manual_seed(0)
    layer = DecoderLayer(E, H, F_DIM, norm_first=norm_first).eval()
    B, T, S = 2, 6, 5
    tgt, memory = torch.randn(B, T, E), torch.randn(B, S, E)
    mem_pad = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    full = layer(tgt, memory, tgt_mask=causal_mask(T), memory_key_padding_mask=mem_pad)
    cache = LayerCache()
    steps = [layer.step(tgt[:, :2], memory, cache, mem_pad)[0]]  # two tokens at once, then one
    for t in range(2, T):
        steps.append(layer.step(tgt[:, t : t + 1], memory, cache, mem_pad)[0])
    assert cache.length == T
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("norm_first", [False, True])
def test_cache_gives_the_same_tokens(norm_first):
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=13, tgt_vocab_size=11, norm_first=norm_first)
    model = Transformer(config).eval()
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, 13, (4, 9), generator=g)
    lengths = torch.tensor([9, 7, 4, 1])
    src[1, 7:], src[2, 4:], src[3, 1:] = 0, 0, 0
    tokens_cached, w_cached = model.greedy_decode(src, lengths, 12, use_cache=True)
    tokens_plain, w_plain = model.greedy_decode(src, lengths, 12, use_cache=False)
    assert torch.equal(tokens_cached, tokens_plain)
    torch.testing.assert_close(w_cached, w_plain)
    assert w_cached[3, :, 1:].abs().max() == 0  # padding gets no cross-attention


def test_transformer_shapes_and_padding_invariance():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=13)).eval()
    src = torch.tensor([[5, 6, 7, 0, 0]])
    tgt_in = torch.tensor([[1, 5, 6]])
    logits, weights = model(src, torch.tensor([3]), tgt_in)
    assert logits.shape == (1, 3, 13) and weights.shape == (1, 3, 5)
    short, _ = model(src[:, :3], torch.tensor([3]), tgt_in)
    torch.testing.assert_close(logits, short)  # padding changes nothing
    maps = model.attention_maps(src, torch.tensor([3]), tgt_in)
    assert len(maps.encoder_self) == 2 and maps.cross[0].shape == (1, 4, 3, 5)


def test_decoder_only_padding_and_causality():
    torch.manual_seed(0)
    model = DecoderOnly(TransformerConfig(vocab_size=13)).eval()
    src = torch.tensor([[5, 6, 7, 0, 0]])
    tgt_in = torch.tensor([[1, 5, 6, 7]])
    logits, _ = model(src, torch.tensor([3]), tgt_in)
    short, _ = model(src[:, :3], torch.tensor([3]), tgt_in)
    torch.testing.assert_close(logits, short)  # padding inside the sequence changes nothing
    prefix, _ = model(src, torch.tensor([3]), tgt_in[:, :2])
    torch.testing.assert_close(logits[:, :2], prefix)  # causal: the future changes nothing


# --------------------------------------------------------------------------- chapter 5's claims


@pytest.mark.parametrize("seed", [21, 22])
def test_pre_norm_vs_post_norm_gradients_at_init(seed):
    """Notebook 05's claims at two more seeds (thresholds from a 20-seed sweep)."""
    grads = gradient_norms_at_init(seed=seed)
    assert grads.post_norm[-1] / grads.pre_norm[-1] > 1.5
    assert grads.pre_ratio < 0.6
    assert all(a > b for a, b in zip(grads.post_norm[-4:], grads.pre_norm[-4:]))


@pytest.mark.parametrize("seed", [11, 12])
def test_copy_race_claims(seed):
    """Notebook 05's race at two more seeds, through the same function (about 30 s CPU each)."""
    lengths = [5, 10, 20, 25, 30, 35, 40]
    race = race_on_copy(seed, lengths=lengths, n=128, progress=False)
    T_seq = race.transformer_curve.sequence_accuracy
    B_seq = race.bahdanau_curve.sequence_accuracy
    assert min(T_seq[:3]) >= 0.9, T_seq
    assert max(T_seq[5], T_seq[6]) <= 0.05, T_seq
    assert B_seq[5] <= 0.25, B_seq  # both lose whole strings beyond the training range
    assert race.steps_to_threshold("transformer") < race.steps_to_threshold("bahdanau")
    assert 0.7 < race.transformer_params / race.bahdanau_params < 1.3
    assert race.time_ratio() > 1.0, race.time_ratio()


@pytest.mark.parametrize("seed", [11, 12])
def test_date_comparison_claims(seed):
    """Notebook 05b's dates claims at two more seeds, through the same function (~35 s CPU)."""
    dates = compare_on_dates(seed, progress=False)
    assert dates.exact["bahdanau"] >= 0.97, dates.exact
    assert 0.3 <= dates.exact["transformer"] <= dates.exact["bahdanau"] - 0.3, dates.exact
    assert dates.exact["no_positions"] <= dates.exact["transformer"] - 0.2, dates.exact
