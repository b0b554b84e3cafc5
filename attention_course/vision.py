"""Attention inside convolutional networks (chapter 7), and the image data chapters 6-7 share.

Shape letters (the book's legend): B batch, C channels, H height, W width, N = number of patches
or pixels used as tokens, E embedding width, h heads, d = E // h per-head width.

Data: ``load_digits`` returns scikit-learn's 8x8 handwritten digits (1797 real images shipped
inside scikit-learn, no download) as float tensors with a seeded, stratified train/test split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attention_course.attention import (
    masked_softmax,
    merge_heads,
    scaled_dot_product_attention,
    split_heads,
)

__all__ = [
    "Digits",
    "load_digits",
]


@dataclass
class Digits:
    """scikit-learn's 8x8 digits as tensors, split into train and test.

    ``x_*`` are float32 ``(B, 1, 8, 8)`` images with pixel values in ``[0, 1]`` (the raw
    0..16 intensities divided by 16); ``y_*`` are int64 ``(B,)`` class labels 0..9.
    """

    x_train: torch.Tensor  # (B_train, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (B_train,) int64 labels 0..9
    x_test: torch.Tensor  # (B_test, 1, 8, 8) float32 in [0, 1]
    y_test: torch.Tensor  # (B_test,) int64 labels 0..9
    num_classes: int = 10


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Digits:
    """scikit-learn's 8x8 digits (1797 images) with a seeded train/test split, as a ``Digits``.

    The split is stratified (each class keeps its share in both halves, up to rounding) and the
    same ``seed`` gives the same split on every machine (NumPy's ``default_rng``). Different
    seeds give different splits, so a claim re-run at another seed also meets other test images.

    Args:
        seed: seeds the split (and the order of the examples inside each half).
        test_fraction: share of each class held out for testing, in ``(0, 1)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sklearn_digits

    bunch = _sklearn_digits()
    images = bunch.images.astype(np.float32) / 16.0  # (1797, 8, 8), intensities 0..16 -> [0, 1]
    labels = bunch.target.astype(np.int64)  # (1797,)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(idx)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    x = torch.from_numpy(images).unsqueeze(1)  # (1797, 8, 8) -> (1797, 1, 8, 8)
    y = torch.from_numpy(labels)
    return Digits(
        x_train=x[torch.from_numpy(train)],
        y_train=y[torch.from_numpy(train)],
        x_test=x[torch.from_numpy(test)],
        y_test=y[torch.from_numpy(test)],
    )


# ----------------------------------------------------------------------------------------------
# Channel attention: squeeze-and-excitation (Hu et al. 2018) and CBAM (Woo et al. 2018)
# ----------------------------------------------------------------------------------------------


def reduced_width(channels: int, reduction: int = 16, min_hidden: int = 8) -> int:
    """Bottleneck width of SE / CBAM's MLP: ``channels // reduction``, but at least ``min_hidden``.

    timm rounds the reduced width to a multiple of 8 with a minimum of 8 (timm issue 260: fewer
    than 8 channels is slow on GPUs and leaves almost no capacity); here: the floor, then the
    minimum, and never wider than ``channels``.
    """
    return min(channels, max(min_hidden, channels // reduction))


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation, Hu et al. (2018) eq. 2-4: a sigmoid GATE per channel.

    s = sigmoid(W_2 relu(W_1 z)), z_c = mean over (H, W) of x_c; output x_c * s_c.
    ``(B, C, H, W) -> (B, C, H, W)``; the gate has shape ``(B, C, 1, 1)``: one number per image and
    channel, each in (0, 1), NOT summing to one over the channels (it is not a distribution).
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8):
        super().__init__()
        hidden = reduced_width(channels, reduction, min_hidden)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)  # W_1, on (B, C, 1, 1)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)  # W_2

    def gate(self, x: Tensor) -> Tensor:
        """The excitation s, ``(B, C, H, W) -> (B, C, 1, 1)``, every entry in (0, 1)."""
        z = x.mean(dim=(2, 3), keepdim=True)  # squeeze: (B, C, H, W) -> (B, C, 1, 1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z))))  # (B, C, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)  # (B, C, H, W) * (B, C, 1, 1): rescale each channel


class ChannelGate(nn.Module):
    """CBAM's channel attention, Woo et al. (2018) eq. 2: ONE shared MLP on avg- and max-pooled.

    M_c = sigmoid(MLP(AvgPool(x)) + MLP(MaxPool(x))), shape ``(B, C, 1, 1)``.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8):
        super().__init__()
        hidden = reduced_width(channels, reduction, min_hidden)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)  # (B, C, H, W) -> (B, C, 1, 1)
        mx = x.amax(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))  # (B, C, 1, 1), same MLP twice


class SpatialGate(nn.Module):
    """CBAM's spatial attention, Woo et al. (2018) eq. 3: a k x k conv on [mean_c; max_c].

    M_s = sigmoid(conv([AvgPool_c(x); MaxPool_c(x)])), shape ``(B, 1, H, W)``.
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat(
            [x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1
        )  # (B, C, H, W) -> (B, 2, H, W)
        return torch.sigmoid(self.conv(pooled))  # (B, 1, H, W)


class CBAM(nn.Module):
    """Convolutional block attention module, Woo et al. (2018) eq. 1: channel THEN spatial.

    x' = M_c(x) * x, then x'' = M_s(x') * x'. ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, min_hidden=8):
        super().__init__()
        self.channel = ChannelGate(channels, reduction, min_hidden)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.channel(x)  # (B, C, H, W) * (B, C, 1, 1)
        return x * self.spatial(x)  # (B, C, H, W) * (B, 1, H, W)


# ----------------------------------------------------------------------------------------------
# Self-attention over pixels: the non-local block (Wang et al. 2018)
# ----------------------------------------------------------------------------------------------


def to_tokens(x: Tensor) -> Tensor:
    """Feature map to a sequence of pixel tokens, row-major: ``(B, C, H, W) -> (B, H*W, C)``."""
    return x.flatten(2).transpose(1, 2)  # (B, C, H*W) -> (B, H*W, C)


def from_tokens(tokens: Tensor, height: int, width: int) -> Tensor:
    """Undo ``to_tokens``: ``(B, H*W, C) -> (B, C, H, W)``."""
    B, N, C = tokens.shape
    return tokens.transpose(1, 2).reshape(B, C, height, width)  # (B, C, H, W)


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block, Wang et al. (2018) eq. 1-6, as self-attention on pixels.

    z = x + W_z y,  y_i = sum_j softmax_j(theta(x_i) . phi(x_j) / sqrt(C')) g(x_j),

    i.e. chapter 3's scaled dot-product attention with the H*W pixels as tokens (queries theta,
    keys phi, values g: 1x1 convolutions to ``inner_channels`` C'). The 1/sqrt(C') scale is
    timm's and the official code's choice (the paper's eq. has none). W_z is zero-initialised,
    so at initialisation the block is EXACTLY the identity. ``subsample=True`` max-pools keys and
    values 2x2 (the paper's trick: S = H*W/4 keys). ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, inner_channels: int | None = None, subsample: bool = False):
        super().__init__()
        inner = inner_channels or max(1, channels // 2)
        self.inner_channels = inner
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)  # queries
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)  # keys
        self.g = nn.Conv2d(channels, inner, kernel_size=1)  # values
        self.out_proj = nn.Conv2d(inner, channels, kernel_size=1)  # W_z
        self.pool = nn.MaxPool2d(2) if subsample else nn.Identity()
        nn.init.zeros_(self.out_proj.weight)  # identity at initialisation
        nn.init.zeros_(self.out_proj.bias)

    def attention(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """The one hook: ``(B, L, C'), (B, S, C'), (B, S, C') -> (B, L, C'), (B, L, S)``."""
        return scaled_dot_product_attention(query, key, value)  # rows sum to 1 over S keys

    def attend(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``y`` before W_z, ``(B, C', H, W)``, and the weights ``(B, H*W, S)`` (rows: queries)."""
        B, C, H, W = x.shape
        kv = self.pool(x)  # (B, C, H, W), or (B, C, H/2, W/2) when subsampling
        q = to_tokens(self.theta(x))  # (B, C, H, W) -> (B, L, C'), L = H*W
        k = to_tokens(self.phi(kv))  # (B, S, C'), S = H*W (or H*W/4)
        v = to_tokens(self.g(kv))  # (B, S, C')
        y, weights = self.attention(q, k, v)  # (B, L, C'), (B, L, S)
        return from_tokens(y, H, W), weights  # (B, C', H, W)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.attend(x)  # (B, C', H, W)
        return x + self.out_proj(y)  # residual: (B, C, H, W)


class NonLocalWrongAxis(NonLocalBlock):
    """A TRAP, for chapter 7 only: the softmax taken over the QUERY axis of the (HW x HW) scores.

    Columns sum to one instead of rows (labml issue 146; SAGAN issues 7, 11): it still trains.
    """

    def attention(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        E = query.shape[-1]
        scores = query @ key.transpose(-2, -1) / math.sqrt(E)  # (B, L, S)
        weights = masked_softmax(scores, dim=-2)  # WRONG: normalised over the L queries
        return weights @ value, weights  # (B, L, S) @ (B, S, C') -> (B, L, C')


# ----------------------------------------------------------------------------------------------
# Images as sequences of patches, and a convolution rebuilt as self-attention
# ----------------------------------------------------------------------------------------------


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping p x p patches: ``(B, C, H, W) -> (B, N, C*p*p)``.

    N = (H/p)(W/p) patches in row-major order (left to right, then top to bottom), each flattened
    in (C, p, p) order: the layout of ``F.unfold(images, p, stride=p).transpose(1, 2)``.
    """
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image size {(H, W)} is not a multiple of patch_size={p}")
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, H/p, p, W/p, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p): patch grid first, row-major
    return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p)


class LocalSelfAttention2d(nn.Module):
    """Multi-head self-attention of every pixel over its k x k neighbourhood (batch first).

    For pixel i and offset delta in the k x k window, head h scores
    s_h(i, delta) = content_h(i, i + delta) + r_h(delta), with content = q_i . k_{i+delta} / sqrt(d)
    (stand-alone self-attention, Ramachandran et al. 2019, with one learned scalar r_h per head and
    relative offset) or no content at all (``content=False``: position-only scores). Weights are a
    softmax over the k*k window; keys outside the window have weight exactly 0. Pixels outside the
    image are ZERO tokens (zero key, zero value), as a convolution's zero padding.
    ``(B, C_in, H, W) -> (B, C_out, H, W)``; heads are concatenated, then ``out_proj`` (1x1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        num_heads: int = 1,
        head_dim: int | None = None,
        content: bool = True,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd")
        self.kernel_size = kernel_size
        self.num_heads = num_heads
        self.head_dim = head_dim or in_channels
        inner = num_heads * self.head_dim  # h * d
        self.content = content
        if content:  # no bias: a padding token (all zeros) gets key 0
            self.q_proj = nn.Conv2d(in_channels, inner, kernel_size=1, bias=False)
            self.k_proj = nn.Conv2d(in_channels, inner, kernel_size=1, bias=False)
        self.v_proj = nn.Conv2d(in_channels, inner, kernel_size=1, bias=False)
        self.rel_scores = nn.Parameter(torch.zeros(num_heads, kernel_size**2))  # r_h(delta)
        self.out_proj = nn.Conv2d(inner, out_channels, kernel_size=1)  # concat heads -> C_out

    def _windows(self, x: Tensor) -> Tensor:
        """Every pixel's k x k neighbourhood: ``(B, h*d, H, W) -> (B, h, H*W, k*k, d)``."""
        B, _, H, W = x.shape
        k, h, d = self.kernel_size, self.num_heads, self.head_dim
        cols = F.unfold(x, k, padding=k // 2)  # (B, h*d*k*k, H*W), zeros outside the image
        return cols.view(B, h, d, k * k, H * W).permute(0, 1, 4, 3, 2)  # (B, h, HW, k*k, d)

    def scores(self, x: Tensor) -> Tensor:
        """Attention scores ``(B, h, H*W, k*k)``: relative-position term (+ content term)."""
        B, _, H, W = x.shape
        h, d = self.num_heads, self.head_dim
        scores = self.rel_scores.view(1, h, 1, -1).expand(B, h, H * W, -1)  # (B, h, HW, k*k)
        if self.content:
            q = self.q_proj(x).view(B, h, d, H * W).transpose(2, 3)  # (B, h, HW, d)
            keys = self._windows(self.k_proj(x))  # (B, h, HW, k*k, d)
            # (B, h, HW, 1, d) * (B, h, HW, k*k, d) summed over d -> (B, h, HW, k*k)
            scores = scores + (q.unsqueeze(3) * keys).sum(-1) / math.sqrt(d)
        return scores

    def forward(self, x: Tensor, return_weights: bool = False):
        B, _, H, W = x.shape
        weights = masked_softmax(self.scores(x), dim=-1)  # (B, h, HW, k*k): sum 1 over window
        values = self._windows(self.v_proj(x))  # (B, h, HW, k*k, d)
        context = (weights.unsqueeze(-1) * values).sum(3)  # (B, h, HW, d)
        context = context.transpose(2, 3).reshape(B, -1, H, W)  # concat heads: (B, h*d, H, W)
        out = self.out_proj(context)  # (B, C_out, H, W)
        return (out, weights) if return_weights else out


class StandAloneSelfAttention(LocalSelfAttention2d):
    """Stand-alone self-attention (Ramachandran et al. 2019): content + relative-position scores."""

    def __init__(self, in_channels, out_channels, kernel_size=3, num_heads=1, head_dim=None):
        super().__init__(in_channels, out_channels, kernel_size, num_heads, head_dim, content=True)


class ConvAsSelfAttention(LocalSelfAttention2d):
    """A convolution written as multi-head self-attention (Cordonnier et al. 2020, Theorem 1).

    k*k heads with POSITION-ONLY scores (no queries, no keys): head h attends to one offset
    Delta_h, its value projection is the identity, and ``out_proj``'s block for head h holds the
    kernel tap W[:, :, Delta_h]. Summing the heads gives
    sum_Delta W_Delta x_{i+Delta} + b = conv(x).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            num_heads=kernel_size**2,
            head_dim=in_channels,
            content=False,
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, sharpness: float = 1000.0) -> ConvAsSelfAttention:
        """The self-attention layer whose forward equals ``conv(x)`` on every pixel.

        ``conv``: odd square kernel k, stride 1, "same" zero padding k // 2, no groups, no
        dilation. Head h's score for offset delta is Cordonnier et al.'s quadratic encoding
        -sharpness * ||delta - Delta_h||^2: 0 at its own offset, <= -sharpness elsewhere, so the
        softmax puts weight 1 on Delta_h (exp(-1000) is exactly 0 in float32 and float64).
        """
        k = conv.kernel_size[0]
        ok = (
            conv.kernel_size == (k, k)
            and k % 2 == 1
            and conv.stride == (1, 1)
            and conv.padding in ((k // 2, k // 2), "same")
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
        )
        if not ok:
            raise ValueError("from_conv needs an odd square kernel, stride 1, same zero padding")
        c_in, c_out = conv.in_channels, conv.out_channels
        layer = cls(c_in, c_out, k)
        weight = conv.weight.detach()  # (C_out, C_in, k, k)
        offsets = torch.stack(
            torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij"), -1
        ).view(k * k, 2)  # (k*k, 2): offset of window slot j, row-major like F.unfold
        dist2 = ((offsets[:, None, :] - offsets[None, :, :]) ** 2).sum(-1)  # (heads, slots)
        with torch.no_grad():
            layer.rel_scores.copy_(-sharpness * dist2.to(layer.rel_scores.dtype))
            eye = torch.eye(c_in, dtype=weight.dtype)
            layer.v_proj.weight.copy_(eye.repeat(k * k, 1).view(k * k * c_in, c_in, 1, 1))
            # head h = slot (a, b) contributes W[:, :, a, b] @ x_{i + Delta_h}
            taps = weight.permute(0, 2, 3, 1).reshape(c_out, k * k * c_in)  # (C_out, h*C_in)
            layer.out_proj.weight.copy_(taps.view(c_out, k * k * c_in, 1, 1))
            if conv.bias is not None:
                layer.out_proj.bias.copy_(conv.bias.detach())
            else:
                layer.out_proj.bias.zero_()
        return layer.to(conv.weight.device, conv.weight.dtype)


class AttentionAugmentedConv(nn.Module):
    """Attention-augmented convolution (Bello et al. 2019, eq. 5): [conv(x); MHA(x)] on channels.

    ``out_channels - attn_channels`` maps come from a k x k convolution, ``attn_channels`` from
    multi-head self-attention over all H*W pixels (queries/keys of width ``key_channels``, values
    of width ``attn_channels``, h heads, 1x1 output projection), concatenated. Bello et al. also
    add 2-D relative-position logits; this version has content scores only.
    ``(B, C_in, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        attn_channels: int = 8,
        key_channels: int = 8,
        num_heads: int = 2,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.key_channels, self.attn_channels = key_channels, attn_channels
        self.conv = nn.Conv2d(
            in_channels, out_channels - attn_channels, kernel_size, padding=kernel_size // 2
        )
        self.qkv = nn.Conv2d(in_channels, 2 * key_channels + attn_channels, kernel_size=1)
        self.attn_out = nn.Conv2d(attn_channels, attn_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        dk, h = self.key_channels, self.num_heads
        q, k, v = to_tokens(self.qkv(x)).split([dk, dk, self.attn_channels], dim=-1)  # (B, HW, .)
        q, k, v = split_heads(q, h), split_heads(k, h), split_heads(v, h)  # (B, h, HW, d)
        context, _ = scaled_dot_product_attention(q, k, v)  # (B, h, HW, dv/h)
        attn = from_tokens(merge_heads(context), H, W)  # (B, h, HW, dv/h) -> (B, dv, H, W)
        return torch.cat([self.conv(x), self.attn_out(attn)], dim=1)  # (B, C_out, H, W)


# ----------------------------------------------------------------------------------------------
# A small Vision Transformer (Dosovitskiy et al. 2021) built from chapter 5's encoder layers
# ----------------------------------------------------------------------------------------------


class VisionTransformer(nn.Module):
    """ViT: patches -> linear embedding, a class token, optional learned positions, encoder layers.

    z_0 = [x_class; x_1 E; ...; x_N E] + E_pos  (Dosovitskiy et al. 2021, eq. 1), then ``depth``
    pre-norm ``attention_course.transformer.EncoderLayer`` blocks (chapter 5), a final LayerNorm
    and a linear head on the class token. ``positions=False`` drops E_pos: the class token's
    output is then exactly invariant to any shuffling of the patches.
    ``(B, C, H, W) -> (B, num_classes)`` logits.
    """

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 2,
        in_channels: int = 1,
        embed_dim: int = 32,
        depth: int = 2,
        num_heads: int = 4,
        ff_dim: int = 64,
        num_classes: int = 10,
        positions: bool = True,
    ):
        super().__init__()
        from attention_course.transformer import EncoderLayer  # chapter 5

        self.patch_size = patch_size
        num_patches = (image_size // patch_size) ** 2  # N
        self.embed = nn.Linear(in_channels * patch_size**2, embed_dim)  # E in eq. 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim)) if positions else None
        if self.pos is not None:
            nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        self.layers = nn.ModuleList(
            [EncoderLayer(embed_dim, num_heads, ff_dim, norm_first=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def tokens(self, images: Tensor) -> Tensor:
        """The input sequence z_0: ``(B, C, H, W) -> (B, 1 + N, E)``."""
        x = self.embed(patchify(images, self.patch_size))  # (B, N, C*p*p) -> (B, N, E)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, E)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + N, E)
        return x if self.pos is None else x + self.pos  # (B, 1 + N, E)

    def encode(self, z: Tensor) -> Tensor:
        """Encoder layers and the final norm on a token sequence ``(B, 1 + N, E)``."""
        for layer in self.layers:
            z = layer(z)  # (B, 1 + N, E), no mask: every token sees every token
        return self.norm(z)

    def forward(self, images: Tensor) -> Tensor:
        z = self.encode(self.tokens(images))  # (B, 1 + N, E)
        return self.head(z[:, 0])  # class token -> (B, num_classes)


# ----------------------------------------------------------------------------------------------
# Small classifiers and their training loop
# ----------------------------------------------------------------------------------------------


def _attention_layer(kind: str | None, channels: int, reduction: int) -> nn.Module:
    if kind is None or kind == "plain":
        return nn.Identity()
    if kind == "se":
        return SqueezeExcitation(channels, reduction)
    if kind == "cbam":
        return CBAM(channels, reduction, kernel_size=3)
    raise ValueError(f"unknown attention {kind!r}")


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers, each followed by ReLU, optional attention and 2x2 max-pooling.

    ``(B, 1, 8, 8) -> (B, w1, 4, 4) -> (B, w2, 2, 2) -> flatten -> (B, 10)`` logits.
    ``attention`` = ``"plain"``, ``"se"`` or ``"cbam"`` puts that module after each conv + ReLU
    (CBAM with a 3x3 spatial kernel: the maps are only 8x8 and 4x4); everything else is equal.
    """

    def __init__(self, attention: str | None = "plain", widths=(16, 32), reduction: int = 16):
        super().__init__()
        w1, w2 = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, w1, 3, padding=1),
            nn.ReLU(),
            _attention_layer(attention, w1, reduction),  # (B, w1, 8, 8)
            nn.MaxPool2d(2),  # (B, w1, 4, 4)
            nn.Conv2d(w1, w2, 3, padding=1),
            nn.ReLU(),
            _attention_layer(attention, w2, reduction),  # (B, w2, 4, 4)
            nn.MaxPool2d(2),  # (B, w2, 2, 2)
        )
        self.head = nn.Linear(4 * w2, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))  # (B, w2 * 2 * 2) -> (B, 10)


def _minibatches(x: Tensor, y: Tensor, batch_size: int, seed: int):
    """An endless stream of shuffled minibatches (epoch after epoch), seeded."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
):
    """Adam on cross-entropy with a cosine learning-rate decay; ``utils.train``'s History back."""
    from attention_course.utils import train

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)

    def loss_fn(m, batch):
        images, labels = batch
        return F.cross_entropy(m(images), labels)

    return train(
        model,
        _minibatches(x, y, batch_size, seed),
        loss_fn,
        steps,
        optimizer=optimizer,
        scheduler=scheduler,
        progress=False,
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Share of correct argmax predictions, in eval mode."""
    model.eval()
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return correct / len(x)


# ----------------------------------------------------------------------------------------------
# A long-range task: are the marks in two opposite corners the same shape?
# ----------------------------------------------------------------------------------------------


def mark_shapes(num_shapes: int = 6, size: int = 3, seed: int = 1234) -> Tensor:
    """``num_shapes`` distinct binary ``size x size`` marks with about half the pixels on, fixed."""
    rng = np.random.default_rng(seed)
    shapes: list[np.ndarray] = []
    while len(shapes) < num_shapes:
        s = (rng.random((size, size)) < 0.5).astype(np.float32)
        # distinct from every other shape by at least 3 pixels, and neither empty nor full
        if 3 <= s.sum() <= size * size - 3 and all(np.abs(s - t).sum() >= 3 for t in shapes):
            shapes.append(s)
    return torch.from_numpy(np.stack(shapes))  # (num_shapes, size, size)


@dataclass
class LongRangeData:
    """Images ``(B, 1, size, size)``; label 1 when the two corner marks are the same shape."""

    images: Tensor  # (B, 1, size, size) float32: marks of ones on noise
    labels: Tensor  # (B,) int64: 1 = same shape, 0 = different
    corners: Tensor  # (B, 2, 2) int64: (row, col) of the top-left pixel of each mark
    shapes: Tensor  # (B, 2) int64: which shape is in the top-left and bottom-right corner


def long_range_task(
    num_examples: int,
    size: int = 16,
    num_shapes: int = 4,
    noise: float = 0.05,
    jitter: int = 0,
    seed: int = 0,
) -> LongRangeData:
    """Two 3x3 marks in opposite corners: top-left at (1, 1), bottom-right at (size-3, size-3).

    ``jitter`` > 0 moves each mark by 0, 2, ... 2*jitter pixels (even steps, so a stride-2
    convolution sees every mark at the same phase). Pixel noise of std ``noise`` everywhere.

    Half the examples show the same shape twice, half two different shapes (chosen uniformly).
    Every single mark is equally likely in both classes, so no detector of one corner helps:
    the label depends on BOTH marks, ``size - 4`` or more pixels apart.
    """
    rng = np.random.default_rng(seed)
    shapes = mark_shapes(num_shapes).numpy()
    k = shapes.shape[-1]
    images = rng.normal(0.0, noise, size=(num_examples, 1, size, size)).astype(np.float32)
    labels = rng.integers(0, 2, size=num_examples)
    corners = np.zeros((num_examples, 2, 2), dtype=np.int64)
    shape_ids = np.zeros((num_examples, 2), dtype=np.int64)
    for i in range(num_examples):
        a = rng.integers(num_shapes)
        b = a if labels[i] else (a + rng.integers(1, num_shapes)) % num_shapes
        r0, c0 = 1 + 2 * rng.integers(0, jitter + 1, size=2)  # top-left mark: rows 1-3
        r1, c1 = size - k - 2 * rng.integers(0, jitter + 1, size=2)  # bottom-right mark
        images[i, 0, r0 : r0 + k, c0 : c0 + k] += shapes[a]
        images[i, 0, r1 : r1 + k, c1 : c1 + k] += shapes[b]
        corners[i] = [[r0, c0], [r1, c1]]
        shape_ids[i] = [a, b]
    return LongRangeData(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels.astype(np.int64)),
        corners=torch.from_numpy(corners),
        shapes=torch.from_numpy(shape_ids),
    )


LONG_RANGE_VARIANTS = ("cnn", "nonlocal", "nonlocal_wrong_axis", "augmented")


class LongRangeNet(nn.Module):
    """conv 3x3 stride 2 -> conv 3x3 (or attention-augmented conv) -> [non-local] -> 1x1 -> GAP.

    Batch-normalised, ReLU after each conv. ``variant``: ``"cnn"`` (receptive field 7 x 7 input
    pixels: no unit sees both marks),
    ``"nonlocal"`` (one :class:`NonLocalBlock` on the 8x8 map), ``"nonlocal_wrong_axis"`` (the
    trap), ``"augmented"`` (the second conv is an :class:`AttentionAugmentedConv`).
    ``(B, 1, 16, 16) -> (B, 2)`` logits.
    """

    def __init__(self, variant: str = "cnn", width: int = 16):
        super().__init__()
        if variant not in LONG_RANGE_VARIANTS:
            raise ValueError(f"variant must be one of {LONG_RANGE_VARIANTS}")
        self.variant = variant
        self.conv1 = nn.Conv2d(1, width, 3, stride=2, padding=1)  # 16x16 -> 8x8
        if variant == "augmented":
            self.conv2 = AttentionAugmentedConv(width, width, 3, attn_channels=8, key_channels=8)
        else:
            self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        if variant == "nonlocal":
            self.block = NonLocalBlock(width, width // 2)
        elif variant == "nonlocal_wrong_axis":
            self.block = NonLocalWrongAxis(width, width // 2)
        else:
            self.block = nn.Identity()
        self.norm1, self.norm2 = nn.BatchNorm2d(width), nn.BatchNorm2d(width)
        self.mix = nn.Conv2d(width, width, 1)
        self.norm3 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 2)

    def features(self, x: Tensor) -> Tensor:
        """The feature map the (optional) block reads: ``(B, 1, 16, 16) -> (B, width, 8, 8)``."""
        x = F.relu(self.norm1(self.conv1(x)))  # (B, 1, 16, 16) -> (B, width, 8, 8)
        return F.relu(self.norm2(self.conv2(x)))  # (B, width, 8, 8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block(self.features(x))  # (B, width, 8, 8)
        x = F.relu(self.norm3(self.mix(x)))  # (B, width, 8, 8): per-pixel nonlinearity
        return self.head(x.mean(dim=(2, 3)))  # GAP -> (B, 2)


# ----------------------------------------------------------------------------------------------
# The chapter's experiments: each returns its measurements as a small dataclass
# ----------------------------------------------------------------------------------------------


def _cpu_ms_per_call(fn, repeats: int = 20) -> float:
    """CPU milliseconds per call of ``fn()`` (process time, so other processes do not count)."""
    fn()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return 1000.0 * (time.process_time() - start) / repeats


@dataclass
class ChannelAttentionComparison:
    """Test accuracy of the same digits CNN without / with SE / with CBAM, seed by seed."""

    seeds: list[int]  # each seed sets the split, the initialisation and the batch order
    accuracy: dict[str, list[float]]  # "plain" / "se" / "cbam" -> test accuracy per seed
    params: dict[str, int]  # trainable parameters of each model
    forward_ms: dict[str, float]  # CPU ms per forward pass over the 450 test images
    gate_sums: list[float]  # SE (first layer, seed 0): sum over channels of the gate, per image
    gate_min: float  # smallest gate value seen over those images and channels
    gate_max: float  # largest

    def mean(self, name: str) -> float:
        return float(np.mean(self.accuracy[name]))

    def std(self, name: str) -> float:
        return float(np.std(self.accuracy[name], ddof=1))

    def gains(self, name: str) -> list[float]:
        """Paired differences, ``name`` minus plain, seed by seed (same split, same batches)."""
        return [a - b for a, b in zip(self.accuracy[name], self.accuracy["plain"])]


def compare_channel_attention(
    seeds=(0, 1, 2, 3, 4), steps: int = 200, lr: float = 1e-2, batch_size: int = 64
) -> ChannelAttentionComparison:
    """Train ``DigitsCNN`` plain, with SE and with CBAM at every seed; measure everything."""
    from attention_course.utils import count_parameters, seed_everything

    names = ("plain", "se", "cbam")
    acc: dict[str, list[float]] = {n: [] for n in names}
    models: dict[str, nn.Module] = {}
    for seed in seeds:
        digits = load_digits(seed)
        for name in names:
            seed_everything(seed)
            model = DigitsCNN(name)
            train_classifier(model, digits.x_train, digits.y_train, steps, batch_size, lr, seed)
            acc[name].append(accuracy(model, digits.x_test, digits.y_test))
            if seed == seeds[0]:
                models[name] = model
    digits = load_digits(seeds[0])
    with torch.no_grad():
        forward_ms = {n: _cpu_ms_per_call(lambda m=m: m(digits.x_test)) for n, m in models.items()}
        se = models["se"].features[2]  # the first SqueezeExcitation
        gate = se.gate(F.relu(models["se"].features[0](digits.x_test)))  # (B, C, 1, 1)
    return ChannelAttentionComparison(
        seeds=list(seeds),
        accuracy=acc,
        params={n: count_parameters(m) for n, m in models.items()},
        forward_ms=forward_ms,
        gate_sums=gate.sum(dim=(1, 2, 3)).tolist(),
        gate_min=float(gate.min()),
        gate_max=float(gate.max()),
    )


def step0_gradient_norms(seed: int = 0, channels: int = 16) -> dict[str, float]:
    """Gradient norm of every parameter of a fresh ``NonLocalBlock`` after one backward pass.

    The loss is the sum of squares of the block's output on a random (4, C, 8, 8) input. With
    W_z = 0 the output does not depend on theta, phi, g yet: their gradients are exactly 0.
    """
    torch.manual_seed(seed)
    block = NonLocalBlock(channels)
    x = torch.randn(4, channels, 8, 8)
    block(x).pow(2).sum().backward()
    return {name: float(p.grad.norm()) for name, p in block.named_parameters()}


@dataclass
class LongRangeResult:
    """The long-range task at one seed: every variant trained on the same examples."""

    seed: int
    accuracy: dict[str, float]  # variant -> test accuracy (1,000 fresh images)
    train_accuracy: dict[str, float]  # variant -> accuracy on its training images
    params: dict[str, int]  # trainable parameters
    train_seconds: dict[str, float]  # CPU seconds of training
    row_sums: dict[str, tuple[float, float]]  # min and max over queries of sum over keys
    cross_attention: dict[str, tuple[float, float]]  # mean weight corner -> other corner, both ways
    models: dict[str, nn.Module]  # the trained models (for the figures)
    test: LongRangeData


def run_long_range(
    seed: int = 0,
    variants=("cnn", "nonlocal"),
    num_train: int = 3000,
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 1e-2,
    num_shapes: int = 4,
    noise: float = 0.05,
) -> LongRangeResult:
    """Train each ``LongRangeNet`` variant on the same seeded task; test on 1,000 new images."""
    from attention_course.utils import count_parameters, seed_everything

    train_data = long_range_task(num_train, num_shapes=num_shapes, noise=noise, seed=seed)
    test = long_range_task(1000, num_shapes=num_shapes, noise=noise, seed=10_000 + seed)
    acc, train_acc, params, secs, sums, cross, models = {}, {}, {}, {}, {}, {}, {}
    for variant in variants:
        seed_everything(seed)
        model = LongRangeNet(variant)
        start = time.process_time()
        train_classifier(model, train_data.images, train_data.labels, steps, batch_size, lr, seed)
        secs[variant] = time.process_time() - start
        acc[variant] = accuracy(model, test.images, test.labels)
        train_acc[variant] = accuracy(model, train_data.images, train_data.labels)
        params[variant] = count_parameters(model)
        if isinstance(model.block, NonLocalBlock):
            with torch.no_grad():
                _, weights = model.block.attend(model.features(test.images[:200]))
            total = weights.sum(-1)  # (B, L): sum over the keys of each query's weights
            sums[variant] = (float(total.min()), float(total.max()))
            cross[variant] = corner_to_corner_attention(weights)
        models[variant] = model
    return LongRangeResult(seed, acc, train_acc, params, secs, sums, cross, models, test)


def corner_regions(size: int = 8) -> tuple[Tensor, Tensor]:
    """Flat indices of the 2x2 corners of the 8x8 map that cover the two marks (TL, BR)."""
    grid = torch.arange(size * size).view(size, size)
    return grid[:2, :2].flatten(), grid[-2:, -2:].flatten()


def corner_to_corner_attention(weights: Tensor) -> tuple[float, float]:
    """Mean attention weight that the pixels over one mark give to the other mark's corner.

    ``weights`` (B, 64, 64) on the 8x8 map. Returns (top-left -> bottom-right, bottom-right ->
    top-left): each the sum of a query's weights over the other corner's 4 pixels, averaged over
    the corner's 4 query pixels and the images. A uniform spread would give 4/64 = 0.06.
    """
    tl, br = corner_regions(int(math.isqrt(weights.shape[-1])))
    tl_to_br = weights[:, tl][:, :, br].sum(-1).mean()  # (B, 4, 4) -> sum over keys -> mean
    br_to_tl = weights[:, br][:, :, tl].sum(-1).mean()
    return float(tl_to_br), float(br_to_tl)


def unpatchify(patches: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """Inverse of ``patchify``: ``(B, N, C*p*p) -> (B, C, H, W)``."""
    return F.fold(patches.transpose(1, 2), (height, width), patch_size, stride=patch_size)


def shuffle_patches(images: Tensor, patch_size: int, perm: Tensor) -> Tensor:
    """The same images with their p x p patches moved around: patch ``perm[n]`` goes to slot n."""
    B, C, H, W = images.shape
    return unpatchify(patchify(images, patch_size)[:, perm], patch_size, H, W)


def matching_cnn_widths(target_params: int) -> tuple[int, int]:
    """``DigitsCNN`` widths (w1, w2), w2 = 2 w1 or close, whose parameter count is nearest."""
    from attention_course.utils import count_parameters

    best = min(
        ((w1, w2) for w1 in range(4, 65, 2) for w2 in range(w1, 2 * w1 + 9, 2)),
        key=lambda w: abs(count_parameters(DigitsCNN("plain", w)) - target_params),
    )
    return best


@dataclass
class ViTComparison:
    """ViT on digits with and without positions, and a CNN with (nearly) as many parameters."""

    seed: int
    accuracy: dict[str, float]  # "vit" / "vit_no_pos" / "cnn" -> test accuracy
    params: dict[str, int]
    train_seconds: dict[str, float]
    shuffle_change: dict[str, float]  # max |logit change| when the 16 patches are shuffled
    cnn_widths: tuple[int, int]


def compare_vit(
    seed: int = 0,
    steps: int = 600,
    lr: float = 3e-3,
    batch_size: int = 64,
    models=("vit", "vit_no_pos", "cnn"),
) -> ViTComparison:
    """Train the ViT (patch 2: 16 patches of 2x2) with / without positions and the CNN.

    ``models`` picks which of the three to train (the CNN needs ``"vit"`` for its width).
    """
    from attention_course.utils import count_parameters, seed_everything

    digits = load_digits(seed)
    acc, params, secs, shuffle = {}, {}, {}, {}
    widths = None
    for name in models:
        seed_everything(seed)
        if name == "cnn":
            widths = matching_cnn_widths(params["vit"])
            model = DigitsCNN("plain", widths)
        else:
            model = VisionTransformer(positions=(name == "vit"))
        start = time.process_time()
        train_classifier(model, digits.x_train, digits.y_train, steps, batch_size, lr, seed)
        secs[name] = time.process_time() - start
        acc[name] = accuracy(model, digits.x_test, digits.y_test)
        params[name] = count_parameters(model)
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            x = digits.x_test[:200]
            shuffled = shuffle_patches(x, 2, perm)
            shuffle[name] = float((model(x) - model(shuffled)).abs().max())
    return ViTComparison(seed, acc, params, secs, shuffle, widths)


@dataclass
class LayerCost:
    """Cost of one layer mapping (B, C, H, W) -> (B, C, H, W)."""

    name: str
    params: int  # trainable parameters
    flops_per_pixel: int  # multiply-adds x 2 per output pixel, counted from the shapes
    cpu_ms: float  # CPU milliseconds per forward pass of the measured batch


def layer_costs(channels: int = 16, size: int = 16, batch: int = 16, kernel: int = 3):
    """Parameters, FLOPs per pixel and measured forward time of the chapter's layers.

    All map ``C -> C`` channels on a ``size x size`` map: a k x k convolution, the same
    convolution as self-attention (k*k heads), stand-alone self-attention (content + relative
    position, one head of width C, k x k window), an attention-augmented convolution (half the
    channels from attention) and the non-local block (inner width C/2), with and without 2x2
    subsampling of keys and values.
    """
    from attention_course.utils import count_parameters

    C, k, n = channels, kernel, size * size
    Ci = C // 2
    conv = nn.Conv2d(C, C, k, padding=k // 2)
    layers = {
        "convolution": (conv, 2 * k * k * C * C),
        "convolution as self-attention": (
            ConvAsSelfAttention.from_conv(conv),
            2 * C * (k * k * C) + 2 * k * k * (k * k * C) + 2 * (k * k * C) * C,
        ),
        "stand-alone self-attention": (
            StandAloneSelfAttention(C, C, k, num_heads=1, head_dim=C),
            3 * 2 * C * C + 2 * 2 * k * k * C + 2 * C * C,
        ),
        "attention-augmented conv": (
            AttentionAugmentedConv(C, C, k, attn_channels=C // 2, key_channels=C // 2),
            2 * k * k * C * (C // 2)
            + 2 * C * (3 * C // 2)
            + 2 * 2 * n * (C // 2)
            + 2 * (C // 2) ** 2,
        ),
        "non-local block": (NonLocalBlock(C, Ci), 3 * 2 * C * Ci + 2 * 2 * n * Ci + 2 * Ci * C),
        "non-local, subsampled keys": (
            NonLocalBlock(C, Ci, subsample=True),
            2 * C * Ci + 2 * 2 * C * Ci // 4 + 2 * 2 * (n // 4) * Ci + 2 * Ci * C,
        ),
    }
    x = torch.randn(batch, C, size, size, generator=torch.Generator().manual_seed(0))
    out = []
    with torch.no_grad():
        for name, (layer, flops) in layers.items():
            ms = _cpu_ms_per_call(lambda m=layer: m(x), repeats=10)
            out.append(LayerCost(name, count_parameters(layer), flops, ms))
    return out


@dataclass
class ResolutionCost:
    """The non-local block's attention matrix at several resolutions of the same image."""

    sizes: list[int]  # H = W of the feature map
    matrix_entries: list[int]  # (HW)^2 entries of the attention matrix per image
    cpu_ms: list[float]  # CPU ms per forward pass (batch 1, C channels)


def nonlocal_cost_by_resolution(sizes=(64, 32, 16, 8), channels: int = 16) -> ResolutionCost:
    """Where to insert the block: cost of one non-local block at each map size, measured."""
    block = NonLocalBlock(channels)
    gen = torch.Generator().manual_seed(0)
    ms = []
    with torch.no_grad():
        for s in sizes:
            x = torch.randn(1, channels, s, s, generator=gen)
            ms.append(_cpu_ms_per_call(lambda x=x: block(x), repeats=3 if s >= 32 else 20))
    return ResolutionCost(list(sizes), [(s * s) ** 2 for s in sizes], ms)
