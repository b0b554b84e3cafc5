"""Chapter 4's graded questions: positions, the causal mask, heads, and multi-head attention.

- ``ch04.sinusoidal_positions(length, dim)``: Vaswani et al.'s encoding, (length, dim) float32;
- ``ch04.causal_mask(length)``: (length, length) bool, True = may attend (the course convention);
- ``ch04.split_heads(x, num_heads)`` and ``ch04.merge_heads(x)``: (B, L, E) <-> (B, h, L, d);
- ``ch04.MultiHeadAttention``: a CLASS, graded against ``nn.MultiheadAttention(batch_first=True)``
  whose weights are copied into the answer's ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``.

Every wrong answer the course warns about has a mistake model (what that answer computes), so the
hint names the mistake; ``tests/test_grader_ch04.py`` is the catalogue.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from attention_course.attention.multihead import causal_mask as reference_causal_mask
from attention_course.attention.multihead import merge_heads as reference_merge_heads
from attention_course.attention.multihead import (
    sinusoidal_positions as reference_sinusoidal_positions,
)
from attention_course.attention.multihead import split_heads as reference_split_heads

from ..core import Question, Test, _cotangent, _float_tensors, call_args
from ..hints import NO_GRAD_TO, ROWS_NOT_ONE
from ..inputs import randn as _randn
from ..judges import (
    Fail,
    expect_close,
    expect_grads,
    expect_sequence,
    expect_tensor,
    expect_unchanged,
)

# Hints, one per plausible mistake (tests/test_grader_ch04.py checks each is named when made).
SIN_COS_SWAPPED = "sines go on the EVEN features (0, 2, 4, ...) and cosines on the odd ones"
NOT_INTERLEAVED = (
    "interleave sin and cos: feature 2i is sin, feature 2i+1 is cos of the SAME frequency "
    "(not all sines in the first half and all cosines in the second)"
)
PAIR_EXPONENT = (
    "features 2i and 2i+1 share one frequency, 1 / 10000^(2i/dim): use the even index 2i "
    "for both, not each feature's own index"
)
MISSING_TWO = "the exponent is 2i/dim with i the pair index (0, 1, ...): you used i/dim"
MULTIPLIED_FREQ = "divide the position by 10000^(2i/dim); don't multiply it"
FROM_ONE = "positions start at 0: the first row is sin(0) = 0, cos(0) = 1"
TRANSPOSED_PE = "return (length, dim): one row per position"
CAUSAL_FLIPPED = (
    "the mask polarity is flipped: in this course True means MAY attend (the lower triangle); "
    "True = may NOT attend is nn.MultiheadAttention's convention"
)
CAUSAL_TRANSPOSED = (
    "the mask is transposed: row i is query i, and it may attend to keys j <= i "
    "(the LOWER triangle, torch.tril)"
)
CAUSAL_NO_DIAGONAL = "off by one: a position may attend to itself, keep the diagonal (j <= i)"
CAUSAL_PEEKS = "off by one: query i may attend to keys j <= i only, not j = i + 1"
CAUSAL_DTYPE = "return a boolean mask (dtype torch.bool), True = may attend, not 0/1 or 0/-inf"
SPLIT_VIEW = (
    "x.view(B, h, L, d) cuts the memory in the wrong order and mixes positions into heads: "
    "view as (B, L, h, d) first, then transpose(1, 2)"
)
SPLIT_SIZES = (
    "a reshape got sizes that do not fit: split each of query, key and value with its OWN "
    "length (L for the queries, S for keys and values) and d = embed_dim // num_heads"
)
SPLIT_NO_TRANSPOSE = "after view(B, L, h, d), transpose(1, 2) so that heads come before length"
SPLIT_INTERLEAVED = (
    "head i owns the contiguous block of features i*d:(i+1)*d; you gave it every h-th feature "
    "(view as (B, L, h, d), not (B, L, d, h))"
)
MERGE_NO_TRANSPOSE = (
    "reshaping (B, h, L, d) straight to (B, L, E) mixes heads and positions: "
    "transpose(1, 2) first, then reshape"
)
MERGE_INTERLEAVED = (
    "concatenate the heads' features head after head (B, L, h, d) -> (B, L, h*d); "
    "you interleaved them"
)
NOT_CONTIGUOUS = (
    "after transpose the tensor is not contiguous, so .view fails: use .reshape, "
    "or .contiguous().view"
)
MHA_NAMES = (
    "name the four projections q_proj, k_proj, v_proj and out_proj, each nn.Linear(embed_dim, "
    "embed_dim, bias=bias), so the grader can copy nn.MultiheadAttention's weights into them"
)
MHA_SIGNATURE = (
    "the class is built as MultiHeadAttention(embed_dim, num_heads, bias=True) and called as "
    "forward(query, key, value, attn_mask=None, key_padding_mask=None, need_weights=True, "
    "average_attn_weights=True)"
)
MHA_MODEL_SCALE = (
    "scale the scores by 1/sqrt(d) with d = embed_dim // num_heads, the HEAD width, "
    "not the model width"
)
MHA_NO_SCALE = "scale the scores by 1/sqrt(d), d = embed_dim // num_heads"
MHA_BATCH_FIRST = (
    "the inputs are batch first, (B, L, E): you treated them as (L, B, E) "
    "(nn.MultiheadAttention's default batch_first=False), which attends across the batch"
)
MHA_NO_OUT_PROJ = "apply out_proj (W^O) to the concatenated heads"
MHA_ATTN_FLIPPED = (
    "attn_mask polarity is flipped: in this course True means MAY attend "
    "(convert PyTorch's True = may NOT attend with ~mask)"
)
MHA_PAD_FLIPPED = (
    "key_padding_mask polarity is flipped: here True marks a real key that MAY be attended, "
    "False marks padding"
)
MHA_PAD_AXIS = (
    "key_padding_mask (B, S) masks KEYS: view it as (B, 1, 1, S) so it broadcasts over heads "
    "and queries"
)
MHA_AVERAGE_AXIS = (
    "average the per-head weights (B, h, L, S) over the HEAD axis, dim=1, to get (B, L, S)"
)
MHA_AVERAGE_MISSING = (
    "by default return the weights averaged over heads, (B, L, S), like nn.MultiheadAttention; "
    "per head (B, h, L, S) only when average_attn_weights=False"
)
MHA_SUMMED = "average the heads' weights (mean over dim 1), don't sum them: rows must sum to 1"
MHA_PER_HEAD = "with average_attn_weights=False return the weights per head, (B, h, L, S)"


def _case_suffix(text: str):
    """Re-raise a Fail with a description of the case appended."""

    def decorate(judge):
        @functools.wraps(judge)
        def wrapped(case):
            try:
                judge(case)
            except Fail as failure:
                raise Fail(f"{failure} [case: {text(case)}]") from None

        return wrapped

    return decorate


# --------------------------------------------------------------------------- sinusoidal_positions


def _pe_variant(length, dim, *, swap=False, blocks=False, own_index=False, no_two=False,
                multiply=False, start=0):  # fmt: skip
    """The encoding with one mistake switched on (the defaults give the right answer)."""
    pos = torch.arange(start, start + length, dtype=torch.float64)[:, None]  # (length, 1)
    feature = torch.arange(dim, dtype=torch.float64)  # (dim,)
    if own_index:
        exponent = feature / dim  # 10000^(j/dim) for feature j: pairs do not share
    elif no_two:
        exponent = torch.div(feature, 2, rounding_mode="floor") / dim
    else:
        exponent = 2 * torch.div(feature, 2, rounding_mode="floor") / dim
    scale = 10000.0**exponent
    angle = pos * scale if multiply else pos / scale  # (length, dim)
    if blocks:
        half = angle[:, 0::2]  # one angle per pair
        return torch.cat([torch.sin(half), torch.cos(half)], dim=1)
    even = (torch.arange(dim) % 2 == 0)[None, :]
    if swap:
        even = ~even
    return torch.where(even, torch.sin(angle), torch.cos(angle))


def _pe_mistakes(length, dim):
    def model(**kw):
        return functools.partial(_pe_variant, length, dim, **kw)

    return [
        (SIN_COS_SWAPPED, model(swap=True)),
        (NOT_INTERLEAVED, model(blocks=True)),
        (NOT_INTERLEAVED, model(blocks=True, swap=True)),
        (PAIR_EXPONENT, model(own_index=True)),
        (MISSING_TWO, model(no_two=True)),
        (MULTIPLIED_FREQ, model(multiply=True)),
        (FROM_ONE, model(start=1)),
    ]


def _judge_pe_shape(case):
    length, dim = case.args[:2]
    out = case.output
    if (
        isinstance(out, torch.Tensor)
        and tuple(out.shape) == (dim, length)
        and tuple(out.shape) != (length, dim)
    ):
        raise Fail(TRANSPOSED_PE)
    expect_tensor(out, case.expected, "positions")


def _judge_pe(case):
    _judge_pe_shape(case)
    length, dim = case.args[:2]
    mistakes = _pe_mistakes(length, dim)
    try:
        expect_close(case.output, case.expected, "positions", mistakes=mistakes, atol=1e-4)
    except Fail as failure:
        if not str(failure).startswith("wrong values"):
            raise
        # Some mistakes (a multiplied frequency) make angles so large that float32 and float64
        # disagree: compare the first rows and features only, where the angles stay small.
        block = (slice(0, 4), slice(0, 4))
        out, ref = case.output.double()[block], case.expected.double()[block]
        for hint, make in mistakes:
            wrong = make()[block]
            if torch.allclose(out, wrong, atol=1e-3) and not torch.allclose(wrong, ref, atol=1e-3):
                raise Fail(f"wrong `positions`: {hint}") from None
        raise


def _pe_shape_inputs(g):
    return [call_args(10, 16), call_args(1, 4), call_args(7, 6)]


def _pe_value_inputs(g):
    return [call_args(50, 16), call_args(13, 6), call_args(100, 64), call_args(3, 2)]


def _pe_property_inputs(g):
    return [call_args(30, 8), call_args(64, 32)]


def _judge_pe_relative(case):
    """Dot products depend only on distance, and position 0 is (0, 1, 0, 1, ...)."""
    _judge_pe_shape(case)
    pe = case.output.double()
    first = torch.tensor([0.0, 1.0] * (pe.shape[1] // 2), dtype=torch.float64)
    if not torch.allclose(pe[0], first, atol=1e-5):
        _judge_pe(case)  # let a mistake model name what went wrong
        raise Fail(FROM_ONE)
    similarity = pe @ pe.T
    for k in (1, 3):
        diagonal = similarity.diagonal(k)
        if not torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-3):
            _judge_pe(case)
            raise Fail(
                "PE[pos] . PE[pos + k] should not depend on pos: sin and cos of each pair "
                "must share one frequency"
            )


SINUSOIDAL_POSITIONS = Question(
    id="ch04.sinusoidal_positions",
    answer="sinusoidal_positions",
    reference=reference_sinusoidal_positions,
    title="sinusoidal_positions(length, dim) -> (length, dim) float32, Vaswani et al. 3.5",
    arg_names=("length", "dim"),
    tests=(
        Test("returns a (length, dim) float32 tensor", _pe_shape_inputs, _judge_pe_shape),
        Test(
            "PE[pos, 2i] = sin(pos / 10000^(2i/dim)), PE[pos, 2i+1] = cos(...)",
            _pe_value_inputs,
            _judge_pe,
        ),
        Test(
            "position 0 is (0, 1, 0, 1, ...) and PE[pos] . PE[pos + k] depends only on k",
            _pe_property_inputs,
            _judge_pe_relative,
        ),
    ),
)


# --------------------------------------------------------------------------- causal_mask


def _causal_mistakes(length):
    ones = torch.ones(length, length, dtype=torch.bool)
    return [
        (CAUSAL_FLIPPED, lambda: ones.triu(1)),
        (CAUSAL_TRANSPOSED, lambda: ones.triu()),
        (CAUSAL_NO_DIAGONAL, lambda: ones.tril(-1)),
        (CAUSAL_PEEKS, lambda: ones.tril(1)),
        (CAUSAL_FLIPPED, lambda: ones.tril(-1).logical_not()),
    ]


def _judge_causal(case):
    (length,) = case.args[:1]
    out = case.output
    if isinstance(out, torch.Tensor) and out.dtype != torch.bool:
        if tuple(out.shape) == (length, length):
            raise Fail(CAUSAL_DTYPE)
    expect_close(out, case.expected, "mask", mistakes=_causal_mistakes(length), atol=0, rtol=0)


def _judge_causal_shape(case):
    expect_tensor(case.output, case.expected, "mask", dtype=False)
    if case.output.dtype != torch.bool:
        raise Fail(CAUSAL_DTYPE)


def _judge_causal_rows(case):
    (length,) = case.args[:1]
    expect_tensor(case.output, case.expected, "mask", dtype=False)
    if case.output.dtype != torch.bool:
        raise Fail(CAUSAL_DTYPE)
    counts = case.output.sum(-1)
    if not torch.equal(counts, torch.arange(1, length + 1)):
        _judge_causal(case)  # name the mistake if a model matches
        raise Fail(
            f"query i must be allowed exactly i + 1 keys (0..i); your rows allow {counts.tolist()}"
        )


def _causal_inputs(g):
    return [call_args(5), call_args(9), call_args(2), call_args(1)]  # length 1 is ambiguous: last


CAUSAL_MASK = Question(
    id="ch04.causal_mask",
    answer="causal_mask",
    reference=reference_causal_mask,
    title="causal_mask(length) -> (length, length) bool, True = may attend (j <= i)",
    arg_names=("length",),
    tests=(
        Test("returns a (length, length) boolean tensor", _causal_inputs, _judge_causal_shape),
        Test("True exactly where key j <= query i", _causal_inputs, _judge_causal),
        Test("query i may attend to i + 1 keys: itself and the past", _causal_inputs,
             _judge_causal_rows),
    ),
)  # fmt: skip


# --------------------------------------------------------------------------- split / merge heads


def _split_mistakes(x, num_heads):
    B, L, E = x.shape
    d = E // num_heads
    return [
        (SPLIT_NO_TRANSPOSE, lambda: x.reshape(B, L, num_heads, d)),
        (SPLIT_VIEW, lambda: x.reshape(B, num_heads, L, d)),
        (SPLIT_INTERLEAVED, lambda: x.reshape(B, L, d, num_heads).permute(0, 3, 1, 2)),
        (SPLIT_VIEW, lambda: x.reshape(B, L, num_heads, d).permute(0, 2, 1, 3).transpose(2, 3)),
    ]


def _judge_split_shape(case):
    x, num_heads = case.args[:2]
    B, L, E = x.shape
    out = case.output
    if isinstance(out, torch.Tensor) and tuple(out.shape) != tuple(case.expected.shape):
        if tuple(out.shape) == (B, L, num_heads, E // num_heads):
            raise Fail(SPLIT_NO_TRANSPOSE)
    expect_tensor(out, case.expected, "heads")


def _judge_split(case):
    x, num_heads = case.args[:2]
    B, L, E = x.shape
    _judge_split_shape(case)
    expect_close(
        case.output, case.expected, "heads", mistakes=_split_mistakes(x, num_heads), atol=0
    )


def _judge_split_unchanged(case):
    expect_unchanged(case, ["x", "num_heads"])
    _judge_split(case)


def _split_inputs(g):
    return [
        call_args(_randn(g, 2, 5, 12), 3),
        call_args(_randn(g, 1, 1, 8), 2),
        call_args(_randn(g, 3, 4, 6), 1),
        call_args(_randn(g, 2, 7, 16), 4),
    ]


def _split_round_inputs(g):
    return [call_args(_randn(g, 2, 3, 8), 4), call_args(_randn(g, 4, 9, 10), 5)]


SPLIT_HEADS = Question(
    id="ch04.split_heads",
    answer="split_heads",
    reference=reference_split_heads,
    title="split_heads(x, num_heads): (B, L, E) -> (B, h, L, d), head i owns features i*d:(i+1)*d",
    arg_names=("x", "num_heads"),
    tests=(
        Test("returns (B, h, L, d)", _split_inputs, _judge_split_shape),
        Test("head i of position l holds features i*d:(i+1)*d of x[:, l]", _split_inputs,
             _judge_split),
        Test("does not change its input", _split_round_inputs, _judge_split_unchanged),
    ),
)  # fmt: skip


def _merge_mistakes(x):
    B, h, L, d = x.shape
    return [
        (MERGE_NO_TRANSPOSE, lambda: x.reshape(B, L, h * d)),
        (MERGE_INTERLEAVED, lambda: x.permute(0, 2, 3, 1).reshape(B, L, h * d)),
    ]


def _judge_merge_shape(case):
    expect_tensor(case.output, case.expected, "merged")


def _judge_merge(case):
    (x,) = case.args[:1]
    expect_close(case.output, case.expected, "merged", mistakes=_merge_mistakes(x), atol=0)


def _judge_merge_unchanged(case):
    expect_unchanged(case, ["x"])
    _judge_merge(case)


def _merge_inputs(g):
    return [
        call_args(_randn(g, 2, 3, 5, 4)),
        call_args(_randn(g, 1, 2, 1, 4)),
        call_args(_randn(g, 3, 1, 4, 6)),
        call_args(_randn(g, 2, 4, 7, 2)),
    ]


MERGE_HEADS = Question(
    id="ch04.merge_heads",
    answer="merge_heads",
    reference=reference_merge_heads,
    title="merge_heads(x): (B, h, L, d) -> (B, L, E), the heads concatenated head after head",
    arg_names=("x",),
    error_hints=((r"view size is not compatible|contiguous", NOT_CONTIGUOUS),),
    tests=(
        Test("returns (B, L, h*d)", _merge_inputs, _judge_merge_shape),
        Test("Concat(head_1, ..., head_h) at every position", _merge_inputs, _judge_merge),
        Test("does not change its input", _merge_inputs, _judge_merge_unchanged),
    ),
)  # fmt: skip

# --------------------------------------------------------------------------- MultiHeadAttention


class TorchMultiheadReference(nn.Module):
    """The reference answer: ``nn.MultiheadAttention(batch_first=True)`` behind the course's
    interface (q/k/v/out projections as state-dict keys, masks True = may attend)."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True):
        super().__init__()
        self.layer = nn.MultiheadAttention(embed_dim, num_heads, bias=bias, batch_first=True)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        names = ("q_proj", "k_proj", "v_proj")
        packed = {
            "in_proj_weight": torch.cat([state_dict[f"{n}.weight"] for n in names]),
            "out_proj.weight": state_dict["out_proj.weight"],
        }
        if self.layer.in_proj_bias is not None:
            packed["in_proj_bias"] = torch.cat([state_dict[f"{n}.bias"] for n in names])
            packed["out_proj.bias"] = state_dict["out_proj.bias"]
        return self.layer.load_state_dict(packed, strict=strict, assign=assign)

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None,
                need_weights=True, average_attn_weights=True):  # fmt: skip
        flip = lambda m: None if m is None else ~m  # noqa: E731 - course -> PyTorch convention
        return self.layer(
            query,
            key,
            value,
            attn_mask=flip(attn_mask),
            key_padding_mask=flip(key_padding_mask),
            need_weights=need_weights,
            average_attn_weights=average_attn_weights,
        )


