"""Chapter 4's measurements of Vaswani et al.'s Table 1: time, memory and path length.

One function per claim, each returning its measurements (the notebook asserts on them at seed 0,
``tests/test_multihead.py`` calls the same functions at other seeds):

- :func:`time_layers`: forward time of one layer of each kind against the sequence length n, at
  a given batch size: our ``MultiHeadAttention``, ``nn.RNN`` (tanh), ``nn.GRU`` (the gated cell
  chapters 1-2 use) and ``nn.Conv1d``;
- :func:`attention_memory`: bytes of the attention weights and of the recurrent states;
- :func:`path_sensitivity`: ||d y_n / d x_1|| for stacks of freshly initialised layers, against n
  and against depth (the maximum-path-length column).

Shapes (the book's legend): B batch, n sequence length (L = S = n), E width, h heads.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .attention.multihead import MultiHeadAttention

__all__ = [
    "LAYER_KINDS",
    "LayerTimes",
    "PathSensitivity",
    "TimingConfig",
    "attention_memory",
    "crossover_length",
    "make_stack",
    "make_timed_layers",
    "path_sensitivity",
    "RecurrentSaturation",
    "recurrent_saturation",
    "sensitivity",
    "time_layers",
]


# ----------------------------------------------------------------------------- time


@dataclass
class TimingConfig:
    """What :func:`time_layers` measures."""

    width: int = 64  # E, the same for every layer
    num_heads: int = 4  # h, of the self-attention layer
    kernel_size: int = 3  # of the convolution
    lengths: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)  # n
    repeats: int = 5  # timings per (layer, n); the median is kept


def make_timed_layers(config: TimingConfig) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """One layer of each kind, ``(B, n, E) -> (B, n, E)``, in eval mode."""
    E = config.width
    attention = MultiHeadAttention(E, config.num_heads).eval()
    rnn = nn.RNN(E, E, batch_first=True).eval()  # tanh recurrence: n sequential steps
    gru = nn.GRU(E, E, batch_first=True).eval()  # gated: 3 matrix products per step
    conv = nn.Conv1d(E, E, config.kernel_size, padding=config.kernel_size // 2).eval()
    return {
        "self-attention": lambda x: attention(x, x, x, need_weights=False)[0],
        "RNN (tanh)": lambda x: rnn(x)[0],
        "GRU": lambda x: gru(x)[0],
        "convolution": lambda x: conv(x.transpose(1, 2)).transpose(1, 2),  # (B, E, n) inside
    }


@dataclass
class LayerTimes:
    """Median forward seconds of each layer at each length, for one batch size."""

    batch_size: int
    lengths: np.ndarray  # (len(lengths),) the n measured
    seconds: dict[str, np.ndarray]  # layer -> (len(lengths),) median seconds per forward call
    width: int

    def ratio(self, other: str) -> np.ndarray:
        """Self-attention's time divided by ``other``'s, per length (> 1: attention slower)."""
        return self.seconds["self-attention"] / self.seconds[other]

    def crossover(self, other: str) -> float | None:
        """The n beyond which attention is slower than ``other`` at every longer measured n."""
        return crossover_length(self.lengths, self.ratio(other))

    def slope(self, name: str, first_length: int) -> float:
        """Growth exponent of ``name``'s time from ``first_length`` on (log-log least squares)."""
        keep = self.lengths >= first_length
        return float(np.polyfit(np.log(self.lengths[keep]), np.log(self.seconds[name][keep]), 1)[0])


def crossover_length(lengths: np.ndarray, ratio: np.ndarray) -> float | None:
    """Interpolated n where ``ratio`` last crosses 1 upwards (None: never below 1, or never
    above 1 after its last point below 1)."""
    below = np.nonzero(ratio < 1)[0]
    if len(below) == 0 or below.max() + 1 >= len(lengths):
        return None
    i = int(below.max())  # interpolate log(ratio) = 0 on a log-length axis between i and i + 1
    a, b = math.log(ratio[i]), math.log(ratio[i + 1])
    return float(np.exp(np.log(lengths[i]) + a / (a - b) * np.log(lengths[i + 1] / lengths[i])))


