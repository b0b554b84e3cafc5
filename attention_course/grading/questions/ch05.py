"""Chapter 5's graded questions: the Transformer's sub-layers, wired by the student.

- ``ch05.feed_forward(x, w1, b1, w2, b2, activation="relu")``: the position-wise network, weights in
  ``nn.Linear``'s layout (w1 (F, E), w2 (E, F));
- ``ch05.encoder_layer(x, self_attention, feed_forward, norm1, norm2, norm_first=False,
  key_padding_mask=None)``: residual branches and layer norms around the given sub-layers, graded
  against ``nn.TransformerEncoderLayer(batch_first=True)`` whose weights the sub-layers hold, in
  both norm placements;
- ``ch05.decoder_layer(tgt, memory, self_attention, cross_attention, feed_forward, norm1, norm2,
  norm3, norm_first=False, memory_key_padding_mask=None)``: the same with the causal mask (built by
  the answer) and cross-attention, graded against ``nn.TransformerDecoderLayer``;
- ``ch05.cache_step(x_new, positions, self_attention, past_keys, past_values)``: one step of
  cached decoding: the new token's position, its keys and values appended, attention over all.

The sub-layers are the course's own (``attention_course.attention.MultiHeadAttention``: masks True =
MAY attend; ``attention_course.transformer.FeedForward``; ``nn.LayerNorm``), built inside the
grading process from plain weights by the module-level ``run_*`` functions. Every wrong answer
the chapter warns about has a mistake model; ``tests/test_grader_ch05.py`` is the catalogue.
"""

from __future__ import annotations

import torch
import torch.fx.experimental.symbolic_shapes  # noqa: F401 - see below
import torch.nn.functional as F
from torch import nn

from attention_course.attention.core import scaled_dot_product_attention
from attention_course.attention.multihead import (
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    split_heads,
)
from attention_course.transformer import FeedForward

from ..core import Question, Test, _cotangent, call_args, grad_args
from ..judges import Fail, expect_close, expect_grads, expect_sequence, expect_tensor
from ..kit import grad_test, outputs_test, randn, shape_test

# The first torch.autograd.grad of a process imports sympy (seconds on a busy machine). Inside a
# graded call that import can be cut by the time limit and leave sympy half-initialised for the
# rest of the session ("module 'sympy' has no attribute 'core'"); importing it here avoids that.

# --------------------------------------------------------------------------- hints

FF_NO_ACTIVATION = "apply the activation between the two linear layers (the network is not linear)"
FF_ACTIVATION_AFTER = "no activation after the second linear layer: only the hidden layer has one"
FF_WRONG_ACTIVATION = "use the activation the `activation` argument names ('relu' or 'gelu')"
FF_NOT_TRANSPOSED = (
    "the weights have nn.Linear's layout, w1 (F, E): multiply by its transpose (as nn.Linear does)"
)
FF_NO_BIAS = "add the biases b1 and b2"
NORM_PLACE = (
    "the layer norm is in the wrong place for this norm_first: post-norm (False, the paper) "
    "normalises after the residual sum, pre-norm (True) normalises the sub-layer's input only"
)
RESIDUAL_AFTER_NORM = (
    "the residual skips the wrong thing: the skip connection must carry the un-normalised input "
    "around the sub-layer, not the normalised one, and be added before a post-norm"
)
NO_RESIDUAL = "a sub-layer's output replaced its input: each sub-layer is a residual branch"
PADDING_FLIPPED = (
    "padding mask polarity: in this course a key padding mask is True on REAL tokens (may be "
    "attended) and the course's attention takes it as it is; don't invert it as for PyTorch"
)
PADDING_IGNORED = "the key padding mask was not used: padding positions must get no attention"
CROSS_FROM_DECODER = (
    "cross-attention takes its queries from the decoder but its KEYS AND VALUES from the "
    "encoder's output (memory)"
)
CAUSAL_MISSING = (
    "the decoder's self-attention needs a causal mask: a position must not see the future"
)
CAUSAL_NO_DIAGONAL = "causal mask off by one: a position may attend to itself (keep the diagonal)"
CAUSAL_PEEKS = "causal mask off by one: position i may attend to j <= i only, not to i + 1"
CAUSAL_FLIPPED = (
    "causal mask polarity: the course's attention wants True = MAY attend (the lower triangle); "
    "True = may NOT attend is nn.MultiheadAttention's convention"
)
CACHE_NO_OFFSET = (
    "the new token sits at position t = the number of cached positions, not at position 0: "
    "add that row of the position table"
)
CACHE_OFF_BY_ONE = "position off by one: with t cached positions the new token's position is t"
CACHE_NO_POSITION = "add the position encoding of the new token before attending"
CACHE_TOP_LEFT = (
    "is_causal=True with one query aligns the mask top-left: the query sees only the FIRST key. "
    "The newest token may attend to every cached key and itself"
)
CACHE_NOT_APPENDED = "append the new token's key and value to the cache and attend to them too"
CACHE_ONLY_NEW = "attend to the cached keys and values as well as the new one"
CACHE_RAW_KEYS = (
    "keys and values are the PROJECTIONS k_proj(x), v_proj(x), split into heads, not x itself"
)
CACHE_ORDER = "append the new key and value AFTER the cached ones (the cache is in position order)"
LAYER_SIGNATURE = (
    "keep the signature of the statement: the sub-layers come as arguments, masks as keywords"
)


