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
    "SERIES_COLOURS",
    "accuracy_vs_length",
    "attention_heatmap",
    "character_alignment",
    "learning_curves",
    "length_curves",
    "seed_band",
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
# The order for lines and bands: no orange (#E69F00 is 2.25:1 on white, under the 3:1 asked of
# graphics) and no yellow; blue and vermillion first, which stay apart under deuteranopia.
SERIES_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#000000"]
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
            "axes.prop_cycle": mpl.cycler(color=SERIES_COLOURS),
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
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        ax.plot(np.arange(len(y)), y, label=label, color=colour, lw=2)
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
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        seed_band(ax, x, values, colour, label, marker=markers[i % len(markers)])
    if chance is not None:
        ax.axhline(chance, color="0.4", ls="--", lw=1, label="chance")
    ax.set_xlabel("sequence length")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(frameon=False)
    return ax


def seed_band(
    ax: plt.Axes,
    x,
    values,
    colour: str,
    label: str | None = None,
    marker: str | None = None,
    alpha: float = 0.2,
) -> None:
    """One line per quantity measured over seeds: the mean, and a band from the min to the max.

    ``values`` is (seeds, len(x)), or one curve (len(x),) drawn without a band. Where no band
    shows, the seeds agree to within the line's width.
    """
    x, v = np.asarray(x), _to_numpy(values)
    if v.ndim == 2:
        if len(v) > 1:
            ax.fill_between(x, v.min(0), v.max(0), color=colour, alpha=alpha, lw=0)
        v = v.mean(0)
    ax.plot(x, v, marker=marker, ms=4 if marker else None, color=colour, lw=2, label=label)


def length_curves(
    lengths: Sequence[int],
    token: Mapping[str, object],
    sequence: Mapping[str, object],
    train_range: tuple[int, int] | None = None,
    chance: float | None = None,
    height: float = 3.6,
) -> plt.Figure:
    """The two-panel length curve of chapters 1 and 2: token and whole-sequence accuracy.

    ``token`` and ``sequence`` map a label to one curve or a (seeds x lengths) array (mean and
    min-max band); the same labels in both. One legend below both panels; the chance floor
    on the token panel only (a whole sequence has no useful chance level).
    """
    fig, axes = plt.subplots(1, 2, figsize=(BOOK_WIDTH, height), sharey=True)
    accuracy_vs_length(lengths, token, ax=axes[0], train_range=train_range, chance=chance)
    accuracy_vs_length(lengths, sequence, ax=axes[1], train_range=train_range)
    axes[0].set(title="symbols right (token accuracy)", ylabel="accuracy")
    axes[1].set(title="whole sequences right", ylabel="")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), frameon=False)
    rows = -(-len(labels) // 3)
    fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
    return fig


def character_alignment(
    text: str,
    output: str,
    weights,
    ax: plt.Axes | None = None,
    colorbar: bool = True,
) -> plt.Axes:
    """The alignment of one character-level translation: a row per output character (and the
    end-of-sequence step), a column per input character (spaces shown as a visible mark)."""
    w = _to_numpy(weights)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(BOOK_WIDTH, 2.5 + 0.3 * len(text)), 3.8))
    attention_heatmap(
        w,
        query_labels=[*output, "<eos>"][: w.shape[0]],
        key_labels=["\u2423" if c == " " else c for c in text],
        ax=ax,
        title=f"{text}  \u2192  {output}",
        xlabel="input character",
        ylabel="output character",
        annotate=False,
        colorbar=colorbar,
    )
    ax.tick_params(axis="x", labelrotation=0)
    return ax