def time_layers(
    batch_size: int = 1, config: TimingConfig | None = None, seed: int = 0
) -> LayerTimes:
    """Median forward time of each layer (no gradient, one thread) at each n.

    Time is the CPU time of the calling thread (``time.thread_time``): with one torch thread
    every operation runs there, and other processes on a shared machine do not inflate it.

    Round-robin: every repeat times every (layer, length) once, so a burst of load from another
    process slows all of them alike instead of one curve. Inputs of 64 MiB or more are timed
    3 times.
    """
    config = config or TimingConfig()
    torch.manual_seed(seed)
    layers = make_timed_layers(config)
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        n: torch.randn(batch_size, n, config.width, generator=generator) for n in config.lengths
    }
    times: dict[tuple[str, int], list[float]] = {(k, n): [] for k in layers for n in config.lengths}
    with torch.no_grad():
        for layer in layers.values():  # warm-up
            layer(inputs[config.lengths[0]])
        for repeat in range(config.repeats):
            for n in config.lengths:
                big = 4 * config.num_heads * batch_size * n * n >= 64 * 2**20  # weights' bytes
                if big and repeat >= 3:
                    continue
                for name, layer in layers.items():
                    layer(inputs[n])  # untimed: the caches hold what the previous call left
                    start = time.thread_time()
                    layer(inputs[n])
                    times[name, n].append(time.thread_time() - start)
    seconds = {
        name: np.array([statistics.median(times[name, n]) for n in config.lengths])
        for name in layers
    }
    return LayerTimes(batch_size, np.array(config.lengths), seconds, config.width)


# ----------------------------------------------------------------------------- memory