# --------------------------------------------------------------------------- feed_forward


def reference_feed_forward(x, w1, b1, w2, b2, activation="relu"):
    act = {"relu": F.relu, "gelu": F.gelu}[activation]
    return F.linear(act(F.linear(x, w1, b1)), w2, b2)


def _ff_variant(x, w1, b1, w2, b2, activation="relu", *, act="ok", transposed=False, bias=True):
    good = {"relu": F.relu, "gelu": F.gelu}[activation]
    other = F.gelu if activation == "relu" else F.relu
    f = {"ok": good, "after": good, "none": lambda t: t, "other": other}[act]
    lin = (
        (lambda t, w, b: t @ w + (b if bias else 0))
        if transposed
        else (lambda t, w, b: F.linear(t, w, b if bias else None))
    )
    out = lin(f(lin(x, w1, b1)), w2, b2)
    return good(out) if act == "after" else out


def _ff_mistakes(*args, **kwargs):
    def m(**kw):
        return lambda: _ff_variant(*args, **kwargs, **kw)

    return [
        (FF_NO_ACTIVATION, m(act="none")),
        (FF_ACTIVATION_AFTER, m(act="after")),
        (FF_WRONG_ACTIVATION, m(act="other")),
        (FF_NOT_TRANSPOSED, m(transposed=True)),
        (FF_NO_BIAS, m(bias=False)),
    ]


def _ff_case(g, lead, E, F_, activation="relu", grad=False):
    x = randn(g, *lead, E)
    w1, b1 = randn(g, F_, E) / E**0.5, randn(g, F_)
    w2, b2 = randn(g, E, F_) / F_**0.5, randn(g, E)
    make = grad_args if grad else call_args
    return make(x, w1, b1, w2, b2, activation=activation)


def _ff_inputs(g, activation="relu"):
    # (B, L) leading axes incl. B = 1, L = 1; square F = E shows an untransposed weight
    return [
        _ff_case(g, (2, 5), 6, 10, activation),
        _ff_case(g, (1, 1), 4, 4, activation),
        _ff_case(g, (3, 2), 5, 5, activation),
        _ff_case(g, (7,), 3, 8, activation),
    ]


FEED_FORWARD = Question(
    id="ch05.feed_forward",
    answer="feed_forward",
    reference=reference_feed_forward,
    arg_names=("x", "w1", "b1", "w2", "b2"),
    title="feed_forward(x, w1, b1, w2, b2, activation='relu') -> same shape as x",
    error_hints=((r"cannot be multiplied|size mismatch", FF_NOT_TRANSPOSED),),
    tests=(
        shape_test("returns the shape of x", _ff_inputs),
        outputs_test("act(x W1^T + b1) W2^T + b2 with ReLU", _ff_inputs, mistakes=_ff_mistakes),
        outputs_test("with GELU", lambda g: _ff_inputs(g, "gelu"), mistakes=_ff_mistakes),
        grad_test(
            "gradients reach x and all four weights",
            lambda g: [_ff_case(g, (2, 3), 4, 6, grad=True), _ff_case(g, (1, 1), 3, 3, grad=True)],
            ("x", "w1", "b1", "w2", "b2"),
        ),
    ),
)


