"""Chapter 6's graded questions: attention vs self-attention.

- ``ch06.prefix_lm_mask(source_length, target_length)``: the (S+T, S+T) boolean prefix-LM mask,
  True = may attend;
- ``ch06.cross_attention_via_self_attention(attention, source, target)``: cross-attention of
  the target over the source, computed as self-attention over ``[source; target]``; returns
  ``(output (B, T, E), weights (B, T, S+T))``;
- ``ch06.classify_attention_calls(calls)``: "self" or "cross" for every recorded call, from
  where its queries and keys came from (``query_from``, ``key_from``), never from its name;
- ``ch06.count_attention(calls)``: ``(number of self-attention MODULES, number of cross-attention
  MODULES)`` from recorded calls (a module called at every decoder step counts once).

``tests/test_grader_ch06.py`` is the catalogue of wrong answers.
"""

from __future__ import annotations

import torch

from attention_course.attention import MultiHeadAttention, causal_mask
from attention_course.attention.masks import prefix_lm_mask as reference_prefix_lm_mask
from attention_course.versus import (
    classify_attention_call,
)
from attention_course.versus import (
    cross_attention_via_self_attention as reference_cross_via_self,
)

from ..kit import (
    Fail,
    Question,
    Test,
    call_args,
    expect_grads,
    expect_sequence,
    hints,
    judge_outputs,
    outputs_test,
    randn,
    shape_test,
)

# Hints, one per plausible mistake.
PREFIX_FLIPPED = hints.FLIPPED
PREFIX_TRANSPOSED = (
    "the mask is transposed: row i is the QUERY; source rows may not read target columns, "
    "target rows read every source column"
)
PREFIX_NO_SELF = "off by one: target position i may attend to itself (targets 0..i, diagonal kept)"
PREFIX_PEEKS = "off by one: target position i may attend to targets 0..i only, not i + 1"
PREFIX_SOURCE_SEES_TARGET = (
    "source rows must not attend to target columns: the source is read like an encoder's input"
)
PREFIX_CAUSAL_SOURCE = (
    "a plain causal mask over all positions is a GPT, not a prefix LM: source rows see the WHOLE "
    "source, in both directions"
)
PREFIX_BOUNDARY = "off by one at the boundary: the first source_length positions are the source"
PREFIX_TARGET_BLIND = "target rows must attend to every source column as well as to the past"
CROSS_PREFIX = (
    "target rows may attend to the source columns only: with targets visible it is a prefix LM, "
    "not cross-attention"
)
CROSS_FLIPPED = hints.FLIPPED
CROSS_SOURCE_ROWS = "return the TARGET rows (the last T rows), not the first rows"
CROSS_ALL_ROWS = "return only the T target rows, (B, T, E), not every row of the concatenation"
CROSS_ORDER = (
    "concatenate source first, then target ([source; target]): the mask's first S columns are "
    "the source"
)
CROSS_NO_MASK = (
    "without a mask the targets attend to themselves too: mask every target column (True = may "
    "attend, so only the source columns are True)"
)
CLASSIFY_BY_NAME = (
    "classify by provenance (where the keys come from), not by the module's name: a module named "
    "'self_attn' can read another component"
)
CLASSIFY_SWAPPED = (
    "self-attention is the case where the keys come from the SAME place as the queries"
)
CLASSIFY_BY_ENCODER = (
    "keys from an encoder are not always cross-attention: an encoder's own layers read the "
    "encoder too; compare key_from with query_from"
)
COUNT_CALLS = (
    "count attention MODULES, not calls: a module called at every decoder step is one attention "
    "layer"
)
COUNT_BY_NAME = (
    "count by provenance, not by class or name: every module here has an attention class, but "
    "only those whose keys come from their queries' source are self-attention"
)
COUNT_SWAPPED = "return (number of self-attention modules, number of cross-attention modules)"
COUNT_TYPE = "return a tuple of two ints (self, cross)"
CLASSIFY_TYPE = "return a list with one string, 'self' or 'cross', per call, in the calls' order"

# --------------------------------------------------------------------------- prefix_lm_mask

LENGTHS = ((3, 4), (1, 1), (4, 1), (1, 5), (6, 2), (2, 6), (5, 5))


def _length_cases(g):
    return [call_args(S, T) for S, T in LENGTHS]


