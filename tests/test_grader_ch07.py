"""Catalogue of chapter 7's graded questions: wrong answers a student writes, and right ones.

Each wrong answer must lose points with the hint that names its mistake; differently written
correct answers must get full marks.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from graderkit import assert_caught, assert_full_marks

from attention_course.grading.questions import ch07

# ------------------------------- squeeze-and-excitation ---------------------------------------


def se_right(x, w1, b1, w2, b2):
    z = x.mean(dim=(2, 3))  # (B, C)
    s = torch.sigmoid(F.relu(z @ w1.T + b1) @ w2.T + b2)  # (B, C)
    return x * s[:, :, None, None]


def se_right_conv(x, w1, b1, w2, b2):
    z = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
    h = F.relu(F.conv2d(z, w1[:, :, None, None], b1))
    return x * torch.sigmoid(F.conv2d(h, w2[:, :, None, None], b2))


def se_softmax(x, w1, b1, w2, b2):
    s = torch.softmax(F.relu(x.mean(dim=(2, 3)) @ w1.T + b1) @ w2.T + b2, dim=-1)
    return x * s[:, :, None, None]


def se_per_pixel(x, w1, b1, w2, b2):
    t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    s = torch.sigmoid(F.relu(t @ w1.T + b1) @ w2.T + b2)
    return x * s.permute(0, 3, 1, 2)


def se_pool_wrong_axes(x, w1, b1, w2, b2):
    z = x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, x.shape[1], 1, 1).flatten(1)
    return x * torch.sigmoid(F.relu(z @ w1.T + b1) @ w2.T + b2)[:, :, None, None]


def se_max(x, w1, b1, w2, b2):
    z = x.amax(dim=(2, 3))
    return x * torch.sigmoid(F.relu(z @ w1.T + b1) @ w2.T + b2)[:, :, None, None]


def se_no_relu(x, w1, b1, w2, b2):
    z = x.mean(dim=(2, 3))
    return x * torch.sigmoid((z @ w1.T + b1) @ w2.T + b2)[:, :, None, None]


def se_gate_only(x, w1, b1, w2, b2):
    z = x.mean(dim=(2, 3))
    return torch.sigmoid(F.relu(z @ w1.T + b1) @ w2.T + b2)[:, :, None, None].expand_as(x)


def se_in_place(x, w1, b1, w2, b2):
    s = torch.sigmoid(F.relu(x.mean(dim=(2, 3)) @ w1.T + b1) @ w2.T + b2)
    return x.mul_(s[:, :, None, None])


def se_no_grad(x, w1, b1, w2, b2):
    with torch.no_grad():
        return se_right(x, w1, b1, w2, b2)


@pytest.mark.parametrize("answer", [se_right, se_right_conv])
def test_se_right(answer):
    assert_full_marks("ch07.squeeze_excitation", answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (se_softmax, "sigmoid per channel"),
        (se_per_pixel, "one number per image and channel"),
        (se_pool_wrong_axes, "over its PIXELS"),
        (se_max, "MEAN over the pixels"),
        (se_no_relu, "ReLU between"),
        (se_gate_only, "not the gate itself"),
        (se_in_place, "in place"),
        (se_no_grad, "gradient"),
    ],
)
def test_se_wrong(answer, hint):
    assert_caught("ch07.squeeze_excitation", answer, hint)


# ------------------------------- CBAM channel gate --------------------------------------------


def _mlp(z, w1, b1, w2, b2):
    return F.relu(z @ w1.T + b1) @ w2.T + b2


def cbam_right(x, w1, b1, w2, b2):
    s = _mlp(x.mean(dim=(2, 3)), w1, b1, w2, b2) + _mlp(x.amax(dim=(2, 3)), w1, b1, w2, b2)
    return torch.sigmoid(s)[:, :, None, None]


def cbam_right_stacked(x, w1, b1, w2, b2):
    pooled = torch.stack([x.flatten(2).mean(-1), x.flatten(2).max(-1).values])  # (2, B, C)
    return torch.sigmoid(_mlp(pooled, w1, b1, w2, b2).sum(0)).unsqueeze(-1).unsqueeze(-1)


def cbam_separate_sigmoids(x, w1, b1, w2, b2):
    a = torch.sigmoid(_mlp(x.mean(dim=(2, 3)), w1, b1, w2, b2))
    m = torch.sigmoid(_mlp(x.amax(dim=(2, 3)), w1, b1, w2, b2))
    return (a + m)[:, :, None, None]


def cbam_avg_only(x, w1, b1, w2, b2):
    return torch.sigmoid(_mlp(x.mean(dim=(2, 3)), w1, b1, w2, b2))[:, :, None, None]


def cbam_pool_sum_first(x, w1, b1, w2, b2):
    z = x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))
    return torch.sigmoid(_mlp(z, w1, b1, w2, b2))[:, :, None, None]


def cbam_flat(x, w1, b1, w2, b2):
    return cbam_right(x, w1, b1, w2, b2).flatten(1)  # (B, C)


@pytest.mark.parametrize("answer", [cbam_right, cbam_right_stacked])
def test_cbam_right(answer):
    assert_full_marks("ch07.cbam_channel_gate", answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (cbam_separate_sigmoids, "ONE sigmoid"),
        (cbam_avg_only, "BOTH the average- and the max-pooled"),
        (cbam_pool_sum_first, "not MLP(avg + max)"),
        (cbam_flat, "shape"),
    ],
)
def test_cbam_wrong(answer, hint):
    assert_caught("ch07.cbam_channel_gate", answer, hint)


# ------------------------------- non-local block ----------------------------------------------


def nl_right(x, w_theta, w_phi, w_g, w_z):
    B, C, H, W = x.shape
    t = x.flatten(2).transpose(1, 2)  # (B, HW, C)
    q, k, v = t @ w_theta.T, t @ w_phi.T, t @ w_g.T
    y = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1) @ v  # (B, HW, C')
    return x + (y @ w_z.T).transpose(1, 2).reshape(B, C, H, W)


def nl_right_sdpa(x, w_theta, w_phi, w_g, w_z):
    B, C, H, W = x.shape
    proj = lambda w: torch.einsum("oc,bchw->bhwo", w, x).reshape(B, H * W, -1)  # noqa: E731
    y = F.scaled_dot_product_attention(proj(w_theta), proj(w_phi), proj(w_g))  # (B, HW, C')
    y = y.permute(0, 2, 1).reshape(B, -1, H, W)
    return x + F.conv2d(y, w_z[:, :, None, None])


def _nl(x, w_theta, w_phi, w_g, w_z, dim=-1, scale=True, residual=True, scramble=False):
    B, C, H, W = x.shape
    t = x.flatten(2).transpose(1, 2)
    q, k, v = t @ w_theta.T, t @ w_phi.T, t @ w_g.T
    s = q @ k.transpose(1, 2) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    y = torch.softmax(s, dim=dim) @ v  # (B, HW, C')
    y = y.reshape(B, -1, H, W) if scramble else y.transpose(1, 2).reshape(B, -1, H, W)
    out = F.conv2d(y, w_z[:, :, None, None])
    return x + out if residual else out


def nl_wrong_axis(*a):
    return _nl(*a, dim=1)


def nl_no_residual(*a):
    return _nl(*a, residual=False)


def nl_no_scale(*a):
    return _nl(*a, scale=False)


def nl_scrambled(*a):
    return _nl(*a, scramble=True)


def nl_nonzero_init(x, w_theta, w_phi, w_g, w_z):
    return _nl(x, w_theta, w_phi, w_g, w_z + 0.01)  # a non-zero initial output


@pytest.mark.parametrize("answer", [nl_right, nl_right_sdpa])
def test_non_local_right(answer):
    assert_full_marks("ch07.non_local", answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (nl_wrong_axis, "wrong axis"),
        (nl_no_residual, "residual"),
        (nl_no_scale, "1/sqrt(C')"),
        (nl_scrambled, "scrambled"),
        (nl_nonzero_init, "identity"),
    ],
)
def test_non_local_wrong(answer, hint):
    assert_caught("ch07.non_local", answer, hint)


# ------------------------------- patchify -----------------------------------------------------


def patch_right(images, patch_size):
    return F.unfold(images, patch_size, stride=patch_size).transpose(1, 2)


def patch_right_loops(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    rows = [
        images[:, :, i : i + p, j : j + p].reshape(B, -1)
        for i in range(0, H, p)
        for j in range(0, W, p)
    ]
    return torch.stack(rows, dim=1)


def _grid(images, p):
    B, C, H, W = images.shape
    return images.reshape(B, C, H // p, p, W // p, p), B, C * p * p


def patch_column_major(images, p):
    g, B, D = _grid(images, p)
    return g.permute(0, 4, 2, 1, 3, 5).reshape(B, -1, D)


def patch_channels_last(images, p):
    g, B, D = _grid(images, p)
    return g.permute(0, 2, 4, 3, 5, 1).reshape(B, -1, D)


def patch_view(images, p):
    B, C, H, W = images.shape
    return images.reshape(B, -1, C * p * p)


def patch_transposed(images, p):
    g, B, D = _grid(images, p)
    return g.permute(0, 2, 4, 1, 5, 3).reshape(B, -1, D)


@pytest.mark.parametrize("answer", [patch_right, patch_right_loops])
def test_patchify_right(answer):
    assert_full_marks("ch07.patchify", answer)


@pytest.mark.parametrize(
    "answer, hint",
    [
        (patch_column_major, "column-major"),
        (patch_channels_last, "(C, p, p) order"),
        (patch_view, "plain view"),
        (patch_transposed, "row by row"),
    ],
)
def test_patchify_wrong(answer, hint):
    assert_caught("ch07.patchify", answer, hint)


def test_hints_do_not_hold_the_solution():
    for name in dir(ch07):
        value = getattr(ch07, name)
        if name.isupper() and isinstance(value, str):
            assert "softmax(" not in value and "sigmoid(W" not in value, name