# --------------------------------------------------------------------------- the layers' pieces


def _mha_state(g, E):
    names = ("q_proj", "k_proj", "v_proj", "out_proj")
    state = {}
    for p in names:
        state[f"{p}.weight"] = randn(g, E, E) / E**0.5
        state[f"{p}.bias"] = randn(g, E) * 0.1
    return state


def _norm_state(g, E):
    return {"weight": 1 + 0.2 * randn(g, E), "bias": 0.2 * randn(g, E)}


def _layer_state(g, E, F_, decoder=False):
    state = {"self_attn": _mha_state(g, E)}
    if decoder:
        state["cross_attn"] = _mha_state(g, E)
    state["feed_forward"] = {
        "linear1.weight": randn(g, F_, E) / E**0.5, "linear1.bias": 0.1 * randn(g, F_),
        "linear2.weight": randn(g, E, F_) / F_**0.5, "linear2.bias": 0.1 * randn(g, E),
    }  # fmt: skip
    for name in ("norm1", "norm2", "norm3") if decoder else ("norm1", "norm2"):
        state[name] = _norm_state(g, E)
    return state


def _build(inputs) -> dict:
    """The sub-layers of a case, as modules holding the case's weights (eval mode)."""
    E, h = inputs["E"], inputs["h"]
    modules = {}
    for name, state in inputs["state"].items():
        if name in ("self_attn", "cross_attn"):
            module = MultiHeadAttention(E, h)
        elif name == "feed_forward":
            module = FeedForward(E, state["linear1.weight"].shape[0], activation=inputs["act"])
        else:
            module = nn.LayerNorm(E)
        module.load_state_dict(state)
        modules[name] = module.eval()
    return modules


def _padding(g, B, S):
    """(B, S) True = real token; one full row, at least one real token everywhere."""
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    lengths[0] = S
    return torch.arange(S)[None, :] < lengths[:, None]


# --------------------------------------------------------------------------- encoder_layer


def _torch_encoder(E, h, F_, norm_first, act):
    """An nn.TransformerEncoderLayer of this shape; its weights come from ``_torch_params``."""
    return nn.TransformerEncoderLayer(E, h, F_, dropout=0.0, activation=act, batch_first=True,
                                      norm_first=norm_first).eval()  # fmt: skip


def _torch_params(attentions: dict, m: dict, norms) -> dict:
    """PyTorch's parameter names -> the given sub-layers' own tensors (not copies), so that
    ``torch.func.functional_call`` runs PyTorch's layer on them and gradients reach them."""
    params = {}
    for prefix, ours in attentions.items():
        names = ("q_proj", "k_proj", "v_proj")
        params[f"{prefix}.in_proj_weight"] = torch.cat([getattr(ours, n).weight for n in names])
        params[f"{prefix}.in_proj_bias"] = torch.cat([getattr(ours, n).bias for n in names])
        params[f"{prefix}.out_proj.weight"] = ours.out_proj.weight
        params[f"{prefix}.out_proj.bias"] = ours.out_proj.bias
    for linear in ("linear1", "linear2"):
        for p in ("weight", "bias"):
            params[f"{linear}.{p}"] = getattr(getattr(m["feed_forward"], linear), p)
    for name in norms:
        params[f"{name}.weight"], params[f"{name}.bias"] = m[name].weight, m[name].bias
    return params


