"""Chapter 3's experiments: one function per claim, each returning its measurements.

The notebook asserts on what these functions return at seed 0; ``tests/test_scoring.py`` calls the
same functions at other seeds and asserts the same claims (thresholds from sweeps of >= 10 seeds,
reported in the chapter's commit notes).

- :func:`scorer_zoo`: which scorer solves a position-driven task (copy) and which a content-driven
  one (associative recall), when keys carry content only. The split holds BY CONSTRUCTION: keys
  without positions cannot support copy-by-position, and a location scorer cannot read keys.
- :func:`luong_comparison`: Luong et al.'s four scorers (dot, general, concat, location) on a task
  that all four CAN solve (the keys carry their position), so that what differs is training.
- :func:`scaling_comparison`: the same model trained with and without the 1/sqrt(d_k) of scaled
  dot-product attention at a large d_k: learning curves.

Shapes (the book's legend): B batch, L queries, S keys (source positions), E width, V vocabulary.
Masks are not used here (every sequence has the same length).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attention.scoring import (
    AdditiveScoredAttention,
    CosineAttention,
    DotAttention,
    GeneralAttention,
    LocationAttention,
    ScaledDotAttention,
    attention_entropy,
)
from .utils import History, seed_everything, train

__all__ = [
    "LuongComparison",
    "RetrievalConfig",
    "Retriever",
    "ScalingComparison",
    "ZooResult",
    "copy_batch",
    "held_out_accuracy",
    "luong_comparison",
    "majority_baseline",
    "make_scorer",
    "recall_batch",
    "reversal_batch",
    "scaling_comparison",
    "scorer_zoo",
    "train_retriever",
]


@dataclass
class RetrievalConfig:
    """Sizes of the retrieval tasks and of the one-layer model that solves them."""

    vocab_size: int = 16  # V: tokens 0..V-1
    length: int = 8  # S = L: source positions (and queries per example)
    width: int = 32  # E: embeddings, queries, keys and values
    batch_size: int = 64  # examples per training step


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def copy_batch(config: RetrievalConfig, batch_size: int, generator: torch.Generator) -> Batch:
    """Copy: keys = values = random tokens; query t is position t; target = the token at t.

    Returns ``(key_tokens, value_tokens, queries, targets)``, each ``(B, S)`` (here L = S).
    """
    S = config.length
    tokens = torch.randint(0, config.vocab_size, (batch_size, S), generator=generator)  # (B, S)
    positions = torch.arange(S).expand(batch_size, S)  # (B, L): query t asks for position t
    return tokens, tokens, positions, tokens


def reversal_batch(config: RetrievalConfig, batch_size: int, generator: torch.Generator) -> Batch:
    """Reversal: keys = values = random tokens; query t (an output slot) wants position S-1-t.

    Returns ``(key_tokens, value_tokens, queries, targets)``, each ``(B, S)``.
    """
    S = config.length
    tokens = torch.randint(0, config.vocab_size, (batch_size, S), generator=generator)  # (B, S)
    slots = torch.arange(S).expand(batch_size, S)  # (B, L): output slot t
    return tokens, tokens, slots, tokens.flip(1)  # target of slot t: the token at S-1-t


def recall_batch(config: RetrievalConfig, batch_size: int, generator: torch.Generator) -> Batch:
    """Associative recall: S (key, value) pairs, keys distinct tokens of the first half of the
    vocabulary at random places, values from the second half; the query is one of the keys and
    its target the value stored with it.

    Returns ``(key_tokens, value_tokens, queries, targets)``, each ``(B, S)``.
    """
    S, half = config.length, config.vocab_size // 2
    keys = torch.argsort(torch.rand(batch_size, half, generator=generator), dim=1)[:, :S]
    values = torch.randint(half, config.vocab_size, (batch_size, S), generator=generator)
    order = torch.argsort(torch.rand(batch_size, S, generator=generator), dim=1)  # (B, L)
    return keys, values, keys.gather(1, order), values.gather(1, order)


TASKS: dict[str, Callable[[RetrievalConfig, int, torch.Generator], Batch]] = {
    "copy": copy_batch,
    "recall": recall_batch,
    "reversal": reversal_batch,
}


def make_scorer(name: str, config: RetrievalConfig) -> nn.Module:
    """A fresh scorer of the zoo, sized for ``config``."""
    E = config.width
    makers = {
        "cosine": lambda: CosineAttention(beta=1.0),
        "additive": lambda: AdditiveScoredAttention(E, E, E),
        "concat": lambda: AdditiveScoredAttention(E, E, E),  # Luong's name for additive
        "general": lambda: GeneralAttention(E, E),
        "dot": DotAttention,
        "scaled dot": ScaledDotAttention,
        "location": lambda: LocationAttention(E, max_source_len=config.length),
    }
    return makers[name]()


class Retriever(nn.Module):
    """Embeddings -> one attention layer (any scorer) -> a linear read-out over the vocabulary.

    ``queries``: "position" (query t is a learned embedding of position t, shared with the keys'
    position embedding), "slot" (a learned embedding of output slot t, a table of its own, like a
    decoder's state) or "token" (the query token's embedding). ``keys_know_position`` adds the
    source-position embedding to the keys (values never carry it).
    """

    def __init__(
        self,
        attention: nn.Module,
        config: RetrievalConfig,
        queries: str = "token",
        keys_know_position: bool = False,
    ):
        super().__init__()
        self.config = config
        self.queries = queries
        self.keys_know_position = keys_know_position
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.length, config.width)
        self.slot_embedding = (
            nn.Embedding(config.length, config.width) if queries == "slot" else None
        )
        self.attention = attention
        self.readout = nn.Linear(config.width, config.vocab_size)

    def forward(self, key_tokens, value_tokens, queries):
        """Ids ``(B, S)``, ``(B, S)``, ``(B, L)`` -> logits ``(B, L, V)``, weights ``(B, L, S)``."""
        keys = self.token_embedding(key_tokens)  # (B, S, E)
        if self.keys_know_position:
            keys = keys + self.position_embedding.weight  # (B, S, E) + (S, E)
        values = self.token_embedding(value_tokens)  # (B, S, E)
        embed = {
            "position": self.position_embedding,
            "slot": self.slot_embedding,
            "token": self.token_embedding,
        }[self.queries]
        context, weights = self.attention(embed(queries), keys, values)  # (B, L, E), (B, L, S)
        return self.readout(context), weights  # (B, L, V) logits


def _test_batch(task: str, config: RetrievalConfig, size: int = 1000) -> Batch:
    return TASKS[task](config, size, torch.Generator().manual_seed(99))  # the same for every run


def held_out_accuracy(model: Retriever | ProjectedRetriever, task: str, size: int = 1000) -> float:
    """Accuracy on ``size`` held-out examples (one fixed test set per task)."""
    key_tokens, value_tokens, queries, targets = _test_batch(task, model.config, size)
    with torch.no_grad():
        logits, _ = model(key_tokens, value_tokens, queries)
    return float((logits.argmax(-1) == targets).float().mean())


def train_retriever(
    model: Retriever | ProjectedRetriever,
    task: str,
    steps: int,
    seed: int,
    lr: float = 3e-3,
) -> History:
    """Adam (lr 3e-3, no clipping) on ``steps`` fresh batches of ``task`` with ``utils.train``.

    Each batch is new random data, so the accuracy logged on it (before the step) is a held-out
    measurement: ``history.metrics["accuracy"]`` is a learning curve.
    """
    config = model.config
    generator = torch.Generator().manual_seed(seed + 10_000)

    def batches():
        while True:
            yield TASKS[task](config, config.batch_size, generator)

    def loss_fn(model, batch):
        key_tokens, value_tokens, queries, targets = batch
        logits, _ = model(key_tokens, value_tokens, queries)  # (B, L, V)
        loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), targets.reshape(-1))
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return loss, {"accuracy": accuracy}

    return train(model, batches(), loss_fn, steps, lr=lr, clip_norm=None, progress=False)


def majority_baseline(task: str, config: RetrievalConfig | None = None) -> float:
    """Accuracy of always answering the most frequent token among the candidate values."""
    config = config or RetrievalConfig()
    _, value_tokens, _, targets = _test_batch(task, config)
    guess = torch.mode(value_tokens, dim=1).values[:, None]  # (B, 1)
    return float((targets == guess).float().mean())


# ----------------------------------------------------------------------------- the zoo


@dataclass
class ZooResult:
    """Test accuracy of every scorer on copy (position) and recall (content)."""

    seed: int
    accuracy: dict[tuple[str, str], float]  # (scorer label, task) -> test accuracy
    baseline: dict[str, float]  # task -> majority-guess accuracy
    models: dict[tuple[str, str], Retriever] = field(repr=False, default_factory=dict)
    histories: dict[tuple[str, str], History] = field(repr=False, default_factory=dict)

    CONTENT_SCORERS = ("cosine", "additive", "general", "dot", "scaled dot")


ZOO_SCORERS = ("cosine", "additive", "general", "dot", "scaled dot", "location")


def scorer_zoo(seed: int = 0, steps: int = 300, config: RetrievalConfig | None = None) -> ZooResult:
    """Train every scorer on copy and recall with content-only keys (plus scaled dot with keys
    that carry their position), ``steps`` Adam steps each, and measure test accuracy."""
    config = config or RetrievalConfig()
    runs = [(name, task, False) for name in ZOO_SCORERS for task in ("copy", "recall")]
    runs += [("scaled dot", task, True) for task in ("copy", "recall")]
    accuracy, models, histories = {}, {}, {}
    for name, task, with_position in runs:
        seed_everything(seed)
        queries = "position" if task == "copy" else "token"
        model = Retriever(make_scorer(name, config), config, queries, with_position)
        label = name + (" + positions in keys" if with_position else "")
        histories[label, task] = train_retriever(model, task, steps, seed)
        accuracy[label, task] = held_out_accuracy(model, task)
        models[label, task] = model
    baseline = {task: majority_baseline(task, config) for task in ("copy", "recall")}
    return ZooResult(seed, accuracy, baseline, models, histories)


# ----------------------------------------------------------------------------- Luong et al.

LUONG_SCORERS = ("dot", "general", "concat", "location")


@dataclass
class LuongComparison:
    """Luong et al.'s four scorers trained on one task that each of them can solve."""

    seed: int
    steps: int
    histories: dict[str, History] = field(repr=False)  # scorer -> loss and accuracy per step
    final_accuracy: dict[str, float]  # scorer -> held-out accuracy after training
    steps_to: dict[str, int | None]  # scorer -> first step where the running accuracy >= target
    target: float  # the accuracy that defines "learned"
    window: int  # steps in the running mean of the per-batch accuracy

    def curve(self, name: str) -> np.ndarray:
        """Running mean of the per-batch accuracy (each batch is fresh data: held out)."""
        return _running_mean(self.histories[name].metrics["accuracy"], self.window)


