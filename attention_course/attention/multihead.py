"""Multi-head attention, positions and causal masks (chapter 4, Vaswani et al. 2017, 3.2-3.5).

Shape letters (the book's legend; PyTorch's names in brackets): B batch [N], L query length,
S key length, E embedding width, h heads, d = E // h per-head width.

Mask convention, everywhere here: a boolean mask is True where a query MAY attend to a key,
as in ``F.scaled_dot_product_attention``. ``nn.MultiheadAttention`` uses the opposite
(True = may NOT attend); ``to_torch_mask`` and ``from_torch_mask`` convert between the two.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .core import scaled_dot_product_attention

__all__ = [
    "MultiHeadAttention",
    "causal_mask",
    "from_torch_mask",
    "merge_heads",
    "sinusoidal_positions",
    "split_heads",
    "to_torch_mask",
]


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """Cut the last axis into ``num_heads`` slices of width d and move heads before length.

    (B, L, E) -> (B, h, L, d). Head i owns features ``i*d:(i+1)*d`` of every position.
    """
    B, L, E = x.shape
    head_dim = E // num_heads
    x = x.view(B, L, num_heads, head_dim)  # (B, L, h, d): split E into h slices of d
    return x.transpose(1, 2)  # (B, h, L, d): each head sees its own (L, d) sequence


def merge_heads(x: Tensor) -> Tensor:
    """Undo ``split_heads``: concatenate the heads' outputs along the feature axis.

    (B, h, L, d) -> (B, L, E) with E = h * d.
    """
    B, h, L, d = x.shape
    x = x.transpose(1, 2)  # (B, L, h, d): heads next to each other again
    return x.reshape(B, L, h * d)  # (B, L, E): Concat(head_1, ..., head_h)


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Vaswani et al.'s positional encoding, a (length, dim) float tensor.

    PE[pos, 2i] = sin(pos / 10000^(2i/dim)), PE[pos, 2i+1] = cos(pos / 10000^(2i/dim)):
    sines on even features, cosines on odd ones, wavelengths from 2*pi to 10000*2*pi.
    """
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (length, 1)
    even = torch.arange(0, dim, 2, dtype=torch.float32)  # the 2i of each sin/cos pair
    frequency = torch.exp(-math.log(10000.0) * even / dim)  # (ceil(dim/2),) 1/10000^(2i/dim)
    angle = position * frequency  # (length, ceil(dim/2))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : dim // 2])  # odd dim: one sine more than cosines
    return pe


def causal_mask(length: int, device: torch.device | str | None = None) -> Tensor:
    """(length, length) boolean mask, True where query i MAY attend to key j, i.e. j <= i.

    The lower triangle including the diagonal: a decoder position sees itself and the past.
    """
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def to_torch_mask(mask: Tensor | None) -> Tensor | None:
    """Course convention (True = may attend) -> ``nn.MultiheadAttention``'s (True = may NOT).

    Boolean masks are negated; additive float masks mean the same in both and pass unchanged.
    """
    if mask is None or mask.dtype != torch.bool:
        return mask
    return ~mask


def from_torch_mask(mask: Tensor | None) -> Tensor | None:
    """``nn.MultiheadAttention``'s convention (True = may NOT attend) -> the course's."""
    return to_torch_mask(mask)  # negation is its own inverse


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True = may attend) as 0 / -inf to add to scores; floats pass unchanged."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -math.inf)