def _call_torch_layer(layer, params, args, kwargs):
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the exact (non-nested-tensor) path
    try:
        return torch.func.functional_call(layer, params, args, kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def reference_encoder_layer(x, self_attention, feed_forward, norm1, norm2, norm_first=False,
                            key_padding_mask=None):  # fmt: skip
    """``nn.TransformerEncoderLayer`` with these weights; masks converted to PyTorch's polarity."""
    m = {"feed_forward": feed_forward, "norm1": norm1, "norm2": norm2}
    E, h = self_attention.embed_dim, self_attention.num_heads
    F_ = feed_forward.linear1.out_features
    layer = _torch_encoder(E, h, F_, norm_first, feed_forward.activation)
    params = _torch_params({"self_attn": self_attention}, m, ("norm1", "norm2"))
    torch_padding = None if key_padding_mask is None else ~key_padding_mask  # True = padding
    return _call_torch_layer(layer, params, (x,), {"src_key_padding_mask": torch_padding})


def _encoder_call(inputs, x=None):
    m = _build(inputs)
    args = (inputs["x"] if x is None else x, m["self_attn"], m["feed_forward"], m["norm1"],
            m["norm2"])  # fmt: skip
    kwargs = {"norm_first": inputs["norm_first"]}
    if inputs["padding"] is not None:
        kwargs["key_padding_mask"] = inputs["padding"]
    return args, kwargs


def run_encoder_layer(answer, inputs):
    """Build the sub-layers from the case's weights and call ``answer`` with them."""
    args, kwargs = _encoder_call(inputs)
    with torch.no_grad():
        return answer(*args, **kwargs)


def run_encoder_layer_grad(answer, inputs):
    """Gradient of a fixed direction through the answer, to x and to every sub-layer weight."""
    x = inputs["x"].detach().clone().requires_grad_(True)
    args, kwargs = _encoder_call(inputs, x)
    return _grads(answer(*args, **kwargs), {"x": x}, args[1:])


def _grads(output, leaves: dict, modules) -> dict:
    outs = [output] if isinstance(output, torch.Tensor) and output.requires_grad else []
    params = {f"{i}.{n}": p for i, mod in enumerate(modules) for n, p in mod.named_parameters()}
    grads = {name: None for name in leaves}
    reached = {name: False for name in params}
    if outs:
        found = torch.autograd.grad(outs, [*leaves.values(), *params.values()],
                                    [_cotangent(outs[0], 0)], allow_unused=True)  # fmt: skip
        grads = dict(zip(leaves, found[: len(leaves)]))
        reached = {n: g is not None for n, g in zip(params, found[len(leaves) :])}
    return {"output": output, "connected": bool(outs), "grads": grads, "params": reached}


def _judge_grads(case):
    expect_grads(case, ())
    if not all(case.output.get("params", {}).values()):
        missing = [n for n, ok in case.output["params"].items() if not ok]
        raise Fail(f"no gradient reaches the sub-layers' weights ({missing[0]}, ...): "
                   "call the sub-layers you are given, inside autograd")  # fmt: skip


def _residual(x, norm, sublayer, pre, residual):
    """One residual branch, with the placement ``pre`` and a residual mistake switch."""
    if pre:
        y = norm(x)
        if residual == "ok":
            return x + sublayer(y)
        if residual == "after_norm":
            return y + sublayer(y)  # skips the NORMALISED input
        return sublayer(y)
    if residual == "ok":
        return norm(x + sublayer(x))
    if residual == "after_norm":
        return norm(sublayer(x)) + x  # the residual added after the norm
    return norm(sublayer(x))


def _encoder_variant(inputs, *, swap=False, residual="ok", padding="ok"):
    m = _build(inputs)
    x, pad = inputs["x"], inputs["padding"]
    if pad is not None and padding == "flipped":
        pad = ~pad
    elif padding == "ignored":
        pad = None
    pre = inputs["norm_first"] != swap

    def sa(y):
        return m["self_attn"](y, y, y, key_padding_mask=pad, need_weights=False)[0]

    with torch.no_grad():
        x = _residual(x, m["norm1"], sa, pre, residual)
        return _residual(x, m["norm2"], m["feed_forward"], pre, residual)


def _encoder_mistakes(inputs):
    def v(**kw):
        return lambda: _encoder_variant(inputs, **kw)

    found = [
        (NORM_PLACE, v(swap=True)),
        (RESIDUAL_AFTER_NORM, v(residual="after_norm")),
        (NO_RESIDUAL, v(residual="none")),
    ]
    if inputs["padding"] is not None:
        found += [(PADDING_FLIPPED, v(padding="flipped")), (PADDING_IGNORED, v(padding="ignored"))]
    return found


def _describe(case) -> str:
    x = case.inputs
    shape = tuple(x["x"].shape if "x" in x else x["tgt"].shape)
    parts = [f"input {shape}", f"norm_first={x['norm_first']}", f"activation={x['act']}"]
    for key in ("padding", "memory_padding"):
        if x.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} mask")
    return ", ".join(parts)