def _prefix_variant(S, T, *, target_diagonal=0, source_sees_target=False, causal_source=False,
                    target_sees_source=True):  # fmt: skip
    mask = torch.zeros(S + T, S + T, dtype=torch.bool)
    mask[:S, :S] = True
    if target_sees_source:
        mask[S:, :S] = True
    mask[S:, S:] = torch.ones(T, T, dtype=torch.bool).tril(target_diagonal)
    if source_sees_target:
        mask[:S, S:] = True
    if causal_source:
        mask &= causal_mask(S + T)
    return mask


def _prefix_mistakes(S, T):
    right = reference_prefix_lm_mask(S, T)
    mistakes = [
        (PREFIX_FLIPPED, lambda: ~right),
        (PREFIX_TRANSPOSED, lambda: right.T.contiguous()),
        (PREFIX_NO_SELF, lambda: _prefix_variant(S, T, target_diagonal=-1)),
        (PREFIX_PEEKS, lambda: _prefix_variant(S, T, target_diagonal=1)),
        (PREFIX_SOURCE_SEES_TARGET, lambda: _prefix_variant(S, T, source_sees_target=True)),
        (PREFIX_CAUSAL_SOURCE, lambda: _prefix_variant(S, T, causal_source=True)),
        (PREFIX_TARGET_BLIND, lambda: _prefix_variant(S, T, target_sees_source=False)),
    ]
    for s in (S - 1, S + 1):
        if 0 <= s <= S + T:
            mistakes.append((PREFIX_BOUNDARY, lambda s=s: reference_prefix_lm_mask(s, S + T - s)))
    return mistakes


PREFIX_LM_MASK = Question(
    id="ch06.prefix_lm_mask",
    answer="prefix_lm_mask",
    reference=reference_prefix_lm_mask,
    arg_names=("source_length", "target_length"),
    title="prefix_lm_mask(source_length, target_length) -> (S+T, S+T) bool, True = may attend",
    tests=(
        shape_test("returns a (S+T, S+T) boolean mask", _length_cases),
        outputs_test(
            "source rows see the source; target row i sees the source and targets 0..i",
            _length_cases,
            mistakes=_prefix_mistakes,
        ),
    ),
)

# --------------------------------------------------------------------------- cross via self

CROSS_SHAPES = ((2, 5, 3, 8, 2), (1, 4, 1, 4, 1), (3, 1, 4, 6, 3), (1, 1, 1, 4, 2), (2, 4, 4, 8, 4))
CROSS_ARGS = ("attention", "source", "target")


def _attention_state(g, E, h):
    """The weights of a ``MultiHeadAttention(E, h)`` as plain data (non-zero biases)."""
    state = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        state[f"{name}.weight"] = randn(g, E, E) / E**0.5
        state[f"{name}.bias"] = 0.1 * randn(g, E)
    return {"embed_dim": E, "num_heads": h, "state": state}


def _build_attention(spec) -> MultiHeadAttention:
    layer = MultiHeadAttention(spec["embed_dim"], spec["num_heads"])
    layer.load_state_dict({k: v.clone() for k, v in spec["state"].items()})
    return layer


def _cross_cases(g):
    cases = []
    for B, S, T, E, h in CROSS_SHAPES:
        cases.append(call_args(_attention_state(g, E, h), randn(g, B, S, E), randn(g, B, T, E)))
    return cases


def run_cross_via_self(answer, inputs):
    """Build the attention layer from the case's weights and call ``answer`` with it."""
    spec, source, target = inputs["args"]
    with torch.no_grad():
        return answer(_build_attention(spec), source, target)


def run_cross_via_self_grad(answer, inputs):
    """Gradient of a fixed direction through the output, to source, target and the weights."""
    spec, source, target = inputs["args"]
    layer = _build_attention(spec)
    source = source.detach().clone().requires_grad_(True)
    target = target.detach().clone().requires_grad_(True)
    result = answer(layer, source, target)
    output = result[0] if isinstance(result, tuple | list) else result
    leaves = {"source": source, "target": target, **dict(layer.named_parameters())}
    if not isinstance(output, torch.Tensor) or not output.requires_grad:
        return {"connected": False, "grads": {}}
    direction = torch.linspace(-1, 1, output.numel()).view_as(output)
    grads = torch.autograd.grad((output * direction).sum(), list(leaves.values()),
                                allow_unused=True)  # fmt: skip
    return {"connected": True, "grads": dict(zip(leaves, grads))}