class MultiHeadAttention(nn.Module):
    """Multi-head attention, Vaswani et al. (2017) section 3.2.2, batch first.

    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K,
    V W_i^V), with scaled dot-product attention scaled by 1/sqrt(d), d = E // h the head width.

    Same parameters as ``nn.MultiheadAttention(embed_dim, num_heads, bias=bias,
    batch_first=True)`` (``from_torch`` copies them), no dropout.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim  # E, width of the model
        self.num_heads = num_heads  # h
        self.head_dim = embed_dim // num_heads  # d, width of one head
        # W^Q, W^K, W^V of all heads side by side: head i owns output features i*d:(i+1)*d
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)  # W^O

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        average_attn_weights: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` (B, L, E) over ``key``/``value`` (B, S, E).

        Masks use the course convention: boolean True = this query MAY attend to this key
        (the opposite of ``nn.MultiheadAttention``; convert with ``from_torch_mask``).

        - ``attn_mask``: (L, S); (B*h, L, S) as in PyTorch; (B, L, S), one mask per sequence;
          or anything broadcastable to (B, h, L, S). Boolean, or float added to the scores.
        - ``key_padding_mask``: (B, S) boolean, True = a real key, False = padding.

        Returns ``(output, weights)``: output (B, L, E); weights averaged over heads (B, L, S)
        when ``average_attn_weights`` (PyTorch's default), else per head (B, h, L, S);
        ``None`` when ``need_weights`` is False. A query with no allowed key gets zero
        weights and output ``out_proj(0)`` (PyTorch gives NaN there).
        """
        B, L, E = query.shape
        S = key.shape[1]
        h = self.num_heads
        q = split_heads(self.q_proj(query), h)  # (B, L, E) -> (B, h, L, d)
        k = split_heads(self.k_proj(key), h)  # (B, S, E) -> (B, h, S, d)
        v = split_heads(self.v_proj(value), h)  # (B, S, E) -> (B, h, S, d)

        mask = None
        if attn_mask is not None:
            if attn_mask.dim() == 3 and attn_mask.shape[0] == B * h:
                attn_mask = attn_mask.view(B, h, L, S)  # PyTorch's (B*h, L, S) layout
            elif attn_mask.dim() == 3 and attn_mask.shape[0] == B:
                attn_mask = attn_mask.unsqueeze(1)  # (B, L, S) -> (B, 1, L, S): same for heads
            mask = attn_mask
        if key_padding_mask is not None:
            padding = key_padding_mask.view(B, 1, 1, S)  # (B, 1, 1, S): same for heads, queries
            if mask is None:
                mask = padding
            elif mask.dtype == torch.bool and padding.dtype == torch.bool:
                mask = mask & padding  # allowed only where both allow
            else:  # an additive float mask: a masked key adds -inf to the scores
                mask = _additive(mask, query.dtype) + _additive(padding, query.dtype)

        # (B, h, L, d) @ (B, h, d, S) -> (B, h, L, S) scores; (B, h, L, S) @ (B, h, S, d)
        context, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask)
        output = self.out_proj(merge_heads(context))  # (B, h, L, d) -> (B, L, E)

        if not need_weights:
            return output, None
        if average_attn_weights:
            weights = weights.mean(dim=1)  # (B, h, L, S) -> (B, L, S): mean over heads
        return output, weights

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """A ``MultiHeadAttention`` holding copies of an ``nn.MultiheadAttention``'s weights.

        PyTorch stacks W^Q, W^K, W^V as the rows of one ``in_proj_weight`` (3E, E), in that
        order. Only the plain layout is supported: same width for query, key and value,
        no ``add_bias_kv``, no ``add_zero_attn``. The module should be ``batch_first=True``
        to be called like this one (the weights do not depend on it).
        """
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise ValueError("from_torch supports equal q/k/v widths without bias_k/zero_attn")
        bias = module.in_proj_bias is not None
        layer = cls(module.embed_dim, module.num_heads, bias=bias)
        w_q, w_k, w_v = module.in_proj_weight.detach().chunk(3, dim=0)  # 3 x (E, E)
        with torch.no_grad():
            for proj, w in zip((layer.q_proj, layer.k_proj, layer.v_proj), (w_q, w_k, w_v)):
                proj.weight.copy_(w)
            layer.out_proj.weight.copy_(module.out_proj.weight)
            if bias:
                b_q, b_k, b_v = module.in_proj_bias.detach().chunk(3)  # 3 x (E,)
                for proj, b in zip((layer.q_proj, layer.k_proj, layer.v_proj), (b_q, b_k, b_v)):
                    proj.bias.copy_(b)
                layer.out_proj.bias.copy_(module.out_proj.bias)
        return layer.to(module.in_proj_weight.device, module.in_proj_weight.dtype)
