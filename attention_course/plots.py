"""Figures the chapters share, sized to be read at the book's width.

Colours: the Okabe-Ito palette for lines (safe for the common colour-vision deficiencies) and
``viridis`` (perceptually uniform, readable in grey) for heatmaps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "OKABE_ITO",
    "BOOK_WIDTH",
    "accuracy_vs_length",
    "attention_heatmap",
    "learning_curves",
    "use_course_style",
]

# Okabe & Ito (2008), "Color Universal Design": black first is skipped so lines stay distinct.
OKABE_ITO = [
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
]
BOOK_WIDTH = 7.0  # inches: the text column of the book at 100 dpi is about 700 px
HEATMAP_CMAP = "viridis"


def use_course_style() -> None:
    """Set matplotlib defaults for the book: readable fonts, the colour-blind-safe cycle."""
    mpl.rcParams.update(
        {
            "figure.figsize": (BOOK_WIDTH, 4.0),
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "font.size": 11,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "legend.fontsize": 10,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": mpl.cycler(color=OKABE_ITO),
            "image.cmap": HEATMAP_CMAP,
        }
    )


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def attention_heatmap(
    weights,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    ax: plt.Axes | None = None,
    title: str | None = None,
    xlabel: str = "key (attended position)",
    ylabel: str = "query (output position)",
    annotate: bool | None = None,
    vmax: float | None = 1.0,
    colorbar: bool = True,
) -> plt.Axes:
    """Draw a (queries x keys) attention-weight matrix with labelled token axes.

    Row i is the distribution of query i over the keys, so rows sum to 1. ``annotate`` writes
    the weight in each cell (default: only when the matrix is small enough to read).
    """
    w = _to_numpy(weights)
    if w.ndim != 2:
        raise ValueError(f"attention_heatmap expects a 2-D (queries, keys) matrix, got {w.shape}")
    n_q, n_k = w.shape
    if ax is None:
        width = min(BOOK_WIDTH, 1.2 + 0.45 * n_k)
        height = min(BOOK_WIDTH, 1.0 + 0.4 * n_q)
        _, ax = plt.subplots(figsize=(max(width, 3.0), max(height, 2.0)))
    image = ax.imshow(w, cmap=HEATMAP_CMAP, vmin=0.0, vmax=vmax, aspect="auto")
    ax.grid(False)
    ax.set_xticks(range(n_k))
    ax.set_yticks(range(n_q))
    ax.set_xticklabels(
        key_labels if key_labels is not None else range(n_k),
        rotation=90 if key_labels is not None and max(map(len, map(str, key_labels))) > 2 else 0,
    )
    ax.set_yticklabels(query_labels if query_labels is not None else range(n_q))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if annotate is None:
        annotate = n_q * n_k <= 100
    if annotate:
        top = vmax if vmax is not None else w.max()
        for i in range(n_q):
            for j in range(n_k):
                colour = "black" if w[i, j] > 0.6 * top else "white"
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=8, color=colour)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="weight")
    return ax


def learning_curves(
    histories: Mapping[str, object],
    ax: plt.Axes | None = None,
    smooth: int = 20,
    ylabel: str = "training loss",
    log: bool = True,
) -> plt.Axes:
    """Plot smoothed training-loss curves, one per named run.

    ``histories`` maps a label to a ``utils.History`` or to a plain sequence of losses.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(BOOK_WIDTH, 3.5))
    for i, (label, history) in enumerate(histories.items()):
        if hasattr(history, "smoothed"):
            y = history.smoothed(smooth)
        else:
            loss = _to_numpy(history)
            kernel = np.ones(min(smooth, len(loss))) / min(smooth, len(loss))
            y = np.convolve(loss, kernel, mode="valid")
        ax.plot(np.arange(len(y)), y, label=label, color=OKABE_ITO[i % len(OKABE_ITO)], lw=2)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False)
    return ax


def accuracy_vs_length(
    lengths: Sequence[int],
    curves: Mapping[str, object],
    ax: plt.Axes | None = None,
    ylabel: str = "accuracy",
    train_range: tuple[int, int] | None = None,
    chance: float | None = None,
) -> plt.Axes:
    """Accuracy against sequence length, one line per named curve.

    Each value of ``curves`` is a sequence of accuracies (one per length) or a 2-D array
    (seeds x lengths): then the line is the mean and a band spans the min and max over seeds.
    ``train_range`` shades the lengths seen in training; ``chance`` draws a dashed floor.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(BOOK_WIDTH, 4.0))
    x = np.asarray(lengths)
    if train_range is not None:
        ax.axvspan(*train_range, color="0.9", zorder=0, label="lengths seen in training")
    markers = "os^Dv<>p"
    for i, (label, values) in enumerate(curves.items()):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        v = _to_numpy(values)
        if v.ndim == 2:
            ax.fill_between(x, v.min(0), v.max(0), color=colour, alpha=0.2, lw=0)
            v = v.mean(0)
        ax.plot(x, v, marker=markers[i % len(markers)], color=colour, lw=2, label=label)
    if chance is not None:
        ax.axhline(chance, color="0.4", ls="--", lw=1, label="chance")
    ax.set_xlabel("sequence length")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(frameon=False)
    return ax
