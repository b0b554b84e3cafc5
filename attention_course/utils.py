"""Small helpers every chapter uses: seeding, device choice, a training loop, parameter counts,
progress bars that show in a live notebook and stay out of the built book.

Also ``show_source``: the course's one rule for code that a chapter teaches and later chapters
reuse is that it lives once, here in the package, and the chapter displays its source.
"""

from __future__ import annotations

import inspect
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm as tqdm_auto

T = TypeVar("T")

__all__ = [
    "History",
    "count_parameters",
    "get_device",
    "progress",
    "quiet_progress",
    "seed_everything",
    "show_source",
    "train",
]


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's ``random``, NumPy's global state and torch; return a seeded torch Generator.

    Notebooks should still prefer explicit generators (``np.random.default_rng(seed)`` and the
    returned ``torch.Generator``) for data, so that one experiment cannot shift another's stream.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return torch.Generator().manual_seed(seed)


def get_device(prefer_gpu: bool = True) -> torch.device:
    """Return ``cuda`` (or Apple ``mps``) when present and wanted, else ``cpu``.

    Every experiment in the course is sized for a laptop CPU; a GPU only makes it faster.
    """
    if prefer_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if prefer_gpu and mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


#: Set to "1" by the test run (conftest.py) and the book build (tools/book_extension.py, loaded
#: from _config.yml) before any kernel starts; kernels inherit it, and ``progress`` stays silent.
QUIET_PROGRESS_ENV = "ATTENTION_COURSE_QUIET_PROGRESS"


def quiet_progress() -> bool:
    """True when nobody watches the notebook run: the book build or the test run executes it.

    Those runs set the environment variable ``ATTENTION_COURSE_QUIET_PROGRESS=1`` before they
    start a kernel. A progress bar there would be stored in the page as a stale widget (a blank
    gap once hidden) or as a frozen "100%" line.
    """
    return os.environ.get(QUIET_PROGRESS_ENV, "").strip().lower() in {"1", "true", "yes"}


def progress(iterable: Iterable[T], **kwargs: Any) -> tqdm_auto[T]:
    """``tqdm.auto.tqdm(iterable, **kwargs)`` when someone watches; silent when unattended.

    Use it instead of tqdm in every chapter: ``for seed in progress(SEEDS, desc="seeds"): ...``.
    When the book build or the test run executes the notebook (see ``quiet_progress``) the bar is
    disabled: no output at all, so no stale bar and no blank gap in the built page. The returned
    object is a tqdm bar either way (``set_postfix``, ``update`` and ``close`` work).
    """
    if quiet_progress():
        kwargs["disable"] = True
    return tqdm_auto(iterable, **kwargs)


_progress = progress  # ``train`` has an argument named ``progress``


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class History:
    """What ``train`` returns: one entry per step, plus the wall time."""

    step: list[int] = field(default_factory=list)  # step index, 0-based
    loss: list[float] = field(default_factory=list)  # training loss at that step
    lr: list[float] = field(default_factory=list)  # learning rate used at that step
    metrics: dict[str, list[float]] = field(default_factory=dict)  # extra per-step values
    seconds: float = 0.0  # wall time of the whole loop

    def smoothed(self, window: int = 20) -> np.ndarray:
        """Running mean of the loss over ``window`` steps (shorter at the start)."""
        loss = np.asarray(self.loss, dtype=float)
        if len(loss) == 0:
            return loss
        csum = np.cumsum(np.insert(loss, 0, 0.0))
        idx = np.arange(1, len(loss) + 1)
        lo = np.maximum(idx - window, 0)
        return (csum[idx] - csum[lo]) / (idx - lo)


def train(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[nn.Module, object], torch.Tensor | tuple[torch.Tensor, dict]],
    steps: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-2,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip_norm: float | None = 1.0,
    progress: bool = True,
    desc: str = "training",
) -> History:
    """Run ``steps`` optimisation steps and return a ``History``.

    ``batches`` is any iterable of batches (it is cycled if shorter than ``steps``);
    ``loss_fn(model, batch)`` returns the scalar loss, or ``(loss, {name: value})`` to log extras.
    Adam is used when no optimizer is given. Progress shows with ``progress`` (a live notebook
    only: nothing is printed when the book build or the tests run the notebook).
    """
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = History()
    model.train()
    start = time.perf_counter()
    iterator = iter(batches)
    bar = _progress(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(batches)
            batch = next(iterator)
        out = loss_fn(model, batch)
        loss, extras = out if isinstance(out, tuple) else (out, {})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        history.lr.append(optimizer.param_groups[0]["lr"])
        if scheduler is not None:
            scheduler.step()
        history.step.append(step)
        history.loss.append(float(loss.detach()))
        for name, value in extras.items():
            history.metrics.setdefault(name, []).append(float(value))
        if progress and step % 25 == 0:
            bar.set_postfix(loss=f"{history.loss[-1]:.3f}")
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


def show_source(obj) -> object:
    """Display the source of a package function or class, syntax-highlighted, in a notebook.

    This is how a chapter shows code that lives in the package (so that later chapters can import
    the very same object): the reader sees it, and there is no second copy that could drift.
    Returns an ``IPython.display.Code`` object (plain text outside IPython).
    """
    source = inspect.getsource(obj)
    try:
        from IPython.display import Code
    except ImportError:  # pragma: no cover - IPython ships with every notebook install
        return source
    return Code(source, language="python")