def _masked_self(layer, both, mask, rows):
    out, weights = layer(both, both, both, attn_mask=mask)
    return out[:, rows], weights[:, rows]


def _cross_mistakes(spec, source, target):
    S, T = source.shape[1], target.shape[1]
    layer = _build_attention(spec)
    both = torch.cat([source, target], dim=1)
    swapped = torch.cat([target, source], dim=1)
    block = torch.zeros(S + T, S + T, dtype=torch.bool)
    block[:, :S] = True

    def run(fn):
        def thunk():
            with torch.no_grad():
                return fn()

        return thunk

    return [
        (
            CROSS_PREFIX,
            run(lambda: _masked_self(layer, both, reference_prefix_lm_mask(S, T), slice(S, None))),
        ),  # fmt: skip
        (CROSS_FLIPPED, run(lambda: _masked_self(layer, both, ~block, slice(S, None)))),
        (CROSS_NO_MASK, run(lambda: _masked_self(layer, both, None, slice(S, None)))),
        (CROSS_SOURCE_ROWS, run(lambda: _masked_self(layer, both, block, slice(0, T)))),
        (CROSS_ORDER, run(lambda: _masked_self(layer, swapped, block, slice(S, None)))),
        (CROSS_ORDER, run(lambda: _masked_self(layer, swapped, block, slice(0, T)))),
    ]


def _judge_cross(case):
    out = case.output
    if isinstance(out, tuple | list) and len(out) == 2 and isinstance(out[0], torch.Tensor):
        S, T = case.args[1].shape[1], case.args[2].shape[1]
        if out[0].dim() == 3 and out[0].shape[1] == S + T and S > 0:
            raise Fail(CROSS_ALL_ROWS)
    expect_sequence(out, 2)
    judge_outputs(case, ("output", "weights"), mistakes=_cross_mistakes)
    weights = out[1]
    S = case.args[1].shape[1]
    if not bool(weights[..., S:].eq(0).all()):
        raise Fail(CROSS_NO_MASK)


CROSS_VIA_SELF = Question(
    id="ch06.cross_attention_via_self_attention",
    answer="cross_attention_via_self_attention",
    reference=reference_cross_via_self,
    run=run_cross_via_self,
    arg_names=CROSS_ARGS,
    title="cross_attention_via_self_attention(attention, source, target) -> (output, weights)",
    tests=(
        shape_test("returns (B, T, E) and (B, T, S+T)", _cross_cases, ("output", "weights")),
        Test(
            "target rows equal cross-attention; no weight on target columns",
            _cross_cases,
            _judge_cross,
        ),  # fmt: skip
        Test(
            "gradients reach source, target and the attention's weights",
            _cross_cases,
            lambda case: expect_grads(case),
            run=run_cross_via_self_grad,
        ),  # fmt: skip
    ),
)

# --------------------------------------------------------------------------- classify / count


def _call(module, query_from, key_from):
    return {"module": module, "query_from": query_from, "key_from": key_from}


def _recorded_models(g):
    """Call records as the chapter's hooks write them, for several models (order shuffled)."""
    transformer = []
    for i in range(2):
        transformer.append(_call(f"encoder_layers.{i}.self_attn", f"encoder_layers.{i}.norm1",
                                 f"encoder_layers.{i}.norm1"))  # fmt: skip
    for i in range(2):
        transformer.append(_call(f"decoder_layers.{i}.self_attn", f"decoder_layers.{i}.norm1",
                                 f"decoder_layers.{i}.norm1"))  # fmt: skip
        transformer.append(_call(f"decoder_layers.{i}.cross_attn", f"decoder_layers.{i}.norm2",
                                 "encoder_norm"))  # fmt: skip
    rnnsearch = [_call("decoder.attention", "untracked 1", "encoder")]
    rnnsearch += [_call("decoder.attention", "decoder.cell", "encoder") for _ in range(6)]
    misnamed = [
        _call("self_attn", "decoder", "encoder"),  # named self, reads another component
        _call("cross_attn", "decoder.self_attn", "decoder.self_attn"),  # named cross, reads itself
        _call("attention", "encoder.layers.1", "encoder.layers.1"),
    ]
    encoder_only = [_call(f"layers.{i}.self_attn", f"layers.{i - 1}" if i else "input",
                          f"layers.{i - 1}" if i else "input") for i in range(3)]  # fmt: skip
    encoder_reads = [
        _call("encoder.self_attn", "encoder.embed", "encoder.embed"),
        _call("decoder.cross_attn", "decoder.embed", "encoder.embed"),
    ]
    models = [transformer, rnnsearch, misnamed, encoder_only, encoder_reads, [transformer[0]]]
    shuffled = []
    for calls in models:
        order = torch.randperm(len(calls), generator=g).tolist()
        shuffled.append([calls[i] for i in order])
    return [call_args(calls) for calls in shuffled]


