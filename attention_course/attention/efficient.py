"""Efficient attention (chapter 8): online softmax, tiled (flash-style) and linear attention.

- ``online_softmax``: Milakov & Gimelshein (2018), the softmax normaliser in one pass with a
  running maximum and a running sum, rescaled whenever the maximum grows.
- ``tiled_attention``: Rabe & Staats (2021), Dao et al. (2022): exact attention computed block
  by block with the online-softmax recurrence, never building the ``L x S`` weight matrix.
- ``linear_attention``: Katharopoulos et al. (2020): a kernel ``phi(q)^T phi(k)`` instead of
  ``exp(q^T k / sqrt(E))``, so that ``phi(Q) (phi(K)^T V)`` costs O(n) instead of O(n^2).

Shapes (the book's legend, PyTorch's names in brackets): ``...`` any batch and head dims
(B [N], h), L query length, S key length, E query/key width, Ev value width.

Mask convention, as in ``torch.nn.functional.scaled_dot_product_attention``: a boolean mask is
True where a query MAY attend to a key; a float mask is ADDED to the scaled scores. A query
with no allowed key gets an all-zero output (never NaN).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "GroupedQueryCheck",
    "MemoryScaling",
    "RecallComparison",
    "RecallModel",
    "TimeScaling",
    "elu_plus_one",
    "grouped_query_attention_check",
    "kernel_attention",
    "linear_attention",
    "memory_against_length",
    "online_softmax",
    "peak_tensor_bytes",
    "recall_batch",
    "recall_softmax_vs_linear",
    "sdpa_operators",
    "tiled_attention",
    "time_against_length",
]


def _safe(running_max: Tensor) -> Tensor:
    """The running maximum where it is finite, 0 where it is still -inf (nothing seen yet).

    Subtracting it keeps ``exp`` from overflowing, and ``exp(-inf - 0) = 0`` instead of the
    ``exp(-inf - (-inf)) = NaN`` a row with no finite score so far would give.
    """
    return torch.where(torch.isfinite(running_max), running_max, torch.zeros_like(running_max))


def online_softmax(scores: Tensor, dim: int = -1, block_size: int = 64) -> Tensor:
    r"""Softmax over ``dim`` with the normaliser found in ONE pass (Milakov & Gimelshein, 2018).

    Walks over ``dim`` in blocks of ``block_size``, keeping a running maximum ``m`` and a running
    sum ``l = sum_j exp(x_j - m)``. When a block raises the maximum from ``m`` to ``m'``, every
    term already in ``l`` was computed against the old maximum, so ``l`` is rescaled:

    ``l' = l * exp(m - m') + sum_{j in block} exp(x_j - m')``.

    A second pass writes ``exp(x - m) / l``. Equal to ``torch.softmax(scores, dim)`` (scores may
    be huge or ``-inf``); a slice that is ``-inf`` everywhere gives zeros, not NaN.
    """
    x = scores.movedim(dim, -1)  # (..., n): the softmax axis last
    n = x.shape[-1]
    running_max = x.new_full((*x.shape[:-1], 1), float("-inf"))  # (..., 1)
    running_sum = x.new_zeros((*x.shape[:-1], 1))  # (..., 1)
    for start in range(0, n, block_size):
        block = x[..., start : start + block_size]  # (..., b), the last one may be shorter
        new_max = torch.maximum(running_max, block.amax(dim=-1, keepdim=True))  # (..., 1)
        reference = _safe(new_max)
        rescale = torch.exp(running_max - reference)  # old terms were against the old max
        running_sum = running_sum * rescale + torch.exp(block - reference).sum(-1, keepdim=True)
        running_max = new_max
    total = torch.where(running_sum > 0, running_sum, torch.ones_like(running_sum))
    weights = torch.exp(x - _safe(running_max)) / total  # (..., n)
    return weights.movedim(-1, dim)


def tiled_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    block_size: int = 64,
    *,
    scale: float | None = None,
) -> Tensor:
    r"""Exact softmax(Q K^T / sqrt(E)) V, block by block, without the (L, S) weight matrix.

    Queries are cut into blocks of ``block_size``; for each query block, keys and values are
    visited in blocks of ``block_size`` with the online-softmax recurrence (Dao et al., 2022,
    Algorithm 1): running maximum ``m``, running sum ``l``, and an output accumulator ``acc``
    that is rescaled by ``exp(m - m')`` exactly like ``l``. Only ``block_size x block_size``
    scores exist at any time.

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``.
        value: ``(..., S, Ev)``.
        attn_mask: optional, broadcastable to ``(..., L, S)``. Boolean: True = the query MAY
            attend to the key (the ``F.scaled_dot_product_attention`` convention; the opposite
            of ``nn.MultiheadAttention``). Float: added to the scaled scores.
        is_causal: query ``i`` attends to keys ``j <= i`` (top-left aligned, as PyTorch's
            ``is_causal`` when L != S). Not allowed together with ``attn_mask``.
        block_size: rows of queries and of keys processed at once (any positive integer).
        scale: keyword-only, the factor on the scores; ``1 / sqrt(E)`` by default.

    Returns:
        The output ``(..., L, Ev)`` only: the weights are never built, so none is returned.
        A query with no allowed key gets a zero output.
    """
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (as PyTorch)")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    L, E = query.shape[-2:]
    S, Ev = value.shape[-2:]
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    if attn_mask is not None:
        # A broadcast view (no copy), so that slicing a (L, S) tile is valid for any mask shape.
        full = torch.broadcast_shapes(attn_mask.shape, (*batch, L, S))
        attn_mask = attn_mask.expand(full)  # (..., L, S) view
    out_dtype = torch.result_type(query, value)
    output = query.new_zeros((*batch, L, Ev), dtype=out_dtype)  # (..., L, Ev)
    for q0 in range(0, L, block_size):
        q1 = min(q0 + block_size, L)
        q_block = query[..., q0:q1, :]  # (..., Lb, E)
        running_max = query.new_full((*batch, q1 - q0, 1), float("-inf"))  # (..., Lb, 1)
        running_sum = query.new_zeros((*batch, q1 - q0, 1))  # (..., Lb, 1)
        acc = query.new_zeros((*batch, q1 - q0, Ev), dtype=out_dtype)  # (..., Lb, Ev)
        # Causal: the last query of this block is q1 - 1, so keys from q1 on are all masked.
        k_end = min(S, q1) if is_causal else S
        for k0 in range(0, k_end, block_size):
            k1 = min(k0 + block_size, k_end)
            # (..., Lb, E) @ (..., E, Sb) -> (..., Lb, Sb)
            scores = q_block @ key[..., k0:k1, :].transpose(-2, -1) * scale
            if attn_mask is not None:
                tile = attn_mask[..., q0:q1, k0:k1]  # (..., Lb, Sb)
                if tile.dtype == torch.bool:
                    scores = scores.masked_fill(~tile, float("-inf"))
                else:
                    scores = scores + tile
            elif is_causal and k1 > q0 + 1:  # this tile crosses the diagonal
                rows = torch.arange(q0, q1, device=query.device)[:, None]  # (Lb, 1)
                cols = torch.arange(k0, k1, device=query.device)[None, :]  # (1, Sb)
                scores = scores.masked_fill(cols > rows, float("-inf"))
            new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
            reference = _safe(new_max)  # (..., Lb, 1)
            rescale = torch.exp(running_max - reference)  # (..., Lb, 1)
            p = torch.exp(scores - reference)  # (..., Lb, Sb), unnormalised weights
            running_sum = running_sum * rescale + p.sum(dim=-1, keepdim=True)
            # (..., Lb, Sb) @ (..., Sb, Ev) -> (..., Lb, Ev)
            acc = acc * rescale + p.to(out_dtype) @ value[..., k0:k1, :]
            running_max = new_max
        total = torch.where(running_sum > 0, running_sum, torch.ones_like(running_sum))
        output[..., q0:q1, :] = acc / total  # (..., Lb, Ev); rows with no key stay 0
    return output


def elu_plus_one(x: Tensor) -> Tensor:
    """Katharopoulos et al.'s feature map phi(x) = elu(x) + 1: positive, so weights are >= 0."""
    return F.elu(x) + 1.0


def linear_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    feature_map=elu_plus_one,
    causal: bool = False,
) -> Tensor:
    r"""Linear attention (Katharopoulos et al., 2020, eq. 5-6 and 8-10).

    ``V'_i = phi(Q_i)^T (sum_j phi(K_j) V_j^T) / phi(Q_i)^T (sum_j phi(K_j))``: the sums are
    formed once, in O(S E Ev), and shared by every query, so no ``(L, S)`` matrix appears. With
    ``causal=True`` query ``i`` sums over keys ``j <= i`` only (top-left aligned, as PyTorch's
    ``is_causal``), with cumulative sums.

    Args:
        query: ``(..., L, E)``.
        key: ``(..., S, E)``.
        value: ``(..., S, Ev)``.
        feature_map: ``phi``, applied to the last axis; must give positive features.
        causal: query ``i`` attends to keys ``j <= i``.

    Returns:
        The output ``(..., L, Ev)``. Equal to ``kernel_attention`` (the explicit quadratic
        form) with the same feature map. There is no mask argument: a mask between arbitrary
        pairs needs the ``(L, S)`` matrix this method exists to avoid.
    """
    phi_q = feature_map(query)  # (..., L, D): D = E for elu + 1
    phi_k = feature_map(key)  # (..., S, D)
    if not causal:
        # (..., D, S) @ (..., S, Ev) -> (..., D, Ev): sum_j phi(k_j) v_j^T, shared by all queries
        kv = phi_k.transpose(-2, -1) @ value
        z = phi_k.sum(dim=-2)  # (..., D): sum_j phi(k_j)
        numerator = phi_q @ kv  # (..., L, D) @ (..., D, Ev) -> (..., L, Ev)
        denominator = (phi_q * z.unsqueeze(-2)).sum(-1, keepdim=True)  # (..., L, 1)
        return numerator / denominator
    L, S = query.shape[-2], key.shape[-2]
    # Running sums over the keys: entry j holds sum_{j' <= j}. (..., S, D, Ev) and (..., S, D)
    kv = torch.cumsum(phi_k.unsqueeze(-1) * value.unsqueeze(-2), dim=-3)  # (..., S, D, Ev)
    z = torch.cumsum(phi_k, dim=-2)  # (..., S, D)
    last = torch.arange(L, device=query.device).clamp(max=S - 1)  # query i sees keys <= i
    kv = kv[..., last, :, :]  # (..., L, D, Ev)
    z = z[..., last, :]  # (..., L, D)
    numerator = (phi_q.unsqueeze(-1) * kv).sum(dim=-2)  # (..., L, Ev)
    denominator = (phi_q * z).sum(dim=-1, keepdim=True)  # (..., L, 1)
    return numerator / denominator


def kernel_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    feature_map=elu_plus_one,
    causal: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""The explicit quadratic form of linear attention: weights ``phi(Q) phi(K)^T``,
    masked (causal: key ``j <= i``, top-left) and row-normalised, times V.

    The same expectation as softmax attention, ``c_i = sum_j p_ij v_j``, with similarity
    ``phi(q)^T phi(k)`` in place of ``exp(q^T k / sqrt(E))``. It builds the ``(..., L, S)``
    matrix on purpose: it is the reference ``linear_attention`` must equal.

    Returns:
        ``(output, weights)``: ``(..., L, Ev)`` and ``(..., L, S)``, rows summing to 1.
    """
    # (..., L, D) @ (..., D, S) -> (..., L, S), all >= 0 for a positive feature map
    similarity = feature_map(query) @ feature_map(key).transpose(-2, -1)
    if causal:
        L, S = similarity.shape[-2:]
        allowed = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()  # j <= i
        similarity = similarity.masked_fill(~allowed, 0.0)
    weights = similarity / similarity.sum(dim=-1, keepdim=True)  # (..., L, S)
    return weights @ value, weights  # (..., L, Ev), (..., L, S)


# ---------------------------------------------------------------------------------------------
# Measurements behind chapter 8's claims. Each returns a small dataclass; the chapter asserts on
# it at seed 0 and tests/test_efficient.py calls the same function at other seeds.


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of every tensor storage an ATen operation creates, while it lives.

    A storage is counted when an operation returns it (a view of an existing storage, or an
    in-place result, is not new memory) and uncounted when the last tensor using it is freed.
    Internal scratch buffers of a fused kernel that never become tensors are not seen.
    """

    def __init__(self):
        super().__init__()
        self.live = 0  # bytes held right now by tensors created inside the block
        self.peak = 0  # the maximum of ``live``
        self._owners: dict[int, list[int]] = {}  # storage address -> [tensors alive, bytes]

    def _release(self, address: int) -> None:
        entry = self._owners[address]
        entry[0] -= 1
        if entry[0] == 0:
            del self._owners[address]
            self.live -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat_in, _ = tree_flatten((args, kwargs))
        inputs = {t.untyped_storage().data_ptr() for t in flat_in if isinstance(t, Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor):
                continue
            storage = t.untyped_storage()
            address = storage.data_ptr()
            if address in self._owners:  # a view of a tensor created here
                self._owners[address][0] += 1
            elif address in inputs or storage.nbytes() == 0:  # a view of outside memory
                continue
            else:
                self._owners[address] = [1, storage.nbytes()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, address)
        return out


def peak_tensor_bytes(fn, *args, **kwargs) -> int:
    """Peak bytes held by the tensors ``fn(*args, **kwargs)`` creates, under ``torch.no_grad``.

    Counted exactly, tensor by tensor, with a ``TorchDispatchMode`` (see ``_LiveTensorBytes``):
    unlike the process's peak RSS, which only ever grows and includes the allocator's cache,
    it measures this one call, and unlike ``torch.profiler``'s per-operator memory columns it
    gives a peak, not totals. The inputs already exist and are not counted.
    """
    with torch.no_grad(), _LiveTensorBytes() as counter:
        result = fn(*args, **kwargs)
        del result
    return counter.peak


def _slope(lengths, values) -> float:
    """Exponent p of the fit values ~ c * n^p over ``lengths`` (least squares in log-log)."""
    x, y = np.log(np.asarray(lengths, float)), np.log(np.asarray(values, float))
    return float(np.polyfit(x, y, 1)[0])


def _math_sdpa(query, key, value, **kwargs):
    """``F.scaled_dot_product_attention`` forced onto its MATH backend (plain ATen ops)."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(query, key, value, **kwargs)


def _course_softmax_attention(query, key, value):
    from .core import scaled_dot_product_attention

    return scaled_dot_product_attention(query, key, value)[0]  # the output only


MEMORY_METHODS = {
    "softmax attention (chapter 3)": _course_softmax_attention,
    "SDPA, math backend": _math_sdpa,
    "SDPA, default CPU backend": F.scaled_dot_product_attention,
    "tiled attention": tiled_attention,
    "linear attention": linear_attention,
}


@dataclass
class MemoryScaling:
    """Peak bytes of tensors created by one attention call, against the sequence length n."""

    lengths: list[int]  # n = L = S
    head_width: int  # d = E = Ev
    heads: int  # h, with batch B = 1: inputs (1, h, n, d)
    block_size: int  # tiled attention's block
    input_bytes: list[int]  # one of Q, K, V: h * n * d * 4
    matrix_bytes: list[int]  # one (h, n, n) float32 attention matrix: h * n^2 * 4
    peak_bytes: dict[str, list[int]]  # method -> peak bytes at each length
    exponent: dict[str, float]  # method -> p in peak ~ n^p (log-log fit)


def memory_against_length(
    lengths=(256, 512, 1024, 2048),
    head_width: int = 32,
    heads: int = 2,
    block_size: int = 64,
    seed: int = 0,
) -> MemoryScaling:
    """Measure ``peak_tensor_bytes`` of every method in ``MEMORY_METHODS`` at each length."""
    generator = torch.Generator().manual_seed(seed)
    peak = {name: [] for name in MEMORY_METHODS}
    for n in lengths:
        q, k, v = torch.randn(3, 1, heads, n, head_width, generator=generator)  # (1, h, n, d)
        for name, method in MEMORY_METHODS.items():
            kwargs = {"block_size": block_size} if method is tiled_attention else {}
            peak[name].append(peak_tensor_bytes(method, q, k, v, **kwargs))
    return MemoryScaling(
        lengths=list(lengths),
        head_width=head_width,
        heads=heads,
        block_size=block_size,
        input_bytes=[heads * n * head_width * 4 for n in lengths],
        matrix_bytes=[heads * n * n * 4 for n in lengths],
        peak_bytes=peak,
        exponent={name: _slope(lengths, values) for name, values in peak.items()},
    )


def _cpu_seconds(repeats: int, fn, *args, **kwargs) -> float:
    """The fastest of ``repeats`` calls, in CPU seconds of this process (``process_time``).

    CPU time rather than wall time: other programs on a shared machine slow the wall clock but
    are not billed to this process; the minimum drops the calls a cache flush slowed down.
    """
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.process_time()
            fn(*args, **kwargs)
            best = min(best, time.process_time() - start)
    return best


@dataclass
class TimeScaling:
    """CPU seconds of one attention call (fastest of several) against the sequence length."""

    lengths: list[int]  # n = L = S
    head_width: int  # d
    heads: int  # h, inputs (1, h, n, d)
    block_size: int  # tiled attention's block
    seconds: dict[str, list[float]]  # method -> CPU seconds at each length
    linear_crossover: int | None  # first n from which linear beats softmax at every longer n

    def ratio(self, slower: str, faster: str) -> list[float]:
        """seconds[slower] / seconds[faster] at each length."""
        return [a / b for a, b in zip(self.seconds[slower], self.seconds[faster])]


def time_against_length(
    lengths=(16, 32, 48, 64, 96, 128, 192, 256, 512, 1024),
    head_width: int = 64,
    heads: int = 8,
    block_size: int = 64,
    repeats: int = 5,
    seed: int = 0,
) -> TimeScaling:
    """Time every method of ``MEMORY_METHODS`` at each length; find linear attention's crossover.

    The crossover is the shortest n in ``lengths`` from which linear attention is faster than
    softmax attention (chapter 3's, the same plain PyTorch operations) at every longer length.
    """
    generator = torch.Generator().manual_seed(seed)
    seconds = {name: [] for name in MEMORY_METHODS}
    for n in lengths:
        q, k, v = torch.randn(3, 1, heads, n, head_width, generator=generator)  # (1, h, n, d)
        for name, method in MEMORY_METHODS.items():
            kwargs = {"block_size": block_size} if method is tiled_attention else {}
            seconds[name].append(_cpu_seconds(repeats, method, q, k, v, **kwargs))
    faster = [
        lin < soft
        for lin, soft in zip(seconds["linear attention"], seconds["softmax attention (chapter 3)"])
    ]
    crossover = None
    for i in range(len(lengths)):
        if all(faster[i:]):
            crossover = lengths[i]
            break
    return TimeScaling(list(lengths), head_width, heads, block_size, seconds, crossover)


def recall_batch(
    batch_size: int,
    generator: torch.Generator,
    num_pairs: int = 16,
    num_keys: int = 32,
    num_values: int = 16,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Chapter 3's associative recall, with more keys than the attention is wide.

    A source of ``num_pairs`` (key, value) pairs: distinct key tokens drawn from
    ``num_keys``, values from ``num_values``; every key is asked once, in random order, and
    the target is the value stored with it. Returns ``(key_tokens, value_tokens, queries,
    targets)``, each ``(B, num_pairs)``: S = L = num_pairs.
    """
    keys = torch.argsort(torch.rand(batch_size, num_keys, generator=generator), dim=1)
    keys = keys[:, :num_pairs]  # (B, S): distinct keys
    values = torch.randint(0, num_values, (batch_size, num_pairs), generator=generator)  # (B, S)
    order = torch.argsort(torch.rand(batch_size, num_pairs, generator=generator), dim=1)
    return keys, values, keys.gather(1, order), values.gather(1, order)  # ..., (B, L), (B, L)


class RecallModel(nn.Module):
    """Embeddings -> one attention layer (softmax or linear) -> linear read-out.

    The two kinds have the same parameters; only the similarity differs:
    ``exp(q^T k / sqrt(d))`` for softmax, ``phi(q)^T phi(k)`` with ``phi = elu + 1`` for linear.
    """

    def __init__(self, kind: str, width: int = 8, num_keys: int = 32, num_values: int = 16):
        super().__init__()
        if kind not in ("softmax", "linear"):
            raise ValueError(f"kind must be 'softmax' or 'linear', got {kind!r}")
        self.kind = kind
        self.key_embedding = nn.Embedding(num_keys, width)
        self.value_embedding = nn.Embedding(num_values, width)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.readout = nn.Linear(width, num_values)

    def forward(self, key_tokens: Tensor, value_tokens: Tensor, queries: Tensor) -> Tensor:
        keys = self.k_proj(self.key_embedding(key_tokens))  # (B, S, d)
        query = self.q_proj(self.key_embedding(queries))  # (B, L, d)
        values = self.value_embedding(value_tokens)  # (B, S, d)
        if self.kind == "softmax":
            context = F.scaled_dot_product_attention(query, keys, values)  # (B, L, d)
        else:
            context = linear_attention(query, keys, values)  # (B, L, d)
        return self.readout(context)  # (B, L, num_values) logits

    def weights(self, key_tokens: Tensor, queries: Tensor) -> Tensor:
        """The attention weights ``(B, L, S)`` that ``forward`` averages the values with."""
        keys = self.k_proj(self.key_embedding(key_tokens))  # (B, S, d)
        query = self.q_proj(self.key_embedding(queries))  # (B, L, d)
        if self.kind == "softmax":
            return torch.softmax(query @ keys.transpose(-2, -1) / math.sqrt(keys.shape[-1]), -1)
        return kernel_attention(query, keys, keys)[1]  # phi(q)^T phi(k), row-normalised


@dataclass
class RecallComparison:
    """Softmax vs linear attention on associative recall, same model size, over seeds."""

    seeds: list[int]
    accuracy: dict[str, list[float]]  # "softmax" / "linear" -> test accuracy per seed
    weight_on_answer: dict[str, list[float]]  # mean attention weight on the asked key, per seed
    parameters: int  # the same for both kinds
    chance: float  # 1 / num_values: a guess among the value tokens
    num_pairs: int  # S
    num_keys: int
    width: int  # d


def recall_softmax_vs_linear(
    seeds=(0,),
    steps: int = 600,
    width: int = 8,
    num_pairs: int = 16,
    num_keys: int = 32,
    num_values: int = 16,
    batch_size: int = 64,
    lr: float = 3e-3,
    test_size: int = 1000,
) -> RecallComparison:
    """Train a softmax and a linear ``RecallModel`` per seed (Adam, ``steps`` batches), then
    measure accuracy on ``test_size`` fresh sources. Same data, initial weights and steps."""
    accuracy = {"softmax": [], "linear": []}
    weight_on_answer = {"softmax": [], "linear": []}
    sizes = dict(num_pairs=num_pairs, num_keys=num_keys, num_values=num_values)
    for seed in seeds:
        for kind in accuracy:
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            model = RecallModel(kind, width, num_keys, num_values)
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            for _ in range(steps):
                key_tokens, value_tokens, queries, targets = recall_batch(
                    batch_size, generator, **sizes
                )
                logits = model(key_tokens, value_tokens, queries)  # (B, L, V)
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            test_generator = torch.Generator().manual_seed(1_000_003 + seed)
            key_tokens, value_tokens, queries, targets = recall_batch(
                test_size, test_generator, **sizes
            )
            with torch.no_grad():
                predicted = model(key_tokens, value_tokens, queries).argmax(-1)  # (B, L)
                weights = model.weights(key_tokens, queries)  # (B, L, S)
            accuracy[kind].append((predicted == targets).float().mean().item())
            asked = queries.unsqueeze(-1) == key_tokens.unsqueeze(-2)  # (B, L, S): one True a row
            weight_on_answer[kind].append(weights[asked].mean().item())
    parameters = sum(p.numel() for p in model.parameters())
    return RecallComparison(
        list(seeds),
        accuracy,
        weight_on_answer,
        parameters,
        1.0 / num_values,
        num_pairs,
        num_keys,
        width,
    )


class _OperatorLog(TorchDispatchMode):
    """Records the name of every ATen operator called inside the block."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def sdpa_operators(query: Tensor, key: Tensor, value: Tensor, **kwargs) -> list[str]:
    """The ATen operators ``F.scaled_dot_product_attention(query, key, value, **kwargs)`` runs.

    One fused ``_scaled_dot_product_flash_attention_for_cpu`` means the flash kernel ran; a
    ``bmm``, ``_safe_softmax``, ``bmm`` sequence means the math backend (the L x S matrix).
    """
    with torch.no_grad(), _OperatorLog() as log:
        F.scaled_dot_product_attention(query, key, value, **kwargs)
    return log.names


@dataclass
class GroupedQueryCheck:
    """``enable_gqa=True`` against repeating each key/value head for its group of query heads."""

    query_heads: int  # h
    kv_heads: int  # g, each shared by h / g query heads
    max_abs_difference: float  # between the two outputs
    kv_bytes: int  # K and V as stored with g heads (what a KV cache keeps)
    kv_bytes_repeated: int  # K and V repeated to h heads
    peak_bytes_gqa: int  # peak_tensor_bytes of SDPA with enable_gqa=True
    peak_bytes_repeated: int  # peak_tensor_bytes of repeat_interleave + SDPA


def grouped_query_attention_check(
    query_heads: int = 8,
    kv_heads: int = 2,
    length: int = 256,
    head_width: int = 32,
    seed: int = 0,
) -> GroupedQueryCheck:
    """Grouped-query attention (Ainslie et al., 2023) through ``enable_gqa``, checked and sized."""
    generator = torch.Generator().manual_seed(seed)
    group = query_heads // kv_heads
    q = torch.randn(1, query_heads, length, head_width, generator=generator)  # (1, h, L, d)
    k, v = torch.randn(2, 1, kv_heads, length, head_width, generator=generator)  # (1, g, S, d)

    def grouped():
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # (1, h, L, d)

    def repeated():
        # query head i uses key/value head i // group: (1, g, S, d) -> (1, h, S, d)
        k_full = k.repeat_interleave(group, dim=1)
        v_full = v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k_full, v_full)

    with torch.no_grad():
        difference = (grouped() - repeated()).abs().max().item()
    return GroupedQueryCheck(
        query_heads=query_heads,
        kv_heads=kv_heads,
        max_abs_difference=difference,
        kv_bytes=2 * k.numel() * k.element_size(),
        kv_bytes_repeated=2 * k.numel() * k.element_size() * group,
        peak_bytes_gqa=peak_tensor_bytes(grouped),
        peak_bytes_repeated=peak_tensor_bytes(repeated),
    )