def _build_multihead(answer, inputs):
    """``answer(embed_dim, num_heads[, bias=False])`` with the case's weights loaded. Extra
    buffers or parameters of the answer's own are allowed; the four projections must load."""
    extra = {} if inputs["bias"] else {"bias": False}
    layer = answer(inputs["embed_dim"], inputs["num_heads"], **extra)
    loaded = layer.load_state_dict(inputs["state"], strict=False)
    unexpected = list(getattr(loaded, "unexpected_keys", []) or [])
    if unexpected:  # a projection the layer does not have under the contract's name
        raise KeyError(f"Unexpected key(s) in state_dict: {sorted(unexpected)}")
    layer.eval()
    return layer


def _multihead_kwargs(inputs) -> dict:
    kwargs = {}
    for name in ("attn_mask", "key_padding_mask"):
        if inputs[name] is not None:
            kwargs[name] = inputs[name]
    if not inputs["average"]:
        kwargs["average_attn_weights"] = False
    return kwargs


def run_multihead(answer, inputs):
    """Build ``answer(embed_dim, num_heads[, bias=False])``, load the weights, call it.

    Masks and ``average_attn_weights`` are passed only when a case uses them, so a first
    version without masks can already earn the tests that need none.
    """
    layer = _build_multihead(answer, inputs)
    with torch.no_grad():
        output = layer(inputs["query"], inputs["key"], inputs["value"], **_multihead_kwargs(inputs))
    if isinstance(output, tuple | list):
        return tuple(output)
    return output