def _judge_layer(mistakes):
    def judge(case):
        expect_tensor(case.output, case.expected, "output")
        try:
            expect_close(case.output, case.expected, "output", mistakes=mistakes(case.inputs),
                         atol=1e-4, rtol=1e-4)  # fmt: skip
        except Fail as failure:
            raise Fail(f"{failure} [case: {_describe(case)}]") from None

    return judge


def _encoder_case(g, B, L, E, h, F_, norm_first, padding=False, act="relu"):
    return {
        "x": randn(g, B, L, E), "E": E, "h": h, "act": act, "norm_first": norm_first,
        "state": _layer_state(g, E, F_), "padding": _padding(g, B, L) if padding else None,
    }  # fmt: skip


def _encoder_inputs(norm_first, padding=False):
    def inputs(g):
        return [
            _encoder_case(g, 2, 5, 8, 2, 16, norm_first, padding),
            _encoder_case(g, 1, 1, 6, 3, 10, norm_first, padding),  # B = 1, L = 1
            _encoder_case(g, 3, 4, 12, 4, 20, norm_first, padding, act="gelu"),
        ]

    return inputs


def _shape_judge(case):
    expect_tensor(case.output, case.expected, "output")


ENCODER_LAYER = Question(
    id="ch05.encoder_layer",
    answer="encoder_layer",
    reference=reference_encoder_layer,
    title="encoder_layer(x, self_attention, feed_forward, norm1, norm2, norm_first=False, "
    "key_padding_mask=None), graded against nn.TransformerEncoderLayer",
    run=run_encoder_layer,
    timeout=5.0,
    error_hints=((r"unexpected keyword argument|positional argument", LAYER_SIGNATURE),),
    tests=(
        Test("returns (B, L, E)", _encoder_inputs(False), _shape_judge),
        Test("post-norm (norm_first=False) agrees with nn.TransformerEncoderLayer",
             _encoder_inputs(False), _judge_layer(_encoder_mistakes)),
        Test("pre-norm (norm_first=True) agrees with nn.TransformerEncoderLayer",
             _encoder_inputs(True), _judge_layer(_encoder_mistakes)),
        Test("a key padding mask (True = real token) keeps padding out, both placements",
             lambda g: _encoder_inputs(False, True)(g) + _encoder_inputs(True, True)(g),
             _judge_layer(_encoder_mistakes)),
        Test("gradients reach x and every sub-layer's weights",
             lambda g: [_encoder_case(g, 2, 3, 8, 2, 12, True, True),
                        _encoder_case(g, 1, 4, 6, 3, 8, False)],
             _judge_grads, run=run_encoder_layer_grad),
    ),
)  # fmt: skip


# --------------------------------------------------------------------------- decoder_layer


def reference_decoder_layer(tgt, memory, self_attention, cross_attention, feed_forward, norm1,
                            norm2, norm3, norm_first=False,
                            memory_key_padding_mask=None):  # fmt: skip
    """``nn.TransformerDecoderLayer`` with these weights, its causal mask and padding converted."""
    E, h = self_attention.embed_dim, self_attention.num_heads
    F_ = feed_forward.linear1.out_features
    layer = nn.TransformerDecoderLayer(E, h, F_, dropout=0.0, activation=feed_forward.activation,
                                       batch_first=True, norm_first=norm_first).eval()  # fmt: skip
    m = {"feed_forward": feed_forward, "norm1": norm1, "norm2": norm2, "norm3": norm3}
    attentions = {"self_attn": self_attention, "multihead_attn": cross_attention}
    params = _torch_params(attentions, m, ("norm1", "norm2", "norm3"))
    L = tgt.shape[1]
    torch_causal = ~causal_mask(L)  # PyTorch: True = may NOT attend
    torch_padding = None if memory_key_padding_mask is None else ~memory_key_padding_mask
    kwargs = {"tgt_mask": torch_causal, "memory_key_padding_mask": torch_padding}
    return _call_torch_layer(layer, params, (tgt, memory), kwargs)


