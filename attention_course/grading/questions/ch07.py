"""Chapter 7's graded questions: attention inside CNNs.

- ``ch07.squeeze_excitation(x, w1, b1, w2, b2)``: SE on ``(B, C, H, W)``; ``w1`` (C_r, C),
  ``w2`` (C, C_r): the bottleneck MLP as matrices. Returns x times the sigmoid gate.
- ``ch07.cbam_channel_gate(x, w1, b1, w2, b2)``: CBAM's channel gate, ``(B, C, 1, 1)``: ONE
  shared MLP on the average- and max-pooled channels, summed, then a sigmoid.
- ``ch07.non_local(x, w_theta, w_phi, w_g, w_z)``: the non-local block (no biases) as
  self-attention over the H*W pixels, with the residual; ``w_theta/w_phi/w_g`` (C', C),
  ``w_z`` (C, C'). Scores scaled by 1/sqrt(C').
- ``ch07.patchify(images, patch_size)``: ``(B, C, H, W) -> (B, N, C*p*p)``, row-major patches,
  each flattened in (C, p, p) order.

References are the package's own layers (``attention_course.vision``) with the weights copied in.
``tests/test_grader_ch07.py`` is the catalogue of wrong answers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attention_course import vision

from ..kit import (
    Fail,
    Question,
    Test,
    call_args,
    expect_tensor,
    grad_args,
    grad_test,
    outputs_test,
    randn,
    shape_test,
)

# Hints, one per plausible mistake.
SE_POOL_AXES = (
    "the squeeze averages each channel over its PIXELS (the H and W axes), giving one number per "
    "image and channel; you pooled over other axes"
)
SE_SOFTMAX = (
    "SE's gate is a sigmoid per channel, each in (0, 1) on its own; a softmax makes the channels "
    "compete (sum to 1), which SE does not"
)
SE_PER_PIXEL = (
    "the gate is one number per image and channel, shape (B, C, 1, 1): squeeze (pool over the "
    "pixels) BEFORE the MLP, do not run the MLP at every pixel"
)
SE_MAX_POOL = "SE squeezes with the MEAN over the pixels, not the maximum"
SE_NO_RELU = "the bottleneck MLP has a ReLU between its two layers"
SE_GATE_ONLY = "return the rescaled features x * gate (shape of x), not the gate itself"
SE_TRANSPOSED = "w1 has shape (C_r, C): compute w1 @ z (z of width C), mind the transposes"
CBAM_SEPARATE = "apply ONE sigmoid to the SUM of the two MLP outputs, not a sigmoid to each branch"
CBAM_AVG_ONLY = "CBAM's channel gate uses BOTH the average- and the max-pooled channels"
CBAM_POOL_FIRST = (
    "run the shared MLP on each pooled vector separately, then add: MLP(avg) + MLP(max), not "
    "MLP(avg + max)"
)
CBAM_SHAPE = "return the gate with shape (B, C, 1, 1), ready to multiply x"
NL_WRONG_AXIS = (
    "the softmax normalises over the wrong axis of the (HW x HW) matrix: each query's weights "
    "must sum to 1 over the KEYS (the last axis)"
)
NL_NO_RESIDUAL = "the block adds its output to the input: z = x + W_z y (the residual)"
NL_NO_SCALE = "scale the scores by 1/sqrt(C'), C' = the inner width of theta and phi"
NL_SCRAMBLED = (
    "the (B, HW, C') result was reshaped to (B, C', H, W) without moving the channel axis back "
    "first: transpose before reshaping, or the pixels get scrambled"
)
NL_COLUMN_MAJOR = (
    "the pixels were flattened in one order and put back in another (row- vs column-major): "
    "use the same order both ways"
)
NL_NOT_IDENTITY = (
    "with W_z = 0 the block must return x exactly (the identity at initialisation): the only "
    "path from the attention to the output goes through W_z, added to the residual x"
)
PATCH_COLUMN_MAJOR = (
    "the patches are in column-major order: go left to right along a row of patches first, then "
    "down (row-major, as F.unfold does)"
)
PATCH_CHANNELS_LAST = (
    "each patch must be flattened in (C, p, p) order (channel first), not (p, p, C)"
)
PATCH_VIEW = (
    "a plain view/reshape of the image cuts rows of pixels, not p x p patches: split H and W "
    "into (H/p, p) and (W/p, p) and move the patch-grid axes before the within-patch axes"
)
PATCH_TRANSPOSED = "inside a patch, flatten row by row (rows of p pixels), not column by column"


# ------------------------------- references (the package's layers) ----------------------------


def reference_squeeze_excitation(x, w1, b1, w2, b2):
    layer = vision.SqueezeExcitation(x.shape[1], min_hidden=1).to(x.dtype)
    layer.fc1 = torch.nn.Conv2d(w1.shape[1], w1.shape[0], 1).to(x.dtype)
    with torch.no_grad():
        layer.fc1.weight.copy_(w1[:, :, None, None])
        layer.fc1.bias.copy_(b1)
        layer.fc2 = torch.nn.Conv2d(w2.shape[1], w2.shape[0], 1).to(x.dtype)
        layer.fc2.weight.copy_(w2[:, :, None, None])
        layer.fc2.bias.copy_(b2)
    return layer(x)


def reference_cbam_channel_gate(x, w1, b1, w2, b2):
    gate = vision.ChannelGate(x.shape[1], min_hidden=1).to(x.dtype)
    first = torch.nn.Conv2d(w1.shape[1], w1.shape[0], 1).to(x.dtype)
    second = torch.nn.Conv2d(w2.shape[1], w2.shape[0], 1).to(x.dtype)
    with torch.no_grad():
        first.weight.copy_(w1[:, :, None, None])
        first.bias.copy_(b1)
        second.weight.copy_(w2[:, :, None, None])
        second.bias.copy_(b2)
    gate.mlp = torch.nn.Sequential(first, torch.nn.ReLU(), second)
    return gate(x)


def _load_non_local(block, w_theta, w_phi, w_g, w_z):
    with torch.no_grad():
        for conv, w in ((block.theta, w_theta), (block.phi, w_phi), (block.g, w_g)):
            conv.weight.copy_(w[:, :, None, None])
            conv.bias.zero_()
        block.out_proj.weight.copy_(w_z[:, :, None, None])
        block.out_proj.bias.zero_()
    return block


def reference_non_local(x, w_theta, w_phi, w_g, w_z):
    block = vision.NonLocalBlock(x.shape[1], w_theta.shape[0]).to(x.dtype)
    return _load_non_local(block, w_theta, w_phi, w_g, w_z)(x)


# ------------------------------- mistake models ------------------------------------------------


def _mlp(z, w1, b1, w2, b2, relu=True):
    """z (..., C) -> (..., C) through the bottleneck."""
    h = z @ w1.T + b1
    return (F.relu(h) if relu else h) @ w2.T + b2


def se_mistakes(x, w1, b1, w2, b2):
    z = x.mean(dim=(2, 3))  # (B, C)

    def rescale(s):
        return x * s[:, :, None, None]

    per_pixel = torch.sigmoid(_mlp(x.permute(0, 2, 3, 1), w1, b1, w2, b2)).permute(0, 3, 1, 2)
    out = [
        (SE_SOFTMAX, lambda: rescale(torch.softmax(_mlp(z, w1, b1, w2, b2), dim=-1))),
        (SE_PER_PIXEL, lambda: x * per_pixel),
        (SE_MAX_POOL, lambda: rescale(torch.sigmoid(_mlp(x.amax(dim=(2, 3)), w1, b1, w2, b2)))),
        (SE_NO_RELU, lambda: rescale(torch.sigmoid(_mlp(z, w1, b1, w2, b2, relu=False)))),
        (
            SE_GATE_ONLY,
            lambda: torch.sigmoid(_mlp(z, w1, b1, w2, b2))[:, :, None, None].expand_as(x),
        ),
    ]
    # pooled over the wrong axes: mean over everything but the batch, broadcast to channels
    z_all = x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, x.shape[1], 1, 1).flatten(1)
    out.append((SE_POOL_AXES, lambda: rescale(torch.sigmoid(_mlp(z_all, w1, b1, w2, b2)))))
    return out


def cbam_mistakes(x, w1, b1, w2, b2):
    avg, mx = x.mean(dim=(2, 3)), x.amax(dim=(2, 3))  # (B, C)

    def shaped(s):
        return s[:, :, None, None]

    mlp = lambda z, **k: _mlp(z, w1, b1, w2, b2, **k)  # noqa: E731

    def over_all(pool):  # pooled over channels AND pixels, repeated for every channel
        return pool(dim=(1, 2, 3))[:, None].expand_as(avg)

    return [
        (CBAM_SEPARATE, lambda: shaped(torch.sigmoid(mlp(avg)) + torch.sigmoid(mlp(mx)))),
        (CBAM_SEPARATE, lambda: shaped(torch.sigmoid(mlp(avg)) * torch.sigmoid(mlp(mx)))),
        (CBAM_AVG_ONLY, lambda: shaped(torch.sigmoid(mlp(avg)))),
        (CBAM_AVG_ONLY, lambda: shaped(torch.sigmoid(mlp(mx)))),
        (CBAM_POOL_FIRST, lambda: shaped(torch.sigmoid(mlp(avg + mx)))),
        (SE_SOFTMAX, lambda: shaped(torch.softmax(mlp(avg) + mlp(mx), dim=-1))),
        (
            SE_POOL_AXES,
            lambda: shaped(torch.sigmoid(mlp(over_all(x.mean)) + mlp(over_all(x.amax)))),
        ),
    ]


def non_local_mistakes(x, w_theta, w_phi, w_g, w_z):
    B, C, H, W = x.shape
    Ci = w_theta.shape[0]
    tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
    q, k, v = tokens @ w_theta.T, tokens @ w_phi.T, tokens @ w_g.T  # (B, HW, C')

    def finish(y_tokens, residual=True, scramble=False):
        y = (
            y_tokens.reshape(B, Ci, H, W)
            if scramble
            else y_tokens.transpose(1, 2).reshape(B, Ci, H, W)
        )
        out = torch.einsum("oc,bchw->bohw", w_z, y)
        return x + out if residual else out

    scores = q @ k.transpose(1, 2)  # (B, HW, HW)
    right = torch.softmax(scores / math.sqrt(Ci), dim=-1) @ v
    wrong_axis = torch.softmax(scores / math.sqrt(Ci), dim=-2) @ v
    no_scale = torch.softmax(scores, dim=-1) @ v
    # column-major flatten of the keys/values but row-major for the queries
    tok_cm = x.transpose(2, 3).flatten(2).transpose(1, 2)  # (B, WH, C)
    y_cm = torch.softmax((tok_cm @ w_theta.T) @ (tok_cm @ w_phi.T).transpose(1, 2) / math.sqrt(Ci),
                         dim=-1) @ (tok_cm @ w_g.T)  # fmt: skip
    return [
        (NL_WRONG_AXIS, lambda: finish(wrong_axis)),
        (NL_NO_RESIDUAL, lambda: finish(right, residual=False)),
        (NL_NO_SCALE, lambda: finish(no_scale)),
        (NL_SCRAMBLED, lambda: finish(right, scramble=True)),
        (NL_COLUMN_MAJOR, lambda: finish(y_cm)),
    ]


def patch_mistakes(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    grid = images.reshape(B, C, H // p, p, W // p, p)
    return [
        (PATCH_COLUMN_MAJOR, lambda: grid.permute(0, 4, 2, 1, 3, 5).reshape(B, -1, C * p * p)),
        (PATCH_CHANNELS_LAST, lambda: grid.permute(0, 2, 4, 3, 5, 1).reshape(B, -1, C * p * p)),
        (PATCH_VIEW, lambda: images.reshape(B, -1, C * p * p)),
        (PATCH_TRANSPOSED, lambda: grid.permute(0, 2, 4, 1, 5, 3).reshape(B, -1, C * p * p)),
    ]


def _judge_identity(case):
    x = case.args[0]
    expect_tensor(case.output, x, "z")
    if not torch.equal(case.output, x):
        raise Fail(NL_NOT_IDENTITY)


# ------------------------------- inputs -------------------------------------------------------

# (B, C, C_r, H, W): non-square maps, B = 1, a 1x1 map, a one-pixel-high map, C_r = 1
SE_SHAPES = ((2, 6, 3, 5, 4), (1, 4, 2, 3, 3), (3, 5, 1, 1, 1), (2, 3, 2, 1, 6), (1, 8, 4, 2, 7))


def _se_cases(g, make=call_args):
    cases = []
    for B, C, R, H, W in SE_SHAPES:
        cases.append(make(randn(g, B, C, H, W), randn(g, R, C), randn(g, R), randn(g, C, R),
                          randn(g, C)))  # fmt: skip
    return cases


# (B, C, C', H, W): non-square, B = 1, one pixel (HW = 1), a single row, H = W
NL_SHAPES = ((2, 6, 3, 4, 3), (1, 4, 2, 3, 5), (2, 3, 2, 1, 1), (1, 5, 3, 1, 6), (2, 4, 4, 3, 3))


def _nl_cases(g, make=call_args, zero_out=False):
    cases = []
    for B, C, Ci, H, W in NL_SHAPES:
        w_z = torch.zeros(C, Ci) if zero_out else randn(g, C, Ci)
        cases.append(make(randn(g, B, C, H, W), randn(g, Ci, C), randn(g, Ci, C),
                          randn(g, Ci, C), w_z))  # fmt: skip
    return cases


# (B, C, H, W, p): non-square images, B = 1, one patch, C = 1, p = 1
PATCH_SHAPES = ((2, 3, 4, 6, 2), (1, 2, 6, 6, 3), (2, 1, 2, 2, 2), (1, 3, 4, 2, 1), (3, 2, 6, 4, 2))


def _patch_cases(g):
    return [call_args(randn(g, B, C, H, W), p) for B, C, H, W, p in PATCH_SHAPES]


SE_ARGS = ("x", "w1", "b1", "w2", "b2")

SQUEEZE_EXCITATION = Question(
    id="ch07.squeeze_excitation",
    answer="squeeze_excitation",
    reference=reference_squeeze_excitation,
    arg_names=SE_ARGS,
    title="squeeze_excitation(x, w1, b1, w2, b2) -> x * gate, gate of shape (B, C, 1, 1)",
    tests=(
        shape_test("returns a tensor shaped like x", _se_cases),
        outputs_test(
            "x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2)", _se_cases, mistakes=se_mistakes
        ),  # fmt: skip
        grad_test("gradients reach x and every weight", lambda g: _se_cases(g, grad_args), SE_ARGS),
    ),
)

CBAM_CHANNEL_GATE = Question(
    id="ch07.cbam_channel_gate",
    answer="cbam_channel_gate",
    reference=reference_cbam_channel_gate,
    arg_names=SE_ARGS,
    title="cbam_channel_gate(x, w1, b1, w2, b2) -> gate (B, C, 1, 1)",
    tests=(
        shape_test("returns the gate, shape (B, C, 1, 1)", _se_cases),
        outputs_test(
            "sigmoid(MLP(avg) + MLP(max)) with one shared MLP", _se_cases, mistakes=cbam_mistakes
        ),  # fmt: skip
        grad_test("gradients reach x and every weight", lambda g: _se_cases(g, grad_args), SE_ARGS),
    ),
)

NL_ARGS = ("x", "w_theta", "w_phi", "w_g", "w_z")

NON_LOCAL = Question(
    id="ch07.non_local",
    answer="non_local",
    reference=reference_non_local,
    arg_names=NL_ARGS,
    title="non_local(x, w_theta, w_phi, w_g, w_z) -> z, shaped like x",
    tests=(
        shape_test("returns a tensor shaped like x", _nl_cases),
        outputs_test(
            "z = x + W_z softmax(theta^T phi / sqrt(C')) g over the HW pixels",
            _nl_cases,
            mistakes=non_local_mistakes,
        ),  # fmt: skip
        Test(
            "with W_z = 0 the block is exactly the identity",
            lambda g: _nl_cases(g, zero_out=True),
            _judge_identity,
        ),
        grad_test("gradients reach x and every weight", lambda g: _nl_cases(g, grad_args), NL_ARGS),
    ),
)

PATCHIFY = Question(
    id="ch07.patchify",
    answer="patchify",
    reference=vision.patchify,
    arg_names=("images", "patch_size"),
    title="patchify(images, patch_size) -> (B, N, C*p*p)",
    tests=(
        shape_test("returns (B, N, C*p*p)", _patch_cases),
        outputs_test(
            "row-major patches, each flattened in (C, p, p) order",
            _patch_cases,
            mistakes=patch_mistakes,
            atol=0.0,
            rtol=0.0,
        ),  # fmt: skip
    ),
)

QUESTIONS = [SQUEEZE_EXCITATION, CBAM_CHANNEL_GATE, NON_LOCAL, PATCHIFY]
