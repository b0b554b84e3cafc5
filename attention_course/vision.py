"""Attention inside convolutional networks (chapter 7), and the image data chapters 6-7 share.

Shape letters (the book's legend): B batch, C channels, H height, W width, N = number of patches
or pixels used as tokens, E embedding width, h heads, d = E // h per-head width.

Data: ``load_digits`` returns scikit-learn's 8x8 handwritten digits (1797 real images shipped
inside scikit-learn, no download) as float tensors with a seeded, stratified train/test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Digits",
    "load_digits",
]


@dataclass
class Digits:
    """scikit-learn's 8x8 digits as tensors, split into train and test.

    ``x_*`` are float32 ``(B, 1, 8, 8)`` images with pixel values in ``[0, 1]`` (the raw
    0..16 intensities divided by 16); ``y_*`` are int64 ``(B,)`` class labels 0..9.
    """

    x_train: torch.Tensor  # (B_train, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (B_train,) int64 labels 0..9
    x_test: torch.Tensor  # (B_test, 1, 8, 8) float32 in [0, 1]
    y_test: torch.Tensor  # (B_test,) int64 labels 0..9
    num_classes: int = 10


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Digits:
    """scikit-learn's 8x8 digits (1797 images) with a seeded train/test split, as a ``Digits``.

    The split is stratified (each class keeps its share in both halves, up to rounding) and the
    same ``seed`` gives the same split on every machine (NumPy's ``default_rng``). Different
    seeds give different splits, so a claim re-run at another seed also meets other test images.

    Args:
        seed: seeds the split (and the order of the examples inside each half).
        test_fraction: share of each class held out for testing, in ``(0, 1)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sklearn_digits

    bunch = _sklearn_digits()
    images = bunch.images.astype(np.float32) / 16.0  # (1797, 8, 8), intensities 0..16 -> [0, 1]
    labels = bunch.target.astype(np.int64)  # (1797,)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(idx)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    x = torch.from_numpy(images).unsqueeze(1)  # (1797, 8, 8) -> (1797, 1, 8, 8)
    y = torch.from_numpy(labels)
    return Digits(
        x_train=x[torch.from_numpy(train)],
        y_train=y[torch.from_numpy(train)],
        x_test=x[torch.from_numpy(test)],
        y_test=y[torch.from_numpy(test)],
    )