def run_multihead_grad(answer, inputs):
    """Gradient flow through the layer: back-propagate a fixed direction from (output, weights)
    to the inputs (compared with the reference) and to every parameter (must exist)."""
    layer = _build_multihead(answer, inputs)
    leaves = {n: inputs[n].detach().clone().requires_grad_(True) for n in ("query", "key", "value")}
    output = layer(leaves["query"], leaves["key"], leaves["value"], **_multihead_kwargs(inputs))
    outs = [t for t in _float_tensors(output, []) if t.requires_grad]
    params = dict(layer.named_parameters(remove_duplicate=False))
    wanted = [n for n in inputs["state"] if n in params]
    grads = {name: None for name in leaves}
    # per weight: did a gradient reach it (None: not a parameter of this layer, e.g. the
    # reference packs q, k, v into one in_proj_weight)
    reached = {name: (False if name in params else None) for name in inputs["state"]}
    if outs:
        cots = [_cotangent(t, i) for i, t in enumerate(outs)]
        found = torch.autograd.grad(
            outs, [*leaves.values(), *(params[n] for n in wanted)], cots, allow_unused=True
        )
        grads = dict(zip(leaves, found[: len(leaves)]))
        reached.update({n: g is not None for n, g in zip(wanted, found[len(leaves) :])})
    return {"output": output, "connected": bool(outs), "grads": grads, "params": reached}


