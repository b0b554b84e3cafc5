"""The Transformer of Vaswani et al. (2017), built from the course's own layers (chapter 5).

Chapter 4 built one multi-head attention layer
(:class:`attention_course.attention.MultiHeadAttention`). This module stacks it into the
encoder-decoder of "Attention Is All You Need":

- :class:`FeedForward`: FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (or GELU), at every position;
- :class:`EncoderLayer`: self-attention and the feed-forward network, each in a residual branch with
  LayerNorm, after the sum (``norm_first=False``, the paper's post-norm) or before the branch
  (``norm_first=True``, pre-norm, Xiong et al. 2020);
- :class:`DecoderLayer`: causal self-attention, cross-attention (queries from the decoder, keys and
  values from the encoder's output), feed-forward;
- :class:`TransformerConfig` and :class:`Transformer`: embeddings, sinusoidal positions, N encoder
  and N decoder layers, output projection; trained and evaluated by chapter 1-2's ``seq2seq``
  functions;
  greedy decoding with or without a per-layer key/value cache (:class:`LayerCache`);
- :class:`DecoderOnly`: the same layers as a GPT-like causal language model on "source BOS target".

Both layers copy ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` (``from_torch``)
and agree with them in eval mode (``tests/test_transformer.py``).

Shapes (the book's legend, PyTorch's names in brackets): B batch [N], L query/target length [T],
S key/source length [S], E model width [d_model], h heads [nhead], d = E // h head width,
F feed-forward width [dim_feedforward], V vocabulary size.

Masks, everywhere in this module, follow the course convention
(``F.scaled_dot_product_attention``'s): boolean, True = this query MAY attend to this key; a key
padding mask (B, S) is True on REAL tokens.
``nn.Transformer*`` layers use the opposite (True = may NOT attend, True = padding): convert with
``attention_course.attention.to_torch_mask`` / ``from_torch_mask``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention.core import scaled_dot_product_attention
from .attention.multihead import (
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    sinusoidal_positions,
    split_heads,
)
from .bahdanau import BahdanauDecoder, TrainedDateModel, date_exact_match, train_date_model
from .data import DateTask
from .seq2seq import (
    COPY_RECIPE,
    CopyRecipe,
    LengthCurve,
    TrainedCopyModel,
    build_model,
    evaluate_by_length,
    train_seq2seq,
)
from .utils import count_parameters, seed_everything

__all__ = [
    "COPY_CONFIG",
    "COPY_PEAK_LR",
    "DATE_CONFIG",
    "DATE_PEAK_LR",
    "AttentionMaps",
    "CacheTiming",
    "CopyRace",
    "DECODER_ONLY_LAYERS",
    "DECODER_ONLY_RECIPE",
    "DateComparison",
    "DecoderOnlyOnCopy",
    "DecoderLayer",
    "DecoderOnly",
    "EncoderLayer",
    "FeedForward",
    "LayerCache",
    "NormPlacementGradients",
    "Transformer",
    "TransformerConfig",
    "cache_speedup",
    "cached_attention",
    "compare_on_dates",
    "copy_batches",
    "decoder_only_on_copy",
    "gradient_norms_at_init",
    "lower_right_causal_mask",
    "race_on_copy",
    "train_copy_transformer",
    "train_date_transformer",
]

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _activation_name(layer: nn.Module) -> str:
    """ "relu" or "gelu" for an ``nn.TransformerEncoderLayer``/``DecoderLayer``."""
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or isinstance(act, nn.GELU):
        return "gelu"
    raise ValueError(f"from_torch supports relu and gelu activations, not {act!r}")


class FeedForward(nn.Module):
    """The position-wise feed-forward network, Vaswani et al. (2017) eq. 2.

    FFN(x) = act(x W_1 + b_1) W_2 + b_2, applied to every position separately:
    (B, L, E) -> (B, L, E) through a hidden width F (``ff_dim``; the paper's d_ff = 4 E).
    ``activation`` is "relu" (the paper) or "gelu" (BERT, GPT). Dropout, when any, acts on the
    hidden layer, as in PyTorch.
    """

    def __init__(self, embed_dim: int, ff_dim: int, dropout: float = 0.0, activation="relu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be 'relu' or 'gelu', not {activation!r}")
        self.activation = activation
        self.linear1 = nn.Linear(embed_dim, ff_dim)  # W_1: E -> F
        self.linear2 = nn.Linear(ff_dim, embed_dim)  # W_2: F -> E
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = _ACTIVATIONS[self.activation](self.linear1(x))  # (B, L, E) -> (B, L, F)
        return self.linear2(self.dropout(hidden))  # (B, L, F) -> (B, L, E)


class EncoderLayer(nn.Module):
    """One encoder layer: self-attention then feed-forward, each a residual branch with LayerNorm.

    Post-norm (``norm_first=False``, Vaswani et al. 2017, section 3.1)::

        x = LayerNorm(x + SelfAttention(x));  x = LayerNorm(x + FFN(x))

    Pre-norm (``norm_first=True``, Xiong et al. 2020; GPT-2, nanoGPT, ViT)::

        x = x + SelfAttention(LayerNorm(x));  x = x + FFN(LayerNorm(x))

    Batch first. Same parameters as ``nn.TransformerEncoderLayer(embed_dim, num_heads, ff_dim,
    dropout, activation, batch_first=True, norm_first=norm_first)`` (``from_torch`` copies them);
    ``dropout`` acts on the two residual branches and the feed-forward hidden layer (not on the
    attention weights: :class:`MultiHeadAttention` has no dropout).

    The layer is also the block of an encoder-only (BERT-like: no mask) or a decoder-only
    (GPT-like: ``src_mask=causal_mask(L)``) model: the mask alone makes the difference.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ff_dim: int,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(embed_dim, num_heads)
        self.feed_forward = FeedForward(embed_dim, ff_dim, dropout, activation)
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)  # around self-attention
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)  # around the feed-forward net
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _self_attention(self, x, mask, padding, need_weights):
        out, weights = self.self_attn(
            x, x, x, attn_mask=mask, key_padding_mask=padding,
            need_weights=need_weights, average_attn_weights=False,
        )  # fmt: skip
        return self.dropout1(out), weights  # (B, L, E), (B, h, L, L) or None

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Encode ``src`` (B, L, E) -> (B, L, E).

        Masks in the course convention (True = MAY attend; NOT ``nn.TransformerEncoderLayer``'s):

        - ``src_mask``: boolean (L, L) or (B, L, L), True where query i may attend to key j
          (``causal_mask(L)`` makes a GPT block); or a float mask added to the scores.
        - ``src_key_padding_mask``: boolean (B, L), True on real tokens, False on padding.

        With ``need_weights=True`` returns ``(output, weights)``, the self-attention weights of
        every head, (B, h, L, L).
        """
        x = src
        if self.norm_first:
            attn, weights = self._self_attention(
                self.norm1(x), src_mask, src_key_padding_mask, need_weights
            )
            x = x + attn  # residual around the normalised branch
            x = x + self.dropout2(self.feed_forward(self.norm2(x)))
        else:
            attn, weights = self._self_attention(x, src_mask, src_key_padding_mask, need_weights)
            x = self.norm1(x + attn)  # normalise the sum
            x = self.norm2(x + self.dropout2(self.feed_forward(x)))
        return (x, weights) if need_weights else x

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> EncoderLayer:
        """An ``EncoderLayer`` holding copies of an ``nn.TransformerEncoderLayer``'s weights.

        Either ``norm_first``, "relu" or "gelu"; the copy is in the layer's train/eval mode.
        Call it batch first; convert masks with ``from_torch_mask`` (PyTorch's True = may NOT
        attend / padding).
        """
        ours = cls(
            layer.linear1.in_features,
            layer.self_attn.num_heads,
            layer.linear1.out_features,
            dropout=layer.dropout.p,
            activation=_activation_name(layer),
            norm_first=layer.norm_first,
            layer_norm_eps=layer.norm1.eps,
        )
        ours.self_attn = MultiHeadAttention.from_torch(layer.self_attn)
        _copy_feed_forward_and_norms(ours, layer, ("norm1", "norm2"))
        ours.train(layer.training)  # same mode (dropout on or off) as the copied layer
        return ours.to(layer.linear1.weight.device, layer.linear1.weight.dtype)


def _copy_feed_forward_and_norms(ours: nn.Module, theirs: nn.Module, norms: tuple[str, ...]):
    with torch.no_grad():
        ours.feed_forward.linear1.load_state_dict(theirs.linear1.state_dict())
        ours.feed_forward.linear2.load_state_dict(theirs.linear2.state_dict())
        for name in norms:
            getattr(ours, name).load_state_dict(getattr(theirs, name).state_dict())


@dataclass
class LayerCache:
    """A decoder layer's key/value cache for incremental (token by token) decoding.

    Keys and values are stored AFTER their projections, per head: growing ``self_keys`` /
    ``self_values`` (B, h, t, d) for the t tokens decoded so far; ``cross_keys`` / ``cross_values``
    (B, h, S, d) of the encoder's output, computed once (``None`` until the first step).
    """

    self_keys: Tensor | None = None  # (B, h, t, d)
    self_values: Tensor | None = None  # (B, h, t, d)
    cross_keys: Tensor | None = None  # (B, h, S, d)
    cross_values: Tensor | None = None  # (B, h, S, d)

    @property
    def length(self) -> int:
        """t, how many positions are cached: the position offset of the next token."""
        return 0 if self.self_keys is None else self.self_keys.shape[2]


def lower_right_causal_mask(num_queries: int, num_keys: int, device=None) -> Tensor:
    """(L, S) boolean mask, True = MAY attend, for L NEW queries after S - L cached positions.

    Query i sits at absolute position S - L + i and may attend to keys j <= S - L + i: the causal
    mask aligned to the bottom-right corner. ``causal_mask(L)`` is its square special case.
    ``F.scaled_dot_product_attention(is_causal=True)`` aligns it TOP-left instead
    (``torch.ones(L, S).tril()``): with one query (L = 1) that sees only the FIRST key.
    """
    offset = num_keys - num_queries
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(offset)


def cached_attention(
    attention: MultiHeadAttention,
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    attn_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Multi-head attention from ``query`` (B, L, E) over already projected, split keys/values.

    ``keys``/``values`` are (B, h, S, d), e.g. from a :class:`LayerCache`; ``attn_mask`` is boolean
    (True = MAY attend), broadcastable to (B, h, L, S). Returns output (B, L, E) and the weights
    per head (B, h, L, S): the same as ``attention(query, key, value, attn_mask)`` had the keys
    and values been projected there.
    """
    q = split_heads(attention.q_proj(query), attention.num_heads)  # (B, L, E) -> (B, h, L, d)
    context, weights = scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask)
    return attention.out_proj(merge_heads(context)), weights  # (B, L, E), (B, h, L, S)


