"""The declarative way to write a graded question: everything a question module needs, in one
import, and test builders so that a question is mostly data.

    from ..kit import EDGE_SHAPES, Question, call_args, grad_test, outputs_test, ...

A question is a ``Question(id, answer, reference, tests, arg_names=...)``; each test is built by
one of the builders below from an ``inputs(gen) -> list of cases`` function:

- ``shape_test(name, inputs, names)``: type, shape and dtype of every output (a tensor, or a
  tuple of tensors named by ``names``); a size-1 axis that vanished is named (``.squeeze()``);
- ``outputs_test(name, inputs, names, mistakes=..., nan_hint=..., masked_zero=...)``: values
  against the reference; ``mistakes(*args) -> [(hint, thunk)]`` names a known wrong answer
  (``models.softmax_mistakes`` / ``models.attention_mistakes`` for anything with a masked
  softmax inside); ``masked_zero=(mask_arg, output_index)`` also demands exact zeros;
- ``grad_test(name, inputs, names)``: gradients reach every floating input (cases made with
  ``grad_args``) and equal the reference's: catches ``torch.no_grad()``, ``.detach()``, NumPy;
- ``random_test(name, inputs)``: an estimator called with generators seeded (s, s, s + 1) gives
  the same result twice and a different one for the other seed (cases from ``seeded_args``).

Every test of every question ALSO fails when the answer changed any input in place (masks and
float masks included) or left ``requires_grad`` switched on in an input: the core checks it after
each judge, so no question can forget it (``Question(mutates_inputs=True)`` opts out).

Shapes: make cases for every entry of ``EDGE_SHAPES`` (B = 1, L = 1, S = 1, non-square).
Hints: use ``hints`` (one wording per mistake); a hint names the mistake and never holds the
solution line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from . import hints
from .core import Case, Question, Test, call, call_args, call_grad, grad_args
from .inputs import bool_mask, float_mask, randn
from .judges import (
    Fail,
    expect_close,
    expect_grads,
    expect_masked_zero,
    expect_random,
    expect_sequence,
    expect_tensor,
    expect_unchanged,
    matches,
)
from .models import attention_mistakes, attention_variant, softmax_mistakes, softmax_variant

__all__ = [
    "EDGE_SHAPES",
    "Case",
    "Fail",
    "Question",
    "Test",
    "attention_mistakes",
    "attention_variant",
    "bool_mask",
    "call",
    "call_args",
    "call_grad",
    "call_seeded",
    "expect_close",
    "expect_grads",
    "expect_masked_zero",
    "expect_random",
    "expect_sequence",
    "expect_tensor",
    "expect_unchanged",
    "float_mask",
    "grad_args",
    "grad_test",
    "hints",
    "judge_outputs",
    "matches",
    "outputs_test",
    "randn",
    "random_test",
    "seeded_args",
    "shape_test",
    "softmax_mistakes",
    "softmax_variant",
]

# (B, L, S, E): non-square first, then B = 1, L = 1, S = 1, all ones, and L == S == E (where a
# transposed key or attention over the wrong axis still runs, so only the values can tell).
EDGE_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (2, 5, 7, 4),
    (1, 4, 6, 8),
    (3, 1, 5, 4),
    (2, 6, 1, 4),
    (1, 1, 1, 2),
    (2, 6, 6, 6),
)


def _as_tuple(value, n: int, names: Sequence[str], expected=None):
    if n == 1:
        return (value,)
    expect_sequence(value, n, "(" + ", ".join(names) + ")", expected)
    return tuple(value)


def judge_outputs(case: Case, names: Sequence[str] = ("output",), *, mistakes=None,
                  nan_hint: str = "", masked_zero: tuple[int, int] | None = None,
                  atol: float = 1e-5, rtol: float = 1e-4, values: bool = True):  # fmt: skip
    """Compare every output (one tensor, or a tuple named by ``names``) with the reference.

    ``mistakes(*args) -> [(hint, thunk)]``, each thunk returning what that wrong answer
    returns (the same structure as the reference). ``masked_zero=(mask_position, output_index)``:
    that output must be exactly 0 where the mask argument forbids attending.
    """
    n = len(names)
    outs = _as_tuple(case.output, n, names, case.expected)
    wants = _as_tuple(case.expected, n, names) if n > 1 else (case.expected,)
    for out, want, name in zip(outs, wants, names):
        expect_tensor(out, want, name)
    if not values:
        return
    models = list(mistakes(*case.args, **case.kwargs)) if mistakes else []
    for i, (out, want, name) in enumerate(zip(outs, wants, names)):
        pick = (lambda m: m) if n == 1 else (lambda m, i=i: lambda: m()[i])
        expect_close(out, want, name, mistakes=[(h, pick(m)) for h, m in models],
                     nan_hint=nan_hint, atol=atol, rtol=rtol)  # fmt: skip
    if masked_zero is not None:
        position, index = masked_zero
        mask = case.args[position] if position < len(case.args) else None
        if mask is not None:
            expect_masked_zero(outs[index], mask)


def shape_test(name: str, inputs, names: Sequence[str] = ("output",), points: float = 1.0):
    """Type, shape and dtype of every output."""
    return Test(name, inputs, functools.partial(judge_outputs, names=names, values=False), points)


def outputs_test(name: str, inputs, names: Sequence[str] = ("output",), *, mistakes=None,
                 nan_hint: str = "", masked_zero=None, atol: float = 1e-5, rtol: float = 1e-4,
                 points: float = 1.0):  # fmt: skip
    """Values of every output against the reference; mistake models name what went wrong."""
    judge = functools.partial(judge_outputs, names=names, mistakes=mistakes, nan_hint=nan_hint,
                              masked_zero=masked_zero, atol=atol, rtol=rtol)  # fmt: skip
    return Test(name, inputs, judge, points)


def grad_test(name: str, inputs, names: Sequence[str] = (), *, atol: float = 1e-4,
              rtol: float = 1e-3, points: float = 1.0):  # fmt: skip
    """Gradients flow to the ``wrt`` inputs of ``grad_args`` cases and equal the reference's."""
    judge = functools.partial(expect_grads, names=names, atol=atol, rtol=rtol)
    return Test(name, inputs, judge, points, run=call_grad)


def seeded_args(*args, seed: int, generator: str | int = -1, **kwargs) -> dict:
    """A case for ``call_seeded``: the answer gets a ``torch.Generator`` at position
    ``generator`` (an int position, -1 = appended last, or a keyword name)."""
    case = call_args(*args, **kwargs)
    case["seed"], case["generator"] = int(seed), generator
    return case


def call_seeded(answer, inputs: dict):
    """A ``Test.run`` for estimators: three calls with generators seeded s, s and s + 1."""
    outputs = []
    for seed in (inputs["seed"], inputs["seed"], inputs["seed"] + 1):
        args, kwargs = list(inputs["args"]), dict(inputs["kwargs"])
        gen = torch.Generator().manual_seed(seed)
        where = inputs["generator"]
        if isinstance(where, str):
            kwargs[where] = gen
        elif where == -1:
            args.append(gen)
        else:
            args.insert(where, gen)
        outputs.append(answer(*args, **kwargs))
    return outputs


def random_test(name: str, inputs: Callable, points: float = 1.0) -> Test:
    """The estimator follows its generator: same seed, same result; another seed, another."""
    return Test(name, inputs, lambda case: expect_random(case.output), points, run=call_seeded)