def _judge_mha_grads(case):
    expect_grads(case, ("query", "key", "value"))
    params = case.output.get("params")
    for name in case.inputs["state"]:
        if not isinstance(params, dict) or params.get(name) is False:
            raise Fail(NO_GRAD_TO.format(name=name))


def _mha_case(g, B, L, S, E, h, *, bias=True, self_attention=False, attn_mask=None,
              key_padding_mask=None, average=True):  # fmt: skip
    query = _randn(g, B, L, E)
    key, value = (query, query) if self_attention else (_randn(g, B, S, E), _randn(g, B, S, E))
    state = {
        "q_proj.weight": _randn(g, E, E, scale=E**-0.5),
        "k_proj.weight": _randn(g, E, E, scale=E**-0.5),
        "v_proj.weight": _randn(g, E, E, scale=E**-0.5),
        "out_proj.weight": _randn(g, E, E, scale=E**-0.5),
    }
    if bias:
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"{name}.bias"] = _randn(g, E, scale=0.1)
    return {
        "embed_dim": E,
        "num_heads": h,
        "bias": bias,
        "state": state,
        "query": query,
        "key": key,
        "value": value,
        "attn_mask": attn_mask,
        "key_padding_mask": key_padding_mask,
        "average": average,
    }


def _mha_variant(inputs, *, split="ok", merge="ok", scale="head", seq_first=False,
                 attn_polarity=True, pad_polarity=True, pad_axis="keys", out_proj=True,
                 average="heads", empty="zeros"):  # fmt: skip
    """Multi-head attention (float64) with one mistake switched on; returns (output, weights)."""
    state = {k: v.double() for k, v in inputs["state"].items()}
    q_in, k_in, v_in = (inputs[n].double() for n in ("query", "key", "value"))
    if seq_first:  # read (B, L, E) as (L, B, E): attend across the batch
        variant = dict(inputs, query=q_in.transpose(0, 1), key=k_in.transpose(0, 1),
                       value=v_in.transpose(0, 1))  # fmt: skip
        out, w = _mha_variant(variant)
        return out.transpose(0, 1), w
    E, h = inputs["embed_dim"], inputs["num_heads"]
    d = E // h

    def linear(x, name):
        y = x @ state[f"{name}.weight"].T
        return y + state[f"{name}.bias"] if f"{name}.bias" in state else y

    def split_heads(x):
        B, n, _ = x.shape
        if split == "view":
            return x.reshape(B, h, n, d)
        return x.reshape(B, n, h, d).transpose(1, 2)

    q, k, v = (split_heads(linear(x, n)) for x, n in ((q_in, "q_proj"), (k_in, "k_proj"),
                                                       (v_in, "v_proj")))  # fmt: skip
    B, _, L, _ = q.shape
    S = k.shape[2]
    factor = {"head": math.sqrt(d), "model": math.sqrt(E), "none": 1.0}[scale]
    scores = q @ k.transpose(-2, -1) / factor  # (B, h, L, S)
    allowed = torch.ones(B, 1, L, S, dtype=torch.bool)
    if inputs["attn_mask"] is not None:
        m = inputs["attn_mask"]
        allowed = allowed & (m if attn_polarity else ~m)
    if inputs["key_padding_mask"] is not None:
        p = inputs["key_padding_mask"] if pad_polarity else ~inputs["key_padding_mask"]
        allowed = allowed & (p.view(B, 1, 1, S) if pad_axis == "keys" else p.view(B, 1, S, 1))
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    if empty == "zeros":  # a query with no allowed key: zeros (the course), or NaN (softmax)
        weights = torch.nan_to_num(weights, nan=0.0)
    context = weights @ v  # (B, h, L, d)
    if merge == "reshape":
        merged = context.reshape(B, L, E)
    else:
        merged = context.transpose(1, 2).reshape(B, L, E)
    output = linear(merged, "out_proj") if out_proj else merged
    if inputs["average"]:
        if average == "heads":
            weights = weights.mean(1)
        elif average == "batch":
            weights = weights.mean(0)
        elif average == "sum":
            weights = weights.sum(1)
    return output, weights


