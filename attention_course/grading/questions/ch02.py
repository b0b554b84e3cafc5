"""Chapter 2's graded questions: Bahdanau's additive scores, one attention step, the alignment.

- ``ch02.additive_scores``: e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j) for one decoder step of a
  padded batch, with U_a h_j precomputed and padding at -inf;
- ``ch02.attention_step``: scores -> masked softmax over the source -> context, returning both;
- ``ch02.alignment``: the (B, T, S) alignment matrix of a (trained) encoder-decoder under
  teacher forcing, read out step by step.

References are the package's (``attention_course.bahdanau``); mistake models compute what known
wrong answers return, so a failing test names the mistake.
"""

from __future__ import annotations

import functools

import torch

from attention_course.bahdanau import AdditiveAttention, BahdanauDecoder
from attention_course.seq2seq import Seq2SeqConfig, build_model

from ..core import Question, Test, call_args
from ..inputs import randn as _randn
from ..judges import Fail, expect_close, expect_sequence, expect_tensor, expect_unchanged

NEG_INF = float("-inf")

# Hints, one per plausible mistake (tests/test_grader_ch02.py checks each is named when made).
NO_TANH = "apply tanh to W_a s_{i-1} + U_a h_j before the product with v_a"
TANH_OUTSIDE = "tanh goes inside, around W_a s_{i-1} + U_a h_j, not around the product with v_a"
WRONG_BROADCAST = (
    "W_a s_{i-1} is one vector per sequence: add it to every source position as (B, 1, A) "
    "(a new axis at position 1); as (B, A) it broadcasts over the wrong axis"
)
W_LAYOUT = (
    "W_a has nn.Linear's layout (A, H): applied to a batch of ROW vectors (B, H) it is "
    "multiplied from the right by its transpose"
)
NOT_MASKED = (
    "padding is not masked: positions where mask is False must get a score of -inf "
    "before the softmax"
)
FLIPPED = "the mask polarity is flipped: True means a real token that MAY be attended"
FINITE_FILL = (
    "fill padded scores with -inf, not a large finite number, so they get exactly 0 weight"
)
ZERO_FILL = (
    "a score of 0 is not 'no weight' (exp(0) = 1): set padded scores to -inf instead of "
    "multiplying them by the mask"
)
SOFTMAXED = "return the raw scores e_ij; the softmax comes in the next step"
BATCH_AXIS = (
    "the softmax normalises over the batch axis: the weights must sum to 1 over the source "
    "positions, dim=-1 (or dim=1)"
)
MASK_AFTER = (
    "masking the weights after the softmax leaves rows that do not sum to 1: mask the scores "
    "(to -inf) before the softmax"
)
CONTEXT_FROM_KEYS = (
    "the context averages the annotations h_j (`states`), not the projected keys U_a h_j"
)
CONTEXT_WRONG_AXIS = (
    "the context sums over the source axis S (dim=1) of weights[..., None] * states; it is "
    "(B, 2H_enc), one vector per sequence"
)
NOT_NORMALISED = "normalise the scores with a softmax before averaging the annotations"
SIZE_ONE_AXIS = (
    "the softmax ran over an axis of size 1, so every weight is 1: scores shaped (B, S, 1) "
    "(e.g. from nn.Linear(A, 1)) must be squeezed to (B, S) and normalised over S"
)
STACKED_DIM0 = "stack the T per-step weights along dim=1: the result is batch first, (B, T, S)"
S_I = (
    "attend with the PREVIOUS decoder state s_{i-1}: the step's context and weights come before "
    "its state update (decoder.step does this; don't call context() with the new state)"
)
GREEDY = (
    "use teacher forcing: feed tgt_in[:, i] at step i (model(...) or decoder.step with the "
    "given tokens), not the model's own predictions"
)
ONE_ROW_PER_INPUT = "return one row of weights per decoder input position: T = tgt_in.shape[1]"
CONTEXT_NOT_HOOK = (
    "the weights must be the model's own attention weights alpha_ij, one distribution over the "
    "source per output step (decoder.step returns them)"
)


