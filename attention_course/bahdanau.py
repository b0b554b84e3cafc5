"""Bahdanau, Cho & Bengio (2014): additive attention and the decoder that uses it (chapter 2).

The decoder of chapter 1 sees the source through one summary vector. Here it keeps every
encoder state h_j and, before each output step i, reads a fresh context from them:

    e_ij   = v^T tanh(W s_{i-1} + U h_j)          the alignment model (appendix A.1.2)
    alpha_ij = softmax_j(e_ij)                    over source positions j only (eq. 6)
    c_i    = sum_j alpha_ij h_j                   the context (eq. 5)

``U h_j`` does not depend on i, so it is computed once per source sequence (the paper's
appendix says so too) and reused at every decoder step:
:meth:`StepwiseAdditiveAttention.precompute`.

Shapes (the book's legend, PyTorch's names in brackets): B batch [N], S source length [S],
Q query width (the decoder state, H), K key width (an encoder state, 2 x the encoder's H for a
bidirectional encoder), A the attention width.

Masks follow the course convention (``F.scaled_dot_product_attention``'s): boolean, True = the
decoder MAY attend to that source position, False = padding that gets weight exactly 0.

Contents: :class:`StepwiseAdditiveAttention` and :class:`BahdanauDecoder` (the model, a subclass of
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
from .data import DATE_FORMATS, FIELD_NAMES, DateTask, Seq2SeqBatch, SequenceTask
from .seq2seq import (
    COPY_RECIPE,
    Claim,
    ContextDecoder,
    CopyRecipe,
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
    "StepwiseAdditiveAttention",
    "CopyComparison",
    "TrainedDateModel",
    "compare_on_copy",
    "date_exact_match",
    "field_attention_share",
    "translate",
    "train_date_model",
]


class StepwiseAdditiveAttention(nn.Module):
    """Additive attention: e_ij = v^T tanh(W s_{i-1} + U h_j), then c_i = sum_j alpha_ij h_j.

    STEP-WISE: one decoder query per call (the decoder runs step by step), many source keys, and
    U h_j precomputed once per sequence. The same score for many queries at once is chapter 3's
    ``attention_course.attention.AdditiveScoredAttention``; the tests check that the two agree.
    ``AdditiveAttention`` is this class's first name, kept working.
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


AdditiveAttention = StepwiseAdditiveAttention  # chapter 2's first name for it, kept working


class BahdanauDecoder(Decoder):
    """RNNsearch's decoder: chapter 1's decoder with ONE hook changed, :meth:`context`.

    Instead of the fixed summary, c_i is read from every encoder state with
    :class:`StepwiseAdditiveAttention`, queried by the previous decoder state s_{i-1}.
    :meth:`prepare` computes U h_j once per source batch. Masks: True = the source position MAY
    be attended.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__(config)
        self.attention = StepwiseAdditiveAttention(
            config.dec_hidden, config.enc_dim, config.attn_dim
        )

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

    def claims(self) -> list[Claim]:
        """Chapter 2, the paper's Figure 2 in miniature: one seed."""
        plain, attention = self.plain_curve, self.attention_curve
        top = self.attention.recipe.max_length  # the longest training length
        beyond = top + 10
        return [
            Claim(
                "length 5: both models copy at least 85 % of the strings whole",
                _fmt(plain.at(5)[1], attention.at(5)[1]),
                min(plain.at(5)[1], attention.at(5)[1]) >= 0.85,
            ),
            Claim(
                "length 20: attention copies at least 60 % of the strings whole, "
                "no attention at most 1 %",
                _fmt(attention.at(20)[1], plain.at(20)[1]),
                attention.at(20)[1] >= 0.6 and plain.at(20)[1] <= 0.01,
            ),
            Claim(
                f"length {top}: attention gets at least 65 % of the symbols right, "
                "no attention at most 30 %",
                _fmt(attention.at(top)[0], plain.at(top)[0]),
                attention.at(top)[0] >= 0.65 and plain.at(top)[0] <= 0.3,
            ),
            Claim(
                f"length {beyond}, beyond training: attention at least 40 % of the symbols, "
                "no attention at most 20 %",
                _fmt(attention.at(beyond)[0], plain.at(beyond)[0]),
                attention.at(beyond)[0] >= 0.4 and plain.at(beyond)[0] <= 0.2,
            ),
            Claim(
                f"length {beyond}: attention copies at most 5 % of the strings whole",
                _fmt(attention.at(beyond)[1]),
                attention.at(beyond)[1] <= 0.05,
            ),
        ]