def _decoder_call(inputs, tgt=None, memory=None):
    m = _build(inputs)
    args = (
        inputs["tgt"] if tgt is None else tgt, inputs["memory"] if memory is None else memory,
        m["self_attn"], m["cross_attn"], m["feed_forward"], m["norm1"], m["norm2"], m["norm3"],
    )  # fmt: skip
    kwargs = {"norm_first": inputs["norm_first"]}
    if inputs["memory_padding"] is not None:
        kwargs["memory_key_padding_mask"] = inputs["memory_padding"]
    return args, kwargs


def run_decoder_layer(answer, inputs):
    """Build the sub-layers from the case's weights and call ``answer`` with them."""
    args, kwargs = _decoder_call(inputs)
    with torch.no_grad():
        return answer(*args, **kwargs)


def run_decoder_layer_grad(answer, inputs):
    """Gradient of a fixed direction to tgt, memory and every sub-layer weight."""
    tgt = inputs["tgt"].detach().clone().requires_grad_(True)
    memory = inputs["memory"].detach().clone().requires_grad_(True)
    args, kwargs = _decoder_call(inputs, tgt, memory)
    return _grads(answer(*args, **kwargs), {"tgt": tgt, "memory": memory}, args[2:])


def _decoder_variant(inputs, *, swap=False, residual="ok", cross="ok", causal="ok",
                     padding="ok"):  # fmt: skip
    m = _build(inputs)
    x, memory, pad = inputs["tgt"], inputs["memory"], inputs["memory_padding"]
    L = x.shape[1]
    mask = {
        "ok": causal_mask(L), "none": None, "no_diagonal": causal_mask(L).tril(-1),
        "peeks": torch.ones(L, L, dtype=torch.bool).tril(1), "flipped": ~causal_mask(L),
    }[causal]  # fmt: skip
    if pad is not None and padding == "flipped":
        pad = ~pad
    elif padding == "ignored":
        pad = None
    pre = inputs["norm_first"] != swap

    def sa(y):
        return m["self_attn"](y, y, y, attn_mask=mask, need_weights=False)[0]

    def ca(y):
        source = y if cross == "decoder" else memory
        padding_used = None if cross == "decoder" else pad
        return m["cross_attn"](y, source, source, key_padding_mask=padding_used,
                               need_weights=False)[0]  # fmt: skip

    with torch.no_grad():
        x = _residual(x, m["norm1"], sa, pre, residual)
        x = _residual(x, m["norm2"], ca, pre, residual)
        return _residual(x, m["norm3"], m["feed_forward"], pre, residual)


def _decoder_mistakes(inputs):
    def v(**kw):
        return lambda: _decoder_variant(inputs, **kw)

    found = [
        (CROSS_FROM_DECODER, v(cross="decoder")),
        (CAUSAL_MISSING, v(causal="none")),
        (CAUSAL_NO_DIAGONAL, v(causal="no_diagonal")),
        (CAUSAL_PEEKS, v(causal="peeks")),
        (CAUSAL_FLIPPED, v(causal="flipped")),
        (NORM_PLACE, v(swap=True)),
        (RESIDUAL_AFTER_NORM, v(residual="after_norm")),
        (NO_RESIDUAL, v(residual="none")),
    ]
    if inputs["memory_padding"] is not None:
        found += [(PADDING_FLIPPED, v(padding="flipped")), (PADDING_IGNORED, v(padding="ignored"))]
    return found


def _decoder_case(g, B, L, S, E, h, F_, norm_first, padding=False, act="relu"):
    return {
        "tgt": randn(g, B, L, E), "memory": randn(g, B, S, E), "E": E, "h": h, "act": act,
        "norm_first": norm_first, "state": _layer_state(g, E, F_, decoder=True),
        "memory_padding": _padding(g, B, S) if padding else None,
    }  # fmt: skip


def _decoder_inputs(norm_first, padding=False):
    def inputs(g):
        return [
            _decoder_case(g, 2, 5, 7, 8, 2, 16, norm_first, padding),  # non-square L != S
            _decoder_case(g, 1, 1, 1, 6, 3, 10, norm_first, padding),  # B = 1, L = 1, S = 1
            _decoder_case(g, 3, 4, 3, 12, 4, 20, norm_first, padding, act="gelu"),
        ]

    return inputs