# --------------------------------------------------------------------------- input makers


def _padding_mask(gen: torch.Generator, B: int, S: int, full: bool = False) -> torch.Tensor:
    """(B, S) mask, True on a prefix of real tokens (length >= 1), False on padding."""
    lengths = torch.randint(1, S + 1, (B,), generator=gen)
    if not full and S > 1:
        lengths[0] = S  # the longest sequence sets S, as in a padded batch
        lengths[-1] = min(int(lengths[-1]), S - 1)  # and at least one row has padding
    if full:
        lengths[:] = S
    return torch.arange(S)[None, :] < lengths[:, None]


def _step_case(g, B, S, H, K, A, dtype=torch.float32, full=False, with_states=False):
    prev_state = _randn(g, B, H, dtype=dtype)
    states = _randn(g, B, S, K, dtype=dtype)
    U = _randn(g, A, K, scale=0.5, dtype=dtype)
    projected_keys = states @ U.T  # (B, S, A), as AdditiveAttention.precompute makes them
    W_a = _randn(g, A, H, scale=0.5, dtype=dtype)
    v_a = _randn(g, A, dtype=dtype)
    mask = _padding_mask(g, B, S, full)
    if with_states:
        return call_args(prev_state, states, projected_keys, W_a, v_a, mask)
    return call_args(prev_state, projected_keys, W_a, v_a, mask)


def _layer(W_a, v_a, A, H, K, dtype):
    """The package's AdditiveAttention carrying the question's W_a and v_a."""
    with torch.random.fork_rng(devices=[]):  # building a layer must not move the global RNG
        layer = AdditiveAttention(H, K, A).to(dtype)
    with torch.no_grad():
        layer.query_proj.weight.copy_(W_a)
        layer.v.copy_(v_a)
    return layer


# --------------------------------------------------------------------------- ch02.additive_scores


def reference_additive_scores(prev_state, projected_keys, W_a, v_a, mask):
    """e_ij through the package's AdditiveAttention.score, padding set to -inf."""
    A, H = W_a.shape
    layer = _layer(W_a, v_a, A, H, 1, prev_state.dtype)
    with torch.no_grad():
        scores = layer.score(prev_state, projected_keys)  # (B, S)
    return scores.masked_fill(~mask, NEG_INF)


def _scores_variant(
    prev_state,
    projected_keys,
    W_a,
    v_a,
    mask,
    *,
    tanh="inside",
    broadcast="right",
    layout="linear",
    masking="inf",
):
    """The additive scores with one mistake switched on (the defaults give the right answer)."""
    pq = prev_state @ (W_a.T if layout == "linear" else W_a)  # (B, A)
    pq = pq.unsqueeze(1) if broadcast == "right" else pq.unsqueeze(0)  # (B, 1, A) or (1, B, A)
    hidden = pq + projected_keys  # (B, S, A)
    if tanh == "inside":
        scores = torch.tanh(hidden) @ v_a
    elif tanh == "none":
        scores = hidden @ v_a
    else:
        scores = torch.tanh(hidden @ v_a)
    if masking == "inf":
        return scores.masked_fill(~mask, NEG_INF)
    if masking == "flipped":
        return scores.masked_fill(mask, NEG_INF)
    if masking == "finite":
        return scores.masked_fill(~mask, -1e9)
    if masking == "multiply":
        return scores * mask
    return scores  # "none"


def _scores_mistakes(prev_state, projected_keys, W_a, v_a, mask):
    def model(**kw):
        return functools.partial(_scores_variant, prev_state, projected_keys, W_a, v_a, mask, **kw)

    right = model()
    return [
        (NOT_MASKED, model(masking="none")),
        (FLIPPED, model(masking="flipped")),
        (FINITE_FILL, model(masking="finite")),
        (ZERO_FILL, model(masking="multiply")),
        (NO_TANH, model(tanh="none")),
        (TANH_OUTSIDE, model(tanh="outside")),
        (WRONG_BROADCAST, model(broadcast="wrong")),
        (W_LAYOUT, model(layout="math")),
        (SOFTMAXED, lambda: torch.softmax(right(), dim=-1)),
    ]