def _running_mean(values, window: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


LUONG_CONFIG = RetrievalConfig(vocab_size=16, length=12, width=32)


def luong_comparison(
    seed: int = 0,
    steps: int = 300,
    config: RetrievalConfig | None = None,
    target: float = 0.9,
    window: int = 20,
) -> LuongComparison:
    """Dot, general, concat and location scores on reversal with position-carrying keys.

    Query t is output slot t, embedded by a table of its own (as a decoder's state would be); the
    keys are token + source-position embeddings; the target is the token at position S-1-t. Each
    scorer can represent the answer (location maps slot t to position S-1-t; the content scorers
    can match slot t's vector with position S-1-t's), so the differences are training's.
    """
    config = config or LUONG_CONFIG
    histories, final, steps_to = {}, {}, {}
    for name in LUONG_SCORERS:
        seed_everything(seed)
        model = Retriever(make_scorer(name, config), config, "slot", keys_know_position=True)
        histories[name] = train_retriever(model, "reversal", steps, seed)
        final[name] = held_out_accuracy(model, "reversal")
        curve = _running_mean(histories[name].metrics["accuracy"], window)
        reached = np.nonzero(curve >= target)[0]
        steps_to[name] = int(reached[0]) if len(reached) else None
    return LuongComparison(seed, steps, histories, final, steps_to, target, window)


# ----------------------------------------------------------------------------- sqrt(d_k)


class ProjectedRetriever(nn.Module):
    """Recall with learned query and key projections into width ``key_dim`` (as in a Transformer
    layer), then a dot-product score, scaled by 1/sqrt(key_dim) or not: the ONE difference."""

    def __init__(self, config: RetrievalConfig, key_dim: int, scaled: bool):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.query_proj = nn.Linear(config.width, key_dim, bias=False)  # W^Q
        self.key_proj = nn.Linear(config.width, key_dim, bias=False)  # W^K
        self.attention = ScaledDotAttention() if scaled else DotAttention()
        self.readout = nn.Linear(config.width, config.vocab_size)

    def forward(self, key_tokens, value_tokens, queries):
        """Ids ``(B, S)``, ``(B, S)``, ``(B, L)`` -> logits ``(B, L, V)``, weights ``(B, L, S)``."""
        q = self.query_proj(self.token_embedding(queries))  # (B, L, E) -> (B, L, d_k)
        k = self.key_proj(self.token_embedding(key_tokens))  # (B, S, E) -> (B, S, d_k)
        values = self.token_embedding(value_tokens)  # (B, S, E)
        context, weights = self.attention(q, k, values)  # (B, L, E), (B, L, S)
        return self.readout(context), weights


@dataclass
class ScalingComparison:
    """The same model trained with and without the 1/sqrt(d_k) scaling."""

    seed: int
    key_dim: int
    steps: int
    histories: dict[str, History] = field(repr=False)  # "scaled"/"unscaled" -> per-step values
    final_accuracy: dict[str, float]  # held-out recall accuracy after training
    initial_score_std: dict[str, float]  # std of the scores at initialisation
    initial_entropy: dict[str, float]  # mean entropy of the weights at init (nats; log S uniform)
    window: int

    def curve(self, name: str, metric: str = "accuracy") -> np.ndarray:
        """Running mean of a per-step metric ("accuracy" or "loss")."""
        values = self.histories[name].metrics["accuracy"] if metric == "accuracy" else None
        if values is None:
            values = self.histories[name].loss
        return _running_mean(values, self.window)

    def mean_accuracy(self, name: str, first: int, last: int) -> float:
        """Mean per-batch (held-out) accuracy over steps ``first`` .. ``last - 1``."""
        return float(np.mean(self.histories[name].metrics["accuracy"][first:last]))


SCALING_CONFIG = RetrievalConfig(vocab_size=16, length=8, width=32)


def scaling_comparison(
    seed: int = 0,
    key_dim: int = 512,
    steps: int = 200,
    config: RetrievalConfig | None = None,
    window: int = 20,
) -> ScalingComparison:
    """Train :class:`ProjectedRetriever` on recall with and without scaling, same init and data."""
    config = config or SCALING_CONFIG
    histories, final, score_std, entropy = {}, {}, {}, {}
    for name in ("scaled", "unscaled"):
        seed_everything(seed)  # the same initial weights for both
        model = ProjectedRetriever(config, key_dim, scaled=name == "scaled")
        key_tokens, value_tokens, queries, _ = _test_batch("recall", config)
        with torch.no_grad():
            q = model.query_proj(model.token_embedding(queries))  # (B, L, d_k)
            k = model.key_proj(model.token_embedding(key_tokens))  # (B, S, d_k)
            scores = model.attention.score(q, k)  # (B, L, S)
            weights = torch.softmax(scores, dim=-1)
        score_std[name] = float(scores.std())
        entropy[name] = float(attention_entropy(weights).mean())
        histories[name] = train_retriever(model, "recall", steps, seed)
        final[name] = held_out_accuracy(model, "recall")
    return ScalingComparison(seed, key_dim, steps, histories, final, score_std, entropy, window)
