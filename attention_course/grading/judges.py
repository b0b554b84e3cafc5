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

__all__ = [
    "Fail",
    "expect_close",
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
        if sorted(got) == sorted(want):
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


def expect_sequence(value, length: int, names: str = "(output, weights)"):
    """Fail unless ``value`` is a tuple or list of ``length`` items."""
    if not isinstance(value, tuple | list):
        raise Fail(f"return a tuple {names}, got {_type_name(value)}")
    if len(value) != length:
        raise Fail(f"return a tuple {names} of {length} items, got {len(value)} items")


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
    """Fail when the answer changed one of its inputs in place (e.g. ``scores.masked_fill_``)."""
    before, after = case.inputs, case.inputs_after
    if isinstance(before, dict) and "args" in before:
        labels = list(names)
        for i, (x, y) in enumerate(zip(before["args"], after["args"])):
            if not _same(x, y):
                label = labels[i] if i < len(labels) else f"argument {i}"
                raise Fail(
                    f"your function changed its input `{label}` in place (an in-place op such "
                    f"as masked_fill_, +=, or item assignment); work on a new tensor instead"
                )
        for key in before["kwargs"]:
            if not _same(before["kwargs"][key], after["kwargs"].get(key)):
                raise Fail(f"your function changed its input `{key}` in place; don't")
    elif not _same(before, after):
        raise Fail("your answer changed its inputs in place; work on new tensors instead")