def compare_on_copy(
    seed: int,
    lengths: Sequence[int],
    n: int = 256,
    progress: bool = True,
    recipe: CopyRecipe | None = None,
    plain: TrainedCopyModel | None = None,
    **overrides,
) -> CopyComparison:
    """Train both decoders with chapter 1's recipe for one seed and evaluate both by length.

    Both runs go through ``seq2seq.train_copy_model`` (same task, sizes, budget and batches)
    and ``seq2seq.evaluate_by_length`` (same test sequences); only the decoder class differs.
    ``recipe`` defaults to :data:`seq2seq.COPY_RECIPE`; ``overrides`` change its fields for both
    (e.g. ``steps=300``). ``plain``, a no-attention run of this seed and recipe, is reused
    instead of trained again.
    """
    recipe = replace(recipe or COPY_RECIPE, **overrides)
    if plain is None:
        plain = train_copy_model(seed, ContextDecoder, recipe=recipe, progress=progress)
    elif plain.seed != seed or plain.recipe != recipe:
        raise ValueError("plain must be a no-attention run of this seed and recipe")
    attention = train_copy_model(seed, BahdanauDecoder, recipe=recipe, progress=progress)
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


# --------------------------------------------------------------------------- chapter 2's claims
# One function per experiment, returning its measurements; ``claims()`` states each sentence of
# the chapter with its threshold (from a sweep over >= 10 seeds). The chapter calls these at
# seed 0, tests/test_bahdanau.py at seeds 1 and 2: the claims are written once, here.


def _fmt(*values: float) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


@dataclass
class CopyDiagonal:
    """Where the trained copy model looks: the source position of the largest weight, per step."""

    share_previous: float  # share of output steps i whose largest weight is on j = i - 1
    share_same: float  # share on j = i

    def claims(self) -> list[Claim]:
        """Chapter 2, "a diagonal, shifted by one"."""
        return [
            Claim(
                "the largest weight sits on $j = i - 1$ for at least 55 % of the output steps, "
                "at least 1.5 times as often as on $j = i$",
                _fmt(self.share_previous, self.share_same),
                self.share_previous >= 0.55 and self.share_previous >= 1.5 * self.share_same,
            )
        ]


def copy_diagonal(
    model: Seq2Seq, task: SequenceTask, length: int = 30, n: int = 256
) -> CopyDiagonal:
    """Teacher-forced weights on ``n`` strings of ``length`` (data seed 2030), output steps 1 to
    ``length - 1``: where does each step put its largest weight?"""
    batch = task.sample(n, length, seed=2030)
    with torch.no_grad():
        _, weights = model(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, S)
    strongest = weights[:, 1:length].argmax(dim=-1)  # (B, length - 1): position read most
    steps = torch.arange(1, length)  # output step i
    return CopyDiagonal(
        (strongest == steps - 1).float().mean().item(), (strongest == steps).float().mean().item()
    )


@dataclass
class TrainingLengthContrast:
    """The attention model trained on two ranges of lengths (the paper's RNNsearch-30 and -50)."""

    short: TrainedCopyModel  # trained on lengths up to ``short.recipe.max_length``
    long: TrainedCopyModel  # trained on lengths up to ``long.recipe.max_length``
    short_curve: LengthCurve  # both tested on the same strings
    long_curve: LengthCurve

    def claims(self) -> list[Claim]:
        """Chapter 2, "Two training lengths"."""
        short, long = self.short_curve, self.long_curve
        s_max, l_max = self.short.recipe.max_length, self.long.recipe.max_length
        mid = s_max + 10  # inside the long range, beyond the short one
        return [
            Claim(
                f"length {s_max}, the short range's longest: both copy at least half of the "
                "strings whole",
                _fmt(short.at(s_max)[1], long.at(s_max)[1]),
                min(short.at(s_max)[1], long.at(s_max)[1]) >= 0.5,
            ),
            Claim(
                f"length {s_max + 10}: the model trained to {s_max} copies at most 5 % whole",
                _fmt(short.at(s_max + 10)[1]),
                short.at(s_max + 10)[1] <= 0.05,
            ),
            Claim(
                f"length {l_max + 10}: the model trained to {l_max} copies at most 5 % whole",
                _fmt(long.at(l_max + 10)[1]),
                long.at(l_max + 10)[1] <= 0.05,
            ),
            Claim(
                f"length {mid}: training to {l_max} gets at least 0.3 more of the symbols right "
                f"than training to {s_max}",
                _fmt(long.at(mid)[0], short.at(mid)[0]),
                long.at(mid)[0] >= short.at(mid)[0] + 0.3,
            ),
        ]


