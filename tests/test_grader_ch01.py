"""The chapter-1 graders, tested: plausible wrong answers lose points with the matching hint,
differently written correct answers score full marks.

Each wrong answer is a mistake the chapter warns about; the string next to it is a fragment of
the hint the student must read for it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from graderkit import assert_caught

from attention_course import seq2seq
from attention_course.grading import grade
from attention_course.grading.questions import ch01

STATE = "ch01.final_hidden_state"
ACCURACY = "ch01.sequence_accuracy"
GRADIENT = "ch01.position_gradient_norms"


# --------------------------------------------------------------------------- final_hidden_state


def state_last_padded(outputs, lengths):
    return outputs[:, -1]


def state_after_end_clamped(outputs, lengths):
    rows = torch.arange(outputs.shape[0])
    return outputs[rows, lengths.clamp(max=outputs.shape[1] - 1)]


def state_after_end(outputs, lengths):
    return outputs[torch.arange(outputs.shape[0]), lengths]  # IndexError when a sequence is full


def state_before_end(outputs, lengths):
    return outputs[torch.arange(outputs.shape[0]), (lengths - 2).clamp(min=0)]


def state_first(outputs, lengths):
    return outputs[:, 0]


def state_masked_mean(outputs, lengths):
    mask = torch.arange(outputs.shape[1])[None, :] < lengths[:, None]
    return (outputs * mask[..., None]).sum(1) / lengths[:, None]


def state_mean(outputs, lengths):
    return outputs.mean(dim=1)


def state_max(outputs, lengths):
    return outputs.max(dim=1).values


def state_all_pairs(outputs, lengths):
    return outputs[:, lengths - 1]


def state_gather_keepdim(outputs, lengths):
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[2])
    return outputs.gather(1, index)  # (B, 1, H): the time axis kept


def state_time_first(outputs, lengths):
    return outputs[lengths - 1, torch.arange(outputs.shape[0])]


def state_numpy(outputs, lengths):
    out = outputs.numpy()
    return out[np.arange(len(out)), lengths.numpy() - 1]


def state_float32(outputs, lengths):
    return outputs[torch.arange(outputs.shape[0]), lengths - 1].float()


def state_in_place(outputs, lengths):
    outputs[:, -1] = outputs[torch.arange(outputs.shape[0]), lengths - 1]
    return outputs[:, -1].clone()


WRONG_STATE = [
    (state_last_padded, "last PADDED step"),
    (state_after_end_clamped, "lengths[b] is the first padded step"),
    (state_after_end, "an index is out of range"),
    (state_before_end, "not lengths[b] - 2"),
    (state_first, "after the FIRST step"),
    (state_masked_mean, "an average over time steps"),
    (state_mean, "an average over time steps"),
    (state_max, "a maximum over time steps"),
    (state_all_pairs, "read at ITS OWN last step"),
    (state_gather_keepdim, "drop the time axis"),
    (state_time_first, "batch first"),
    (state_numpy, "NumPy array"),
    (state_float32, "dtype"),
    (state_in_place, "in place"),
]


@pytest.mark.parametrize("answer, hint", WRONG_STATE, ids=[f.__name__ for f, _ in WRONG_STATE])
def test_wrong_final_hidden_state_loses_points_with_the_hint(answer, hint):
    assert_caught(STATE, answer, hint)


def state_indexing(outputs, lengths):
    return outputs[torch.arange(len(lengths)), lengths - 1]


def state_gather(outputs, lengths):
    B, S, H = outputs.shape
    index = (lengths - 1).view(B, 1, 1).expand(B, 1, H)  # (B, 1, H)
    return outputs.gather(1, index).squeeze(1)


def state_loop(outputs, lengths):
    return torch.stack([outputs[b, int(n) - 1] for b, n in enumerate(lengths)])


def state_one_hot(outputs, lengths):
    pick = torch.nn.functional.one_hot(lengths - 1, outputs.shape[1]).to(outputs.dtype)
    return torch.einsum("bs,bsh->bh", pick, outputs)


RIGHT_STATE = [state_indexing, state_gather, state_loop, state_one_hot]


@pytest.mark.parametrize("answer", RIGHT_STATE, ids=[f.__name__ for f in RIGHT_STATE])
def test_correct_final_hidden_state_variants_score_full_marks(answer):
    assert grade(STATE, answer).passed, grade(STATE, answer).report()


# --------------------------------------------------------------------------- sequence_accuracy


def acc_padding_correct(predicted, target, mask):
    hit = (predicted == target) | ~mask
    seq = ((predicted == target) | ~mask).all(1).float().mean()
    return hit.float().mean().item(), seq.item()


def acc_padding_compared(predicted, target, mask):
    hit = predicted == target
    seq = (hit | ~mask).all(1).float().mean()
    return hit.float().mean().item(), seq.item()


def acc_per_row(predicted, target, mask):
    correct = (predicted == target) & mask
    token = (correct.sum(1) / mask.sum(1)).mean()
    return token.item(), (correct | ~mask).all(1).float().mean().item()


def acc_counts(predicted, target, mask):
    correct = (predicted == target) & mask
    return int(correct.sum()), int((correct | ~mask).all(1).sum())


def acc_flipped_mask(predicted, target, mask):
    return seq2seq.sequence_accuracy(predicted, target, ~mask)


def acc_seq_with_padding(predicted, target, mask):
    token, _ = seq2seq.sequence_accuracy(predicted, target, mask)
    return token, (predicted == target).all(1).float().mean().item()


def acc_seq_any(predicted, target, mask):
    correct = (predicted == target) & mask
    return correct.sum().item() / mask.sum().item(), correct.any(1).float().mean().item()


def acc_seq_axis(predicted, target, mask):
    correct = (predicted == target) & mask
    seq = (correct | ~mask).all(0).float().mean()
    return correct.sum().item() / mask.sum().item(), seq.item()


def acc_swapped(predicted, target, mask):
    token, seq = seq2seq.sequence_accuracy(predicted, target, mask)
    return seq, token


def acc_one_number(predicted, target, mask):
    return seq2seq.sequence_accuracy(predicted, target, mask)[0]


def acc_per_row_tensor(predicted, target, mask):
    correct = (predicted == target) & mask
    return correct.sum(1) / mask.sum(1), (correct | ~mask).all(1).float()


def acc_in_place(predicted, target, mask):
    predicted[~mask] = target[~mask]  # "clean up" the padding first
    return acc_padding_compared(predicted, target, mask)[0], (predicted == target).all(
        1
    ).float().mean().item()


WRONG_ACCURACY = [
    (acc_padding_correct, "padding counted as correct"),
    (acc_padding_compared, "compared the padded positions"),
    (acc_per_row, "averaged per sequence"),
    (acc_counts, "fractions"),
    (acc_flipped_mask, "mask polarity"),
    (acc_seq_with_padding, "the padded positions after its end do not count"),
    (acc_seq_any, "all, not any"),
    (acc_seq_axis, "wrong axis"),
    (acc_swapped, "in that order"),
    (acc_one_number, "(token_accuracy, sequence_accuracy)"),
    (acc_per_row_tensor, "return two numbers"),
    (acc_in_place, "in place"),
]


@pytest.mark.parametrize(
    "answer, hint", WRONG_ACCURACY, ids=[f.__name__ for f, _ in WRONG_ACCURACY]
)
def test_wrong_sequence_accuracy_loses_points_with_the_hint(answer, hint):
    assert_caught(ACCURACY, answer, hint)


def acc_tensors(predicted, target, mask):
    correct = (predicted == target) & mask  # (B, T)
    token = correct.sum() / mask.sum()
    seq = (correct | ~mask).all(dim=1).float().mean()
    return token, seq  # 0-dim tensors


def acc_floats(predicted, target, mask):
    lengths = mask.sum(1)
    right = [int(((predicted[b] == target[b]) & mask[b]).sum()) for b in range(len(target))]
    token = sum(right) / int(lengths.sum())
    seq = sum(r == int(n) for r, n in zip(right, lengths)) / len(target)
    return token, seq


def acc_masked_select(predicted, target, mask):
    token = (predicted.masked_select(mask) == target.masked_select(mask)).double().mean()
    wrong_rows = ((predicted != target) & mask).any(dim=1)
    return float(token), float((~wrong_rows).double().mean())


RIGHT_ACCURACY = [acc_tensors, acc_floats, acc_masked_select, seq2seq.sequence_accuracy]


@pytest.mark.parametrize("answer", RIGHT_ACCURACY, ids=[f.__name__ for f in RIGHT_ACCURACY])
def test_correct_sequence_accuracy_variants_score_full_marks(answer):
    assert grade(ACCURACY, answer).passed, grade(ACCURACY, answer).report()


# --------------------------------------------------------------------------- gradient norms


def _grad(rnn, inputs, loss_fn):
    x = inputs.detach().clone().requires_grad_(True)
    outputs, _ = rnn(x)
    loss_fn(outputs).backward()
    return x.grad  # (B, S, E)


def grad_sum(rnn, inputs, loss_fn):
    return _grad(rnn, inputs, loss_fn).norm(dim=-1).sum(0)


def grad_squared(rnn, inputs, loss_fn):
    return _grad(rnn, inputs, loss_fn).pow(2).sum(-1).mean(0)


def grad_abs_mean(rnn, inputs, loss_fn):
    return _grad(rnn, inputs, loss_fn).abs().mean(-1).mean(0)


def grad_norm_over_batch(rnn, inputs, loss_fn):
    return _grad(rnn, inputs, loss_fn).norm(dim=0).mean(-1)


def grad_norm_of_mean(rnn, inputs, loss_fn):
    return _grad(rnn, inputs, loss_fn).mean(0).norm(dim=-1)


def grad_flipped(rnn, inputs, loss_fn):
    return _grad(rnn, inputs, loss_fn).norm(dim=-1).mean(0).flip(0)


def grad_relative(rnn, inputs, loss_fn):
    norms = _grad(rnn, inputs, loss_fn).norm(dim=-1).mean(0)
    return norms / norms[-1]


def grad_per_sequence(rnn, inputs, loss_fn):
    return _grad(rnn, inputs, loss_fn).norm(dim=-1)


def grad_per_feature(rnn, inputs, loss_fn):
    return _grad(rnn, inputs, loss_fn).abs().mean(0)


def grad_not_leaf(rnn, inputs, loss_fn):
    outputs, _ = rnn(inputs)  # inputs do not require grad
    loss_fn(outputs).backward()
    return inputs.grad.norm(dim=-1).mean(0)


def grad_no_grad(rnn, inputs, loss_fn):
    x = inputs.clone().requires_grad_(True)
    with torch.no_grad():
        outputs, _ = rnn(x)
    return torch.autograd.grad(loss_fn(outputs), x)[0].norm(dim=-1).mean(0)


def grad_in_place(rnn, inputs, loss_fn):
    inputs.requires_grad_(True)
    outputs, _ = rnn(inputs * 1.0)
    loss_fn(outputs).backward()
    norms = inputs.grad.norm(dim=-1).mean(0)
    with torch.no_grad():
        inputs.zero_()
    return norms


WRONG_GRADIENT = [
    (grad_sum, "don't sum"),
    (grad_squared, "not its square"),
    (grad_abs_mean, "not a mean of absolute values"),
    (grad_norm_over_batch, "then average over the batch"),
    (grad_norm_of_mean, "average the per-sequence norms"),
    (grad_flipped, "don't reverse"),
    (grad_relative, "raw norms"),
    (grad_per_sequence, "one value per position"),
    (grad_per_feature, "norm over the feature axis"),
    (grad_not_leaf, "the gradient is None"),
    (grad_no_grad, "has no gradient"),
    (grad_in_place, "in place"),
]


@pytest.mark.parametrize(
    "answer, hint", WRONG_GRADIENT, ids=[f.__name__ for f, _ in WRONG_GRADIENT]
)
def test_wrong_position_gradient_norms_loses_points_with_the_hint(answer, hint):
    assert_caught(GRADIENT, answer, hint)


def grad_backward(rnn, inputs, loss_fn):
    x = inputs.clone().detach().requires_grad_()
    outputs, _ = rnn(x)
    loss_fn(outputs).backward()
    return x.grad.norm(dim=-1).mean(dim=0)


def grad_loop(rnn, inputs, loss_fn):
    # one sequence at a time (loss_fn sums over the batch, so each row's gradient is its own)
    rows = []
    for b in range(inputs.shape[0]):
        x = inputs[b : b + 1].clone().requires_grad_(True)
        outputs, _ = rnn(x)
        (grad,) = torch.autograd.grad(loss_fn(outputs), x)
        rows.append(grad[0].pow(2).sum(-1).sqrt())
    return torch.stack(rows).mean(0)


RIGHT_GRADIENT = [grad_backward, grad_loop, seq2seq.position_gradient_norms]


@pytest.mark.parametrize("answer", RIGHT_GRADIENT, ids=[f.__name__ for f in RIGHT_GRADIENT])
def test_correct_position_gradient_norms_variants_score_full_marks(answer):
    assert grade(GRADIENT, answer).passed, grade(GRADIENT, answer).report()


# --------------------------------------------------------------------------- all questions


@pytest.mark.parametrize("seed", [1, 2])
def test_hints_hold_for_other_seeds(seed):
    """Batch grading may use other seeds than the notebook: the catalogue must not depend on one."""
    for question, catalogue in [
        (STATE, WRONG_STATE),
        (ACCURACY, WRONG_ACCURACY),
        (GRADIENT, WRONG_GRADIENT),
    ]:
        for answer, hint in catalogue:
            assert_caught(question, answer, hint, seed=seed)
    for question, right in [(STATE, RIGHT_STATE), (ACCURACY, RIGHT_ACCURACY)]:
        for answer in right:
            assert grade(question, answer, seed=seed).passed, answer.__name__


def test_questions_are_registered():
    assert [q.id for q in ch01.QUESTIONS] == [STATE, ACCURACY, GRADIENT]
