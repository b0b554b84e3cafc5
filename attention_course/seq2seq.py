"""The GRU encoder-decoder of chapters 1 and 2, and the training/evaluation they share.

Chapter 1 trains it WITHOUT attention: the decoder sees the source only through one fixed-size
summary vector, fed at every step (RNNenc, Cho et al. 2014; the baseline of Bahdanau et al.
2014). Chapter 2 subclasses :class:`Decoder` and overrides ONE hook, :meth:`Decoder.context`,
to read a fresh context from every encoder state instead (RNNsearch). Everything else (encoder,
decoder step, training recipe, evaluation) is this module, so the two length curves are
measured under identical conditions.

Shapes (the book's legend): B batch, S source length, T target length, E embedding width,
H hidden size (``H_enc`` per encoder direction, ``H_dec`` the decoder), V vocabulary size.
Masks: boolean, True = real token (= "may attend", as in ``F.scaled_dot_product_attention``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .data import SPECIALS, Seq2SeqBatch, SequenceTask
from .utils import History, seed_everything, train

__all__ = [
    "ContextDecoder",
    "COPY_RECIPE",
    "Claim",
    "CopyRecipe",
    "Decoder",
    "Encoder",
    "EncoderOutput",
    "LengthCurve",
    "Seq2Seq",
    "Seq2SeqConfig",
    "TrainedCopyModel",
    "build_model",
    "evaluate_by_length",
    "final_hidden_state",
    "position_gradient_norms",
    "sequence_accuracy",
    "sequence_loss",
    "train_copy_model",
    "train_seq2seq",
]


@dataclass
class Seq2SeqConfig:
    """Sizes of the encoder-decoder. Defaults: the chapter 1-2 copy experiment."""

    src_vocab_size: int  # V_src: source ids, including PAD/BOS/EOS
    tgt_vocab_size: int  # V: target ids, including PAD/BOS/EOS
    emb_dim: int = 16  # E: width of the token embeddings (source and target)
    enc_hidden: int = 32  # H_enc: GRU hidden size PER DIRECTION (states are 2 * H_enc wide)
    dec_hidden: int = 64  # H_dec: decoder GRU hidden size
    attn_dim: int = 32  # A: width of the additive-attention layer (used by chapter 2's decoder)
    pad_id: int = 0  # id of PAD in both vocabularies
    bos_id: int = 1  # id of BOS: the decoder's first input
    eos_id: int = 2  # id of EOS: the decoder's last output

    @property
    def enc_dim(self) -> int:
        """Width of an encoder state h_j (forward and backward halves): 2 * H_enc."""
        return 2 * self.enc_hidden


@dataclass
class EncoderOutput:
    """What the encoder hands the decoder. Mask: True = real source token."""

    states: torch.Tensor  # (B, S, 2*H_enc): every encoder state h_j = [forward_j; backward_j]
    summary: torch.Tensor  # (B, 2*H_enc): [last forward state; first backward state], each
    # taken at the sequence's TRUE length: the one fixed-size vector of a no-attention model
    mask: torch.Tensor  # (B, S) bool: True = real token, False = padding
    keys: torch.Tensor | None = None  # (B, S, A) optional per-sequence cache set by prepare()


class Encoder(nn.Module):
    """Embedding + bidirectional GRU; padding never reaches the summary."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        E, H = config.emb_dim, config.enc_hidden
        self.embedding = nn.Embedding(config.src_vocab_size, E, config.pad_id)
        self.rnn = nn.GRU(E, H, batch_first=True, bidirectional=True)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        """Encode ``src`` (B, S) whose true lengths are ``src_lengths`` (B,)."""
        B, S = src.shape
        x = self.embedding(src)  # (B, S) -> (B, S, E)
        lengths = src_lengths.cpu()
        if bool((lengths == S).all()):  # no padding: packing would change nothing
            states, final = self.rnn(x)  # (B, S, 2*H_enc), (2, B, H_enc)
        else:
            # A packed batch runs each sequence only up to its true length: the
            # forward GRU stops at the last real token, the backward one starts there.
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            packed_states, final = self.rnn(packed)  # final: (2, B, H_enc)
            states, _ = pad_packed_sequence(
                packed_states, batch_first=True, total_length=S
            )  # (B, S, 2*H_enc), exactly 0 at padded positions
        # [last forward state; first backward state]: (2, B, H_enc) -> (B, 2*H_enc)
        summary = torch.cat([final[0], final[1]], dim=-1)
        mask = torch.arange(S, device=src.device) < src_lengths[:, None]  # (B, S)
        return EncoderOutput(states=states, summary=summary, mask=mask)


