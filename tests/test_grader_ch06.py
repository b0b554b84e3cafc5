"""Catalogue of wrong answers for chapter 6's questions: each loses points with its hint."""

import torch
from graderkit import assert_caught, assert_full_marks

from attention_course.attention import causal_mask
from attention_course.grading.questions import ch06

# --------------------------------------------------------------------------- prefix_lm_mask


def prefix_ok(source_length, target_length):
    S, T = source_length, target_length
    mask = torch.zeros(S + T, S + T, dtype=torch.bool)
    mask[:, :S] = True
    mask[S:, S:] = torch.ones(T, T, dtype=torch.bool).tril()
    return mask


def prefix_ok_by_indices(source_length, target_length):
    n = source_length + target_length
    row = torch.arange(n)[:, None]
    col = torch.arange(n)[None, :]
    return (col < source_length) | ((row >= source_length) & (col <= row))


def _mask_with(S, T, diagonal=0, source_sees_target=False, causal_source=False):
    mask = prefix_ok(S, T)
    mask[S:, S:] = torch.ones(T, T, dtype=torch.bool).tril(diagonal)
    if source_sees_target:
        mask[:S, S:] = True
    if causal_source:
        mask &= causal_mask(S + T)
    return mask


def prefix_flipped(source_length, target_length):
    return ~prefix_ok(source_length, target_length)


def prefix_transposed(source_length, target_length):
    return prefix_ok(source_length, target_length).T


def prefix_no_self(source_length, target_length):
    return _mask_with(source_length, target_length, diagonal=-1)


def prefix_peeks(source_length, target_length):
    return _mask_with(source_length, target_length, diagonal=1)


def prefix_source_sees_target(source_length, target_length):
    return _mask_with(source_length, target_length, source_sees_target=True)


def prefix_plain_causal(source_length, target_length):
    return causal_mask(source_length + target_length)


def prefix_boundary(source_length, target_length):
    return prefix_ok(source_length + 1, target_length - 1)


def prefix_target_blind(source_length, target_length):
    mask = prefix_ok(source_length, target_length)
    mask[source_length:, :source_length] = False
    return mask


def prefix_float(source_length, target_length):
    return prefix_ok(source_length, target_length).float()


def test_prefix_lm_mask_catalogue():
    q = "ch06.prefix_lm_mask"
    assert_full_marks(q, prefix_ok)
    assert_full_marks(q, prefix_ok_by_indices)
    assert_caught(q, prefix_flipped, "polarity")
    assert_caught(q, prefix_transposed, "transposed")
    assert_caught(q, prefix_no_self, "attend to itself")
    assert_caught(q, prefix_peeks, "not i + 1")
    assert_caught(q, prefix_source_sees_target, "source rows must not attend to target")
    assert_caught(q, prefix_plain_causal, "plain causal mask")
    assert_caught(q, prefix_boundary, "boundary")
    assert_caught(q, prefix_target_blind, "every source column")
    assert_caught(q, prefix_float, "dtype")


# --------------------------------------------------------------------------- cross via self


def cross_ok(attention, source, target):
    S, T = source.shape[1], target.shape[1]
    x = torch.cat([source, target], dim=1)
    mask = torch.zeros(S + T, S + T, dtype=torch.bool)
    mask[:, :S] = True
    out, w = attention(x, x, x, attn_mask=mask)
    return out[:, S:], w[:, S:]


def cross_ok_negative_slices(attention, source, target):
    T = target.shape[1]
    x = torch.cat((source, target), 1)
    mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool)
    mask[:, source.shape[1] :] = False
    out, w = attention(x, x, x, mask)
    return out[:, -T:], w[:, -T:]


def _cross_with(attention, source, target, mask_fn, rows="target", order="st"):
    S, T = source.shape[1], target.shape[1]
    x = torch.cat([source, target] if order == "st" else [target, source], dim=1)
    out, w = attention(x, x, x, attn_mask=mask_fn(S, T))
    pick = slice(S, None) if rows == "target" else slice(0, T)
    return out[:, pick], w[:, pick]


def _block(S, T):
    mask = torch.zeros(S + T, S + T, dtype=torch.bool)
    mask[:, :S] = True
    return mask


def cross_prefix(attention, source, target):
    return _cross_with(attention, source, target, prefix_ok)


def cross_flipped(attention, source, target):
    return _cross_with(attention, source, target, lambda S, T: ~_block(S, T))


def cross_no_mask(attention, source, target):
    return _cross_with(attention, source, target, lambda S, T: None)


def cross_source_rows(attention, source, target):
    return _cross_with(attention, source, target, _block, rows="source")


