"""Unit tests of attention_course.seq2seq: the encoder-decoder of chapters 1 and 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attention_course import data, seq2seq
from attention_course.attention.core import masked_softmax

TASK = data.copy_task()
CONFIG = seq2seq.CopyRecipe().config()


def model(seed=0, decoder_cls=seq2seq.ContextDecoder, config=CONFIG):
    return seq2seq.build_model(config, decoder_cls, seed=seed).eval()


class DotDecoder(seq2seq.Decoder):
    """A minimal attention decoder written against the hook, as chapter 2 does."""

    def __init__(self, config):
        super().__init__(config)
        self.query = torch.nn.Linear(config.dec_hidden, config.enc_dim)

    def prepare(self, enc):
        enc.keys = enc.states * 2  # something per-sequence, to check prepare() is honoured
        return enc

    def context(self, prev_state, enc):
        scores = (enc.keys * self.query(prev_state)[:, None, :]).sum(-1)  # (B, S)
        weights = masked_softmax(scores, enc.mask)  # (B, S)
        return (weights[:, :, None] * enc.states).sum(1), weights


def test_shapes():
    batch = TASK.sample(5, (2, 9), seed=0)
    B, S = batch.src.shape
    T = batch.tgt_in.shape[1]
    m = model()
    enc = m.encoder(batch.src, batch.src_lengths)
    assert enc.states.shape == (B, S, 2 * CONFIG.enc_hidden)
    assert enc.summary.shape == (B, 2 * CONFIG.enc_hidden)
    assert enc.mask.dtype == torch.bool and torch.equal(enc.mask, batch.src_mask)
    logits, weights = m(batch.src, batch.src_lengths, batch.tgt_in)
    assert logits.shape == (B, T, CONFIG.tgt_vocab_size) and weights is None
    tokens, weights = m.greedy_decode(batch.src, batch.src_lengths, max_len=7)
    assert tokens.shape[0] == B and tokens.shape[1] <= 7 and weights is None
    attn = model(decoder_cls=DotDecoder)
    logits, weights = attn(batch.src, batch.src_lengths, batch.tgt_in)
    assert weights.shape == (B, T, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, T))
    assert (weights[~batch.src_mask[:, None, :].expand(B, T, S)] == 0).all()


def test_padding_does_not_change_the_summary_or_the_states():
    m = model()
    batch = TASK.sample(6, (3, 12), seed=1)
    enc = m.encoder(batch.src, batch.src_lengths)
    for b in range(len(batch)):
        n = int(batch.src_lengths[b])
        alone = m.encoder(batch.src[b : b + 1, :n], batch.src_lengths[b : b + 1])
        torch.testing.assert_close(enc.summary[b : b + 1], alone.summary)
        torch.testing.assert_close(enc.states[b : b + 1, :n], alone.states)
        assert (enc.states[b, n:] == 0).all()
    # The summary is [forward state at the last real token; backward state at the first].
    H = CONFIG.enc_hidden
    rows = torch.arange(len(batch))
    torch.testing.assert_close(enc.summary[:, :H], enc.states[rows, batch.src_lengths - 1, :H])
    torch.testing.assert_close(enc.summary[:, H:], enc.states[:, 0, H:])
    last = seq2seq.final_hidden_state(enc.states[..., :H], batch.src_lengths)
    torch.testing.assert_close(enc.summary[:, :H], last)


def test_position_gradient_norms_against_a_loop():
    torch.manual_seed(0)
    rnn = torch.nn.RNN(3, 5, batch_first=True)
    x = torch.randn(4, 6, 3)
    before = x.clone()
    norms = seq2seq.position_gradient_norms(rnn, x, lambda out: out[:, -1].sum())
    torch.testing.assert_close(x, before)
    assert norms.shape == (6,)
    for j in range(6):
        per_row = []
        for b in range(4):
            xb = x[b : b + 1].clone().requires_grad_(True)
            rnn(xb)[0][:, -1].sum().backward()
            per_row.append(xb.grad[0, j].norm())
        torch.testing.assert_close(norms[j], torch.stack(per_row).mean())
    assert norms[-1] > norms[0]  # the last input is closest to the loss


def test_a_padded_summary_would_differ():
    # Guard for the test above: running the GRU over the padding does change the summary.
    m = model()
    batch = TASK.sample(6, (3, 12), seed=1)
    states, final = m.encoder.rnn(m.encoder.embedding(batch.src))
    short = batch.src_lengths < batch.src.shape[1]
    enc = m.encoder(batch.src, batch.src_lengths)
    assert not torch.allclose(final[0][short], enc.summary[short, : CONFIG.enc_hidden])


@pytest.mark.parametrize("decoder_cls", [seq2seq.ContextDecoder, DotDecoder])
def test_teacher_forcing_equals_step_by_step_decoding(decoder_cls):
    m = model(decoder_cls=decoder_cls)
    batch = TASK.sample(4, (3, 8), seed=2)
    tokens, weights = m.greedy_decode(batch.src, batch.src_lengths, max_len=6)
    T = tokens.shape[1]
    # Feeding the greedy outputs back as teacher input reproduces the same logits and argmax.
    bos = torch.full((4, 1), CONFIG.bos_id)
    tgt_in = torch.cat([bos, tokens[:, :-1].clamp(min=0)], dim=1)  # (B, T)
    logits, forced_weights = m(batch.src, batch.src_lengths, tgt_in)
    alive = torch.ones(4, dtype=torch.bool)
    for i in range(T):
        assert torch.equal(logits[alive, i].argmax(-1), tokens[alive, i])
        alive &= tokens[:, i] != CONFIG.eos_id
    enc = m.decoder.prepare(m.encoder(batch.src, batch.src_lengths))
    state = m.decoder.init_state(enc)
    for i in range(T):
        step_logits, state, w = m.decoder.step(tgt_in[:, i], state, enc)
        torch.testing.assert_close(step_logits, logits[:, i])
        if w is not None:
            torch.testing.assert_close(w, forced_weights[:, i])


def test_sequence_accuracy_ignores_padding():
    tgt = torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0]])
    mask = tgt != 0
    pred = torch.tensor([[5, 6, 2, 9], [7, 2, 4, 4]])  # garbage only on padding
    assert seq2seq.sequence_accuracy(pred, tgt, mask) == (1.0, 1.0)
    pred = torch.tensor([[5, 3, 2, 0], [7, 2, 0, 0]])
    token, seq = seq2seq.sequence_accuracy(pred, tgt, mask)
    assert token == pytest.approx(4 / 5) and seq == 0.5
    short = torch.tensor([[5, 6], [7, 2]])  # missing EOS on row 0: wrong
    assert seq2seq.sequence_accuracy(short, tgt, mask) == (4 / 5, 0.5)


def test_sequence_loss_ignores_padding():
    logits = torch.randn(2, 4, 7)
    tgt = torch.tensor([[5, 6, 2, 0], [3, 2, 0, 0]])
    mask = tgt != 0
    changed = logits.clone()
    changed[~mask] = 100.0
    torch.testing.assert_close(
        seq2seq.sequence_loss(logits, tgt, mask), seq2seq.sequence_loss(changed, tgt, mask)
    )


class BlindDecoder(seq2seq.Decoder):
    """Sees nothing of the source: the overfit test below must fail for it."""

    def context(self, prev_state, enc):
        return torch.zeros_like(enc.summary), None

    def init_state(self, enc):
        return torch.zeros(enc.summary.shape[0], self.config.dec_hidden)


def overfit_accuracy(decoder_cls) -> float:
    m = seq2seq.build_model(CONFIG, decoder_cls, seed=0)
    batch = TASK.sample(16, 4, seed=0)
    seq2seq.train_seq2seq(m, [batch], steps=120, peak_lr=2e-2, progress=False)
    tokens, _ = m.greedy_decode(batch.src, batch.src_lengths, 5)
    return seq2seq.sequence_accuracy(tokens, batch.tgt_out, batch.tgt_mask)[0]


def test_tiny_overfit_and_a_model_that_cannot():
    assert overfit_accuracy(seq2seq.ContextDecoder) == 1.0
    assert overfit_accuracy(BlindDecoder) < 0.6  # cannot copy what it never sees


def test_train_copy_model_is_deterministic_and_evaluation_shared():
    a = seq2seq.train_copy_model(3, steps=15, batch_size=8, progress=False)
    b = seq2seq.train_copy_model(3, steps=15, batch_size=8, progress=False)
    assert a.history.loss == b.history.loss
    assert len(a.history.loss) == 15 and a.recipe.steps == 15 and a.seed == 3
    curve = seq2seq.evaluate_by_length(a.model, a.task, [3, 6], n=16)
    assert curve.lengths == [3, 6] and len(curve.token_accuracy) == 2
    assert curve.at(6) == seq2seq.evaluate_by_length(b.model, b.task, [6], n=16).at(6)
    attn = seq2seq.train_copy_model(3, DotDecoder, steps=15, batch_size=8, progress=False)
    assert attn.history.loss != a.history.loss  # a different model on the same batches


# --------------------------------------------------------------------------- the chapter's claims
# Chapter 1's notebook calls these functions at seeds 0, 1, 2 (the budget at seed 0) and asserts
# their claims(); the same functions and claims run here at seeds 3 and 4.


@pytest.mark.parametrize("seed", [3, 4])
def test_chapter_1_claims_hold_at_more_seeds(seed):
    curves = seq2seq.forgetting_curves([seed], progress=False)
    seq2seq.assert_claims(curves.claims())
    seq2seq.assert_claims(seq2seq.probe_summaries(curves.runs).claims())
    seq2seq.assert_claims(seq2seq.gradient_path(curves.runs).claims())
    budget = seq2seq.budget_curves(seed, start=curves.runs[0], progress=False)
    seq2seq.assert_claims(budget.claims())


def test_budget_curves_continue_the_run_they_are_given():
    recipe = seq2seq.CopyRecipe(steps=6, batch_size=4, max_length=6)
    run = seq2seq.train_copy_model(1, recipe=recipe, progress=False)
    before = [p.detach().clone() for p in run.model.parameters()]
    reused = seq2seq.budget_curves(1, (6, 9), [3, 5], n=8, recipe=recipe, start=run, progress=False)
    fresh = seq2seq.budget_curves(1, (6, 9), [3, 5], n=8, recipe=recipe, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters()))  # not modified
    np.testing.assert_array_equal(reused.token, fresh.token)
    assert reused.token.shape == (2, 2) and reused.budgets == [6, 9]
    with pytest.raises(ValueError):
        seq2seq.budget_curves(2, (6, 9), [3], recipe=recipe, start=run, progress=False)


def test_linear_probe_reads_a_linear_code_and_not_noise():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, size=(600, 3))  # (N, S)
    readable = np.eye(4)[tokens].reshape(600, 12) @ rng.normal(size=(12, 12))  # linear in one-hot
    accuracy = seq2seq.linear_probe_accuracy(readable, tokens, 400, 4)
    assert accuracy.shape == (3,) and (accuracy > 0.99).all()
    noise = rng.normal(size=(600, 12))
    assert (seq2seq.linear_probe_accuracy(noise, tokens, 400, 4) < 0.4).all()