def _judge_scores(case):
    expect_close(
        case.output, case.expected, "scores", mistakes=_scores_mistakes(*case.args), atol=1e-5
    )


def _judge_scores_shape(case):
    expect_tensor(case.output, case.expected, "scores")


def _judge_scores_unchanged(case):
    expect_unchanged(case, ["prev_state", "projected_keys", "W_a", "v_a", "mask"])
    _judge_scores(case)


def _scores_shape_inputs(g):
    return [
        _step_case(g, 3, 5, 4, 6, 7),
        _step_case(g, 1, 1, 3, 2, 5, dtype=torch.float64),
    ]


def _scores_value_inputs(g):
    return [
        _step_case(g, 3, 7, 5, 6, 4),  # every size different
        _step_case(g, 4, 4, 6, 6, 6),  # B == S and A == H: broadcast and layout mistakes run
        _step_case(g, 2, 9, 8, 4, 3, full=True),  # no padding at all
    ]


def _scores_mask_inputs(g):
    return [
        _step_case(g, 5, 8, 4, 6, 3),
        _step_case(g, 6, 6, 5, 5, 5),
    ]


ADDITIVE_SCORES = Question(
    id="ch02.additive_scores",
    answer="additive_scores",
    reference=reference_additive_scores,
    title="additive_scores(prev_state, projected_keys, W_a, v_a, mask) -> (B, S) scores e_ij",
    arg_names=("prev_state", "projected_keys", "W_a", "v_a", "mask"),
    error_hints=(
        (r"cannot be multiplied|mat1 and mat2|size mismatch", W_LAYOUT),
        (r"must match the size|broadcast", WRONG_BROADCAST),
    ),
    tests=(
        Test(
            "returns (B, S) scores in the inputs' dtype", _scores_shape_inputs, _judge_scores_shape
        ),
        Test(
            "equals v_a^T tanh(W_a s_{i-1} + U_a h_j) at every real position",
            _scores_value_inputs,
            _judge_scores,
        ),
        Test("padding (mask False) scores -inf", _scores_mask_inputs, _judge_scores),
        Test(
            "does not change its inputs",
            lambda g: [_step_case(g, 3, 5, 4, 6, 7)],
            _judge_scores_unchanged,
        ),
    ),
)


# --------------------------------------------------------------------------- ch02.attention_step


def reference_attention_step(prev_state, states, projected_keys, W_a, v_a, mask):
    """(context, weights) through the package's AdditiveAttention.forward."""
    A, H = W_a.shape
    layer = _layer(W_a, v_a, A, H, states.shape[-1], prev_state.dtype)
    with torch.no_grad():
        return layer(prev_state, states, mask, projected_keys=projected_keys)


def _step_variant(
    prev_state,
    states,
    projected_keys,
    W_a,
    v_a,
    mask,
    *,
    axis=-1,
    values="states",
    normalise=True,
    mask_after=False,
    nan_to_zero=True,
    **score_kw,
):
    """One attention step with one mistake switched on; returns (context, weights)."""
    masking = score_kw.pop("masking", "none" if mask_after else "inf")
    scores = _scores_variant(
        prev_state, projected_keys, W_a, v_a, mask, masking=masking, **score_kw
    )
    if normalise:
        weights = torch.softmax(scores, dim=axis)
        if nan_to_zero:  # an all -inf row (or column, over the batch) gives NaN
            weights = torch.nan_to_num(weights, nan=0.0)
    else:
        weights = torch.exp(scores)
    if mask_after:
        weights = weights * mask
    source = states if values == "states" else projected_keys
    context = (weights.unsqueeze(-1) * source).sum(dim=1)  # (B, K)
    return context, weights