DECODER_LAYER = Question(
    id="ch05.decoder_layer",
    answer="decoder_layer",
    reference=reference_decoder_layer,
    title="decoder_layer(tgt, memory, self_attention, cross_attention, feed_forward, norm1, "
    "norm2, norm3, norm_first=False, memory_key_padding_mask=None), graded against "
    "nn.TransformerDecoderLayer",
    run=run_decoder_layer,
    timeout=5.0,
    error_hints=((r"unexpected keyword argument|positional argument", LAYER_SIGNATURE),),
    tests=(
        Test("returns (B, L, E)", _decoder_inputs(False), _shape_judge),
        Test("post-norm agrees with nn.TransformerDecoderLayer (causal self-attention, "
             "cross-attention to memory)", _decoder_inputs(False),
             _judge_layer(_decoder_mistakes)),
        Test("pre-norm agrees with nn.TransformerDecoderLayer", _decoder_inputs(True),
             _judge_layer(_decoder_mistakes)),
        Test("a memory key padding mask (True = real token) keeps source padding out",
             lambda g: _decoder_inputs(False, True)(g) + _decoder_inputs(True, True)(g),
             _judge_layer(_decoder_mistakes)),
        Test("gradients reach tgt, memory and every sub-layer's weights",
             lambda g: [_decoder_case(g, 2, 3, 4, 8, 2, 12, True, True),
                        _decoder_case(g, 1, 2, 5, 6, 3, 8, False)],
             _judge_grads, run=run_decoder_layer_grad),
    ),
)  # fmt: skip


# --------------------------------------------------------------------------- cache_step


def reference_cache_step(x_new, positions, self_attention, past_keys, past_values):
    """The package's cached attention: position offset t, keys/values appended, one query."""
    t = past_keys.shape[2]
    x = x_new + positions[t]  # (B, 1, E): the new token at position t
    h = self_attention.num_heads
    keys = torch.cat([past_keys, split_heads(self_attention.k_proj(x), h)], dim=2)  # (B,h,t+1,d)
    values = torch.cat([past_values, split_heads(self_attention.v_proj(x), h)], dim=2)
    q = split_heads(self_attention.q_proj(x), h)  # (B, h, 1, d)
    context, _ = scaled_dot_product_attention(q, keys, values)  # one query: it sees every key
    return self_attention.out_proj(merge_heads(context)), keys, values


def _cache_call(inputs, leaves=None):
    attn = MultiHeadAttention(inputs["E"], inputs["h"])
    attn.load_state_dict(inputs["state"])
    attn.eval()
    x = dict(inputs, **(leaves or {}))
    return (x["x_new"], x["positions"], attn, x["past_keys"], x["past_values"]), attn


def run_cache_step(answer, inputs):
    """Build the attention layer from the case's weights and call ``answer``."""
    args, _ = _cache_call(inputs)
    with torch.no_grad():
        out = answer(*args)
    return tuple(out) if isinstance(out, list | tuple) else out


def run_cache_step_grad(answer, inputs):
    """Gradients of a fixed direction (from the output) to x_new and the cached keys/values."""
    leaves = {n: inputs[n].detach().clone().requires_grad_(True)
              for n in ("x_new", "past_keys", "past_values")}  # fmt: skip
    args, attn = _cache_call(inputs, leaves)
    out = answer(*args)
    output = out[0] if isinstance(out, list | tuple) else out
    return _grads(output, leaves, [attn])


