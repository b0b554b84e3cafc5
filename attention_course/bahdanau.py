"""Bahdanau, Cho & Bengio (2014): additive attention and the decoder that uses it (chapter 2).

The decoder of chapter 1 sees the source through one summary vector. Here it keeps every
encoder state h_j and, before each output step i, reads a fresh context from them:

    e_ij   = v^T tanh(W s_{i-1} + U h_j)          the alignment model (appendix A.1.2)
    alpha_ij = softmax_j(e_ij)                    over source positions j only (eq. 6)
    c_i    = sum_j alpha_ij h_j                   the context (eq. 5)

``U h_j`` does not depend on i, so it is computed once per source sequence (the paper's
appendix says so too) and reused at every decoder step: :meth:`AdditiveAttention.precompute`.

Shapes (the book's legend, PyTorch's names in brackets): B batch [N], S source length [S],
Q query width (the decoder state, H), K key width (an encoder state, 2 x the encoder's H for a
bidirectional encoder), A the attention width.

Masks follow the course convention (``F.scaled_dot_product_attention``'s): boolean, True = the
decoder MAY attend to that source position, False = padding that gets weight exactly 0.

Contents: :class:`AdditiveAttention` and :class:`BahdanauDecoder` (the model, a subclass of
``seq2seq.Decoder`` overriding its ``context`` and ``prepare`` hooks); :func:`compare_on_copy`
(the paper's Fig. 2 in miniature, through chapter 1's training and evaluation functions);
:func:`train_date_model`, :func:`field_attention_share`, :func:`date_exact_match` and
:func:`translate` (Fig. 3 in miniature, on date normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from .attention.core import masked_softmax
from .data import FIELD_NAMES, DateTask, Seq2SeqBatch
from .seq2seq import (
    ContextDecoder,
    Decoder,
    EncoderOutput,
    LengthCurve,
    Seq2Seq,
    Seq2SeqConfig,
    TrainedCopyModel,
    build_model,
    evaluate_by_length,
    sequence_accuracy,
    train_copy_model,
    train_seq2seq,
)
from .utils import History

__all__ = [
    "AdditiveAttention",
    "BahdanauDecoder",
    "CopyComparison",
    "TrainedDateModel",
    "compare_on_copy",
    "date_exact_match",
    "field_attention_share",
    "translate",
    "train_date_model",
]


class AdditiveAttention(nn.Module):
    """Additive attention: e_ij = v^T tanh(W s_{i-1} + U h_j), then c_i = sum_j alpha_ij h_j.

    One decoder query per call (the decoder runs step by step), many source keys. The same
    scoring function, for many queries at once, is ``attention_course.attention.AdditiveAttention``
    (chapter 3's scoring zoo); the tests check that the two agree.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W: (A, Q)
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)  # U: (A, K)
        self.v = nn.Parameter(torch.empty(attn_dim))  # v: (A,)
        nn.init.uniform_(self.v, -(attn_dim**-0.5), attn_dim**-0.5)

    def precompute(self, keys: torch.Tensor) -> torch.Tensor:
        """U h_j for every source position, once per sequence: ``(B, S, K) -> (B, S, A)``."""
        return self.key_proj(keys)  # (B, S, K) -> (B, S, A)

    def score(self, query: torch.Tensor, projected_keys: torch.Tensor) -> torch.Tensor:
        """e_ij = v^T tanh(W s_{i-1} + U h_j): query (B, Q) and U h (B, S, A) -> (B, S)."""
        projected_query = self.query_proj(query)  # (B, Q) -> (B, A)
        # W s_{i-1} is the same for every source position j: broadcast it over the S axis.
        hidden = torch.tanh(projected_query.unsqueeze(1) + projected_keys)  # (B, S, A)
        return (hidden * self.v).sum(dim=-1)  # v^T over A: (B, S, A) -> (B, S)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor | None = None,
        projected_keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from the decoder state to the encoder states; return ``(context, weights)``.

        Args:
            query: ``(B, Q)``, the decoder's previous state s_{i-1}.
            keys: ``(B, S, K)``, the encoder states h_j (they are also the values).
            mask: optional boolean ``(B, S)``: True = MAY attend (a real source token),
                False = padding, which gets weight exactly 0 (the
                ``F.scaled_dot_product_attention`` convention, not ``nn.MultiheadAttention``'s).
            projected_keys: ``(B, S, A)`` from :meth:`precompute`; computed here when omitted.

        Returns:
            context ``(B, K)`` = sum_j alpha_ij h_j and weights ``(B, S)``, summing to 1 over S.
        """
        if projected_keys is None:
            projected_keys = self.precompute(keys)  # (B, S, A)
        scores = self.score(query, projected_keys)  # (B, S)
        weights = masked_softmax(scores, mask, dim=-1)  # (B, S), sums to 1 over source positions
        # sum_j alpha_ij h_j as multiply-and-sum: for one query it is faster than a (B, 1, S) bmm.
        context = (weights.unsqueeze(-1) * keys).sum(dim=1)  # (B, S, 1) * (B, S, K) -> (B, K)
        return context, weights


class BahdanauDecoder(Decoder):
    """RNNsearch's decoder: chapter 1's decoder with ONE hook changed, :meth:`context`.

    Instead of the fixed summary, c_i is read from every encoder state with
    :class:`AdditiveAttention`, queried by the previous decoder state s_{i-1}. :meth:`prepare`
    computes U h_j once per source batch. Masks: True = the source position MAY be attended.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__(config)
        self.attention = AdditiveAttention(config.dec_hidden, config.enc_dim, config.attn_dim)

    def prepare(self, enc: EncoderOutput) -> EncoderOutput:
        """Cache U h_j for the whole decoding loop: ``enc.keys`` (B, S, A)."""
        return replace(enc, keys=self.attention.precompute(enc.states))  # (B, S, A)

    def context(
        self, prev_state: torch.Tensor, enc: EncoderOutput
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """c_i and alpha_i from s_{i-1} (B, H_dec): ((B, 2*H_enc), (B, S)); padding gets 0."""
        keys = enc.keys if enc.keys is not None else self.attention.precompute(enc.states)
        return self.attention(prev_state, enc.states, enc.mask, projected_keys=keys)


# --------------------------------------------------------------------------- Fig. 2 in miniature


@dataclass
class CopyComparison:
    """Chapter 1's model and chapter 2's, trained and evaluated under identical conditions."""

    plain: TrainedCopyModel  # no attention (chapter 1's ContextDecoder)
    attention: TrainedCopyModel  # the same recipe with a BahdanauDecoder
    plain_curve: LengthCurve  # greedy-decoding accuracy of ``plain`` at each length
    attention_curve: LengthCurve  # the same for ``attention``, on the very same sequences


def compare_on_copy(
    seed: int, lengths: Sequence[int], n: int = 256, progress: bool = True, **overrides
) -> CopyComparison:
    """Train both decoders with chapter 1's recipe for one seed and evaluate both by length.

    Both runs go through ``seq2seq.train_copy_model`` (same task, sizes, budget and batches)
    and ``seq2seq.evaluate_by_length`` (same test sequences); only the decoder class differs.
    ``overrides`` change recipe fields for both (e.g. ``steps=300``).
    """
    plain = train_copy_model(seed, ContextDecoder, progress=progress, **overrides)
    attention = train_copy_model(seed, BahdanauDecoder, progress=progress, **overrides)
    return CopyComparison(
        plain,
        attention,
        evaluate_by_length(plain.model, plain.task, lengths, n=n),
        evaluate_by_length(attention.model, attention.task, lengths, n=n),
    )


# --------------------------------------------------------------------------- dates (Fig. 3)


@dataclass
class TrainedDateModel:
    """What :func:`train_date_model` returns."""

    model: Seq2Seq  # the trained encoder-decoder with attention (eval mode)
    task: DateTask  # the task, with its held-out test dates
    history: History  # loss and training accuracy per step, and the seconds
    seed: int  # seed of the weights and of the training batches


def train_date_model(
    seed: int = 0,
    steps: int = 200,
    batch_size: int = 64,
    peak_lr: float = 2e-2,
    task: DateTask | None = None,
    decoder_cls: type[Decoder] | None = None,
    progress: bool = True,
) -> TrainedDateModel:
    """Train an attention encoder-decoder on date normalisation with chapter 1's recipe.

    Batches mix formats, hence lengths, so the source mask matters. Sizes are chapter 1's
    defaults (E 16, H_enc 32, H_dec 64, A 32). ``task`` defaults to ``DateTask(seed=0)`` (all
    formats, 2,000 held-out dates).
    """
    task = task if task is not None else DateTask(seed=0)
    config = Seq2SeqConfig(len(task.src_vocab), len(task.tgt_vocab))
    model = build_model(config, decoder_cls or BahdanauDecoder, seed=seed)
    batches = task.batches(batch_size, seed=np.random.default_rng([seed, 2]))
    name = (decoder_cls or BahdanauDecoder).__name__
    history = train_seq2seq(
        model, batches, steps, peak_lr=peak_lr, progress=progress, desc=f"dates, {name}"
    )
    model.eval()
    return TrainedDateModel(model, task, history, seed)


def date_exact_match(model: Seq2Seq, batch: Seq2SeqBatch) -> float:
    """Share of dates in ``batch`` whose greedy output is exactly the ISO target."""
    predicted, _ = model.greedy_decode(batch.src, batch.src_lengths, batch.tgt_out.shape[1])
    return sequence_accuracy(predicted, batch.tgt_out, batch.tgt_mask)[1]


def field_attention_share(
    weights: torch.Tensor, batch: Seq2SeqBatch, uniform: bool = False
) -> dict[str, float]:
    """Mean attention mass on the source characters of the field being written.

    For every target character of the year, month and day fields (``batch.tgt_fields``), sum
    the weights (B, T, S) that its output step puts on source characters of the SAME field
    (``batch.src_fields``), then average over those characters, per field. ``uniform=True``
    gives the same number for uniform attention over the real source characters: the chance
    level to compare with.
    """
    if uniform:
        weights = batch.src_mask[:, None, :].float().expand(-1, batch.tgt_out.shape[1], -1)
        weights = weights / weights.sum(-1, keepdim=True)  # (B, T, S), uniform over real chars
    tgt_fields, src_fields = batch.tgt_fields, batch.src_fields  # (B, T), (B, S)
    same_field = tgt_fields[:, :, None] == src_fields[:, None, :]  # (B, T, S)
    mass = (weights * same_field).sum(dim=-1)  # (B, T, S) -> (B, T)
    return {
        name: mass[tgt_fields == FIELD_NAMES.index(name)].mean().item()
        for name in ("year", "month", "day")
    }


def translate(
    model: Seq2Seq, task: DateTask, texts: Sequence[str], max_len: int = 12
) -> list[tuple[str, torch.Tensor]]:
    """Greedy outputs for source strings, with their alignment matrices.

    Returns one ``(output text, weights)`` per text; ``weights`` is ``(T_out, S)``: one row per
    output character plus the EOS step, one column per source character (no padding).
    An empty text, or characters outside the task's source vocabulary, raise ``ValueError``.
    """
    if not all(texts):
        raise ValueError("an input is empty: type a date")
    ids = [torch.tensor(task.src_vocab.encode(text)) for text in texts]
    lengths = torch.tensor([len(x) for x in ids])  # (B,)
    src = nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=task.src_vocab.pad_id)
    tokens, weights = model.greedy_decode(src, lengths, max_len)  # (B, T), (B, T, S)
    results = []
    for b, text in enumerate(texts):
        output = task.tgt_vocab.decode(tokens[b])
        steps = min(len(output) + 1, tokens.shape[1])  # the output characters and the EOS step
        results.append(("".join(output), weights[b, :steps, : len(text)]))
    return results