def attention_memory(
    lengths=(64, 128, 256, 512, 1024), width: int = 64, num_heads: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of the per-head attention weights and of an RNN's hidden states, one sequence.

    Measured on the tensors the layers return (``numel * element_size``), float32.
    """
    torch.manual_seed(0)
    attention = MultiHeadAttention(width, num_heads).eval()
    rnn = nn.RNN(width, width, batch_first=True).eval()
    attention_bytes, state_bytes = [], []
    with torch.no_grad():
        for n in lengths:
            x = torch.randn(1, n, width)  # (1, n, E)
            _, weights = attention(x, x, x, average_attn_weights=False)  # (1, h, n, n)
            states, _ = rnn(x)  # (1, n, E)
            attention_bytes.append(weights.numel() * weights.element_size())
            state_bytes.append(states.numel() * states.element_size())
    return np.array(attention_bytes), np.array(state_bytes)


# ----------------------------------------------------------------------------- path length

LAYER_KINDS = ("self-attention", "recurrent", "convolutional", "dilated convolutional")
PATH_WIDTH = 32  # E of the path-length stacks


def make_stack(kind: str, depth: int, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``(1, n, E) -> (1, n, E)``: ``depth`` freshly initialised layers of one kind.

    "recurrent" is ``nn.RNN`` (tanh); "convolutional" has kernel 3 and tanh after each layer;
    "dilated convolutional" doubles the dilation at every layer (1, 2, 4, ...).
    """
    torch.manual_seed(seed)
    E = PATH_WIDTH
    if kind == "self-attention":
        attention = [MultiHeadAttention(E, 4) for _ in range(depth)]

        def run_attention(x):
            for layer in attention:
                x = layer(x, x, x, need_weights=False)[0]
            return x

        return run_attention
    if kind == "recurrent":
        rnns = [nn.RNN(E, E, batch_first=True) for _ in range(depth)]

        def run_recurrent(x):
            for layer in rnns:
                x = layer(x)[0]
            return x

        return run_recurrent
    dilated = kind.startswith("dilated")
    rates = [2**i if dilated else 1 for i in range(depth)]  # 1, 2, 4, ... or all 1
    convs = [nn.Conv1d(E, E, 3, padding=rate, dilation=rate) for rate in rates]

    def run_convolution(x):
        x = x.transpose(1, 2)  # (1, E, n)
        for layer in convs:
            x = torch.tanh(layer(x))
        return x.transpose(1, 2)  # (1, n, E)

    return run_convolution


def sensitivity(
    run: Callable[[torch.Tensor], torch.Tensor], n: int, seed: int = 0, input_scale: float = 1.0
) -> float:
    """||d y_n / d x_1||: the Frobenius norm of the Jacobian of the last output w.r.t. the first
    input, for a random input sequence of length ``n`` (standard normal times ``input_scale``)."""
    x = torch.randn(1, n, PATH_WIDTH, generator=torch.Generator().manual_seed(seed)) * input_scale
    first = x[:, :1].clone().requires_grad_(True)
    y_last = run(torch.cat([first, x[:, 1:]], dim=1))[0, -1]  # (E,)
    rows = [
        torch.autograd.grad(y_last[e], first, retain_graph=True)[0].flatten()
        for e in range(PATH_WIDTH)
    ]
    return torch.stack(rows).norm().item()  # (E, E) Jacobian


@dataclass
class PathSensitivity:
    """||d y_n / d x_1|| of fresh stacks: one layer against n, and n = 16 against depth."""

    seed: int
    lengths: list[int]
    by_length: dict[str, list[float]]  # kind -> sensitivity of one layer at each n
    depths: list[int]
    by_depth: dict[str, list[float]]  # kind -> sensitivity at n = 16 for each depth
    first_path: dict[str, int | None] = field(default_factory=dict)  # kind -> first depth > 0

    def attention_exponent(self) -> float:
        """Fitted exponent of one self-attention layer's sensitivity against n."""
        att = np.array(self.by_length["self-attention"])
        return float(np.polyfit(np.log(self.lengths), np.log(att), 1)[0])

    def attention_factor_per_layer(self) -> float:
        """How much one more bare self-attention layer divides the signal, on average."""
        att = self.by_depth["self-attention"]
        return (att[0] / att[-1]) ** (1 / (len(att) - 1))

    def recurrent_two_over_one(self) -> float:
        """Sensitivity of two stacked RNN layers divided by that of one (n = 16)."""
        return self.by_depth["recurrent"][1] / self.by_depth["recurrent"][0]


def path_sensitivity(
    seed: int = 0, lengths=(2, 4, 8, 16, 32, 64), depths=tuple(range(1, 17)), n: int = 16
) -> PathSensitivity:
    """Measure every kind's sensitivity against the length (one layer) and the depth (at n)."""
    by_length = {
        k: [sensitivity(make_stack(k, 1, seed), m, seed) for m in lengths] for k in LAYER_KINDS
    }
    by_depth = {
        k: [sensitivity(make_stack(k, d, seed), n, seed) for d in depths] for k in LAYER_KINDS
    }
    first = {k: next((d for d, v in zip(depths, by_depth[k]) if v > 0), None) for k in LAYER_KINDS}
    return PathSensitivity(seed, list(lengths), by_length, list(depths), by_depth, first)


@dataclass
class RecurrentSaturation:
    """Why a second RNN layer can pass more signal than the first: a test of "less saturation".

    The first layer reads inputs of spread ~1 and outputs tanh values of spread ~0.5; the second
    layer reads those. If less saturated units are the reason, the SAME first layer fed inputs of
    half the spread must pass more signal too (an intervention on the input, nothing else).
    """

    seed: int
    n: int
    one_layer: float  # ||d y_n / d x_1|| of one RNN layer, inputs of spread 1
    two_layers: float  # the same first layer with a second on top
    one_layer_half_spread: (
        float  # the same one layer, inputs scaled by 1/2 (derivative w.r.t. them)
    )
    input_std: float  # spread of the inputs
    hidden_std: float  # spread of the first layer's outputs (the second layer's inputs)
    tanh_slope_first: float  # mean tanh' = 1 - h^2 over the first layer's units and steps
    tanh_slope_second: float  # ... over the second layer's

    @property
    def two_over_one(self) -> float:
        return self.two_layers / self.one_layer

    @property
    def half_spread_over_one(self) -> float:
        return self.one_layer_half_spread / self.one_layer


def recurrent_saturation(seed: int = 0, n: int = 16) -> RecurrentSaturation:
    """Measure the two-layer gain, the half-spread gain and the units' mean tanh slope."""
    one, two = make_stack("recurrent", 1, seed), make_stack("recurrent", 2, seed)
    torch.manual_seed(seed)  # the same two layers as make_stack("recurrent", 2, seed)
    first, second = (nn.RNN(PATH_WIDTH, PATH_WIDTH, batch_first=True) for _ in range(2))
    x = torch.randn(1, n, PATH_WIDTH, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        h1 = first(x)[0]  # (1, n, E)
        h2 = second(h1)[0]  # (1, n, E)
    return RecurrentSaturation(
        seed,
        n,
        one_layer=sensitivity(one, n, seed),
        two_layers=sensitivity(two, n, seed),
        one_layer_half_spread=sensitivity(one, n, seed, input_scale=0.5),
        input_std=float(x.std()),
        hidden_std=float(h1.std()),
        tanh_slope_first=float((1 - h1**2).mean()),
        tanh_slope_second=float((1 - h2**2).mean()),
    )