def _mha_mistakes(inputs):
    def model(**kw):
        return functools.cache(functools.partial(_mha_variant, inputs, **kw))

    mistakes = [
        (MHA_MODEL_SCALE, model(scale="model")),
        (MHA_NO_SCALE, model(scale="none")),
        (SPLIT_VIEW, model(split="view")),
        (MERGE_NO_TRANSPOSE, model(merge="reshape")),
        (SPLIT_VIEW, model(split="view", merge="reshape")),
        (MHA_NO_OUT_PROJ, model(out_proj=False)),
    ]
    if inputs["attn_mask"] is None and inputs["key_padding_mask"] is None:
        mistakes.append((MHA_BATCH_FIRST, model(seq_first=True)))
    for empty in ("zeros", "nan"):  # flipped masks leave rows with no allowed key
        if inputs["attn_mask"] is not None:
            mistakes.append((MHA_ATTN_FLIPPED, model(attn_polarity=False, empty=empty)))
        if inputs["key_padding_mask"] is not None:
            mistakes += [
                (MHA_PAD_FLIPPED, model(pad_polarity=False, empty=empty)),
                (MHA_PAD_AXIS, model(pad_axis="queries", empty=empty)),
            ]
    if inputs["average"]:
        mistakes += [(MHA_AVERAGE_AXIS, model(average="batch")), (MHA_SUMMED, model(average="sum"))]
    return mistakes