def _project(attention: MultiHeadAttention, x: Tensor) -> tuple[Tensor, Tensor]:
    """Keys and values of ``x`` (B, S, E), projected and split: 2 x (B, h, S, d)."""
    h = attention.num_heads
    return split_heads(attention.k_proj(x), h), split_heads(attention.v_proj(x), h)


class DecoderLayer(nn.Module):
    """One decoder layer: causal self-attention, cross-attention, feed-forward.

    Post-norm (``norm_first=False``, the paper)::

        x = LayerNorm(x + SelfAttention(x, causal));  x = LayerNorm(x + CrossAttention(x, memory))
        x = LayerNorm(x + FFN(x))

    Pre-norm (``norm_first=True``): ``x = x + Sublayer(LayerNorm(x))`` for each of the three.
    Cross-attention takes its QUERIES from the decoder and its KEYS and VALUES from ``memory``, the
    encoder's last output. Same parameters as ``nn.TransformerDecoderLayer(..., batch_first=True)``
    (``from_torch`` copies them). :meth:`step` decodes incrementally with a :class:`LayerCache`.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ff_dim: int,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(embed_dim, num_heads)
        self.cross_attn = MultiHeadAttention(embed_dim, num_heads)  # PyTorch: multihead_attn
        self.feed_forward = FeedForward(embed_dim, ff_dim, dropout, activation)
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)  # around self-attention
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)  # around cross-attention
        self.norm3 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)  # around the feed-forward net
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def _residual(self, x: Tensor, norm: nn.LayerNorm, sublayer) -> tuple[Tensor, Tensor | None]:
        """x + sublayer(norm(x)) (pre-norm) or norm(x + sublayer(x)) (post-norm)."""
        if self.norm_first:
            out, weights = sublayer(norm(x))
            return x + out, weights
        out, weights = sublayer(x)
        return norm(x + out), weights

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Decode ``tgt`` (B, L, E) reading ``memory`` (B, S, E) -> (B, L, E).

        Masks in the course convention (True = MAY attend; NOT ``nn.TransformerDecoderLayer``'s):

        - ``tgt_mask``: (L, L) or (B, L, L), usually ``causal_mask(L)``; None = no mask (the caller
          must pass the causal mask, as in PyTorch).
        - ``memory_mask``: (L, S) or (B, L, S), for cross-attention.
        - ``tgt_key_padding_mask`` (B, L) / ``memory_key_padding_mask`` (B, S): True on real tokens.

        With ``need_weights=True`` returns ``(output, self_weights (B, h, L, L), cross_weights
        (B, h, L, S))``.
        """

        def self_attention(x):
            out, w = self.self_attn(
                x, x, x, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask,
                need_weights=need_weights, average_attn_weights=False,
            )  # fmt: skip
            return self.dropout1(out), w  # (B, L, E), (B, h, L, L)

        def cross_attention(x):
            out, w = self.cross_attn(
                x, memory, memory, attn_mask=memory_mask, key_padding_mask=memory_key_padding_mask,
                need_weights=need_weights, average_attn_weights=False,
            )  # fmt: skip
            return self.dropout2(out), w  # (B, L, E), (B, h, L, S)

        x, self_weights = self._residual(tgt, self.norm1, self_attention)
        x, cross_weights = self._residual(x, self.norm2, cross_attention)
        x, _ = self._residual(x, self.norm3, lambda y: (self.dropout3(self.feed_forward(y)), None))
        return (x, self_weights, cross_weights) if need_weights else x

    def step(
        self,
        tgt: Tensor,
        memory: Tensor,
        cache: LayerCache,
        memory_key_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Incremental decoding: NEW positions ``tgt`` (B, L, E) after ``cache.length`` cached ones.

        Projects the new positions' keys and values once and appends them to ``cache`` (updated in
        place); the cross-attention keys and values of ``memory`` (B, S, E) are projected on the
        first call only. The new queries attend to every cached key at or before their own
        position (:func:`lower_right_causal_mask`). ``memory_key_padding_mask`` (B, S): True on
        real tokens. Returns ``(output (B, L, E), self_weights (B, h, L, t + L), cross_weights
        (B, h, L, S))``; equal to :meth:`forward` on the whole prefix with ``causal_mask``,
        restricted to the new positions.
        """
        L = tgt.shape[1]

        def self_attention(x):
            keys, values = _project(self.self_attn, x)  # 2 x (B, h, L, d)
            if cache.self_keys is not None:
                keys = torch.cat([cache.self_keys, keys], dim=2)  # (B, h, t + L, d)
                values = torch.cat([cache.self_values, values], dim=2)  # (B, h, t + L, d)
            cache.self_keys, cache.self_values = keys, values
            mask = lower_right_causal_mask(L, keys.shape[2], device=x.device)  # (L, t + L)
            out, w = cached_attention(self.self_attn, x, keys, values, mask)
            return self.dropout1(out), w

        def cross_attention(x):
            if cache.cross_keys is None:
                cache.cross_keys, cache.cross_values = _project(self.cross_attn, memory)
            mask = None
            if memory_key_padding_mask is not None:
                mask = memory_key_padding_mask[:, None, None, :]  # (B, S) -> (B, 1, 1, S)
            out, w = cached_attention(
                self.cross_attn, x, cache.cross_keys, cache.cross_values, mask
            )
            return self.dropout2(out), w

        x, self_weights = self._residual(tgt, self.norm1, self_attention)
        x, cross_weights = self._residual(x, self.norm2, cross_attention)
        x, _ = self._residual(x, self.norm3, lambda y: (self.dropout3(self.feed_forward(y)), None))
        return x, self_weights, cross_weights

    @classmethod
    def from_torch(cls, layer: nn.TransformerDecoderLayer) -> DecoderLayer:
        """A ``DecoderLayer`` holding copies of an ``nn.TransformerDecoderLayer``'s weights.

        Either ``norm_first``, "relu" or "gelu". Call the copy batch first; convert masks with
        ``from_torch_mask``. PyTorch's ``multihead_attn`` is our ``cross_attn``.
        """
        ours = cls(
            layer.linear1.in_features,
            layer.self_attn.num_heads,
            layer.linear1.out_features,
            dropout=layer.dropout.p,
            activation=_activation_name(layer),
            norm_first=layer.norm_first,
            layer_norm_eps=layer.norm1.eps,
        )
        ours.self_attn = MultiHeadAttention.from_torch(layer.self_attn)
        ours.cross_attn = MultiHeadAttention.from_torch(layer.multihead_attn)
        _copy_feed_forward_and_norms(ours, layer, ("norm1", "norm2", "norm3"))
        ours.train(layer.training)  # same mode (dropout on or off) as the copied layer
        return ours.to(layer.linear1.weight.device, layer.linear1.weight.dtype)


# --------------------------------------------------------------------------- the whole model


@dataclass
class TransformerConfig:
    """Sizes of a :class:`Transformer` or a :class:`DecoderOnly`; only ``vocab_size`` is required.

    Defaults: the chapter 5 model for chapter 2's tasks (E 64, 4 heads, F 128, 2 + 2 layers,
    pre-norm, no dropout).
    """

    vocab_size: int  # V_src: source ids, including PAD/BOS/EOS
    tgt_vocab_size: int | None = None  # V: target ids; None = the same as vocab_size
    embed_dim: int = 64  # E
    num_heads: int = 4  # h
    ff_dim: int = 128  # F
    num_encoder_layers: int = 2  # N (encoder)
    num_decoder_layers: int = 2  # N (decoder); DecoderOnly uses this many layers
    dropout: float = 0.0
    activation: str = "relu"  # "relu" (the paper) or "gelu"
    norm_first: bool = True  # pre-norm (True) or the paper's post-norm (False)
    positions: str = "sinusoidal"  # "sinusoidal" (the paper) or "none" (the ablation)
    max_len: int = 512  # longest sequence the position table covers
    pad_id: int = 0  # id of PAD in both vocabularies
    bos_id: int = 1  # id of BOS: the decoder's first input (DecoderOnly: the separator)
    eos_id: int = 2  # id of EOS: the decoder's last output

    @property
    def target_vocab_size(self) -> int:
        return self.tgt_vocab_size if self.tgt_vocab_size is not None else self.vocab_size


class _Embed(nn.Module):
    """Token embedding times sqrt(E) plus sinusoidal positions (section 3.4-3.5)."""

    def __init__(self, vocab_size: int, config: TransformerConfig):
        super().__init__()
        self.scale = math.sqrt(config.embed_dim)
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, config.pad_id)
        # std E^-1/2, so that sqrt(E) * embedding has unit entries, the size of the positions'
        # sines (PyTorch's default N(0, 1) times sqrt(E) would drown the positions).
        nn.init.normal_(self.embedding.weight, std=config.embed_dim**-0.5)
        with torch.no_grad():
            self.embedding.weight[config.pad_id].zero_()
        self.use_positions = config.positions == "sinusoidal"
        if config.positions not in ("sinusoidal", "none"):
            raise ValueError("positions must be 'sinusoidal' or 'none'")
        table = sinusoidal_positions(config.max_len, config.embed_dim)  # (max_len, E)
        self.register_buffer("table", table, persistent=False)

    def forward(self, tokens: Tensor, positions: Tensor | int = 0) -> Tensor:
        """``tokens`` (B, L) -> (B, L, E). ``positions``: the position of the first token (an int
        offset: a cached decoder passes how many tokens came before) or a (B, L) index tensor."""
        x = self.embedding(tokens) * self.scale  # (B, L) -> (B, L, E)
        if not self.use_positions:
            return x
        if isinstance(positions, int):
            return x + self.table[positions : positions + tokens.shape[1]]  # (L, E) broadcast
        return x + self.table[positions]  # (B, L) -> (B, L, E)


@dataclass
class AttentionMaps:
    """Every attention weight of a :class:`Transformer`'s teacher-forced pass, per layer, head."""

    encoder_self: list[Tensor] = field(default_factory=list)  # per layer (B, h, S, S)
    decoder_self: list[Tensor] = field(default_factory=list)  # per layer (B, h, T, T)
    cross: list[Tensor] = field(default_factory=list)  # per layer (B, h, T, S)


