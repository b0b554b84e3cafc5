"""Unit tests of attention_course.data: seeded synthetic tasks as padded batches."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from attention_course import data


def assert_batches_equal(a: data.Seq2SeqBatch, b: data.Seq2SeqBatch) -> None:
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, other, rtol=0, atol=0)
        else:
            assert value == other, name


def assert_consistent(batch: data.Seq2SeqBatch) -> None:
    """Masks, lengths and padding agree with each other (mask True = real token)."""
    for ids, lengths, mask in [
        (batch.src, batch.src_lengths, batch.src_mask),
        (batch.tgt_out, batch.tgt_lengths, batch.tgt_mask),
    ]:
        assert mask.dtype == torch.bool and mask.shape == ids.shape
        torch.testing.assert_close(mask.sum(1), lengths)
        for b, n in enumerate(lengths.tolist()):
            assert mask[b, :n].all() and not mask[b, n:].any()
            assert (ids[b, n:] == data.Vocab([]).pad_id).all()
            assert (ids[b, :n] != 0).all()
        assert int(lengths.max()) == ids.shape[1]  # no all-padding columns
    assert batch.tgt_in.shape == batch.tgt_out.shape
    assert (batch.tgt_in[:, 0] == 1).all()  # BOS
    rows = torch.arange(len(batch))
    assert (batch.tgt_out[rows, batch.tgt_lengths - 1] == 2).all()  # EOS last
    # tgt_in is tgt_out shifted right by one behind the BOS
    torch.testing.assert_close(
        batch.tgt_in[:, 1:] * batch.tgt_mask[:, 1:],
        torch.where(batch.tgt_out[:, :-1] == 2, 0, batch.tgt_out[:, :-1]) * batch.tgt_mask[:, 1:],
    )


# --------------------------------------------------------------------------- vocab


def test_vocab_specials_and_round_trip():
    vocab = data.Vocab(list("xyz"))
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2)
    assert vocab.itos[:3] == [data.PAD, data.BOS, data.EOS] and len(vocab) == 6
    ids = vocab.encode("zyx", bos=True, eos=True)
    assert ids == [1, 5, 4, 3, 2]
    assert vocab.to_text(ids) == "zyx"
    assert vocab.to_text(torch.tensor([5, 3, 2, 4, 4])) == "zx"  # stops at EOS
    assert vocab.decode([5, 0, 0]) == ["z"]  # drops PAD
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("w")
    with pytest.raises(ValueError):
        data.Vocab(["a", "a"])


# --------------------------------------------------------------------------- copy / reverse


def test_copy_is_deterministic_by_seed():
    task = data.copy_task()
    assert_batches_equal(task.sample(8, (2, 9), seed=3), task.sample(8, (2, 9), seed=3))
    a, b = task.sample(8, 6, seed=3), task.sample(8, 6, seed=4)
    assert not torch.equal(a.src, b.src)
    run1 = [x.src for x in task.curriculum(20, batch_size=4, seed=1)]
    run2 = [x.src for x in task.curriculum(20, batch_size=4, seed=1)]
    assert all(torch.equal(x, y) for x, y in zip(run1, run2, strict=True))


def test_copy_and_reverse_targets_and_round_trip():
    for task in (data.copy_task(), data.reverse_task()):
        batch = task.sample(16, (1, 12), seed=0)
        assert_consistent(batch)
        for b in range(len(batch)):
            src = task.vocab.to_text(batch.src[b])
            assert src == batch.src_text[b]
            assert task.vocab.to_text(batch.tgt_out[b]) == batch.tgt_text[b]
            expected = src[::-1] if task.reverse else src
            assert batch.tgt_text[b] == expected


def test_one_length_per_batch_and_mixed_lengths():
    task = data.copy_task(num_symbols=5)
    fixed = task.sample(10, 7, seed=0)
    assert fixed.src.shape == (10, 7) and fixed.src_mask.all()
    assert set(fixed.src[fixed.src_mask].tolist()) <= set(range(3, 8))
    mixed = task.sample(200, (3, 9), seed=0)
    assert set(mixed.src_lengths.tolist()) == set(range(3, 10))
    assert_consistent(mixed)


def test_curriculum_ramps_the_maximum_length():
    task = data.copy_task()
    lengths = [
        b.src.shape[1]
        for b in task.curriculum(
            100, batch_size=2, min_length=3, max_length=40, start_max_length=8, seed=0
        )
    ]
    assert min(lengths) >= 3 and max(lengths) <= 40
    assert max(lengths[:5]) <= 12  # early batches are short
    assert max(lengths[40:]) > 30  # after the ramp the long lengths appear
    assert all(len(set(b.src_lengths.tolist())) == 1 for b in task.curriculum(5, 4, seed=0))


# --------------------------------------------------------------------------- dates

NOV_24 = dt.date(2026, 11, 24)


def test_formats_write_the_documented_examples():
    written = {f: data.format_date(NOV_24, f) for f in data.DATE_FORMATS}
    for expected in [
        "24 Nov 2026",
        "11/24/26",
        "Tuesday, November 24, 2026",
        "2026.11.24",
        "24 November 2026",
    ]:
        assert expected in written.values()
    assert data.date_example(NOV_24, "mm/dd/yy").tgt == "2026-11-24"


@pytest.mark.parametrize("fmt", list(data.DATE_FORMATS))
def test_every_format_parses_back_to_the_same_date(fmt):
    rng = np.random.default_rng(0)
    ordinals = rng.integers(data.FIRST_DATE.toordinal(), data.LAST_DATE.toordinal() + 1, 300)
    dates = [dt.date.fromordinal(int(o)) for o in ordinals]
    dates += [data.FIRST_DATE, data.LAST_DATE, dt.date(2000, 2, 29), dt.date(1999, 12, 31)]
    for date in dates:
        text = data.format_date(date, fmt)
        assert data.parse_date(text) == date, (fmt, text)
        assert data.parse_date(text, fmt) == date


def test_parse_date_rejects_nonsense_and_wrong_weekdays():
    for bad in ["hello", "13/45/26", "31 Feb 2020", "2026-11-24"]:
        with pytest.raises(ValueError):
            data.parse_date(bad)
    with pytest.raises(ValueError, match="Tuesday"):
        data.parse_date("Monday, November 24, 2026")
    with pytest.raises(ValueError):
        data.format_date(dt.date(1949, 12, 31), "d Mon yyyy")  # outside 1950-2049


def test_field_labels_cover_the_right_characters():
    names = data.FIELD_NAMES
    for fmt in data.DATE_FORMATS:
        ex = data.date_example(NOV_24, fmt)
        assert len(ex.src_fields) == len(ex.src) and len(ex.tgt_fields) == len(ex.tgt)
        chars = {
            name: "".join(c for c, f in zip(ex.src, ex.src_fields) if names[f] == name)
            for name in names
        }
        assert chars["year"] in ("2026", "26")
        assert chars["month"] in ("11", "Nov", "November")
        assert chars["day"] == "24"
        assert set(chars["other"]) <= set(" ,./")
        assert "".join(c for c, f in zip(ex.tgt, ex.tgt_fields) if names[f] == "year") == "2026"
        assert "".join(c for c, f in zip(ex.tgt, ex.tgt_fields) if names[f] == "day") == "24"
    assert data.date_example(NOV_24, "Weekday, Month d, yyyy").src_fields[:7] == (4,) * 7


def test_date_split_holds_out_whole_dates():
    task = data.DateTask(seed=0, n_test_dates=2000)
    train, test = set(task.train_dates), set(task.test_dates)
    assert len(test) == 2000 and not train & test
    assert len(train) + len(test) == (data.LAST_DATE - data.FIRST_DATE).days + 1
    batch = task.sample(512, "train", seed=1)
    seen = {data.parse_date(s) for s in batch.src_text}
    assert seen <= train and not seen & test
    held = task.sample(256, "test", seed=1)
    assert {data.parse_date(s) for s in held.src_text} <= test
    assert data.DateTask(seed=0).test_dates == task.test_dates  # the split depends on the seed
    assert data.DateTask(seed=1).test_dates != task.test_dates


def test_date_batches_are_consistent_mixed_and_deterministic():
    task = data.DateTask(seed=0)
    batch = task.sample(64, seed=5)
    assert_consistent(batch)
    assert len(set(batch.src_lengths.tolist())) > 3  # mixed lengths: the mask matters
    assert_batches_equal(batch, task.sample(64, seed=5))
    assert batch.src_fields.shape == batch.src.shape
    assert batch.tgt_fields.shape == batch.tgt_out.shape
    assert ((batch.src_fields == data.FIELD_PAD) == ~batch.src_mask).all()
    assert ((batch.tgt_fields == data.FIELD_PAD) == ~batch.tgt_mask).all()
    for b in range(len(batch)):
        src = task.src_vocab.to_text(batch.src[b])
        assert src == batch.src_text[b]
        assert task.tgt_vocab.to_text(batch.tgt_out[b]) == data.parse_date(src).isoformat()
    assert {len(t) for t in batch.tgt_text} == {10}


def test_encode_sources_reads_typed_dates():
    task = data.DateTask()
    batch = task.encode_sources(["Tuesday, November 24, 2026", "11/24/26"])
    assert batch.tgt_text == ["2026-11-24", "2026-11-24"]
    assert batch.src_lengths.tolist() == [26, 8]
    with pytest.raises(ValueError):
        task.encode_sources(["24th of November"])