def training_length_contrast(
    seed: int,
    lengths: Sequence[int],
    short_max: int = 15,
    long: TrainedCopyModel | None = None,
    n: int = 256,
    progress: bool = True,
) -> TrainingLengthContrast:
    """Train the attention model with chapter 1's recipe but lengths only up to ``short_max``,
    and compare it with the recipe's own (``long``, trained here when not given)."""
    if long is None:
        long = train_copy_model(seed, BahdanauDecoder, recipe=COPY_RECIPE, progress=progress)
    elif long.seed != seed or not isinstance(long.model.decoder, BahdanauDecoder):
        raise ValueError("long must be an attention run of this seed")
    short = train_copy_model(
        seed,
        BahdanauDecoder,
        recipe=long.recipe,
        progress=progress,
        max_length=short_max,
        start_max_length=min(long.recipe.start_max_length, short_max),
    )
    return TrainingLengthContrast(
        short,
        long,
        evaluate_by_length(short.model, short.task, lengths, n=n),
        evaluate_by_length(long.model, long.task, lengths, n=n),
    )


@dataclass
class DateAlignment:
    """The date model's accuracy and where its attention falls, on held-out dates."""

    run: TrainedDateModel  # the trained model
    exact: float  # exact-match share on 1,000 held-out dates, formats mixed
    shares: dict[str, float]  # field -> attention mass on the same field (all formats)
    chance: dict[str, float]  # the same for uniform attention
    per_format: dict[str, dict[str, float]]  # format -> field -> share (200 dates each)
    order_share: float  # mm/dd/yy: share of dates read year > day > month (centre of attention)
    centres: dict[str, float]  # mm/dd/yy: mean centre of attention while writing each field

    def claims(self) -> list[Claim]:
        """Chapter 2, the paper's Figure 3 in miniature: dates."""
        shares, chance = self.shares, self.chance
        weakest = min(v for cell in self.per_format.values() for v in cell.values())
        return [
            Claim(
                "held-out dates: at least 99 % exactly right", _fmt(self.exact), self.exact >= 0.99
            ),
            Claim(
                "weight on the field being written: at least 80 % (year), 70 % (month, day)",
                _fmt(shares["year"], shares["month"], shares["day"]),
                shares["year"] >= 0.8 and min(shares["month"], shares["day"]) >= 0.7,
            ),
            Claim(
                "at least 2.5 times what uniform attention would put there, every field",
                _fmt(*(shares[f] / chance[f] for f in shares)),
                all(shares[f] >= 2.5 * chance[f] for f in shares),
            ),
            Claim("no (format, field) cell below 60 %", _fmt(weakest), weakest >= 0.6),
            Claim(
                "`mm/dd/yy`: centre of attention year > day > month in at least 95 % of the dates",
                _fmt(self.order_share),
                self.order_share >= 0.95,
            ),
        ]


def date_alignment(
    seed: int, steps: int = 200, batch_size: int = 64, progress: bool = True
) -> DateAlignment:
    """Train :func:`train_date_model` and measure it on held-out dates (data seeds 1, 2, 3)."""
    run = train_date_model(seed=seed, steps=steps, batch_size=batch_size, progress=progress)
    model, task = run.model, run.task
    held_out = task.sample(1000, "test", seed=1)
    exact = date_exact_match(model, held_out)
    with torch.no_grad():
        _, weights = model(held_out.src, held_out.src_lengths, held_out.tgt_in)  # (B, T, S)
    shares = field_attention_share(weights, held_out)
    chance = field_attention_share(weights, held_out, uniform=True)
    per_format = {}
    for fmt in DATE_FORMATS:
        one_format = task.sample(200, "test", seed=2, formats=[fmt])
        with torch.no_grad():
            _, w = model(one_format.src, one_format.src_lengths, one_format.tgt_in)
        per_format[fmt] = field_attention_share(w, one_format)
    us = task.sample(200, "test", seed=3, formats=["mm/dd/yy"])
    with torch.no_grad():
        _, w = model(us.src, us.src_lengths, us.tgt_in)  # (B, T, S)
    centre = (w * torch.arange(us.src.shape[1])).sum(-1)  # (B, T): sum_j j alpha_ij
    # output characters 0-3 are the year, 5-6 the month, 8-9 the day
    year, month, day = centre[:, 0:4].mean(-1), centre[:, 5:7].mean(-1), centre[:, 8:10].mean(-1)
    order = ((year > day) & (day > month)).float().mean().item()
    centres = {"year": year.mean().item(), "month": month.mean().item(), "day": day.mean().item()}
    return DateAlignment(run, exact, shares, chance, per_format, order, centres)
