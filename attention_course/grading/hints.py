"""Hint texts shared by every chapter's graders: each names ONE mistake, as a first nudge.

A hint never contains the solution line (``tests/test_grading.py`` checks that no hint holds a
solution's code); the full explanation lives in ``solutions/``. Use these names from any question
module (``from ..hints import FLIPPED``) rather than writing a second wording of the same hint.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- masks and softmax
WRONG_AXIS = (
    "the softmax normalises over the wrong axis: the weights must sum to 1 over the keys "
    "(the last axis, or `dim`)"
)
IGNORES_DIM = "normalise over the `dim` argument, not over a fixed axis"
NOT_NORMALISED = "divide exp(scores) by its sum over the axis, so that every row sums to 1"
FLIPPED = (
    "the mask polarity is flipped: True means the query MAY attend to that key "
    "(the F.scaled_dot_product_attention convention)"
)
ZERO_ONE = (
    "a boolean mask is not a 0/1 bias to add: masked keys need a score of -inf before the "
    "softmax, so that exp gives them exactly 0"
)
MULTIPLIED = (
    "multiplying the scores by the mask sets masked scores to 0, and exp(0) = 1 is not zero "
    "weight: set masked scores to -inf instead"
)
MASK_AFTER = (
    "masking the weights after the softmax leaves rows that no longer sum to 1: mask the scores "
    "before the softmax"
)
NOT_EXACT_ZERO = (
    "masked keys must get exactly zero weight: fill them with -inf, not a large finite "
    "negative number"
)
NAN_EMPTY = (
    "a row whose keys are all masked gives exp(-inf) / 0 = NaN: return zeros for such rows "
    "(e.g. torch.where on the row sum, or torch.nan_to_num)"
)
UNIFORM_EMPTY = (
    "a finite fill such as -1e9 makes a fully masked row uniform (1/S each); such a row must be "
    "all zeros"
)
OVERFLOW = (
    "exp overflows for large scores: subtract each row's maximum before exp (the softmax does "
    "not change, and exp never sees a number above 0)"
)
FLOAT_AS_BOOL = (
    "a float mask is a bias ADDED to the scores (0 keeps a key, -inf removes it), as in "
    "F.scaled_dot_product_attention: don't turn it into a boolean mask"
)
INVERT_FLOAT = (
    "`~` only works on a boolean mask; a float mask is a bias to add to the scores "
    "(check mask.dtype == torch.bool)"
)
NO_SCALE = (
    "scale the scores by 1/sqrt(E), E the width of a query (its last axis), before the softmax"
)
SCALE_E = "the scaling is 1/sqrt(E), not 1/E"
SCALE_EV = "scale by the width E of the queries and keys, not the width of the values"
SCALE_AFTER = "scale the scores before the softmax, not the weights after it"
TRANSPOSED_KEY = (
    "the scores pair every query with every key: (..., L, E) times the keys with their last two "
    "axes swapped, (..., E, S), gives (..., L, S)"
)
MASK_BEFORE_SCALE = (
    "add a float mask to the scores after dividing them by sqrt(E), as "
    "F.scaled_dot_product_attention does"
)
ACROSS_BATCH = (
    "the inputs are batch first, (..., L, E): you attended over the batch axis instead of the "
    "sequence axis (nn.MultiheadAttention's (L, B, E) layout is not used here)"
)
ANY_LEADING_DIMS = (
    "accept any leading dims (none, (B,), (B, h)): use @ or torch.matmul (torch.bmm takes only "
    "3-D tensors) and transpose with negative axes, key.transpose(-2, -1)"
)
BROADCAST = (
    "the mask must broadcast to the scores, e.g. (L, S) or (1, S) for scores (B, h, L, S): "
    "masked_fill and torch.where broadcast, boolean indexing does not"
)

# --------------------------------------------------------------------------- any answer
IN_PLACE = (
    "your answer changed its input `{name}` in place (an in-place op such as masked_fill_, +=, "
    "or item assignment); work on a new tensor instead"
)
REQUIRES_GRAD_LEFT = (
    "your answer switched on requires_grad of its input `{name}` (requires_grad_() on an "
    "argument changes the caller's tensor); leave the inputs as they came"
)
NO_GRAD = (
    "no gradient reaches the inputs: the result was computed outside autograd "
    "(torch.no_grad(), .detach(), .item()/.tolist()/.numpy(), or a new tensor built from numbers)"
)
NO_GRAD_TO = (
    "no gradient reaches `{name}`: somewhere on its path the graph is cut (.detach(), "
    "torch.no_grad(), .data, or a copy through NumPy)"
)
WRONG_GRAD = (
    "the gradient with respect to `{name}` differs from the reference's: a step of the "
    "computation is not differentiable as written (e.g. an in-place edit, argmax, or rounding)"
)
SQUEEZE = (
    "a size-1 axis disappeared: .squeeze() without an axis also drops B = 1, L = 1 or S = 1; "
    "name the axis (squeeze(-1)) or index it"
)
NOT_RANDOM = (
    "different generators give the same estimate: the estimator must draw from the `generator` "
    "it is given (don't re-seed it, don't create your own)"
)
ROWS_NOT_ONE = (
    "the weights of a query do not sum to 1 over the keys: nothing may rescale, drop or "
    "re-weight them after the softmax (no dropout inside this function)"
)
SWAPPED_PAIR = "the returned pair is in the wrong order: return ({first}, {second})"
