"""Unit tests of attention_course.vision: image data, attention in CNNs, chapter 7 claims."""

from __future__ import annotations

import torch

from attention_course import vision


def test_load_digits_shapes_range_and_split():
    d = vision.load_digits(seed=0)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_test.shape[1:] == (1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert len(d.x_train) + len(d.x_test) == 1797
    assert 0.23 < len(d.x_test) / 1797 < 0.27
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    # stratified: every class in both halves
    assert set(d.y_test.tolist()) == set(range(10)) == set(d.y_train.tolist())


def test_load_digits_seeded():
    a, b, c = vision.load_digits(seed=1), vision.load_digits(seed=1), vision.load_digits(seed=2)
    torch.testing.assert_close(a.x_test, b.x_test, rtol=0, atol=0)
    assert not torch.equal(a.y_test, c.y_test)
    # train and test are disjoint: no test image occurs in train (distinct images only)
    train = {tuple(x.flatten().tolist()) for x in a.x_train}
    test = {tuple(x.flatten().tolist()) for x in a.x_test}
    assert len(train & test) <= 2  # the raw data has a couple of exact duplicate images