def _cache_variant(inputs, *, offset="ok", mask="ok", append=True, project=True, order="ok"):
    args, attn = _cache_call(inputs)
    x_new, positions, _, past_k, past_v = args
    t = past_k.shape[2]
    h = attn.num_heads
    index = {"ok": t, "zero": 0, "plus": t + 1, "minus": t - 1}.get(offset)
    x = x_new if offset == "none" else x_new + positions[index]
    with torch.no_grad():
        if project:
            k_new, v_new = split_heads(attn.k_proj(x), h), split_heads(attn.v_proj(x), h)
        else:
            k_new = v_new = split_heads(x, h)
        pair = (k_new, past_k) if order == "reversed" else (past_k, k_new)
        keys = torch.cat(pair, dim=2)
        values = torch.cat((v_new, past_v) if order == "reversed" else (past_v, v_new), dim=2)
        used_k, used_v = (keys, values) if append else (past_k, past_v)
        if mask == "only_new":
            used_k, used_v = k_new, v_new
        q = split_heads(attn.q_proj(x), h)
        if mask == "top_left":
            context = F.scaled_dot_product_attention(q, used_k, used_v, is_causal=True)
        else:
            context, _ = scaled_dot_product_attention(q, used_k, used_v)
        return attn.out_proj(merge_heads(context)), keys, values


def _cache_mistakes(inputs):
    def v(**kw):
        return lambda: _cache_variant(inputs, **kw)

    return [
        (CACHE_NO_OFFSET, v(offset="zero")),
        (CACHE_OFF_BY_ONE, v(offset="plus")),
        (CACHE_OFF_BY_ONE, v(offset="minus")),
        (CACHE_NO_POSITION, v(offset="none")),
        (CACHE_TOP_LEFT, v(mask="top_left")),
        (CACHE_NOT_APPENDED, v(append=False)),
        (CACHE_ONLY_NEW, v(mask="only_new")),
        (CACHE_RAW_KEYS, v(project=False)),
        (CACHE_ORDER, v(order="reversed")),
    ]


def _judge_cache(case):
    names = ("output", "keys", "values")
    expect_sequence(case.output, 3, "(output, keys, values)")
    mistakes = _cache_mistakes(case.inputs)
    try:
        for i, name in enumerate(names):
            expect_tensor(case.output[i], case.expected[i], name)
        for i, name in enumerate(names):
            models = [(hint, lambda m=m, i=i: m()[i]) for hint, m in mistakes]
            expect_close(case.output[i], case.expected[i], name, atol=1e-4, rtol=1e-4,
                         mistakes=models)  # fmt: skip
    except Fail as failure:
        x = case.inputs
        raise Fail(f"{failure} [case: x_new {tuple(x['x_new'].shape)}, "
                   f"{x['past_keys'].shape[2]} cached positions]") from None  # fmt: skip


def _cache_case(g, B, t, E, h):
    d = E // h
    return {
        "x_new": randn(g, B, 1, E), "positions": randn(g, 16, E), "E": E, "h": h,
        "state": _mha_state(g, E), "past_keys": randn(g, B, h, t, d),
        "past_values": randn(g, B, h, t, d),
    }  # fmt: skip


def _cache_inputs(g):
    return [
        _cache_case(g, 2, 3, 8, 2),
        _cache_case(g, 1, 1, 6, 3),  # B = 1, one cached position
        _cache_case(g, 3, 0, 8, 4),  # an empty cache: the first step, t = 0
        _cache_case(g, 2, 6, 12, 3),
    ]


CACHE_STEP = Question(
    id="ch05.cache_step",
    answer="cache_step",
    reference=reference_cache_step,
    title="cache_step(x_new, positions, self_attention, past_keys, past_values) -> "
    "(output (B, 1, E), keys (B, h, t + 1, d), values (B, h, t + 1, d))",
    run=run_cache_step,
    timeout=5.0,
    tests=(
        Test("returns (output (B, 1, E), keys and values (B, h, t + 1, d))", _cache_inputs,
             lambda case: [expect_sequence(case.output, 3, "(output, keys, values)")]
             + [expect_tensor(o, e, n) for o, e, n in
                zip(case.output, case.expected, ("output", "keys", "values"))]),
        Test("the new token at position t; its keys and values appended; attends to all",
             _cache_inputs, _judge_cache),
        Test("gradients reach x_new and the cached keys and values",
             lambda g: [_cache_case(g, 2, 2, 8, 2), _cache_case(g, 1, 3, 6, 3)],
             lambda case: expect_grads(case, ()), run=run_cache_step_grad),
    ),
)  # fmt: skip

QUESTIONS = [FEED_FORWARD, ENCODER_LAYER, DECODER_LAYER, CACHE_STEP]
