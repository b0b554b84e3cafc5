"""The declarative grader kit (attention_course.grading.kit), tested on a question written with it
exactly as /tmp/coord/grading-api.md and the kit's docstring show: each class of false pass the
course was caught with (in-place masks, no_grad, .squeeze(), NaN rows, requires_grad left on an
input, a re-seeding estimator) loses points with the hint that names it."""

from __future__ import annotations

import torch
from graderkit import assert_caught, assert_full_marks

from attention_course.attention import scaled_dot_product_attention as reference
from attention_course.grading import kit
from attention_course.grading.kit import (
    EDGE_SHAPES,
    Question,
    attention_mistakes,
    bool_mask,
    call_args,
    float_mask,
    grad_args,
    grad_test,
    hints,
    outputs_test,
    randn,
    random_test,
    seeded_args,
    shape_test,
)


def _cases(g, make=call_args, mask="bool"):
    cases = []
    for B, L, S, E in EDGE_SHAPES:
        q, k, v = randn(g, B, L, E), randn(g, B, S, E), randn(g, B, S, E + 1)
        m = {"bool": bool_mask(g, B, L, S), "float": float_mask(g, B, L, S), None: None}[mask]
        cases.append(make(q, k, v, m))
    return cases


def _empty_rows(g):
    q, k, v = randn(g, 2, 4, 3), randn(g, 2, 5, 3), randn(g, 2, 5, 2)
    return [
        call_args(q, k, v, bool_mask(g, 2, 4, 5, empty_rows=2)),
        call_args(q, k, v, float_mask(g, 2, 4, 5, empty_rows=2)),
    ]


NAMES = ("output", "weights")
ATTENTION = Question(
    id="kit.attention",
    answer="attention",
    reference=reference,
    arg_names=("query", "key", "value", "attn_mask"),
    tests=(
        shape_test("returns (B, L, Ev) and (B, L, S)", _cases, NAMES),
        outputs_test(
            "softmax(Q K^T / sqrt(E)) V, masked keys exactly 0",
            _cases,
            NAMES,
            mistakes=attention_mistakes,
            masked_zero=(3, 1),
        ),  # fmt: skip
        outputs_test(
            "a float mask is added",
            lambda g: _cases(g, mask="float"),
            NAMES,
            mistakes=attention_mistakes,
            masked_zero=(3, 1),
        ),  # fmt: skip
        outputs_test(
            "a query with no allowed key gets zeros",
            _empty_rows,
            NAMES,
            mistakes=attention_mistakes,
            nan_hint=hints.NAN_EMPTY,
        ),  # fmt: skip
        grad_test(
            "gradients reach query, key and value",
            lambda g: _cases(g, grad_args),
            ("query", "key", "value", "attn_mask"),
        ),  # fmt: skip
    ),
)


def correct(query, key, value, attn_mask=None):
    return reference(query, key, value, attn_mask)


def correct_by_hand(query, key, value, attn_mask=None):
    scores = query @ key.transpose(-2, -1) / query.shape[-1] ** 0.5
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    weights = torch.nan_to_num(scores.softmax(-1), nan=0.0)
    return weights @ value, weights


def test_correct_answers_get_full_marks():
    assert_full_marks(ATTENTION, correct)
    assert_full_marks(ATTENTION, correct_by_hand, seed=3)


def test_mask_edited_in_place_loses_points():
    def answer(query, key, value, attn_mask=None):
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask |= False  # harmless values, but an in-place write
            attn_mask[..., 0] = attn_mask[..., 0]
            attn_mask.logical_not_().logical_not_()
        elif attn_mask is not None:
            attn_mask.nan_to_num_(neginf=-1e30).masked_fill_(attn_mask < -1e29, float("-inf"))
            attn_mask.add_(0.0)
            attn_mask[..., 0] += 1.0
            attn_mask[..., 0] -= 1.0
        return correct_by_hand(query, key, value, attn_mask)

    assert_caught(ATTENTION, answer, "changed its input `attn_mask` in place")


def test_float_mask_nan_rows_lose_points():
    def answer(query, key, value, attn_mask=None):
        scores = query @ key.transpose(-2, -1) / query.shape[-1] ** 0.5
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            weights = torch.nan_to_num(scores.masked_fill(~attn_mask, float("-inf")).softmax(-1))
        elif attn_mask is not None:
            weights = (scores + attn_mask).softmax(-1)  # NaN on an all -inf row
        else:
            weights = scores.softmax(-1)
        return weights @ value, weights

    assert_caught(ATTENTION, answer, "NaN")


def test_no_grad_answer_loses_points():
    def answer(query, key, value, attn_mask=None):
        with torch.no_grad():
            return correct_by_hand(query, key, value, attn_mask)

    assert_caught(ATTENTION, answer, hints.NO_GRAD[:40])


def test_detached_key_is_named():
    def answer(query, key, value, attn_mask=None):
        return correct_by_hand(query, key.detach(), value, attn_mask)

    assert_caught(ATTENTION, answer, "no gradient reaches `key`")


def test_squeeze_without_axis_loses_points():
    def answer(query, key, value, attn_mask=None):
        out, weights = correct_by_hand(query, key, value, attn_mask)
        return out.squeeze(), weights.squeeze()

    assert_caught(ATTENTION, answer, "squeeze")


def test_requires_grad_left_on_input_loses_points():
    def answer(query, key, value, attn_mask=None):
        query.requires_grad_(True)
        return correct_by_hand(query, key, value, attn_mask)

    assert_caught(ATTENTION, answer, "requires_grad of its input `query`")


def _estimator(weights, values, num_samples, generator):
    B, L, S = weights.shape
    idx = torch.multinomial(weights.reshape(-1, S), num_samples, True, generator=generator)
    picked = values.unsqueeze(1).expand(B, L, S, -1).reshape(B * L, S, -1)
    rows = torch.arange(B * L)[:, None]
    return picked[rows, idx].mean(1).reshape(B, L, -1)


ESTIMATOR = Question(
    id="kit.estimator",
    answer="estimate",
    reference=_estimator,
    tests=(
        random_test(
            "follows its generator",
            lambda g: [
                seeded_args(randn(g, 2, 3, 5).softmax(-1), randn(g, 2, 5, 4), 3, seed=int(s))
                for s in torch.randint(0, 2**30, (2,), generator=g)
            ],
        ),
    ),
)


def test_reseeding_estimator_loses_points():
    def reseeds(weights, values, num_samples, generator):
        return _estimator(weights, values, num_samples, torch.Generator().manual_seed(0))

    assert_full_marks(ESTIMATOR, _estimator)
    assert_caught(ESTIMATOR, reseeds, hints.NOT_RANDOM[:40])


def test_kit_exports_what_the_docstring_promises():
    for name in kit.__all__:
        assert hasattr(kit, name), name