def _describe_mha(case) -> str:
    x = case.inputs
    B, L, E = x["query"].shape
    text = f"B={B}, L={L}, S={x['key'].shape[1]}, E={E}, num_heads={x['num_heads']}"
    if not x["bias"]:
        text += ", bias=False"
    for name in ("attn_mask", "key_padding_mask"):
        if x[name] is not None:
            text += f", {name} {tuple(x[name].shape)}"
    if not x["average"]:
        text += ", average_attn_weights=False"
    return text


def _check_weights_shape(weights, expected, inputs):
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) == tuple(expected.shape):
        return
    B, L, _ = inputs["query"].shape
    S, h = inputs["key"].shape[1], inputs["num_heads"]
    if B != L and tuple(weights.shape)[-3:] == (L, B, B):
        raise Fail(MHA_BATCH_FIRST)  # attention over the batch axis: (L, B, B) weights
    if inputs["average"]:
        if tuple(weights.shape) == (B, h, L, S):
            raise Fail(MHA_AVERAGE_MISSING)
        if weights.dim() == 3 or tuple(weights.shape) in {(h, L, S), (B, h, L), (B, h, S)}:
            raise Fail(MHA_AVERAGE_AXIS)
    elif tuple(weights.shape) == (B, L, S):
        raise Fail(MHA_PER_HEAD)


