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

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Limits", "Opaque", "WireError", "decode", "encode", "load", "pack", "save", "unpack"]

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


def decode(value, _depth: int = 0):
    """Inverse of ``encode``: NumPy arrays come back as NumPy arrays, tuples as tuples.
    Anything malformed (from a hostile child) becomes an ``Opaque``, never an exception."""
    if _depth > _MAX_DEPTH + 2:
        return Opaque("nested too deeply", "")
    if isinstance(value, torch.Tensor):
        return _plain_tensor(value)
    if isinstance(value, list):
        return [decode(item, _depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(decode(item, _depth + 1) for item in value)
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            if isinstance(value[_ARRAY], torch.Tensor):
                return value[_ARRAY].numpy().copy()
            return Opaque("malformed array", "")
        if set(value) == {_TUPLE}:
            items = value[_TUPLE]
            if isinstance(items, list):
                return tuple(decode(item, _depth + 1) for item in items)
            return Opaque("malformed tuple", "")
        if set(value) == {_OPAQUE}:
            item = value[_OPAQUE]
            if isinstance(item, list) and len(item) == 2:
                return Opaque(str(item[0])[:100], str(item[1])[:200])
            return Opaque("malformed object", "")
        return {str(k): decode(v, _depth + 1) for k, v in value.items()}
    if value is None or type(value) in (bool, int, float, str, complex):
        return value
    return Opaque(type(value).__name__, "")


def save(value, path: str | Path) -> None:
    """Encode ``value`` and write it to ``path``."""
    torch.save(encode(value), path)


def load(path: str | Path):
    """Read a file written by ``save`` without executing anything in it, and decode it."""
    return decode(torch.load(path, weights_only=True, map_location="cpu"))


# --------------------------------------------------------------------------- wire format
# The files that cross between the grader and a child (the job, the answers) are NOT pickles:
# a JSON skeleton of the encoded value, in which every tensor is {"__tensor__": i}, and a blob of
# raw little-endian tensor bytes. The reader checks every field, dtype, shape and byte count
# BEFORE it builds a tensor, so a forged file can cost at most ``Limits`` of memory.

_MAGIC = b"ACGRADE1"
_TENSOR = "__tensor__"
_COMPLEX = "__complex__"
_DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
        torch.float16, torch.bfloat16, torch.float32, torch.float64,
        torch.complex64, torch.complex128,
    )
}  # fmt: skip


class WireError(ValueError):
    """A file that is not a well-formed, bounded wire file."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what ``unpack`` accepts."""

    max_bytes: int = 64_000_000  # the whole file
    max_header: int = 4_000_000  # its JSON skeleton
    max_tensors: int = 5_000
    max_elements: int = 4_000_000  # per tensor
    max_total_elements: int = 16_000_000
    max_dims: int = 8


def pack(value) -> bytes:
    """``encode(value)`` as wire bytes (the writer side: the parent's job, the child's answers)."""
    blobs: list[bytes] = []
    meta: list[dict] = []
    offset = 0

    def walk(item):
        nonlocal offset
        if isinstance(item, torch.Tensor):
            t = _plain_tensor(item).contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
            meta.append({"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                         "offset": offset, "nbytes": len(data)})  # fmt: skip
            blobs.append(data)
            offset += len(data)
            return {_TENSOR: len(meta) - 1}
        if isinstance(item, list):
            return [walk(x) for x in item]
        if isinstance(item, dict):
            return {str(k): walk(v) for k, v in item.items()}
        if isinstance(item, complex):
            return {_COMPLEX: [item.real, item.imag]}
        return item

    tree = walk(encode(value))
    header = json.dumps({"tree": tree, "tensors": meta}).encode()
    return _MAGIC + len(header).to_bytes(8, "little") + header + b"".join(blobs)


def _tensor_from(meta, blob: memoryview, limits: Limits, budget: list[int]) -> torch.Tensor:
    if not isinstance(meta, dict):
        raise WireError("tensor record is not an object")
    dtype = _DTYPES.get(meta.get("dtype")) if isinstance(meta.get("dtype"), str) else None
    shape, offset, nbytes = meta.get("shape"), meta.get("offset"), meta.get("nbytes")
    if dtype is None:
        raise WireError("unknown dtype")
    if not isinstance(shape, list) or len(shape) > limits.max_dims:
        raise WireError("bad shape")
    if not all(type(d) is int and 0 <= d <= limits.max_elements for d in shape):
        raise WireError("bad shape")
    numel = math.prod(shape)
    if numel > limits.max_elements:
        raise WireError(f"a tensor of {numel} elements is over the limit")
    budget[0] -= numel
    if budget[0] < 0:
        raise WireError("too many elements in total")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if type(offset) is not int or type(nbytes) is not int or nbytes != numel * itemsize:
        raise WireError("byte count does not match the shape")
    if offset < 0 or offset + nbytes > len(blob):
        raise WireError("tensor bytes outside the file")
    raw = bytearray(blob[offset : offset + nbytes])
    if dtype == torch.bool:
        flat = (
            torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        )
        return flat.reshape(shape).ne(0)
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(raw, dtype=dtype).reshape(shape).clone()


def unpack(data: bytes, limits: Limits = Limits()):
    """Read wire bytes from an untrusted writer; raise ``WireError`` on anything malformed.
    Returns the ENCODED value (``decode`` it to get NumPy arrays, tuples and ``Opaque``)."""
    if not isinstance(data, bytes | bytearray) or len(data) > limits.max_bytes:
        raise WireError("not bytes, or too large")
    if len(data) < 16 or data[:8] != _MAGIC:
        raise WireError("not a wire file")
    size = int.from_bytes(data[8:16], "little")
    if size > limits.max_header or 16 + size > len(data):
        raise WireError("bad header size")
    try:
        header = json.loads(data[16 : 16 + size].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise WireError(f"unreadable header ({type(exc).__name__})") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list):
        raise WireError("bad header")
    metas = header["tensors"]
    if len(metas) > limits.max_tensors:
        raise WireError("too many tensors")
    blob = memoryview(data)[16 + size :]
    budget = [limits.max_total_elements]
    tensors: dict[int, torch.Tensor] = {}

    def walk(item, depth=0):
        if depth > _MAX_DEPTH + 2:
            raise WireError("nested too deeply")
        if isinstance(item, list):
            return [walk(x, depth + 1) for x in item]
        if isinstance(item, dict):
            if set(item) == {_TENSOR}:
                index = item[_TENSOR]
                if type(index) is not int or not 0 <= index < len(metas):
                    raise WireError("bad tensor reference")
                if index not in tensors:  # a reference used twice is built once
                    tensors[index] = _tensor_from(metas[index], blob, limits, budget)
                return tensors[index].clone()
            if set(item) == {_COMPLEX}:
                pair = item[_COMPLEX]
                if isinstance(pair, list) and len(pair) == 2:
                    if all(type(x) in (int, float) for x in pair):
                        return complex(pair[0], pair[1])
                raise WireError("bad complex number")
            return {str(k): walk(v, depth + 1) for k, v in item.items()}
        if item is None or type(item) in (bool, int, float, str):
            return item
        raise WireError("unexpected value")

    return walk(header.get("tree"))  # still encoded: ``decode`` gives NumPy arrays and tuples
