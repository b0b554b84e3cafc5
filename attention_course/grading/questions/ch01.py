"""Chapter 1's graded questions: padded batches, honest accuracy, and gradients by position.

- ``ch01.final_hidden_state(outputs, lengths)``: each sequence's state at its last REAL step in a
  right-padded, batch-first batch, (B, S, H) -> (B, H);
- ``ch01.sequence_accuracy(predicted, target, mask)``: (token accuracy, sequence accuracy),
  counting only real target positions (mask True);
- ``ch01.position_gradient_norms(rnn, inputs, loss_fn)``: the norm of d loss / d input at every
  position, averaged over the batch, (S,).

References live in ``attention_course.seq2seq``. Every wrong answer the chapter warns about has a
mistake model, so the hint names it; ``tests/test_grader_ch01.py`` is the catalogue.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from attention_course.seq2seq import final_hidden_state as reference_final_hidden_state
from attention_course.seq2seq import position_gradient_norms as reference_gradient_norms
from attention_course.seq2seq import sequence_accuracy as reference_sequence_accuracy

from ..core import Question, Test, call_args
from ..inputs import randn as _randn
from ..judges import Fail, expect_close, expect_sequence, expect_tensor, expect_unchanged, matches

# Hints, one per plausible mistake (tests/test_grader_ch01.py checks each is named when made).
LAST_PADDED = (
    "you read the state at the last PADDED step, outputs[:, -1]; a shorter sequence ended "
    "earlier: take outputs[b, lengths[b] - 1] for every b"
)
AFTER_END = (
    "off by one: positions count from 0, so lengths[b] is the first padded step; the last real "
    "one is lengths[b] - 1"
)
BEFORE_END = "off by one: the last real step is lengths[b] - 1, not lengths[b] - 2"
FIRST_STEP = "that is the state after the FIRST step; the summary is the state after the last"
TIME_AVERAGE = (
    "that is an average over time steps, not the state at the last real step of each sequence"
)
TIME_MAX = "that is a maximum over time steps, not the state at the last real step"
TIME_FIRST = "`outputs` is batch first, (B, S, H): index it as outputs[b, t], not outputs[t, b]"
ALL_PAIRS = (
    "outputs[:, lengths - 1] reads every sequence at every length, (B, B, H): row b must be "
    "read at ITS OWN last step, so pair each batch index with its own length"
)
KEPT_TIME_AXIS = "return (B, H): drop the time axis (e.g. .squeeze(1) after gather)"
INDEX_RANGE = (
    "an index is out of range: a sequence of length S has steps 0 .. S - 1, so the last real "
    "step of sequence b is lengths[b] - 1"
)

PADDING_CORRECT = (
    "padding counted as correct: divide by the number of REAL positions (mask.sum()), not by "
    "every position of the padded batch"
)
PADDING_COMPARED = (
    "you compared the padded positions too: what a model writes after the end does not count; "
    "count only where mask is True"
)
PER_ROW = (
    "you averaged per sequence, then over the batch: token accuracy pools every real position of "
    "the batch (correct real tokens / real tokens), so a long sequence weighs more"
)
SEQ_PADDING = (
    "a sequence is right when all its REAL positions are right; the padded positions after its "
    "end do not count (use (correct | ~mask).all(dim=1))"
)
SEQ_ANY = "a sequence is right only if ALL its real positions are right (all, not any)"
SEQ_AXIS = "all(...) over the wrong axis: dim 1 runs over positions, dim 0 over the batch"
MASK_FLIPPED = "mask polarity: True marks a REAL token, False is padding"
COUNTS = "return fractions between 0 and 1, not counts"
SWAPPED = "return (token_accuracy, sequence_accuracy), in that order"
NOT_A_NUMBER = "return two numbers (Python floats or 0-dim tensors), one per accuracy"

GRAD_SUM = "average over the batch (mean over axis 0), don't sum"
GRAD_SQUARED = "use the L2 norm (the square root of the sum of squares), not its square"
GRAD_ABS_MEAN = (
    "the size of the gradient at position j is its L2 norm over the feature axis E, "
    "grad.norm(dim=-1), not a mean of absolute values"
)
GRAD_NORM_AXIS = (
    "take the norm over the feature axis E (dim=-1) for each (b, j) first, then average over the "
    "batch"
)
GRAD_NORM_OF_MEAN = (
    "average the per-sequence norms; the norm of the batch-averaged gradient lets gradients of "
    "different sequences cancel"
)
GRAD_FLIPPED = "entry j is position j counted from the START of the sequence; don't reverse it"
GRAD_RELATIVE = "return the raw norms, not divided by the value at the last position"
GRAD_PER_SEQUENCE = "average over the batch: return one value per position, shape (S,)"
GRAD_PER_FEATURE = "take the norm over the feature axis E: return one value per position, (S,)"
GRAD_NONE = (
    "the gradient is None: differentiate with respect to a leaf that requires grad, made from "
    "the inputs (a detached copy) BEFORE the rnn runs on it"
)
GRAD_NO_GRAPH = (
    "the loss has no gradient: run the rnn on a copy of the inputs that requires grad, and "
    "don't wrap it in torch.no_grad()"
)


def _lengths(gen: torch.Generator, B: int, S: int, full: bool = True) -> torch.Tensor:
    """Random true lengths in 1..S, (B,) long; with ``full`` one sequence fills the batch."""
    lengths = torch.randint(1, S + 1, (B,), generator=gen)
    if full:
        lengths[int(torch.randint(0, B, (1,), generator=gen))] = S
    if B > 1:  # at least one padded sequence that is not length 1, so mistakes differ
        lengths[int(torch.randint(0, B, (1,), generator=gen))] = max(2, S - 2)
    return lengths


# --------------------------------------------------------------------------- final_hidden_state


def _state_mistakes(outputs: torch.Tensor, lengths: torch.Tensor):
    B, S, _ = outputs.shape
    rows = torch.arange(B)
    mask = (torch.arange(S)[None, :] < lengths[:, None]).to(outputs.dtype)  # (B, S)
    return [
        (LAST_PADDED, lambda: outputs[:, -1]),
        (AFTER_END, lambda: outputs[rows, lengths.clamp(max=S - 1)]),
        (BEFORE_END, lambda: outputs[rows, (lengths - 2).clamp(min=0)]),
        (FIRST_STEP, lambda: outputs[:, 0]),
        (TIME_AVERAGE, lambda: (outputs * mask[..., None]).sum(1) / lengths[:, None]),
        (TIME_AVERAGE, lambda: outputs.mean(1)),
        (TIME_MAX, lambda: outputs.max(1).values),
        (TIME_FIRST, lambda: outputs[lengths - 1, rows]),
    ]


def _judge_state(case):
    outputs, lengths = case.args
    B, S, H = outputs.shape
    value = case.output
    if isinstance(value, torch.Tensor) and value.dim() == 3:
        if tuple(value.shape) == (B, B, H):
            raise Fail(ALL_PAIRS)
        if tuple(value.shape) == (B, 1, H):
            raise Fail(KEPT_TIME_AXIS)
    expect_close(value, case.expected, "state", mistakes=_state_mistakes(outputs, lengths))


def _judge_state_shape(case):
    outputs, lengths = case.args
    B, S, H = outputs.shape
    value = case.output
    if isinstance(value, torch.Tensor) and tuple(value.shape) == (B, B, H):
        raise Fail(ALL_PAIRS)
    if isinstance(value, torch.Tensor) and tuple(value.shape) == (B, 1, H):
        raise Fail(KEPT_TIME_AXIS)
    expect_tensor(value, case.expected, "state")


def _judge_state_unchanged(case):
    expect_unchanged(case, ["outputs", "lengths"])
    _judge_state(case)


def _state_shape_inputs(g):
    return [
        call_args(_randn(g, 4, 6, 3), _lengths(g, 4, 6)),
        call_args(_randn(g, 3, 5, 8, dtype=torch.float64), _lengths(g, 3, 5)),
    ]


def _state_value_inputs(g):
    return [
        call_args(_randn(g, 5, 7, 3), _lengths(g, 5, 7)),
        call_args(_randn(g, 4, 9, 6), _lengths(g, 4, 9)),
        call_args(_randn(g, 5, 5, 3), _lengths(g, 5, 5)),  # B == S: time-first indexing runs
        call_args(_randn(g, 3, 8, 5, dtype=torch.float64), _lengths(g, 3, 8)),
    ]


def _state_edge_inputs(g):
    return [
        call_args(_randn(g, 1, 5, 4), torch.tensor([3])),  # one sequence
        call_args(_randn(g, 3, 6, 2), torch.tensor([6, 6, 6])),  # no padding at all
        call_args(_randn(g, 4, 6, 3), torch.tensor([1, 6, 2, 1])),  # length-1 sequences
    ]


def _state_unchanged_inputs(g):
    return [call_args(_randn(g, 4, 6, 3), _lengths(g, 4, 6))]


FINAL_HIDDEN_STATE = Question(
    id="ch01.final_hidden_state",
    answer="final_hidden_state",
    reference=reference_final_hidden_state,
    title="final_hidden_state(outputs, lengths): each sequence's state at its last real step",
    arg_names=("outputs", "lengths"),
    error_hints=(
        (r"out of bounds for dimension 0", f"an index ran past the batch axis: {TIME_FIRST}"),
        (r"out of (bounds|range)|IndexError", INDEX_RANGE),
        (r"only integer tensors|must be long|tensors used as indices", "index with a long tensor"),
    ),
    tests=(
        Test(
            "returns a (B, H) tensor of the outputs' dtype", _state_shape_inputs, _judge_state_shape
        ),
        Test(
            "each row is the state at that sequence's last real step, lengths[b] - 1",
            _state_value_inputs,
            _judge_state,
        ),
        Test(
            "one sequence, no padding at all, and sequences of length 1",
            _state_edge_inputs,
            _judge_state,
        ),
        Test("does not change its inputs", _state_unchanged_inputs, _judge_state_unchanged),
    ),
)


# --------------------------------------------------------------------------- sequence_accuracy


def _to_number(value, name: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, torch.Tensor | np.ndarray):
        size = value.size if isinstance(value, np.ndarray) else value.numel()
        if size != 1:
            raise Fail(f"`{name}` has shape {tuple(value.shape)}: {NOT_A_NUMBER}")
        return float(value.reshape(()).item())
    raise Fail(f"`{name}` is a {type(value).__name__}: {NOT_A_NUMBER}")


def _accuracy_variants(predicted, target, mask):
    """Named wrong answers: (hint, token accuracy, sequence accuracy) for each."""
    p, t, m = predicted, target, mask
    hit = p == t
    correct = hit & m
    real = m.sum().item()
    token = correct.sum().item() / real
    seq = (correct | ~m).all(1).float().mean().item()
    per_row = (correct.sum(1).float() / m.sum(1).clamp(min=1)).mean().item()
    flipped_correct = hit & ~m
    flipped_real = (~m).sum().item()
    return [
        ("token", PADDING_CORRECT, (hit | ~m).float().mean().item()),
        ("token", PADDING_COMPARED, hit.float().mean().item()),
        ("token", PER_ROW, per_row),
        ("token", COUNTS, float(correct.sum().item())),
        ("token", MASK_FLIPPED, flipped_correct.sum().item() / max(flipped_real, 1)),
        ("seq", SEQ_PADDING, hit.all(1).float().mean().item()),
        ("seq", SEQ_ANY, correct.any(1).float().mean().item()),
        ("seq", SEQ_AXIS, (correct | ~m).all(0).float().mean().item()),
        ("seq", COUNTS, float((correct | ~m).all(1).sum().item())),
        ("seq", MASK_FLIPPED, (flipped_correct | m).all(1).float().mean().item()),
        ("both", SWAPPED, (seq, token)),
    ]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6


def _judge_accuracy(case, *, only: str = ""):
    predicted, target, mask = case.args
    expect_sequence(case.output, 2, "(token_accuracy, sequence_accuracy)")
    token = _to_number(case.output[0], "token_accuracy")
    seq = _to_number(case.output[1], "sequence_accuracy")
    want_token, want_seq = (float(x) for x in case.expected)
    variants = _accuracy_variants(predicted, target, mask)
    token_ok, seq_ok = _close(token, want_token), _close(seq, want_seq)
    if token_ok and seq_ok:
        return
    for which, hint, wrong in variants:
        if which == "both" and _close(token, wrong[0]) and _close(seq, wrong[1]):
            raise Fail(hint)
    if not token_ok and only != "seq":
        for which, hint, wrong in variants:
            if which == "token" and _close(token, wrong):
                raise Fail(f"wrong token accuracy: {hint}")
        raise Fail(f"wrong token accuracy: got {token:.4g}, expected {want_token:.4g}")
    if not seq_ok and only != "token":
        for which, hint, wrong in variants:
            if which == "seq" and _close(seq, wrong):
                raise Fail(f"wrong sequence accuracy: {hint}")
        raise Fail(f"wrong sequence accuracy: got {seq:.4g}, expected {want_seq:.4g}")


def _judge_accuracy_unchanged(case):
    expect_unchanged(case, ["predicted", "target", "mask"])
    _judge_accuracy(case)


def _accuracy_case(g, B: int, T: int, right_rows: int = 1, error_rate: float = 0.3):
    """target (B, T) padded with 0, mask True on real tokens, predicted with garbage on padding.

    ``right_rows`` rows are right on every real position (and wrong after their end)."""
    lengths = _lengths(g, B, T)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T) True = real token
    target = torch.randint(3, 13, (B, T), generator=g).masked_fill(~mask, 0)
    wrong = torch.rand(B, T, generator=g) < error_rate
    predicted = torch.where(wrong, (target - 3 + 1) % 10 + 3, target)  # a different symbol
    noise = torch.randint(3, 13, (B, T), generator=g)
    predicted = torch.where(mask, predicted, noise)  # garbage after the end
    for b in torch.randperm(B, generator=g)[:right_rows].tolist():
        predicted[b] = torch.where(mask[b], target[b], noise[b])
    return call_args(predicted, target, mask)


def _accuracy_shape_inputs(g):
    return [_accuracy_case(g, 4, 6)]


def _judge_accuracy_shape(case):
    expect_sequence(case.output, 2, "(token_accuracy, sequence_accuracy)")
    _to_number(case.output[0], "token_accuracy")
    _to_number(case.output[1], "sequence_accuracy")


def _accuracy_inputs(g):
    return [
        _accuracy_case(g, 6, 9, right_rows=2),
        _accuracy_case(g, 8, 5, right_rows=3, error_rate=0.2),
        _accuracy_case(g, 5, 12, right_rows=1, error_rate=0.5),
    ]


def _accuracy_edge_inputs(g):
    target = torch.tensor([[4, 5, 6, 2], [7, 2, 0, 0]])
    mask = target != 0
    perfect = torch.where(mask, target, torch.tensor(9))  # right, garbage after the end
    full = _accuracy_case(g, 3, 4)
    full_mask = torch.ones_like(full["args"][2])
    return [
        call_args(perfect, target, mask),  # every real position right: (1.0, 1.0)
        call_args(torch.full_like(target, 3), target, mask),  # nothing right: (0.0, 0.0)
        call_args(full["args"][0], full["args"][1], full_mask),  # no padding at all
        _accuracy_case(g, 1, 7, right_rows=0),  # one sequence
    ]


SEQUENCE_ACCURACY = Question(
    id="ch01.sequence_accuracy",
    answer="sequence_accuracy",
    reference=reference_sequence_accuracy,
    title="sequence_accuracy(predicted, target, mask): token and whole-sequence accuracy",
    arg_names=("predicted", "target", "mask"),
    tests=(
        Test("returns two numbers", _accuracy_shape_inputs, _judge_accuracy_shape),
        Test(
            "token accuracy counts only real positions, pooled over the batch",
            _accuracy_inputs,
            functools.partial(_judge_accuracy, only="token"),
        ),
        Test(
            "a sequence is right when all its real positions are right",
            _accuracy_inputs,
            functools.partial(_judge_accuracy, only="seq"),
        ),
        Test(
            "all right, nothing right, no padding, one sequence",
            _accuracy_edge_inputs,
            _judge_accuracy,
        ),
        Test("does not change its inputs", _accuracy_inputs, _judge_accuracy_unchanged),
    ),
)


# --------------------------------------------------------------------------- gradient norms

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def _make_rnn(inputs) -> nn.Module:
    rnn = CELLS[inputs["cell"]](inputs["input_size"], inputs["hidden_size"], batch_first=True)
    rnn.load_state_dict(inputs["state"])
    return rnn


def _make_loss(inputs):
    readout = inputs["readout"]  # (H,)
    if inputs["loss"] == "last":
        return lambda outputs: (outputs[:, -1] @ readout).sum()  # from the final state
    return lambda outputs: (outputs @ readout).pow(2).sum()  # from every state


def run_gradient_norms(answer, inputs):
    """Build the RNN and the loss from plain data, then call ``answer(rnn, x, loss_fn)``."""
    return answer(_make_rnn(inputs), inputs["x"], _make_loss(inputs))


def _gradient(inputs) -> torch.Tensor:
    """d loss / d x, (B, S, E): what the mistake models start from."""
    x = inputs["x"].detach().clone().requires_grad_(True)
    outputs, _ = _make_rnn(inputs)(x)
    (grad,) = torch.autograd.grad(_make_loss(inputs)(outputs), x)
    return grad


def _gradient_mistakes(inputs):
    grad = _gradient(inputs)
    right = grad.norm(dim=-1).mean(0)
    return [
        (GRAD_SUM, lambda: grad.norm(dim=-1).sum(0)),
        (GRAD_SQUARED, lambda: grad.pow(2).sum(-1).mean(0)),
        (GRAD_ABS_MEAN, lambda: grad.abs().mean(-1).mean(0)),
        (GRAD_ABS_MEAN, lambda: grad.abs().sum(-1).mean(0)),
        (GRAD_NORM_AXIS, lambda: grad.norm(dim=0).mean(-1)),
        (GRAD_NORM_OF_MEAN, lambda: grad.mean(0).norm(dim=-1)),
        (GRAD_FLIPPED, lambda: right.flip(0)),
        (GRAD_RELATIVE, lambda: right / right[-1]),
        (GRAD_RELATIVE, lambda: right.flip(0) / right[-1]),
    ]


def _judge_gradient(case):
    inputs = case.inputs
    B, S, E = inputs["x"].shape
    value = case.output
    if isinstance(value, torch.Tensor) and tuple(value.shape) != (S,):
        if tuple(value.shape) == (B, S):
            raise Fail(GRAD_PER_SEQUENCE)
        if tuple(value.shape) in ((S, E), (B, S, E)):
            raise Fail(GRAD_PER_FEATURE)
    expect_close(value, case.expected, "norms", mistakes=_gradient_mistakes(inputs), dtype=False)


def _judge_gradient_shape(case):
    inputs = case.inputs
    B, S, E = inputs["x"].shape
    value = case.output
    if isinstance(value, torch.Tensor) and tuple(value.shape) == (B, S):
        raise Fail(GRAD_PER_SEQUENCE)
    if isinstance(value, torch.Tensor) and tuple(value.shape) in ((S, E), (B, S, E)):
        raise Fail(GRAD_PER_FEATURE)
    expect_tensor(value, case.expected, "norms", dtype=False)


def _judge_gradient_unchanged(case):
    if not matches(case.inputs_after["x"], case.inputs["x"], atol=0, rtol=0):
        raise Fail("your function changed `inputs` in place; work on a copy")
    _judge_gradient(case)


def _gradient_case(g, cell: str, B: int, S: int, E: int, H: int, loss: str = "last"):
    shapes = {k: v.shape for k, v in CELLS[cell](E, H, batch_first=True).state_dict().items()}
    # PyTorch's own initialisation, U(-1/sqrt(H), 1/sqrt(H)), drawn from the seeded generator
    state = {k: (torch.rand(shape, generator=g) * 2 - 1) * H**-0.5 for k, shape in shapes.items()}
    return {
        "cell": cell,
        "input_size": E,
        "hidden_size": H,
        "state": state,
        "x": _randn(g, B, S, E),
        "readout": _randn(g, H),
        "loss": loss,
    }


def _gradient_shape_inputs(g):
    return [_gradient_case(g, "rnn", 3, 5, 2, 4)]


def _gradient_value_inputs(g):
    return [
        _gradient_case(g, "rnn", 4, 7, 3, 5),
        _gradient_case(g, "gru", 3, 6, 2, 4),
        _gradient_case(g, "lstm", 5, 5, 4, 3),
        _gradient_case(g, "gru", 2, 8, 3, 6, loss="all"),
    ]


def _gradient_edge_inputs(g):
    return [
        _gradient_case(g, "rnn", 1, 4, 2, 3),  # one sequence
        _gradient_case(g, "lstm", 3, 1, 2, 3),  # one step
    ]


POSITION_GRADIENT_NORMS = Question(
    id="ch01.position_gradient_norms",
    answer="position_gradient_norms",
    reference=reference_gradient_norms,
    run=run_gradient_norms,
    title="position_gradient_norms(rnn, inputs, loss_fn): |d loss / d input_j|, batch-averaged",
    error_hints=(
        (r"does not require grad|does not have a grad_fn", GRAD_NO_GRAPH),
        (r"NoneType", GRAD_NONE),
        (r"leaf Variable|a view of a leaf", GRAD_NONE),
    ),
    tests=(
        Test("returns one value per position, (S,)", _gradient_shape_inputs, _judge_gradient_shape),
        Test(
            "the batch-averaged L2 norm of d loss / d inputs[b, j] (RNN, GRU, LSTM)",
            _gradient_value_inputs,
            _judge_gradient,
        ),
        Test("one sequence, and a sequence of one step", _gradient_edge_inputs, _judge_gradient),
        Test("does not change its inputs", _gradient_shape_inputs, _judge_gradient_unchanged),
    ),
)

QUESTIONS = [FINAL_HIDDEN_STATE, SEQUENCE_ACCURACY, POSITION_GRADIENT_NORMS]