def _step_mistakes(prev_state, states, projected_keys, W_a, v_a, mask):
    def model(**kw):
        return functools.cache(
            functools.partial(
                _step_variant, prev_state, states, projected_keys, W_a, v_a, mask, **kw
            )
        )

    return [
        (BATCH_AXIS, model(axis=0)),
        (NOT_MASKED, model(masking="none")),
        (FLIPPED, model(masking="flipped")),
        (FLIPPED, model(masking="flipped", nan_to_zero=False)),
        (ZERO_FILL, model(masking="multiply")),
        (MASK_AFTER, model(mask_after=True)),
        (NO_TANH, model(tanh="none")),
        (TANH_OUTSIDE, model(tanh="outside")),
        (WRONG_BROADCAST, model(broadcast="wrong")),
        (W_LAYOUT, model(layout="math")),
        (CONTEXT_FROM_KEYS, model(values="keys")),
        (NOT_NORMALISED, model(normalise=False)),
        (SIZE_ONE_AXIS, lambda: _ones_weights(states, mask, nan=False)),
        (SIZE_ONE_AXIS, lambda: _ones_weights(states, mask, nan=True)),
    ]


def _ones_weights(states, mask, nan):
    """What a softmax over a size-1 axis gives: 1 on real positions, 0 (or NaN) on padding."""
    weights = torch.where(mask, 1.0, float("nan") if nan else 0.0).to(states.dtype)  # (B, S)
    return (torch.nan_to_num(weights).unsqueeze(-1) * states).sum(dim=1), weights


def _context_shape_hint(context, case) -> None:
    """Name the mistake behind two telling wrong shapes of the context."""
    expected_context, expected_weights = case.expected
    if not isinstance(context, torch.Tensor) or context.shape == expected_context.shape:
        return
    B, S = expected_weights.shape
    A = case.args[2].shape[-1]  # projected_keys (B, S, A)
    if tuple(context.shape) == (B, S):
        raise Fail(f"`context` has shape {(B, S)}: {CONTEXT_WRONG_AXIS}")
    if tuple(context.shape) == (B, A):
        raise Fail(f"`context` has shape {(B, A)}: {CONTEXT_FROM_KEYS}")


def _judge_step(case, *, exact_zero=False):
    expect_sequence(case.output, 2, "(context, weights)")
    context, weights = case.output
    expected_context, expected_weights = case.expected
    _context_shape_hint(context, case)
    mistakes = _step_mistakes(*case.args)
    # weights first: the context of a wrong answer inherits its weights' mistake
    expect_close(
        weights,
        expected_weights,
        "weights",
        mistakes=[(hint, lambda m=m: m()[1]) for hint, m in mistakes],
    )
    expect_close(
        context,
        expected_context,
        "context",
        mistakes=[(hint, lambda m=m: m()[0]) for hint, m in mistakes],
    )
    if exact_zero:
        mask = case.args[-1]
        if (weights.masked_select(~mask) != 0).any():
            raise Fail(FINITE_FILL)


def _judge_step_shapes(case):
    expect_sequence(case.output, 2, "(context, weights)")
    expected_context, expected_weights = case.expected
    context = case.output[0]
    _context_shape_hint(context, case)
    expect_tensor(context, expected_context, "context")
    expect_tensor(case.output[1], expected_weights, "weights")


def _judge_step_distribution(case):
    expect_sequence(case.output, 2, "(context, weights)")
    weights = case.output[1]
    expect_tensor(weights, case.expected[1], "weights")
    mask = case.args[-1]
    ones = torch.ones(weights.shape[0], dtype=torch.float64)
    if not torch.allclose(weights.double().sum(-1), ones, atol=1e-5):
        columns = weights.double().sum(0)[mask.any(0)]  # sums over the batch, real positions
        raise Fail(BATCH_AXIS if torch.allclose(columns, torch.ones_like(columns)) else MASK_AFTER)
    if (weights.masked_select(~mask) != 0).any():
        raise Fail(NOT_MASKED)


