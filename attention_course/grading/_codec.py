"""Plain-data transport between the grader and the student's code.

Everything that crosses from a student's answer back to the judge goes through ``encode`` (in the
process that ran the answer) and ``decode`` (in the judging process). Only plain data survives:
torch tensors (as plain ``torch.Tensor``, detached, on the CPU), NumPy arrays of numeric dtype,
numbers, strings, ``None``, and lists / tuples / dicts of these. Anything else becomes an
``Opaque`` record (its type name and a short repr), so a tensor subclass or an object with a
lying ``__eq__`` cannot reach the comparison. Files are read with ``torch.load(weights_only=True)``,
which refuses to build arbitrary objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Opaque", "decode", "encode", "load", "save"]

_ARRAY = "__ndarray__"
_OPAQUE = "__opaque__"
_TUPLE = "__tuple__"
_MAX_DEPTH = 20


@dataclass(frozen=True)
class Opaque:
    """Stands in for a returned object that is not plain data (e.g. a string of the wrong kind
    of object, a generator, a custom class)."""

    type_name: str  # e.g. "generator", "MyTensor"
    text: str  # a short repr


def _plain_tensor(value: torch.Tensor) -> torch.Tensor:
    # as_subclass drops any tensor subclass; clone gives fresh storage nobody else holds
    plain = torch.Tensor.as_subclass(value, torch.Tensor)
    return torch.Tensor.clone(torch.Tensor.detach(plain)).cpu()


def encode(value, _depth: int = 0):
    """Turn ``value`` into plain data that ``torch.save`` can write and a safe load can read."""
    if _depth > _MAX_DEPTH:
        return {_OPAQUE: ["nested too deeply", ""]}
    if isinstance(value, torch.Tensor):
        return _plain_tensor(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufc":
            data = torch.from_numpy(np.array(value, copy=True, order="C"))
            return {_ARRAY: data}
        return {_OPAQUE: [f"ndarray of dtype {value.dtype}", repr(value)[:200]]}
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        return {_ARRAY: torch.from_numpy(np.array(value))}
    if value is None or type(value) in (bool, int, float, str, complex):
        return value
    if type(value) in (list, tuple):
        items = [encode(item, _depth + 1) for item in value]
        return {_TUPLE: items} if type(value) is tuple else items
    if isinstance(value, dict):  # dict, OrderedDict (a state_dict), ...
        return {str(k): encode(v, _depth + 1) for k, v in value.items()}
    try:
        text = repr(value)[:200]
    except Exception:  # a hostile __repr__
        text = "<unprintable>"
    return {_OPAQUE: [type(value).__name__, text]}


def decode(value):
    """Inverse of ``encode``: NumPy arrays come back as NumPy arrays, tuples as tuples."""
    if isinstance(value, torch.Tensor):
        return _plain_tensor(value)
    if isinstance(value, list):
        return [decode(item) for item in value]
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            return value[_ARRAY].numpy().copy()
        if set(value) == {_TUPLE}:
            return tuple(decode(item) for item in value[_TUPLE])
        if set(value) == {_OPAQUE}:
            type_name, text = value[_OPAQUE]
            return Opaque(str(type_name), str(text))
        return {k: decode(v) for k, v in value.items()}
    return value


def save(value, path: str | Path) -> None:
    """Encode ``value`` and write it to ``path``."""
    torch.save(encode(value), path)


def load(path: str | Path):
    """Read a file written by ``save`` without executing anything in it, and decode it."""
    return decode(torch.load(path, weights_only=True, map_location="cpu"))