class Decoder(nn.Module):
    """A GRU-cell decoder whose one overridable hook is ``context``.

    s_i = GRU(s_{i-1}, [E y_{i-1}; c_i]),  p(y_i) = softmax(W_o [s_i; c_i; E y_{i-1}]).
    Here c_i is the encoder's summary at every step (no attention). ``prepare``
    runs once per source batch before decoding (a no-op here; an attention
    decoder may precompute U h_j in it).
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        E, C, H = config.emb_dim, config.enc_dim, config.dec_hidden
        V = config.tgt_vocab_size
        self.embedding = nn.Embedding(V, E, config.pad_id)
        self.init_proj = nn.Linear(C, H)  # s_0 = tanh(W_init c)
        self.cell = nn.GRUCell(E + C, H)  # reads [E y_{i-1}; c_i]
        self.out = nn.Linear(H + C + E, V)  # [s_i; c_i; E y_{i-1}] -> V

    def prepare(self, enc: EncoderOutput) -> EncoderOutput:
        """Once per source batch: cache what does not depend on the step i."""
        return enc

    def context(
        self, prev_state: torch.Tensor, enc: EncoderOutput
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """c_i from s_{i-1} (B, H_dec): (context (B, 2*H_enc), weights (B, S) or None).

        No attention here: the fixed summary vector, and no weights.
        """
        return enc.summary, None

    def init_state(self, enc: EncoderOutput) -> torch.Tensor:
        """s_0 = tanh(W_init c): (B, 2*H_enc) -> (B, H_dec)."""
        return torch.tanh(self.init_proj(enc.summary))

    def step(
        self, prev_token: torch.Tensor, prev_state: torch.Tensor, enc: EncoderOutput
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """y_{i-1} (B,), s_{i-1} (B, H_dec) -> logits (B, V), s_i, weights."""
        emb = self.embedding(prev_token)  # (B,) -> (B, E)
        context, weights = self.context(prev_state, enc)  # (B, 2*H_enc), (B, S)?
        state = self.cell(torch.cat([emb, context], -1), prev_state)  # (B, H_dec)
        logits = self.out(torch.cat([state, context, emb], -1))  # (B, V)
        return logits, state, weights


class ContextDecoder(Decoder):
    """The no-attention decoder of chapter 1 (RNNenc): the summary vector at every step.

    Identical to :class:`Decoder`'s defaults; the name says which model it is.
    """


class Seq2Seq(nn.Module):
    """Encoder + decoder. ``forward`` uses teacher forcing; ``greedy_decode`` its own outputs."""

    def __init__(self, encoder: Encoder, decoder: Decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def config(self) -> Seq2SeqConfig:
        return self.decoder.config

    def forward(
        self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: logits (B, T, V) for ``tgt_in`` (B, T) = BOS + target; weights
        (B, T, S) of every step (None without attention)."""
        enc = self.decoder.prepare(self.encoder(src, src_lengths))
        state = self.decoder.init_state(enc)  # (B, H_dec)
        all_logits, all_weights = [], []
        for i in range(tgt_in.shape[1]):
            logits, state, weights = self.decoder.step(tgt_in[:, i], state, enc)
            all_logits.append(logits)  # (B, V)
            all_weights.append(weights)  # (B, S) or None
        logits = torch.stack(all_logits, dim=1)  # T x (B, V) -> (B, T, V)
        return logits, _stack_weights(all_weights)

    @torch.no_grad()
    def greedy_decode(
        self, src: torch.Tensor, src_lengths: torch.Tensor, max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed back the most likely token, for at most ``max_len`` steps.

        Returns tokens (B, T) with T <= max_len (it stops early once every row has produced
        EOS; after its EOS a row holds PAD) and weights (B, T, S) or None.
        """
        cfg = self.config
        was_training = self.training
        self.eval()
        enc = self.decoder.prepare(self.encoder(src, src_lengths))
        state = self.decoder.init_state(enc)  # (B, H_dec)
        token = torch.full((src.shape[0],), cfg.bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)  # (B,)
        tokens, all_weights = [], []
        for _ in range(max_len):
            logits, state, weights = self.decoder.step(token, state, enc)
            token = logits.argmax(dim=-1)  # (B, V) -> (B,)
            tokens.append(token.masked_fill(finished, cfg.pad_id))
            all_weights.append(weights)
            finished = finished | (token == cfg.eos_id)
            if bool(finished.all()):
                break
        self.train(was_training)
        return torch.stack(tokens, dim=1), _stack_weights(all_weights)  # (B, T), (B, T, S)


def _stack_weights(weights: list[torch.Tensor | None]) -> torch.Tensor | None:
    if not weights or weights[0] is None:
        return None
    return torch.stack(weights, dim=1)  # T x (B, S) -> (B, T, S)


def build_model(
    config: Seq2SeqConfig, decoder_cls: type[Decoder] = ContextDecoder, seed: int | None = None
) -> Seq2Seq:
    """An encoder-decoder with a decoder of class ``decoder_cls`` (seeded when ``seed`` given)."""
    if seed is not None:
        seed_everything(seed)
    return Seq2Seq(Encoder(config), decoder_cls(config))


# --------------------------------------------------------------------------- loss and metrics


def sequence_loss(logits: torch.Tensor, tgt_out: torch.Tensor, tgt_mask: torch.Tensor):
    """Mean cross-entropy over real target tokens (mask True); padding contributes nothing."""
    V = logits.shape[-1]
    losses = F.cross_entropy(logits.reshape(-1, V), tgt_out.reshape(-1), reduction="none")
    mask = tgt_mask.reshape(-1).float()  # (B*T,)
    return (losses * mask).sum() / mask.sum()


def sequence_accuracy(
    predicted: torch.Tensor, tgt_out: torch.Tensor, tgt_mask: torch.Tensor
) -> tuple[float, float]:
    """(token accuracy, whole-sequence accuracy), counting only real target positions.

    ``predicted`` (B, T') is compared with ``tgt_out`` (B, T) at the positions where
    ``tgt_mask`` is True (the symbols and the EOS); predictions shorter than T are padded
    with -1 (wrong), longer ones are cut. Token accuracy pools every real position of the
    batch; a sequence counts as correct only if ALL its real positions are.
    """
    B, T = tgt_out.shape
    if predicted.shape[1] < T:
        predicted = F.pad(predicted, (0, T - predicted.shape[1]), value=-1)
    correct = (predicted[:, :T] == tgt_out) & tgt_mask  # (B, T)
    token_acc = correct.sum().item() / tgt_mask.sum().item()
    seq_acc = (correct | ~tgt_mask).all(dim=1).float().mean().item()
    return token_acc, seq_acc


def final_hidden_state(outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence's state at its LAST REAL token: ``outputs[b, lengths[b] - 1]``.

    ``outputs`` (B, S, H) are the per-step states of a one-direction, batch-first RNN run over a
    right-padded batch; ``lengths`` (B,) the true lengths. Returns (B, H). The state at the last
    padded position, ``outputs[:, -1]``, is wrong for every sequence shorter than S.
    """
    B = outputs.shape[0]
    rows = torch.arange(B, device=outputs.device)  # pair row b with its own length
    return outputs[rows, lengths.to(outputs.device) - 1]  # (B, S, H) -> (B, H)


def position_gradient_norms(rnn: nn.Module, inputs: torch.Tensor, loss_fn) -> torch.Tensor:
    """How much learning signal reaches each input position: (S,).

    Runs ``rnn`` (batch first) on ``inputs`` (B, S, E) and differentiates the scalar
    ``loss_fn(outputs)``; entry j is the L2 norm over E of d loss / d inputs[b, j],
    averaged over the batch (j counts from the start). ``inputs`` is not modified.
    """
    x = inputs.detach().clone().requires_grad_(True)  # (B, S, E), a leaf we own
    outputs, _ = rnn(x)  # (B, S, H)
    (grad,) = torch.autograd.grad(loss_fn(outputs), x)  # (B, S, E)
    return grad.norm(dim=-1).mean(dim=0)  # (B, S, E) -> (B, S) -> (S,)


# --------------------------------------------------------------------------- training


def train_seq2seq(
    model: Seq2Seq,
    batches: Iterable[Seq2SeqBatch],
    steps: int,
    peak_lr: float = 2e-2,
    clip_norm: float = 1.0,
    progress: bool = True,
    desc: str = "training",
) -> History:
    """Teacher-forced training with Adam and a one-cycle learning rate (peak ``peak_lr``),
    gradient norm clipped at ``clip_norm``. Logs the training token accuracy as ``"accuracy"``.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=peak_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=steps)

    def loss_fn(model: Seq2Seq, batch: Seq2SeqBatch):
        logits, _ = model(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, V)
        loss = sequence_loss(logits, batch.tgt_out, batch.tgt_mask)
        with torch.no_grad():
            hits = (logits.argmax(-1) == batch.tgt_out) & batch.tgt_mask
            accuracy = hits.sum() / batch.tgt_mask.sum()
        return loss, {"accuracy": accuracy}

    return train(
        model,
        batches,
        loss_fn,
        steps,
        optimizer=optimizer,
        scheduler=scheduler,
        clip_norm=clip_norm,
        progress=progress,
        desc=desc,
    )


@dataclass
class LengthCurve:
    """Accuracy of greedy decoding at each test length."""

    lengths: list[int]  # the source lengths tested
    token_accuracy: list[float]  # share of target symbols (and EOS) right, at each length
    sequence_accuracy: list[float]  # share of sequences entirely right, at each length

    def at(self, length: int) -> tuple[float, float]:
        """(token accuracy, sequence accuracy) at one tested length."""
        i = self.lengths.index(length)
        return self.token_accuracy[i], self.sequence_accuracy[i]


def evaluate_by_length(
    model: Seq2Seq, task: SequenceTask, lengths: Sequence[int], n: int = 256, seed: int = 1000
) -> LengthCurve:
    """Greedy-decode ``n`` fresh sequences of every length; token and sequence accuracy.

    The evaluation data depend only on ``seed`` and the length, so two models evaluated with
    the same arguments see exactly the same sequences.
    """
    tokens_acc, seqs_acc = [], []
    for length in lengths:
        batch = task.sample(n, int(length), seed=seed + int(length))
        predicted, _ = model.greedy_decode(batch.src, batch.src_lengths, batch.tgt_out.shape[1])
        token_acc, seq_acc = sequence_accuracy(predicted, batch.tgt_out, batch.tgt_mask)
        tokens_acc.append(token_acc)
        seqs_acc.append(seq_acc)
    return LengthCurve([int(x) for x in lengths], tokens_acc, seqs_acc)


@dataclass
class CopyRecipe:
    """The chapter 1-2 copy experiment: task, model sizes and training budget."""

    num_symbols: int = 10  # distinct symbols in the copy task
    reverse: bool = False  # True: the reverse task instead of copy
    min_length: int = 3  # shortest training length
    max_length: int = 40  # longest training length (the end of the curriculum)
    start_max_length: int = 8  # the curriculum's first cap on the length
    ramp_fraction: float = 0.4  # share of the steps over which the cap rises to max_length
    steps: int = 500  # optimisation steps (one batch each)
    batch_size: int = 64  # sequences per batch (all of one length)
    peak_lr: float = 2e-2  # peak learning rate of the one-cycle schedule
    clip_norm: float = 1.0  # gradient-norm clipping
    emb_dim: int = 16  # E
    enc_hidden: int = 32  # H_enc per direction
    dec_hidden: int = 64  # H_dec
    attn_dim: int = 32  # A (attention decoders only)

    def task(self) -> SequenceTask:
        return SequenceTask(num_symbols=self.num_symbols, reverse=self.reverse)

    def config(self) -> Seq2SeqConfig:
        V = len(self.task().vocab)
        return Seq2SeqConfig(
            src_vocab_size=V,
            tgt_vocab_size=V,
            emb_dim=self.emb_dim,
            enc_hidden=self.enc_hidden,
            dec_hidden=self.dec_hidden,
            attn_dim=self.attn_dim,
        )


COPY_RECIPE = CopyRecipe(batch_size=32, max_length=30)
"""The recipe chapters 1 and 2 train with: ``CopyRecipe()`` with batches of 32 and lengths 3-30
(half the CPU time of the defaults, which later chapters keep)."""


@dataclass
class TrainedCopyModel:
    """What :func:`train_copy_model` returns."""

    model: Seq2Seq  # the trained encoder-decoder (in eval mode)
    task: SequenceTask  # the task it was trained on
    history: History  # loss, learning rate and training accuracy per step, and the seconds
    recipe: CopyRecipe = field(default_factory=CopyRecipe)  # how it was trained
    seed: int = 0  # the seed of the weights and of the training batches


def train_copy_model(
    seed: int = 0,
    decoder_cls: type[Decoder] = ContextDecoder,
    recipe: CopyRecipe | None = None,
    progress: bool = True,
    **overrides,
) -> TrainedCopyModel:
    """Build and train the copy model of chapters 1-2 for one seed.

    Chapter 1 calls it with the default (no-attention) decoder; chapter 2 passes its attention
    decoder class and gets identical conditions: the same task, sizes, budget, and the same
    stream of training batches for the same seed. ``overrides`` replace recipe fields
    (``train_copy_model(0, steps=300)``).
    """
    recipe = replace(recipe or CopyRecipe(), **overrides)
    task = recipe.task()
    model = build_model(recipe.config(), decoder_cls, seed=seed)
    batches = task.curriculum(
        recipe.steps,
        batch_size=recipe.batch_size,
        min_length=recipe.min_length,
        max_length=recipe.max_length,
        start_max_length=recipe.start_max_length,
        ramp_fraction=recipe.ramp_fraction,
        seed=np.random.default_rng([seed, 1]),  # independent of the weights' stream
    )
    history = train_seq2seq(
        model,
        batches,
        recipe.steps,
        peak_lr=recipe.peak_lr,
        clip_norm=recipe.clip_norm,
        progress=progress,
        desc=f"{decoder_cls.__name__} seed {seed}",
    )
    model.eval()
    return TrainedCopyModel(model, task, history, recipe, seed)


# --------------------------------------------------------------------------- claims
# One code path per claim: each experiment below is ONE function returning its measurements in a
# small dataclass, whose ``claims()`` states each sentence of the chapter with its threshold. The
# chapter calls the function at seed 0 (and the seeds it shows); tests/ call the same function at
# other seeds. Thresholds come from a sweep over >= 10 seeds (reported in the chapter's issue).


@dataclass
class Claim:
    """One sentence a chapter asserts, the measurement behind it, and whether it holds."""

    text: str  # the sentence, as the chapter words it (Markdown, maths in $...$)
    measured: str  # the measured value(s), formatted for a reader
    holds: bool  # True if the measurement satisfies the sentence's threshold


def claims_markdown(claims: Sequence[Claim]) -> str:
    """A Markdown table of claims: the sentence, what was measured, whether it holds."""
    rows = ["| claim | measured | holds |", "|---|---|---|"]
    rows += [f"| {c.text} | {c.measured} | {'yes' if c.holds else '**NO**'} |" for c in claims]
    return "\n".join(rows)


def assert_claims(claims: Sequence[Claim]) -> None:
    """Raise ``AssertionError`` naming every claim that does not hold."""
    failed = [f"{c.text} (measured {c.measured})" for c in claims if not c.holds]
    assert not failed, "claims that do not hold:\n" + "\n".join(failed)


def _fmt(values) -> str:
    return ", ".join(f"{float(v):.2f}" for v in np.atleast_1d(np.asarray(values, dtype=float)))


# --------------------------------------------------------------------------- chapter 1: the curve


@dataclass
class ForgettingCurves:
    """Chapter 1's length curve: the no-attention model, one trained run per seed."""

    runs: list[TrainedCopyModel]  # one trained model per seed
    lengths: list[int]  # the tested source lengths
    token: np.ndarray  # (seeds, lengths): token accuracy of greedy decoding
    sequence: np.ndarray  # (seeds, lengths): whole-sequence accuracy

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    def at(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(token accuracy, sequence accuracy) at one tested length: one value per seed."""
        i = self.lengths.index(length)
        return self.token[:, i], self.sequence[:, i]

    def claims(self) -> list[Claim]:
        """Chapter 1, "The length curve": every seed."""
        tok5, seq5 = self.at(5)
        tok10, seq10 = self.at(10)
        tok15, seq15 = self.at(15)
        tok30, _ = self.at(30)
        tok60, _ = self.at(60)
        beyond = self.sequence[:, self.lengths.index(15) :].max(1)
        return [
            Claim(
                "strings of 5: at least 85 % copied whole", _fmt(seq5), bool((seq5 >= 0.85).all())
            ),
            Claim(
                "strings of 10: at most 20 % copied whole", _fmt(seq10), bool((seq10 <= 0.2).all())
            ),
            Claim(
                "from length 15 on: at most 2 % copied whole",
                _fmt(beyond),
                bool((beyond <= 0.02).all()),
            ),
            Claim(
                "length 30: at most 30 % of the symbols right",
                _fmt(tok30),
                bool((tok30 <= 0.3).all()),
            ),
            Claim(
                "length 60: at most 20 % of the symbols right",
                _fmt(tok60),
                bool((tok60 <= 0.2).all()),
            ),
            Claim(
                "token accuracy falls: length 5 > 10 > 30",
                f"{_fmt(tok5)} > {_fmt(tok10)} > {_fmt(tok30)}",
                bool(((tok5 > tok10) & (tok10 > tok30)).all()),
            ),
        ]


def forgetting_curves(
    seeds: Sequence[int],
    lengths: Sequence[int] = (3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60),
    n: int = 256,
    recipe: CopyRecipe | None = None,
    progress: bool = True,
) -> ForgettingCurves:
    """Train the no-attention copy model once per seed and test it at every length."""
    recipe = recipe or COPY_RECIPE
    runs = [train_copy_model(seed, recipe=recipe, progress=progress) for seed in seeds]
    curves = [evaluate_by_length(run.model, run.task, lengths, n=n) for run in runs]
    return ForgettingCurves(
        runs,
        [int(x) for x in lengths],
        np.array([c.token_accuracy for c in curves]),
        np.array([c.sequence_accuracy for c in curves]),
    )


# --------------------------------------------------------------------------- chapter 1: the probe


def linear_probe_accuracy(
    features: np.ndarray, tokens: np.ndarray, n_train: int, num_symbols: int, ridge: float = 1e-2
) -> np.ndarray:
    """Held-out accuracy of a linear read-out of the symbol at every position: (S,).

    ``features`` (N, D) are one vector per string, ``tokens`` (N, S) its symbols in
    0..num_symbols-1. Ridge regression on the first ``n_train`` rows, W = (C^T C + lambda I)^-1
    C^T Y, with a bias column in C and the symbols one-hot in Y (one block of V columns per
    position); the guess at position j is the largest score of block j; scored on the rest.
    """
    N, S = tokens.shape
    C = np.c_[features, np.ones(N)]  # (N, D + 1): a bias column
    Y = np.eye(num_symbols)[tokens].reshape(N, S * num_symbols)  # one-hot: (N, S * V)
    C_fit, Y_fit = C[:n_train], Y[:n_train]
    W = np.linalg.solve(C_fit.T @ C_fit + ridge * np.eye(C.shape[1]), C_fit.T @ Y_fit)
    scores = C[n_train:] @ W  # (N - n_train, D + 1) @ (D + 1, S * V) -> (N - n_train, S * V)
    guess = scores.reshape(-1, S, num_symbols).argmax(-1)  # (N - n_train, S)
    return (guess == tokens[n_train:]).mean(0)


def accuracy_by_position(model: Seq2Seq, batch: Seq2SeqBatch) -> np.ndarray:
    """Greedy decoding; the share of strings whose output is right at each target position: (T,)."""
    predicted, _ = model.greedy_decode(batch.src, batch.src_lengths, batch.tgt_out.shape[1])
    T = batch.tgt_out.shape[1]
    predicted = F.pad(predicted, (0, T - predicted.shape[1]), value=-1)  # (B, T)
    return (predicted == batch.tgt_out).float().mean(0).numpy()


def symbols_held(accuracy, chance: float) -> float:
    """Symbols' worth a read-out recovers: accuracy above chance rescaled to 0..1, summed."""
    return float(np.clip((np.asarray(accuracy) - chance) / (1 - chance), 0, None).sum())


@dataclass
class SummaryProbe:
    """What the summary vector still holds, by position, and what the model writes there."""

    seeds: list[int]  # one row per trained model
    length: int  # the length of the probed strings
    chance: float  # 1 / number of symbols
    model_by_position: np.ndarray  # (seeds, length): the model's greedy output right, by position
    probe_by_position: np.ndarray  # (seeds, length): the linear probe right, by position

    def claims(self) -> list[Claim]:
        """Chapter 1, "Why it forgets: the bottleneck": every seed."""
        model, probe, chance = self.model_by_position, self.probe_by_position, self.chance
        middle = probe[:, 10:20].mean(1)
        end = probe[:, -3:].mean(1)
        held = np.array([symbols_held(p, chance) for p in probe])
        return [
            Claim(
                "the model's first symbol: right at least 60 % of the time",
                _fmt(model[:, 0]),
                bool((model[:, 0] >= 0.6).all()),
            ),
            Claim(
                "the model, positions 11 to 30: right at most 20 % of the time",
                _fmt(model[:, 10:].mean(1)),
                bool((model[:, 10:].mean(1) <= 0.2).all()),
            ),
            Claim(
                "probe, first symbol: at least 80 %",
                _fmt(probe[:, 0]),
                bool((probe[:, 0] >= 0.8).all()),
            ),
            Claim(
                "probe, positions 11 to 20: at most 25 %",
                _fmt(middle),
                bool((middle <= 0.25).all()),
            ),
            Claim(
                "probe, positions 11 to 20: above chance",
                _fmt(middle),
                bool((middle > chance).all()),
            ),
            Claim(
                "probe, last three positions: above the middle",
                f"{_fmt(end)} vs {_fmt(middle)}",
                bool((end > middle + 0.04).all()),
            ),
            Claim(
                f"the summary holds fewer than 7 of {self.length} symbols' worth",
                _fmt(held),
                bool((held < 7).all()),
            ),
        ]


def probe_summaries(
    runs: Sequence[TrainedCopyModel], length: int = 30, n_fit: int = 2000, n_score: int = 1000
) -> SummaryProbe:
    """Probe every run's summary with :func:`linear_probe_accuracy` and test its output by position.

    The probe is fitted on ``n_fit`` strings of ``length`` and scored on ``n_score`` others; the
    model's own accuracy by position is measured on 512 more. Data seeds are fixed (30, 31), so
    every run is probed on the same strings.
    """
    task = runs[0].task
    probe_batch = task.sample(n_fit + n_score, length, seed=30)
    test_batch = task.sample(512, length, seed=31)
    symbols = (probe_batch.src - len(SPECIALS)).numpy()  # ids -> 0..V-1: (N, S)
    model_rows, probe_rows = [], []
    for run in runs:
        model_rows.append(accuracy_by_position(run.model, test_batch)[:length])
        with torch.no_grad():
            summary = run.model.encoder(probe_batch.src, probe_batch.src_lengths).summary  # (N, 2H)
        probe_rows.append(linear_probe_accuracy(summary.numpy(), symbols, n_fit, task.num_symbols))
    return SummaryProbe(
        [run.seed for run in runs],
        length,
        1 / task.num_symbols,
        np.array(model_rows),
        np.array(probe_rows),
    )


# --------------------------------------------------------------------------- chapter 1: gradients


def decay_per_step(relative: np.ndarray, first: int = 10, last: int = 50) -> float:
    """The factor a gradient norm shrinks by per step: geometric fit over distances first..last."""
    d = np.arange(first, last)
    return float(np.exp(np.polyfit(d, np.log(relative[d]), 1)[0]))


@dataclass
class GradientPath:
    """Gradient norm reaching each input, by distance from the end, relative to distance 0."""

    length: int  # the length of the input sequences
    untrained: dict[str, np.ndarray]  # cell name -> (length,) for freshly initialised cells
    trained: np.ndarray  # (seeds, length): the forward GRU of the trained encoders
    seeds: list[int]  # the seeds of the trained encoders

    def claims(self) -> list[Claim]:
        """Chapter 1, "Why it forgets: the gradient path"."""
        at40 = {name: rel[40] for name, rel in self.untrained.items()}
        rates = {name: decay_per_step(rel) for name, rel in self.untrained.items()}
        smallest = self.trained.min(1)
        return [
            Claim(
                "vanilla RNN, 40 steps back: below $10^{-6}$",
                f"{at40['vanilla RNN']:.1e}",
                bool(at40["vanilla RNN"] < 1e-6),
            ),
            Claim(
                "untrained GRU and LSTM shrink by a smaller factor per step than the vanilla RNN",
                ", ".join(f"{k} x{v:.2f}" for k, v in rates.items()),
                bool(min(rates["GRU"], rates["LSTM"]) > rates["vanilla RNN"]),
            ),
            Claim(
                "every untrained cell, 40 steps back: below $10^{-4}$",
                ", ".join(f"{v:.0e}" for v in at40.values()),
                bool(max(at40.values()) < 1e-4),
            ),
            Claim(
                f"trained GRU: above 1/4 of its value at the end, at every distance "
                f"up to {self.length - 1}",
                _fmt(smallest),
                bool((smallest > 0.25).all()),
            ),
        ]


def gradient_path(
    runs: Sequence[TrainedCopyModel], length: int = 60, hidden: int = 64, batch_size: int = 64
) -> GradientPath:
    """:func:`position_gradient_norms` for untrained cells and for the runs' trained encoders.

    The loss is a scalar read out of the final state along a fixed random direction. Untrained
    cells (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``, ``hidden`` units, torch seed 0) read random inputs;
    a trained encoder's forward GRU reads the embeddings of random symbols.
    """
    emb_dim = runs[0].recipe.emb_dim
    inputs = torch.randn(batch_size, length, emb_dim, generator=torch.Generator().manual_seed(0))
    readout = torch.randn(hidden, generator=torch.Generator().manual_seed(1))

    def relative(norms: torch.Tensor) -> np.ndarray:  # by distance from the end, (S,)
        return (norms.flip(0) / norms[-1]).numpy()

    untrained = {}
    for name, cell in [("vanilla RNN", nn.RNN), ("LSTM", nn.LSTM), ("GRU", nn.GRU)]:
        torch.manual_seed(0)
        rnn = cell(emb_dim, hidden, batch_first=True)
        loss = lambda outputs: (outputs[:, -1] @ readout).sum()  # noqa: E731  (B, S, H) -> ()
        untrained[name] = relative(position_gradient_norms(rnn, inputs, loss))
    trained = []
    for run in runs:
        encoder, H = run.model.encoder, run.recipe.enc_hidden
        tokens = run.task.sample(batch_size, length, seed=2).src  # (B, S)
        # the forward half of each bidirectional state, read along the first H of the direction
        loss = lambda outputs, H=H: (outputs[:, -1, :H] @ readout[:H]).sum()  # noqa: E731
        trained.append(
            relative(position_gradient_norms(encoder.rnn, encoder.embedding(tokens), loss))
        )
    return GradientPath(length, untrained, np.array(trained), [run.seed for run in runs])


# --------------------------------------------------------------------------- chapter 1: the budget


@dataclass
class BudgetCurves:
    """One run of the no-attention model tested after more and more training steps."""

    seed: int  # the run's seed
    budgets: list[int]  # total training steps at each test
    lengths: list[int]  # the tested source lengths
    token: np.ndarray  # (budgets, lengths): token accuracy
    sequence: np.ndarray  # (budgets, lengths): whole-sequence accuracy

    def longest_copied(self, share: float = 0.5) -> list[int]:
        """Per budget: the longest tested length copied whole in at least ``share`` of strings."""
        return [
            max((L for L, s in zip(self.lengths, row) if s >= share), default=0)
            for row in self.sequence
        ]

    def claims(self) -> list[Claim]:
        """Chapter 1, "More training, or a fixed vector?"."""
        seq, longest = self.sequence, self.longest_copied(0.5)
        from_15 = seq[:, self.lengths.index(15) :]
        return [
            Claim(
                "more steps copy more: strings of 10 copied whole, rising with the budget",
                _fmt(seq[:, self.lengths.index(10)]),
                bool((np.diff(seq[:, self.lengths.index(10)]) > 0).all()),
            ),
            Claim(
                "the longest length copied whole at least half of the time grows with the budget",
                ", ".join(map(str, longest)),
                bool((np.diff(longest) > 0).all()),
            ),
            Claim(
                "at every budget, strings of 15 or more: at most 2 % copied whole",
                _fmt(from_15.max(1)),
                bool((from_15 <= 0.02).all()),
            ),
        ]


def budget_curves(
    seed: int,
    budgets: Sequence[int] = (500, 1000),
    lengths: Sequence[int] = (5, 8, 10, 12, 15, 20, 30),
    n: int = 256,
    recipe: CopyRecipe | None = None,
    start: TrainedCopyModel | None = None,
    progress: bool = True,
) -> BudgetCurves:
    """Train the no-attention model for ``budgets[0]`` steps (the recipe's), then keep training
    it, testing it by length after each budget.

    From one budget to the next the run continues with a fresh one-cycle schedule (a *warm
    restart*: the learning rate rises and anneals again) on fresh batches of every training
    length, so each test sees an annealed model. ``start``, a run of :func:`train_copy_model`
    with this seed and recipe, is copied and continued instead of training the first budget again.
    """
    import copy

    recipe = recipe or COPY_RECIPE
    if budgets[0] != recipe.steps:
        raise ValueError("the first budget is the recipe's own number of steps")
    if start is None:
        start = train_copy_model(seed, recipe=recipe, progress=progress)
    elif start.seed != seed or start.recipe != recipe:
        raise ValueError("start must be a run of this seed and recipe")
    model, task = copy.deepcopy(start.model), start.task
    curves = [evaluate_by_length(model, task, lengths, n=n)]
    for k, (before, after) in enumerate(zip(budgets, budgets[1:])):
        batches = task.curriculum(
            after - before,
            batch_size=recipe.batch_size,
            min_length=recipe.min_length,
            max_length=recipe.max_length,
            start_max_length=recipe.max_length,  # no ramp: every training length from the start
            seed=np.random.default_rng([seed, 3, k]),
        )
        train_seq2seq(
            model,
            batches,
            after - before,
            peak_lr=recipe.peak_lr,
            clip_norm=recipe.clip_norm,
            progress=progress,
            desc=f"seed {seed}: steps {before} to {after}",
        )
        curves.append(evaluate_by_length(model, task, lengths, n=n))
    return BudgetCurves(
        seed,
        [int(b) for b in budgets],
        [int(x) for x in lengths],
        np.array([c.token_accuracy for c in curves]),
        np.array([c.sequence_accuracy for c in curves]),
    )