def _judge_step_unchanged(case):
    expect_unchanged(case, ["prev_state", "states", "projected_keys", "W_a", "v_a", "mask"])
    _judge_step(case)


def _step_inputs(g):
    return [
        _step_case(g, 3, 7, 5, 6, 4, with_states=True),  # every size different
        _step_case(g, 4, 4, 6, 5, 6, with_states=True),  # B == S, A == H: broadcast, layout
        _step_case(g, 2, 6, 3, 5, 5, with_states=True),  # K == A: context from U h runs
        _step_case(g, 2, 5, 4, 3, 6, full=True, with_states=True),  # no padding
    ]


ATTENTION_STEP = Question(
    id="ch02.attention_step",
    answer="attention_step",
    reference=reference_attention_step,
    title=(
        "attention_step(prev_state, states, projected_keys, W_a, v_a, mask) -> (context, weights)"
    ),
    arg_names=("prev_state", "states", "projected_keys", "W_a", "v_a", "mask"),
    error_hints=(
        (r"cannot be multiplied|mat1 and mat2|size mismatch", W_LAYOUT),
        (r"must match the size|broadcast", WRONG_BROADCAST),
    ),
    tests=(
        Test(
            "returns (context, weights) shaped (B, 2H_enc) and (B, S)",
            lambda g: [_step_case(g, 3, 7, 5, 6, 4, with_states=True)],
            _judge_step_shapes,
        ),
        Test(
            "the weights are a distribution over the source positions; padding gets 0",
            lambda g: [_step_case(g, 5, 6, 4, 3, 5, with_states=True)],
            _judge_step_distribution,
        ),
        Test(
            "weights = masked softmax of the additive scores, context = sum_j alpha_ij h_j",
            _step_inputs,
            functools.partial(_judge_step, exact_zero=True),
        ),
        Test(
            "does not change its inputs",
            lambda g: [_step_case(g, 3, 5, 4, 6, 7, with_states=True)],
            _judge_step_unchanged,
        ),
    ),
)


# --------------------------------------------------------------------------- ch02.alignment


def _model_from(inputs) -> torch.nn.Module:
    """The seeded attention encoder-decoder a case describes (plain data in, model out)."""
    config = Seq2SeqConfig(**inputs["config"])
    with torch.random.fork_rng(devices=[]):
        model = build_model(config, BahdanauDecoder, seed=inputs["seed"])
    return model.eval()


def run_alignment(answer, inputs):
    """Build the case's model and call ``answer(model, src, src_lengths, tgt_in)``."""
    model = _model_from(inputs)
    with torch.no_grad():
        return answer(model, inputs["src"], inputs["src_lengths"], inputs["tgt_in"])


def reference_alignment(model, src, src_lengths, tgt_in):
    """The weights of teacher-forced decoding, (B, T, S): ``Seq2Seq.forward``'s second output."""
    _, weights = model(src, src_lengths, tgt_in)
    return weights


def _alignment_with_new_state(model, src, src_lengths, tgt_in):
    """Mistake: after each step, attend with the NEW state s_i."""
    enc = model.decoder.prepare(model.encoder(src, src_lengths))
    state = model.decoder.init_state(enc)
    rows = []
    for i in range(tgt_in.shape[1]):
        _, state, _ = model.decoder.step(tgt_in[:, i], state, enc)
        rows.append(model.decoder.context(state, enc)[1])
    return torch.stack(rows, dim=1)


def _alignment_greedy(model, src, src_lengths, tgt_in):
    """Mistake: greedy decoding (the model's own outputs), not teacher forcing."""
    enc = model.decoder.prepare(model.encoder(src, src_lengths))
    state = model.decoder.init_state(enc)
    token = tgt_in[:, 0]
    rows = []
    for _ in range(tgt_in.shape[1]):
        logits, state, weights = model.decoder.step(token, state, enc)
        token = logits.argmax(-1)
        rows.append(weights)
    return torch.stack(rows, dim=1)