class Transformer(nn.Module):
    """The encoder-decoder Transformer, a drop-in for chapter 1-2's ``seq2seq.Seq2Seq``.

    ``forward(src, src_lengths, tgt_in)`` returns ``(logits (B, T, V), cross-attention weights
    (B, T, S) of the last decoder layer, averaged over heads)``, so ``seq2seq.train_seq2seq``,
    ``seq2seq.evaluate_by_length`` and ``bahdanau.translate`` work unchanged. Pre-norm stacks end in
    a final LayerNorm (as ``nn.Transformer`` always does). Masks are built from ``src_lengths``:
    True = real token, may be attended.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        c = config
        args = (c.embed_dim, c.num_heads, c.ff_dim, c.dropout, c.activation, c.norm_first)
        self.src_embed = _Embed(c.vocab_size, c)
        self.tgt_embed = _Embed(c.target_vocab_size, c)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(*args) for _ in range(c.num_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(*args) for _ in range(c.num_decoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(c.embed_dim) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.embed_dim) if c.norm_first else nn.Identity()
        self.output = nn.Linear(c.embed_dim, c.target_vocab_size)  # E -> V

    def encode(
        self, src: Tensor, src_lengths: Tensor, maps: AttentionMaps | None = None
    ) -> tuple[Tensor, Tensor]:
        """``src`` (B, S) -> memory (B, S, E) and the source mask (B, S), True = real token."""
        S = src.shape[1]
        src_mask = torch.arange(S, device=src.device) < src_lengths.to(src.device)[:, None]
        x = self.src_embed(src)  # (B, S) -> (B, S, E)
        for layer in self.encoder_layers:
            if maps is None:
                x = layer(x, src_key_padding_mask=src_mask)
            else:
                x, w = layer(x, src_key_padding_mask=src_mask, need_weights=True)
                maps.encoder_self.append(w)  # (B, h, S, S)
        return self.encoder_norm(x), src_mask

    def decode(
        self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor, maps: AttentionMaps | None = None
    ) -> tuple[Tensor, Tensor]:
        """Teacher forcing: ``tgt_in`` (B, T) -> logits (B, T, V) and the last layer's
        cross-attention weights averaged over heads (B, T, S)."""
        T = tgt_in.shape[1]
        mask = causal_mask(T, device=tgt_in.device)  # (T, T) True = may attend
        x = self.tgt_embed(tgt_in)  # (B, T) -> (B, T, E)
        for layer in self.decoder_layers:
            x, self_w, cross_w = layer(
                x, memory, tgt_mask=mask, memory_key_padding_mask=src_mask, need_weights=True
            )
            if maps is not None:
                maps.decoder_self.append(self_w)  # (B, h, T, T)
                maps.cross.append(cross_w)  # (B, h, T, S)
        logits = self.output(self.decoder_norm(x))  # (B, T, E) -> (B, T, V)
        return logits, cross_w.mean(dim=1)  # (B, h, T, S) -> (B, T, S)

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing, like ``Seq2Seq.forward``: logits (B, T, V) for ``tgt_in`` (B, T) =
        BOS + target, and the last decoder layer's cross-attention weights (B, T, S)."""
        memory, src_mask = self.encode(src, src_lengths)
        return self.decode(tgt_in, memory, src_mask)

    @torch.no_grad()
    def attention_maps(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> AttentionMaps:
        """Every layer's and head's attention weights of a teacher-forced pass."""
        maps = AttentionMaps()
        memory, src_mask = self.encode(src, src_lengths, maps)
        self.decode(tgt_in, memory, src_mask, maps)
        return maps

    @torch.no_grad()
    def greedy_decode(
        self, src: Tensor, src_lengths: Tensor, max_len: int, use_cache: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Feed back the most likely token for at most ``max_len`` steps, like ``Seq2Seq``'s.

        ``use_cache=False`` re-runs the decoder on the whole prefix at every step (quadratic
        work per step); ``use_cache=True`` keeps every layer's projected keys and values
        (:class:`LayerCache`) and runs only the new token, at position offset t. Both give the
        same tokens. Returns tokens (B, T) with T <= max_len (stops once every row has produced
        EOS; after its EOS a row holds PAD) and the last layer's cross-attention weights of
        every step, averaged over heads, (B, T, S).
        """
        cfg = self.config
        was_training = self.training
        self.eval()
        B = src.shape[0]
        memory, src_mask = self.encode(src, src_lengths)  # (B, S, E), (B, S)
        inputs = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=src.device)  # (B, 1)
        caches = [LayerCache() for _ in self.decoder_layers]
        finished = torch.zeros(B, dtype=torch.bool, device=src.device)
        tokens, weights = [], []
        for t in range(max_len):
            if use_cache:
                x = self.tgt_embed(inputs[:, -1:], positions=t)  # (B, 1, E) at position t
                for layer, cache in zip(self.decoder_layers, caches):
                    x, _, cross_w = layer.step(x, memory, cache, src_mask)  # (B, 1, E)
                logits = self.output(self.decoder_norm(x))[:, -1]  # (B, 1, V) -> (B, V)
                step_weights = cross_w.mean(dim=1)[:, -1]  # (B, h, 1, S) -> (B, S)
            else:
                all_logits, all_w = self.decode(inputs, memory, src_mask)  # (B, t+1, V)
                logits, step_weights = all_logits[:, -1], all_w[:, -1]  # (B, V), (B, S)
            token = logits.argmax(dim=-1)  # (B, V) -> (B,)
            tokens.append(token.masked_fill(finished, cfg.pad_id))
            weights.append(step_weights)
            finished = finished | (token == cfg.eos_id)
            inputs = torch.cat([inputs, token[:, None]], dim=1)  # (B, t + 2)
            if bool(finished.all()):
                break
        self.train(was_training)
        return torch.stack(tokens, dim=1), torch.stack(weights, dim=1)  # (B, T), (B, T, S)


class DecoderOnly(nn.Module):
    """A GPT-like model for sequence-to-sequence tasks: one causal stack over "source BOS target".

    The same :class:`EncoderLayer` as the encoder, with a causal mask (True = may attend to
    itself and the past) combined with a padding mask. One embedding table holds both
    vocabularies: source id s is row s, target id t is row ``vocab_size + t``, so the two
    vocabularies need not share ids (dates' do not) and a symbol reads differently in the source
    and in the target (a segment embedding folded into the table). ``forward(src, src_lengths,
    tgt_in)`` returns ``(logits (B, T, V), None)`` for the target positions only, so
    ``seq2seq.train_seq2seq`` trains it (the loss ignores the source positions) and
    ``evaluate_by_length`` evaluates it.

    Positions count real tokens only, so padding inside the source does not shift the target.
    ``target_positions="continue"`` (GPT) numbers the target on from the source (BOS at position
    ``src_length``); ``"restart"`` numbers it from 0 again, as an encoder-decoder's decoder does.
    ``prefix_lm=True`` lets the source positions see each other in both directions (a prefix LM),
    the target staying causal.
    """

    def __init__(
        self, config: TransformerConfig, prefix_lm: bool = False, target_positions: str = "continue"
    ):
        super().__init__()
        if target_positions not in ("continue", "restart"):
            raise ValueError("target_positions must be 'continue' or 'restart'")
        self.config = config
        self.prefix_lm = prefix_lm
        self.target_positions = target_positions
        c = config
        args = (c.embed_dim, c.num_heads, c.ff_dim, c.dropout, c.activation, c.norm_first)
        self.embed = _Embed(c.vocab_size + c.target_vocab_size, c)
        self.layers = nn.ModuleList(EncoderLayer(*args) for _ in range(c.num_decoder_layers))
        self.norm = nn.LayerNorm(c.embed_dim) if c.norm_first else nn.Identity()
        self.output = nn.Linear(c.embed_dim, c.target_vocab_size)

    def _mask(self, real: Tensor, S: int) -> Tensor:
        """(B, N, N) mask over N = S + T positions, True = may attend."""
        N = real.shape[1]
        mask = causal_mask(N, device=real.device)[None] & real[:, None, :]  # (B, N, N)
        if self.prefix_lm:
            source = torch.zeros(N, N, dtype=torch.bool, device=real.device)
            source[:S, :S] = True  # source positions see the whole source
            mask = mask | (source[None] & real[:, None, :])
        return mask

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> tuple[Tensor, None]:
        """Logits (B, T, V) of the target positions of "source BOS target" (teacher forcing)."""
        S, T = src.shape[1], tgt_in.shape[1]
        src_real = torch.arange(S, device=src.device) < src_lengths.to(src.device)[:, None]
        real = torch.cat([src_real, torch.ones_like(tgt_in, dtype=torch.bool)], dim=1)  # (B, N)
        positions = real.long().cumsum(dim=1) - 1  # (B, N): real tokens counted, padding skipped
        if self.target_positions == "restart":
            positions[:, S:] = torch.arange(T, device=src.device)  # the target counts from 0
        tokens = torch.cat([src, tgt_in + self.config.vocab_size], dim=1)  # (B, N), one table
        x = self.embed(tokens, positions.clamp(min=0))  # (B, N, E)
        mask = self._mask(real, S)  # (B, N, N)
        for layer in self.layers:
            x = layer(x, src_mask=mask)
        return self.output(self.norm(x[:, S:])), None  # (B, T, E) -> (B, T, V)

    @torch.no_grad()
    def greedy_decode(self, src: Tensor, src_lengths: Tensor, max_len: int) -> tuple[Tensor, None]:
        """Greedy decoding without a cache (re-runs the stack on the prefix each step)."""
        cfg = self.config
        was_training = self.training
        self.eval()
        B = src.shape[0]
        inputs = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(B, dtype=torch.bool, device=src.device)
        tokens = []
        for _ in range(max_len):
            logits, _ = self(src, src_lengths, inputs)  # (B, t + 1, V)
            token = logits[:, -1].argmax(dim=-1)  # (B,)
            tokens.append(token.masked_fill(finished, cfg.pad_id))
            finished = finished | (token == cfg.eos_id)
            inputs = torch.cat([inputs, token[:, None]], dim=1)
            if bool(finished.all()):
                break
        self.train(was_training)
        return torch.stack(tokens, dim=1), None


# --------------------------------------------------------------------------- training recipes

COPY_CONFIG = dict(embed_dim=32, num_heads=4, ff_dim=64, num_encoder_layers=2, num_decoder_layers=2)
COPY_PEAK_LR = 5e-3
DECODER_ONLY_LAYERS = 5  # a DecoderOnly with COPY_CONFIG's sizes and 5 layers ~ a 2 + 2 Transformer


def copy_batches(recipe: CopyRecipe, seed: int):
    """The exact stream of training batches ``seq2seq.train_copy_model`` uses for ``seed``."""
    return recipe.task().curriculum(
        recipe.steps,
        batch_size=recipe.batch_size,
        min_length=recipe.min_length,
        max_length=recipe.max_length,
        start_max_length=recipe.start_max_length,
        ramp_fraction=recipe.ramp_fraction,
        seed=np.random.default_rng([seed, 1]),  # as in train_copy_model
    )


def train_copy_transformer(
    seed: int = 0,
    recipe: CopyRecipe = COPY_RECIPE,
    decoder_only: bool = False,
    peak_lr: float = COPY_PEAK_LR,
    progress: bool = True,
    target_positions: str = "continue",
    **config_overrides,
) -> TrainedCopyModel:
    """Train a :class:`Transformer` (or a :class:`DecoderOnly`) on chapter 1-2's copy task.

    The same task, batches (for the same seed) and number of steps as ``seq2seq.train_copy_model``
    with ``recipe`` (default chapter 2's ``seq2seq.COPY_RECIPE``: 500 steps of 32 sequences,
    lengths 3-30 with a curriculum), through the same ``seq2seq.train_seq2seq``; only the model
    and its peak learning rate differ. ``config_overrides`` change :class:`TransformerConfig`
    fields (default: the chapter's small model, :data:`COPY_CONFIG`; a decoder-only model gets
    :data:`DECODER_ONLY_LAYERS` layers, the encoder-decoder's parameter count).
    """
    V = len(recipe.task().vocab)
    defaults = (
        {**COPY_CONFIG, "num_decoder_layers": DECODER_ONLY_LAYERS} if decoder_only else COPY_CONFIG
    )
    config = TransformerConfig(vocab_size=V, **{**defaults, **config_overrides})
    seed_everything(seed)
    if decoder_only:
        model: nn.Module = DecoderOnly(config, target_positions=target_positions)
    else:
        model = Transformer(config)
    history = train_seq2seq(
        model,
        copy_batches(recipe, seed),
        recipe.steps,
        peak_lr=peak_lr,
        clip_norm=recipe.clip_norm,
        progress=progress,
        desc=f"{type(model).__name__} seed {seed}",
    )
    model.eval()
    return TrainedCopyModel(model, recipe.task(), history, recipe, seed)


# --------------------------------------------------------------------------- pre-LN vs post-LN


@dataclass
class NormPlacementGradients:
    """Per-layer gradient norms at initialisation of a post-norm and a pre-norm stack."""

    post_norm: list[float]  # ||dL/dW_2|| of the feed-forward output weight, layer 1..N (post-LN)
    pre_norm: list[float]  # the same for the pre-LN stack with the same seed and data

    @property
    def post_ratio(self) -> float:
        """Last layer's gradient norm over the first layer's, post-norm."""
        return self.post_norm[-1] / self.post_norm[0]

    @property
    def pre_ratio(self) -> float:
        """Last layer's gradient norm over the first layer's, pre-norm."""
        return self.pre_norm[-1] / self.pre_norm[0]


def gradient_norms_at_init(
    seed: int = 0,
    num_layers: int = 12,
    embed_dim: int = 64,
    num_heads: int = 4,
    ff_dim: int = 256,
    vocab_size: int = 32,
    batch_size: int = 16,
    length: int = 24,
) -> NormPlacementGradients:
    """Xiong et al. (2020), Fig. 3 in miniature: gradients at initialisation, no training.

    Builds a stack of ``num_layers`` :class:`EncoderLayer` s twice from the same seed, post-norm and
    pre-norm (the pre-norm stack ends in a final LayerNorm, as in Xiong et al.), puts a linear
    read-out to ``vocab_size`` classes on top, and back-propagates the cross-entropy of random
    targets for random inputs (B, L, E) with unit-variance entries. Returns the norm of the
    gradient of each layer's feed-forward output weight W_2 (the quantity of the paper's figure).
    """
    norms = {}
    for norm_first in (False, True):
        seed_everything(seed)
        layers = nn.ModuleList(
            EncoderLayer(embed_dim, num_heads, ff_dim, norm_first=norm_first)
            for _ in range(num_layers)
        )
        for p in layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)  # nn.Transformer's initialisation (and Xiong et al.'s)
        final = nn.LayerNorm(embed_dim) if norm_first else nn.Identity()
        readout = nn.Linear(embed_dim, vocab_size)
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(batch_size, length, embed_dim, generator=g)  # (B, L, E)
        targets = torch.randint(0, vocab_size, (batch_size, length), generator=g)  # (B, L)
        for layer in layers:
            x = layer(x)
        logits = readout(final(x))  # (B, L, E) -> (B, L, V)
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        norms[norm_first] = [
            layer.feed_forward.linear2.weight.grad.norm().item() for layer in layers
        ]
    return NormPlacementGradients(post_norm=norms[False], pre_norm=norms[True])


# --------------------------------------------------------------------------- against chapter 2


class _Clock:
    """Wraps a batch stream and records cumulative CPU and wall seconds at each batch drawn."""

    def __init__(self, batches):
        self.batches = iter(batches)
        self.cpu: list[float] = []  # CPU seconds since the first batch, at each later batch
        self.wall: list[float] = []

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.batches)
        now_cpu, now_wall = time.process_time(), time.perf_counter()
        if not self.cpu:
            self._cpu0, self._wall0 = now_cpu, now_wall
        self.cpu.append(now_cpu - self._cpu0)
        self.wall.append(now_wall - self._wall0)
        return batch


@dataclass
class CopyRace:
    """Chapter 2's Bahdanau model and a Transformer, same copy batches, steps and test strings."""

    bahdanau: TrainedCopyModel
    transformer: TrainedCopyModel
    bahdanau_curve: LengthCurve  # greedy decoding accuracy by length (same test sequences)
    transformer_curve: LengthCurve
    bahdanau_params: int
    transformer_params: int
    bahdanau_cpu: list[float]  # cumulative CPU seconds at the start of each training step
    transformer_cpu: list[float]
    bahdanau_wall: list[float]  # the same in wall-clock seconds
    transformer_wall: list[float]
    threshold: float  # training token accuracy (20-step running mean) both must reach

    def steps_to_threshold(self, model: str) -> int | None:
        """First step at which the 20-step running mean of training accuracy >= threshold."""
        history = getattr(self, model).history
        acc = np.asarray(history.metrics["accuracy"])
        mean = np.convolve(acc, np.ones(20) / 20, mode="valid")  # mean of steps i..i+19
        hits = np.flatnonzero(mean >= self.threshold)
        return None if len(hits) == 0 else int(hits[0]) + 19

    def seconds_to_threshold(self, model: str, clock: str = "cpu") -> float | None:
        """CPU (or wall) seconds of training until ``steps_to_threshold``."""
        step = self.steps_to_threshold(model)
        return None if step is None else getattr(self, f"{model}_{clock}")[step]

    def time_ratio(self, clock: str = "cpu") -> float:
        """Bahdanau's seconds to the threshold over the Transformer's (> 1: Transformer faster)."""
        return self.seconds_to_threshold("bahdanau", clock) / self.seconds_to_threshold(
            "transformer", clock
        )


def race_on_copy(
    seed: int = 0,
    lengths: Sequence[int] = (5, 10, 20, 30, 35, 40),
    n: int = 256,
    threshold: float = 0.95,
    progress: bool = True,
    recipe: CopyRecipe = COPY_RECIPE,
) -> CopyRace:
    """Train chapter 2's Bahdanau model and the chapter's Transformer on the same copy batches.

    Both follow ``recipe`` (default chapter 2's ``seq2seq.COPY_RECIPE``: 500 steps of 32 strings
    of 3 to 30 symbols, the same seeded batch stream) through ``train_seq2seq``, each at its own
    peak learning rate; both are evaluated by ``evaluate_by_length`` on the same test sequences.
    The batch stream is timed, so the race to a training accuracy of ``threshold`` is measured
    within the one run.
    """
    runs, clocks = {}, {}
    for name in ("bahdanau", "transformer"):
        clock = _Clock(copy_batches(recipe, seed))
        if name == "bahdanau":
            model = build_model(recipe.config(), BahdanauDecoder, seed=seed)
            lr = recipe.peak_lr
        else:
            seed_everything(seed)
            model = Transformer(TransformerConfig(len(recipe.task().vocab), **COPY_CONFIG))
            lr = COPY_PEAK_LR
        history = train_seq2seq(
            model, clock, recipe.steps, peak_lr=lr, clip_norm=recipe.clip_norm,
            progress=progress, desc=f"{name} seed {seed}",
        )  # fmt: skip
        model.eval()
        runs[name], clocks[name] = (
            TrainedCopyModel(model, recipe.task(), history, recipe, seed),
            clock,
        )
    task = recipe.task()
    return CopyRace(
        bahdanau=runs["bahdanau"],
        transformer=runs["transformer"],
        bahdanau_curve=evaluate_by_length(runs["bahdanau"].model, task, lengths, n=n),
        transformer_curve=evaluate_by_length(runs["transformer"].model, task, lengths, n=n),
        bahdanau_params=count_parameters(runs["bahdanau"].model),
        transformer_params=count_parameters(runs["transformer"].model),
        bahdanau_cpu=clocks["bahdanau"].cpu,
        transformer_cpu=clocks["transformer"].cpu,
        bahdanau_wall=clocks["bahdanau"].wall,
        transformer_wall=clocks["transformer"].wall,
        threshold=threshold,
    )


@dataclass
class DecoderOnlyOnCopy:
    """An encoder-decoder and two decoder-only models of the same size, same copy batches."""

    curves: dict[str, LengthCurve]  # greedy accuracy by length, same test strings, per model
    params: dict[str, int]
    models: dict[str, TrainedCopyModel]


DECODER_ONLY_RECIPE = CopyRecipe(max_length=16, batch_size=32, steps=300)
"""The copy recipe of chapter 5's decoder-only comparison: strings of 3 to 16, 32 a step, 300
steps (three models must train in one page's budget)."""


def decoder_only_on_copy(
    seed: int = 0,
    lengths: Sequence[int] = (4, 8, 12, 16, 20),
    n: int = 256,
    recipe: CopyRecipe = DECODER_ONLY_RECIPE,
    progress: bool = True,
) -> DecoderOnlyOnCopy:
    """Encoder-decoder vs decoder-only on copy, at (nearly) equal size, on the same batches.

    ``"encoder-decoder"``: :class:`Transformer` with :data:`COPY_CONFIG` (2 + 2 layers).
    ``"decoder-only"``: :class:`DecoderOnly`, 5 layers (the same parameter count within 1 %),
    causal over "source BOS target", GPT's positions (the target numbered on from the source).
    ``"decoder-only, positions restart"``: the same, with the target numbered from 0 again, as in
    the encoder-decoder's decoder. All three train on ``copy_batches(recipe, seed)`` at the same
    peak learning rate and are evaluated by ``evaluate_by_length`` on the same test strings.
    """
    entrants = {
        "encoder-decoder": {},
        "decoder-only": dict(decoder_only=True, target_positions="continue"),
        "decoder-only, positions restart": dict(decoder_only=True, target_positions="restart"),
    }
    models = {
        name: train_copy_transformer(seed, recipe, progress=progress, **kw)
        for name, kw in entrants.items()
    }
    task = recipe.task()
    return DecoderOnlyOnCopy(
        curves={k: evaluate_by_length(m.model, task, lengths, n=n) for k, m in models.items()},
        params={k: count_parameters(m.model) for k, m in models.items()},
        models=models,
    )


DATE_CONFIG = dict(embed_dim=32, num_heads=4, ff_dim=64, num_encoder_layers=2, num_decoder_layers=2)
DATE_PEAK_LR = 5e-3


def train_date_transformer(
    seed: int = 0,
    steps: int = 200,
    batch_size: int = 64,
    peak_lr: float = DATE_PEAK_LR,
    task: DateTask | None = None,
    progress: bool = True,
    prefix_lm: bool = False,
    **config_overrides,
) -> TrainedDateModel:
    """A Transformer on date normalisation with ``bahdanau.train_date_model``'s data and steps.

    Same task (``DateTask(seed=0)`` by default), the same seeded batch stream for ``seed``, the
    same ``train_seq2seq``; evaluate with ``bahdanau.date_exact_match``. ``prefix_lm=True``
    trains a :class:`DecoderOnly` prefix LM over "date BOS ISO date" instead (its layer count is
    ``num_decoder_layers``).
    """
    task = task if task is not None else DateTask(seed=0)
    config = TransformerConfig(
        len(task.src_vocab), len(task.tgt_vocab), **{**DATE_CONFIG, **config_overrides}
    )
    seed_everything(seed)
    model = DecoderOnly(config, prefix_lm=True) if prefix_lm else Transformer(config)
    batches = task.batches(batch_size, seed=np.random.default_rng([seed, 2]))  # as chapter 2
    name = "prefix LM" if prefix_lm else "Transformer"
    history = train_seq2seq(
        model, batches, steps, peak_lr=peak_lr, progress=progress, desc=f"dates, {name}"
    )
    model.eval()
    return TrainedDateModel(model, task, history, seed)


# --------------------------------------------------------------------------- the KV cache


@dataclass
class CacheTiming:
    """Greedy decoding with and without the KV cache, at several output lengths."""

    lengths: list[int]  # source length = output length - 1 (the copy task writes EOS last)
    cached_seconds: list[float]  # median CPU seconds of one batched greedy decode, with the cache
    full_seconds: list[float]  # the same, recomputing the whole prefix at every step
    identical: list[bool]  # whether both produced exactly the same tokens

    @property
    def speedups(self) -> list[float]:
        """full / cached CPU seconds at each length (> 1: the cache is faster)."""
        return [f / c for f, c in zip(self.full_seconds, self.cached_seconds)]


def cache_speedup(
    model: Transformer,
    task,
    lengths: Sequence[int] = (10, 20, 40),
    n: int = 64,
    repeats: int = 3,
    seed: int = 2000,
) -> CacheTiming:
    """Time ``model.greedy_decode`` with and without its cache on ``n`` copy sequences per length.

    The two runs alternate ``repeats`` times (so a busy machine slows both alike) and the median
    CPU seconds are kept. ``max_len`` is the target length (source + EOS).
    """
    cached, full, identical = [], [], []
    for length in lengths:
        batch = task.sample(n, int(length), seed=seed + int(length))
        max_len = batch.tgt_out.shape[1]
        times = {True: [], False: []}
        outputs = {}
        for _ in range(repeats):
            for use_cache in (True, False):
                start = time.process_time()
                tokens, _ = model.greedy_decode(
                    batch.src, batch.src_lengths, max_len, use_cache=use_cache
                )
                times[use_cache].append(time.process_time() - start)
                outputs[use_cache] = tokens
        cached.append(float(np.median(times[True])))
        full.append(float(np.median(times[False])))
        identical.append(bool(torch.equal(outputs[True], outputs[False])))
    return CacheTiming([int(x) for x in lengths], cached, full, identical)


# --------------------------------------------------------------------------- dates and an ablation


@dataclass
class DateComparison:
    """Chapter 2's date model, the Transformer, and the Transformer without positions."""

    bahdanau: TrainedDateModel
    transformer: TrainedDateModel
    no_positions: TrainedDateModel  # the same Transformer with positions="none"
    exact: dict[str, float]  # exact match on the same held-out test dates, per model
    params: dict[str, int]
    cpu_seconds: dict[str, float]  # CPU seconds of each training run


def compare_on_dates(
    seed: int = 0, steps: int = 200, n_test: int = 1000, progress: bool = True
) -> DateComparison:
    """Train ``bahdanau.train_date_model`` and :func:`train_date_transformer` (with and without
    sinusoidal positions) on the same batches for ``steps`` steps; exact match on ``n_test``
    held-out dates (``task.sample(n_test, "test", seed=1)``, chapter 2's test set)."""
    runs, cpu = {}, {}
    for name in ("bahdanau", "transformer", "no_positions"):
        start = time.process_time()
        if name == "bahdanau":
            runs[name] = train_date_model(seed, steps=steps, progress=progress)
        else:
            positions = "sinusoidal" if name == "transformer" else "none"
            runs[name] = train_date_transformer(
                seed, steps=steps, progress=progress, positions=positions
            )
        cpu[name] = time.process_time() - start
    held_out = runs["bahdanau"].task.sample(n_test, "test", seed=1)
    return DateComparison(
        **runs,
        exact={n: date_exact_match(r.model, held_out) for n, r in runs.items()},
        params={n: count_parameters(r.model) for n, r in runs.items()},
        cpu_seconds=cpu,
    )
