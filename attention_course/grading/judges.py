"""Building blocks for a test's ``judge(case)``: each raises ``Fail("specific hint")``.

A judge runs in the grading process on plain data. The helpers check, in this order, what a
student most needs to hear first: the type (tensor vs NumPy), the shape (naming a swapped-axes
shape), the dtype, then the values; when the values are wrong they try the question's *mistake
models* (functions that compute what a known wrong answer would return) and name the first that
matches, so the hint says what went wrong rather than only that something did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from ._codec import Opaque
from .hints import (
    IN_PLACE,
    NO_GRAD,
    NO_GRAD_TO,
    NOT_EXACT_ZERO,
    NOT_RANDOM,
    SQUEEZE,
    SWAPPED_PAIR,
    WRONG_GRAD,
)

__all__ = [
    "Fail",
    "expect_close",
    "expect_grads",
    "expect_masked_zero",
    "expect_random",
    "expect_sequence",
    "expect_tensor",
    "expect_unchanged",
    "matches",
]

Mistake = tuple[str, Callable[[], Any]]  # (hint, function returning the wrong answer's output)


class Fail(Exception):
    """Raised by a judge; its message is the one line the student reads."""


def _type_name(value) -> str:
    if isinstance(value, Opaque):
        return value.type_name
    return type(value).__name__


def expect_tensor(value, like: torch.Tensor, name: str = "output", *, dtype: bool = True):
    """Fail unless ``value`` is a torch.Tensor with the shape (and dtype) of ``like``."""
    if isinstance(value, np.ndarray):
        raise Fail(
            f"`{name}` is a NumPy array; return a torch tensor (stay in torch: no .numpy(), "
            f"no np.* functions)"
        )
    if not isinstance(value, torch.Tensor):
        raise Fail(f"`{name}` should be a torch.Tensor, got {_type_name(value)}")
    if tuple(value.shape) != tuple(like.shape):
        got, want = tuple(value.shape), tuple(like.shape)
        message = f"`{name}` has shape {got}, expected {want}"
        if tuple(d for d in want if d != 1) == got or (len(got) < len(want) and 1 in want):
            message += f": {SQUEEZE}"
        elif sorted(got) == sorted(want):
            message += (
                ": the right sizes in the wrong order. Inputs and outputs are batch first, "
                "(..., L, ...): did you swap or transpose two axes?"
            )
        raise Fail(message)
    if dtype and value.dtype != like.dtype:
        raise Fail(
            f"`{name}` has dtype {value.dtype}, expected {like.dtype} (the dtype of the inputs)"
        )


def matches(actual, candidate, *, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """True when ``actual`` equals ``candidate`` within tolerance (NaN equal to NaN)."""
    try:
        a = torch.as_tensor(np.asarray(actual) if isinstance(actual, np.ndarray) else actual)
        b = torch.as_tensor(candidate)
        if a.shape != b.shape:
            return False
        return bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True))
    except Exception:  # noqa: BLE001 - a mistake model that does not apply
        return False


def expect_close(
    value,
    expected: torch.Tensor,
    name: str = "output",
    *,
    mistakes: Iterable[Mistake] = (),
    nan_hint: str = "",
    atol: float = 1e-5,
    rtol: float = 1e-4,
    dtype: bool = True,
):
    """Fail unless ``value`` is a tensor like ``expected`` with close values.

    ``mistakes``: (hint, thunk) pairs, tried in order when the values are wrong; the first
    whose output matches the student's names the mistake. ``nan_hint`` is added when the
    student's output has NaN where the reference has none.
    """
    expect_tensor(value, expected, name, dtype=dtype)
    if matches(value, expected, atol=atol, rtol=rtol) and not _new_nan(value, expected):
        return
    for hint, make in mistakes:
        try:
            wrong = make()
        except Exception:  # noqa: BLE001 - the model does not apply to this case
            continue
        if matches(value, wrong, atol=atol, rtol=rtol):
            raise Fail(f"wrong `{name}`: {hint}")
    if _new_nan(value, expected):
        extra = f" {nan_hint}" if nan_hint else ""
        raise Fail(f"`{name}` contains NaN where the reference has none.{extra}")
    diff = (value.double() - expected.double()).abs()
    diff = torch.nan_to_num(diff, nan=float("inf"))
    index = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), tuple(diff.shape)))
    raise Fail(
        f"wrong values in `{name}`: largest difference {float(diff.max()):.3g} at index {index}"
    )


def _new_nan(value: torch.Tensor, expected: torch.Tensor) -> bool:
    return bool((torch.isnan(value) & ~torch.isnan(expected)).any())


def expect_sequence(value, length: int, names: str = "(output, weights)", expected=None):
    """Fail unless ``value`` is a tuple or list of ``length`` items; with ``expected`` (the
    reference's tuple), a pair returned in the wrong order is named as such."""
    if not isinstance(value, tuple | list):
        raise Fail(f"return a tuple {names}, got {_type_name(value)}")
    if len(value) != length:
        raise Fail(f"return a tuple {names} of {length} items, got {len(value)} items")
    if expected is not None and length == 2 and isinstance(expected, tuple | list):
        shapes = [tuple(getattr(v, "shape", ())) for v in value]
        wants = [tuple(getattr(v, "shape", ())) for v in expected]
        if shapes != wants and shapes == wants[::-1]:
            first, second = (n.strip() for n in names.strip("()").split(","))
            raise Fail(SWAPPED_PAIR.format(first=first, second=second))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        return (
            a.shape == b.shape
            and a.dtype == b.dtype
            and bool(
                torch.equal(a, b)
                or (a.is_floating_point() and torch.allclose(a, b, atol=0, rtol=0, equal_nan=True))
            )
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def expect_unchanged(case, names: Iterable[str] = ()):
    """Fail when the answer changed ANY of its inputs in place (tensors, masks, float masks,
    NumPy arrays, nested dicts such as a state dict). ``names``: labels of the positional args.

    The core calls this after every test's judge (unless ``Question.mutates_inputs``), so a
    question needs no separate "unchanged" test; keep one with a descriptive name if you like.
    """
    before, after = case.inputs, case.inputs_after
    if isinstance(before, dict) and "args" in before:
        labels = list(names)
        after_args = after.get("args", []) if isinstance(after, dict) else []
        if len(after_args) != len(before["args"]):
            raise Fail(IN_PLACE.format(name="args"))
        for i, (x, y) in enumerate(zip(before["args"], after_args)):
            if not _same(x, y):
                label = labels[i] if i < len(labels) else f"argument {i}"
                raise Fail(IN_PLACE.format(name=label))
        after_kwargs = after.get("kwargs", {}) if isinstance(after, dict) else {}
        for key in before["kwargs"]:
            if not isinstance(after_kwargs, dict) or not _same(
                before["kwargs"][key], after_kwargs.get(key)
            ):
                raise Fail(IN_PLACE.format(name=key))
    elif isinstance(before, dict) and isinstance(after, dict):
        for key in before:
            if not _same(before[key], after.get(key)):
                raise Fail(IN_PLACE.format(name=key))
    elif not _same(before, after):
        raise Fail(IN_PLACE.format(name="inputs"))


def expect_masked_zero(weights, allowed, hint: str = NOT_EXACT_ZERO):
    """Fail unless ``weights`` is exactly 0 wherever ``allowed`` forbids attending. ``allowed``:
    a boolean mask (True = may attend) or a float mask (finite = may attend), broadcastable."""
    if not isinstance(weights, torch.Tensor):
        raise Fail(f"`weights` should be a torch.Tensor, got {_type_name(weights)}")
    keep = allowed if allowed.dtype == torch.bool else torch.isfinite(allowed)
    try:
        forbidden = ~keep.expand_as(weights)
    except RuntimeError:
        shape = tuple(weights.shape)
        raise Fail(f"`weights` has shape {shape}, which the mask cannot fill") from None
    if (weights.masked_select(forbidden) != 0).any():
        raise Fail(hint)


def expect_grads(case, names: Iterable[str] = (), *, atol: float = 1e-4, rtol: float = 1e-3):
    """Judge a ``core.call_grad`` test: the output is connected to autograd, and the gradient
    reaching every ``wrt`` input equals the reference's. ``names``: labels of positional args."""
    out, exp = case.output, case.expected
    if not isinstance(out, dict) or not isinstance(out.get("grads"), dict):
        raise Fail("the answer's result could not be read")
    if out.get("connected") is not True:
        raise Fail(NO_GRAD)
    labels = list(names)
    for key, want in exp["grads"].items():
        label = labels[int(key)] if key.isdigit() and int(key) < len(labels) else key
        got = out["grads"].get(key)
        if want is None:
            continue
        if not isinstance(got, torch.Tensor):
            raise Fail(NO_GRAD_TO.format(name=label))
        if not matches(got, want, atol=atol, rtol=rtol):
            raise Fail(WRONG_GRAD.format(name=label))


def expect_random(outputs, *, same: tuple[int, int] = (0, 1), different: tuple[int, int] = (0, 2),
                  hint: str = NOT_RANDOM):  # fmt: skip
    """For an estimator called with several seeded generators (see ``kit.call_seeded``):
    outputs ``same`` (equal seeds) must be equal and ``different`` (other seeds) must differ."""
    if not isinstance(outputs, list | tuple) or len(outputs) <= max(*same, *different):
        raise Fail("the answer's result could not be read")
    a, b = outputs[same[0]], outputs[same[1]]
    c, d = outputs[different[0]], outputs[different[1]]
    if not all(isinstance(t, torch.Tensor) for t in (a, b, c, d)):
        raise Fail(f"the estimate should be a torch.Tensor, got {_type_name(a)}")
    if a.shape != b.shape or not torch.equal(a, b):
        raise Fail(
            "the same seeded generator must give the same estimate: draw from the `generator` "
            "argument only"
        )
    if c.shape == d.shape and torch.equal(c, d):
        raise Fail(hint)