def reference_classify_attention_calls(calls: list[dict]) -> list[str]:
    """'self' or 'cross' for each recorded call, by provenance."""
    return [classify_attention_call(c["query_from"], c["key_from"]) for c in calls]


def reference_count_attention(calls: list[dict]) -> tuple[int, int]:
    """(self-attention modules, cross-attention modules) from recorded calls."""
    kinds = {c["module"]: classify_attention_call(c["query_from"], c["key_from"]) for c in calls}
    values = list(kinds.values())
    return values.count("self"), values.count("cross")


def _classify_wrong(calls):
    return {
        CLASSIFY_BY_NAME: ["self" if "self" in c["module"] else "cross" for c in calls],
        CLASSIFY_SWAPPED: ["cross" if c["query_from"] == c["key_from"] else "self" for c in calls],
        CLASSIFY_BY_ENCODER: ["cross" if "encoder" in c["key_from"] else "self" for c in calls],
    }


def _judge_classify(case):
    out, want = case.output, case.expected
    if (
        not isinstance(out, list | tuple)
        or len(out) != len(want)
        or not all(isinstance(x, str) for x in out)
    ):
        raise Fail(CLASSIFY_TYPE)
    if list(out) == list(want):
        return
    for hint, wrong in _classify_wrong(case.args[0]).items():
        if list(out) == wrong:
            raise Fail(hint)
    raise Fail(f"wrong kinds: expected {list(want)}, got {list(out)}")


def _count_wrong(calls):
    per_call = [classify_attention_call(c["query_from"], c["key_from"]) for c in calls]
    modules = {c["module"] for c in calls}
    by_name = sum("self" in m for m in modules)
    right = reference_count_attention(calls)
    return [
        (COUNT_CALLS, (per_call.count("self"), per_call.count("cross"))),
        (COUNT_BY_NAME, (len(modules), 0)),  # every attention module called "self-attention"
        (COUNT_BY_NAME, (by_name, len(modules) - by_name)),  # "self" in the name
        (COUNT_SWAPPED, (right[1], right[0])),
    ]


def _judge_count(case):
    out, want = case.output, tuple(case.expected)
    if (
        not isinstance(out, tuple | list)
        or len(out) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in out)
    ):
        raise Fail(COUNT_TYPE)
    if tuple(out) == want:
        return
    for hint, wrong in _count_wrong(case.args[0]):
        if tuple(out) == wrong:
            raise Fail(hint)
    raise Fail(f"wrong counts: expected (self, cross) = {want}, got {tuple(out)}")


CLASSIFY = Question(
    id="ch06.classify_attention_calls",
    answer="classify_attention_calls",
    reference=reference_classify_attention_calls,
    arg_names=("calls",),
    title="classify_attention_calls(calls) -> ['self' | 'cross', ...]",
    tests=(
        Test(
            "every call classified by where its keys come from",
            _recorded_models,
            _judge_classify,
            points=2,
        ),
    ),  # fmt: skip
)

COUNT = Question(
    id="ch06.count_attention",
    answer="count_attention",
    reference=reference_count_attention,
    arg_names=("calls",),
    title="count_attention(calls) -> (self modules, cross modules)",
    tests=(
        Test("attention modules counted by provenance", _recorded_models, _judge_count, points=2),
    ),  # fmt: skip
)

QUESTIONS = [PREFIX_LM_MASK, CROSS_VIA_SELF, CLASSIFY, COUNT]