def cross_target_first(attention, source, target):
    return _cross_with(attention, source, target, _block, order="ts")


def cross_all_rows(attention, source, target):
    x = torch.cat([source, target], dim=1)
    return attention(x, x, x, attn_mask=_block(source.shape[1], target.shape[1]))


def cross_no_grad(attention, source, target):
    with torch.no_grad():
        return cross_ok(attention, source, target)


def cross_in_place(attention, source, target):
    result = cross_ok(attention, source, target)
    target.mul_(2)  # edits the caller's tensor
    return result


def cross_plain_cross(attention, source, target):
    # Right answer, wrong road: allowed (it IS the same function); must get full marks.
    out, w = attention(target, source, source)
    T = target.shape[1]
    return out, torch.cat([w, w.new_zeros(w.shape[0], T, T)], dim=-1)


def test_cross_attention_via_self_attention_catalogue():
    q = "ch06.cross_attention_via_self_attention"
    assert_full_marks(q, cross_ok)
    assert_full_marks(q, cross_ok_negative_slices)
    assert_caught(q, cross_prefix, "prefix LM")
    assert_caught(q, cross_flipped, "polarity")
    assert_caught(q, cross_no_mask, "without a mask")
    assert_caught(q, cross_source_rows, "TARGET rows")
    assert_caught(q, cross_target_first, "source first")
    assert_caught(q, cross_all_rows, "only the T target rows")
    assert_caught(q, cross_no_grad, "gradient")
    assert_caught(q, cross_in_place, "in place")


def test_plain_cross_attention_written_as_such_still_passes():
    assert_full_marks("ch06.cross_attention_via_self_attention", cross_plain_cross)


# --------------------------------------------------------------------------- classify / count


def classify_ok(calls):
    return ["self" if c["key_from"] == c["query_from"] else "cross" for c in calls]


def classify_ok_loop(calls):
    kinds = []
    for call in calls:
        same = call["query_from"] == call["key_from"]
        kinds.append({True: "self", False: "cross"}[same])
    return kinds


def classify_by_name(calls):
    return ["self" if "self" in c["module"] else "cross" for c in calls]


def classify_swapped(calls):
    return ["cross" if c["key_from"] == c["query_from"] else "self" for c in calls]


def classify_by_encoder(calls):
    return ["cross" if "encoder" in c["key_from"] else "self" for c in calls]


def classify_bools(calls):
    return [c["key_from"] == c["query_from"] for c in calls]


def test_classify_attention_calls_catalogue():
    q = "ch06.classify_attention_calls"
    assert_full_marks(q, classify_ok)
    assert_full_marks(q, classify_ok_loop)
    assert_caught(q, classify_by_name, "not by the module's name")
    assert_caught(q, classify_swapped, "SAME place")
    assert_caught(q, classify_by_encoder, "compare key_from with query_from")
    assert_caught(q, classify_bools, "one string")


def count_ok(calls):
    kinds = {c["module"]: c["key_from"] == c["query_from"] for c in calls}
    n_self = sum(kinds.values())
    return n_self, len(kinds) - n_self


def count_ok_sets(calls):
    selfs = {c["module"] for c in calls if c["key_from"] == c["query_from"]}
    crosses = {c["module"] for c in calls if c["key_from"] != c["query_from"]}
    return (len(selfs), len(crosses))


def count_calls(calls):
    n_self = sum(c["key_from"] == c["query_from"] for c in calls)
    return n_self, len(calls) - n_self


def count_all_as_self(calls):
    return len({c["module"] for c in calls}), 0


def count_by_name(calls):
    modules = {c["module"] for c in calls}
    n_self = sum("self" in m for m in modules)
    return n_self, len(modules) - n_self


def count_swapped(calls):
    a, b = count_ok(calls)
    return b, a


def count_as_list_of_floats(calls):
    return [float(x) for x in count_ok(calls)]


def test_count_attention_catalogue():
    q = "ch06.count_attention"
    assert_full_marks(q, count_ok)
    assert_full_marks(q, count_ok_sets)
    assert_caught(q, count_calls, "MODULES, not calls")
    assert_caught(q, count_all_as_self, "by provenance")
    assert_caught(q, count_by_name, "by provenance")
    assert_caught(q, count_swapped, "(number of self")
    assert_caught(q, count_as_list_of_floats, "two ints")


def test_question_ids():
    assert [q.id for q in ch06.QUESTIONS] == [
        "ch06.prefix_lm_mask",
        "ch06.cross_attention_via_self_attention",
        "ch06.classify_attention_calls",
        "ch06.count_attention",
    ]