@_case_suffix(_describe_mha)
def _judge_mha_shapes(case):
    expect_sequence(case.output, 2, "(output, weights)")
    expected_output, expected_weights = case.expected
    expect_tensor(case.output[0], expected_output, "output")
    _check_weights_shape(case.output[1], expected_weights, case.inputs)
    expect_tensor(case.output[1], expected_weights, "weights")


def _judge_mha_values(case):
    expect_sequence(case.output, 2, "(output, weights)")
    output, weights = case.output
    expected_output, expected_weights = case.expected
    mistakes = _mha_mistakes(case.inputs)
    # output first: the batch-first trap changes the output, an averaging slip only the weights
    expect_close(output, expected_output, "output",
                 mistakes=[(hint, lambda m=m: m()[0]) for hint, m in mistakes])  # fmt: skip
    _check_weights_shape(weights, expected_weights, case.inputs)
    expect_close(weights, expected_weights, "weights",
                 mistakes=[(hint, lambda m=m: m()[1]) for hint, m in mistakes])  # fmt: skip
    if isinstance(weights, torch.Tensor):
        total = weights.double().sum(-1)
        blocked = case.expected[1].double().sum(-1) == 0
        if not torch.allclose(total[~blocked], torch.ones_like(total[~blocked]), atol=1e-4):
            h = case.inputs["num_heads"]
            summed = torch.allclose(total[~blocked], torch.full_like(total[~blocked], h), atol=1e-3)
            raise Fail(MHA_SUMMED if summed else ROWS_NOT_ONE)


_judge_mha = _case_suffix(_describe_mha)(_judge_mha_values)


@_case_suffix(_describe_mha)
def _judge_mha_masked_zero(case):
    _judge_mha_values(case)
    weights = case.output[1]
    x = case.inputs
    B, L, _ = x["query"].shape
    S = x["key"].shape[1]
    allowed = torch.ones(B, L, S, dtype=torch.bool)
    if x["attn_mask"] is not None:
        allowed = allowed & x["attn_mask"]
    if x["key_padding_mask"] is not None:
        allowed = allowed & x["key_padding_mask"].view(B, 1, S)
    if not x["average"]:
        allowed = allowed[:, None]
    if (weights.masked_select(~allowed.expand_as(weights)) != 0).any():
        raise Fail("masked keys must get exactly zero weight (fill their scores with -inf)")


def _judge_mha_unchanged(case):
    for name in ("query", "key", "value"):
        if not torch.equal(case.inputs[name], case.inputs_after[name]):
            raise Fail(f"your layer changed its input `{name}` in place; work on new tensors")
    _judge_mha(case)


def _padding(g, B, S):
    """(B, S) True = real key; every sequence keeps at least one key, one loses some."""
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    lengths[0] = max(1, S - 2)
    return torch.arange(S)[None, :] < lengths[:, None]