def _judge_alignment(case):
    expected = case.expected
    B, T, S = expected.shape
    output = case.output
    if isinstance(output, torch.Tensor):
        if tuple(output.shape) == (T, B, S) != (B, T, S):
            raise Fail(f"`weights` has shape {(T, B, S)}: {STACKED_DIM0}")
        if (
            output.dim() == 3
            and output.shape[0] == B
            and output.shape[2] == S
            and output.shape[1] != T
        ):
            raise Fail(f"`weights` has {output.shape[1]} rows per sequence: {ONE_ROW_PER_INPUT}")
    model = _model_from(case.inputs)
    src, src_lengths, tgt_in = case.inputs["src"], case.inputs["src_lengths"], case.inputs["tgt_in"]

    def mistake(fn):
        def thunk():
            with torch.no_grad():
                return fn(model, src, src_lengths, tgt_in)

        return thunk

    expect_close(
        output,
        expected,
        "weights",
        mistakes=[(S_I, mistake(_alignment_with_new_state)), (GREEDY, mistake(_alignment_greedy))],
    )


def _alignment_case(g, B, T, seed, emb=8, enc=8, dec=12, attn=6, vocab=9):
    lengths = torch.randint(2, 8, (B,), generator=g)
    lengths[0] = 8  # the longest sets S; the others are padded
    S = int(lengths.max())
    src = torch.randint(3, vocab, (B, S), generator=g)
    src = src.masked_fill(torch.arange(S)[None, :] >= lengths[:, None], 0)  # PAD = 0
    tgt_in = torch.randint(3, vocab, (B, T), generator=g)
    tgt_in[:, 0] = 1  # BOS
    config = dict(
        src_vocab_size=vocab,
        tgt_vocab_size=vocab,
        emb_dim=emb,
        enc_hidden=enc,
        dec_hidden=dec,
        attn_dim=attn,
    )
    return {
        "config": config,
        "seed": seed,
        "src": src,
        "src_lengths": lengths,
        "tgt_in": tgt_in,
    }


def _alignment_inputs(g):
    return [_alignment_case(g, 4, 6, seed=1), _alignment_case(g, 3, 9, seed=2, dec=8, attn=10)]


def _judge_alignment_rows(case):
    expect_tensor(case.output, case.expected, "weights")
    src_lengths = case.inputs["src_lengths"]
    S = case.expected.shape[-1]
    mask = torch.arange(S)[None, :] < src_lengths[:, None]  # (B, S)
    ones = torch.ones(case.expected.shape[:2], dtype=torch.float64)
    if not torch.allclose(case.output.double().sum(-1), ones, atol=1e-5):
        raise Fail(CONTEXT_NOT_HOOK)
    if (case.output.masked_select(~mask[:, None, :].expand_as(case.output)) != 0).any():
        raise Fail(CONTEXT_NOT_HOOK)


ALIGNMENT = Question(
    id="ch02.alignment",
    answer="alignment",
    reference=reference_alignment,
    run=run_alignment,
    title="alignment(model, src, src_lengths, tgt_in) -> (B, T, S) attention weights",
    arg_names=("model", "src", "src_lengths", "tgt_in"),
    error_hints=(
        (r"NoneType", "the model's decoder must be a BahdanauDecoder: its step returns weights"),
    ),
    tests=(
        Test(
            "returns (B, T, S) weights, one distribution over the source per step",
            lambda g: [_alignment_case(g, 3, 5, seed=3)],
            _judge_alignment_rows,
        ),
        Test(
            "equals the weights of teacher-forced decoding, step by step",
            _alignment_inputs,
            _judge_alignment,
        ),
    ),
)

QUESTIONS = [ADDITIVE_SCORES, ATTENTION_STEP, ALIGNMENT]
