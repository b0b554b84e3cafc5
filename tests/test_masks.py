"""The chapter 6 masks: prefix LM and cross-attention as self-attention, checked against PyTorch."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from attention_course.attention import (
    causal_mask,
    cross_attention_block_mask,
    prefix_lm_mask,
    to_torch_mask,
)


def test_prefix_lm_mask_small_case_written_out():
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],  # source rows: the source only
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],  # target 0: the source and itself
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(prefix_lm_mask(2, 3), expected)


@pytest.mark.parametrize(("S", "T"), [(1, 1), (3, 1), (1, 4), (5, 3), (4, 0), (0, 4)])
def test_prefix_lm_mask_blocks(S, T):
    mask = prefix_lm_mask(S, T)
    assert mask.dtype == torch.bool and mask.shape == (S + T, S + T)
    assert mask[:, :S].all()  # everyone reads the whole source
    assert not mask[:S, S:].any()  # the source never reads the target
    assert torch.equal(mask[S:, S:], causal_mask(T))  # targets: causal, diagonal included


@pytest.mark.parametrize(("S", "T"), [(1, 1), (3, 2), (2, 5), (0, 3)])
def test_cross_attention_block_mask(S, T):
    mask = cross_attention_block_mask(S, T)
    assert mask.dtype == torch.bool and mask.shape == (S + T, S + T)
    assert mask[:, :S].all() and not mask[:, S:].any()


def test_negative_lengths_raise():
    with pytest.raises(ValueError):
        prefix_lm_mask(-1, 2)
    with pytest.raises(ValueError):
        cross_attention_block_mask(2, -1)


def test_masks_mean_the_same_to_pytorch_after_conversion():
    # SDPA takes True = may attend; nn.MultiheadAttention takes the negation (to_torch_mask).
    g = torch.Generator().manual_seed(0)
    S, T, E = 4, 3, 8
    x = torch.randn(2, S + T, E, generator=g)
    mha = torch.nn.MultiheadAttention(E, 1, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.eye(E).repeat(3, 1))
        mha.out_proj.weight.copy_(torch.eye(E))
    for mask in (prefix_lm_mask(S, T), cross_attention_block_mask(S, T)):
        theirs, _ = mha(x, x, x, attn_mask=to_torch_mask(mask))
        ours = F.scaled_dot_product_attention(x, x, x, attn_mask=mask)
        assert_close(ours, theirs)


def test_prefix_lm_target_block_matches_nn_transformer_causal_mask():
    T = 5
    float_mask = torch.nn.Transformer.generate_square_subsequent_mask(T)  # -inf above diagonal
    assert torch.equal(prefix_lm_mask(3, T)[3:, 3:], float_mask == 0)