def _mha_shape_inputs(g):
    return [
        _mha_case(g, 2, 5, 5, 8, 2, self_attention=True),
        _mha_case(g, 3, 1, 6, 12, 3),
        _mha_case(g, 2, 4, 4, 8, 4, self_attention=True, average=False),
    ]


def _mha_self_inputs(g):
    return [
        _mha_case(g, 2, 5, 5, 8, 2, self_attention=True),
        _mha_case(g, 4, 6, 6, 16, 4, self_attention=True),  # B == h: averaging axis shows
        _mha_case(g, 3, 1, 1, 12, 3, self_attention=True),
        _mha_case(g, 1, 7, 7, 6, 1, self_attention=True),
    ]


def _mha_batch_first_inputs(g):
    return [
        _mha_case(g, 3, 3, 3, 8, 2, self_attention=True),  # B == L: same shapes either way
        _mha_case(g, 2, 5, 5, 12, 3, self_attention=True),
    ]


def _mha_cross_inputs(g):
    return [_mha_case(g, 2, 3, 7, 8, 2), _mha_case(g, 3, 6, 2, 12, 4)]


def _mha_per_head_inputs(g):
    return [
        _mha_case(g, 2, 5, 5, 8, 2, self_attention=True, average=False),
        _mha_case(g, 3, 4, 6, 12, 3, average=False),
    ]


def _mha_attn_mask_inputs(g):
    return [
        _mha_case(g, 2, 5, 5, 8, 2, self_attention=True, attn_mask=reference_causal_mask(5)),
        _mha_case(g, 3, 6, 6, 12, 3, self_attention=True, attn_mask=reference_causal_mask(6),
                  average=False),
    ]  # fmt: skip


def _mha_padding_inputs(g):
    return [
        _mha_case(g, 3, 6, 6, 8, 2, self_attention=True, key_padding_mask=_padding(g, 3, 6)),
        _mha_case(g, 2, 4, 7, 12, 3, key_padding_mask=_padding(g, 2, 7)),
        _mha_case(g, 2, 5, 5, 8, 4, self_attention=True, attn_mask=reference_causal_mask(5),
                  key_padding_mask=_padding(g, 2, 5)),
    ]  # fmt: skip


def _mha_bias_inputs(g):
    return [
        _mha_case(g, 2, 5, 5, 8, 2, self_attention=True, bias=False),
        _mha_case(g, 2, 3, 4, 12, 3, bias=False),
    ]


MULTI_HEAD_ATTENTION = Question(
    id="ch04.MultiHeadAttention",
    answer="MultiHeadAttention",
    reference=TorchMultiheadReference,
    title="class MultiHeadAttention(embed_dim, num_heads, bias=True), graded against "
    "nn.MultiheadAttention(batch_first=True)",
    run=run_multihead,
    timeout=5.0,
    error_hints=(
        (r"Missing key\(s\)|Unexpected key\(s\)|has no attribute '(q|k|v|out)_proj", MHA_NAMES),
        (r"unexpected keyword argument|positional argument", MHA_SIGNATURE),
        (r"view size is not compatible|contiguous", NOT_CONTIGUOUS),
        (r"invalid for input of size|shape '\[", SPLIT_SIZES),
    ),
    tests=(
        Test("returns (output (B, L, E), weights (B, L, S) averaged over heads)",
             _mha_shape_inputs, _judge_mha_shapes),
        Test("self-attention agrees with nn.MultiheadAttention (copied weights)",
             _mha_self_inputs, _judge_mha),
        Test("batch first: (B, L, E), attention never mixes the sequences of a batch",
             _mha_batch_first_inputs, _judge_mha),
        Test("cross-attention: L queries over S keys", _mha_cross_inputs, _judge_mha),
        Test("average_attn_weights=False returns per-head weights (B, h, L, S)",
             _mha_per_head_inputs, _judge_mha),
        Test("attn_mask (L, S), True = may attend", _mha_attn_mask_inputs,
             _judge_mha_masked_zero),
        Test("key_padding_mask (B, S), True = a real key that may be attended",
             _mha_padding_inputs, _judge_mha_masked_zero),
        Test("bias=False: projections without bias", _mha_bias_inputs, _judge_mha),
        Test("does not change its inputs", _mha_self_inputs, _judge_mha_unchanged),
        Test("gradients reach the inputs and all four projections", _mha_cross_inputs,
             _judge_mha_grads, run=run_multihead_grad),
    ),
)  # fmt: skip

QUESTIONS = [
    SINUSOIDAL_POSITIONS,
    CAUSAL_MASK,
    SPLIT_HEADS,
    MERGE_HEADS,
    MULTI_HEAD_ATTENTION,
]
