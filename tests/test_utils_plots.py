"""Unit tests of attention_course.utils and attention_course.plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from attention_course import plots, utils


def test_seed_everything_makes_torch_and_numpy_repeatable():
    utils.seed_everything(3)
    a = torch.randn(5), np.random.rand(3)
    generator = utils.seed_everything(3)
    b = torch.randn(5), np.random.rand(3)
    torch.testing.assert_close(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    x = torch.randn(4, generator=generator)
    y = torch.randn(4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, y)


def test_get_device_is_cpu_when_gpu_not_wanted():
    assert utils.get_device(prefer_gpu=False).type == "cpu"
    assert utils.get_device().type in {"cpu", "cuda", "mps"}


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    assert utils.count_parameters(model) == 3 * 4 + 4 + 4 * 2
    model[0].weight.requires_grad_(False)
    assert utils.count_parameters(model) == 4 + 4 * 2
    assert utils.count_parameters(model, trainable_only=False) == 3 * 4 + 4 + 4 * 2


def test_train_reduces_loss_and_records_history():
    utils.seed_everything(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    model = nn.Linear(3, 1)

    def loss_fn(model, batch):
        inputs, targets = batch
        loss = nn.functional.mse_loss(model(inputs), targets)
        return loss, {"abs_bias_error": (model.bias - 0.3).abs().item()}

    history = utils.train(model, [(x, y)], loss_fn, steps=200, lr=0.05, progress=False)
    assert len(history.loss) == len(history.step) == len(history.lr) == 200
    assert history.loss[-1] < 0.01 * history.loss[0]
    assert history.metrics["abs_bias_error"][-1] < 0.05
    assert history.seconds > 0
    assert not model.training, "train() leaves the model in eval mode"
    smoothed = history.smoothed(10)
    assert smoothed.shape == (200,) and smoothed[0] == pytest.approx(history.loss[0])


def test_train_cycles_short_iterables_and_uses_scheduler():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    batches = [torch.randn(4, 2) for _ in range(3)]
    history = utils.train(
        model,
        batches,
        lambda m, b: m(b).pow(2).mean(),
        steps=10,
        optimizer=optimizer,
        scheduler=scheduler,
        progress=False,
    )
    assert history.lr[:5] == [0.1] * 5 and history.lr[5:] == [0.05] * 5


def test_show_source_returns_the_package_code():
    code = utils.show_source(utils.count_parameters)
    text = getattr(code, "data", code)
    assert "def count_parameters" in text


def test_attention_heatmap_labels_and_values():
    w = torch.softmax(torch.randn(3, 4), dim=-1)
    ax = plots.attention_heatmap(w, ["a", "b", "c"], ["w", "x", "y", "z"], title="t")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["w", "x", "y", "z"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    np.testing.assert_allclose(ax.images[0].get_array(), w.numpy())
    assert len(ax.texts) == 12  # small matrices are annotated
    plt.close("all")
    with pytest.raises(ValueError):
        plots.attention_heatmap(torch.ones(2, 2, 2))


def test_learning_curves_and_accuracy_vs_length():
    history = utils.History(loss=[1.0, 0.5, 0.25, 0.1])
    ax = plots.learning_curves({"run": history, "raw": [1.0, 0.9, 0.8, 0.7]}, smooth=2)
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    lengths = [5, 10, 20]
    ax = plots.accuracy_vs_length(
        lengths,
        {
            "one seed": [1.0, 0.5, 0.1],
            "three seeds": np.array([[1, 0.6, 0.2], [1, 0.4, 0], [1, 0.5, 0.1]]),
        },
        train_range=(3, 12),
        chance=0.1,
    )
    means = ax.lines[1].get_ydata()
    np.testing.assert_allclose(means, [1.0, 0.5, 0.1])
    assert len(ax.collections) == 1  # the band over seeds
    assert len(ax.patches) == 1  # the shaded training range
    plt.close("all")


def _contrast_on_white(colour: str) -> float:
    """WCAG contrast ratio of a colour against white (1 to 21)."""
    rgb = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    linear = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    luminance = float(linear @ [0.2126, 0.7152, 0.0722])
    return 1.05 / (luminance + 0.05)


def test_course_style_uses_colour_blind_safe_cycle():
    plots.use_course_style()
    colours = [c.lower() for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]]
    okabe_ito = [c.lower() for c in plots.OKABE_ITO]
    assert set(colours) <= set(okabe_ito), "series colours come from the Okabe-Ito palette"
    # Orange (#E69F00, 2.25:1) and yellow (1.3:1) are too pale on white for a main series, and
    # orange merges with vermillion under deuteranopia: neither is in the cycle.
    assert "#e69f00" not in colours and "#f0e442" not in colours
    assert _contrast_on_white("#E69F00") < 3 < _contrast_on_white("#D55E00")
    # The first four series (most figures have no more) meet the 3:1 asked of graphics.
    assert all(_contrast_on_white(c) >= 3 for c in colours[:4]), colours[:4]


def test_progress_is_silent_when_the_book_build_or_tests_run_the_notebook(monkeypatch, capsys):
    monkeypatch.setenv(utils.QUIET_PROGRESS_ENV, "1")
    assert utils.quiet_progress()
    bar = utils.progress(range(5), desc="quiet")
    assert list(bar) == [0, 1, 2, 3, 4]
    bar.set_postfix(loss="0.1")  # a disabled bar still takes the calls a loop makes
    bar.close()
    model = nn.Linear(2, 1)
    utils.train(model, [torch.randn(4, 2)], lambda m, b: m(b).pow(2).mean(), steps=30)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "", "progress printed while unattended"


def test_progress_shows_in_a_live_session(monkeypatch):
    import io

    monkeypatch.delenv(utils.QUIET_PROGRESS_ENV, raising=False)
    assert not utils.quiet_progress()
    out = io.StringIO()
    assert list(utils.progress(range(3), desc="live", file=out)) == [0, 1, 2]
    assert "live" in out.getvalue() and "3/3" in out.getvalue()
