"""Attention vs self-attention, measured (chapter 6): each claim of the chapter is one function.

Each function returns a small dataclass of measurements; the chapter asserts on it at seed 0 and
``tests/test_versus.py`` calls the SAME function at two other seeds.

- Provenance (:func:`record_attention_calls`, :func:`attention_census`): forward hooks record,
  for every call of an attention module, which module produced its queries and which produced its
  keys. A call is SELF-attention when the keys come from the same place as the queries (the
  layer's own input) and CROSS-attention (attention in the classic sense) when they come from
  another component, whatever the module is called. :func:`transformer_census` counts the
  attention of ``nn.Transformer()``'s defaults and of a BERT-base-sized encoder that way.
- Self-attention simulates cross-attention (:func:`cross_attention_via_self_attention`,
  :func:`check_cross_as_self`, :func:`check_prefix_lm`, :func:`depth_mismatch`): the masks of
  ``attention_course.attention.masks`` turn one self-attention over ``[source; target]`` into an
  encoder-decoder, exactly at one layer, and where it stops being the same in a stack.
- A dependency within one sequence (:func:`earlier_occurrence_labels`, :class:`OneLayerTagger`,
  :func:`within_sequence_dependency`): one self-attention layer against one cross-attention layer
  whose queries come from another component (output-position queries) and whose keys are the
  tokens' embeddings only; and chapter 3's scorers dropped into the self-attention layer.
- :class:`MultiHeadAdditiveAttention`: Bahdanau's additive step with several heads.

Shapes (the book's legend): B batch, L query/target length, S key/source length, E width,
h heads, d = E // h. Masks: boolean, True = the query MAY attend to the key (the
``F.scaled_dot_product_attention`` convention; ``nn.MultiheadAttention`` is the opposite).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import bahdanau
from .attention.core import masked_softmax
from .attention.masks import cross_attention_block_mask, prefix_lm_mask
from .attention.multihead import MultiHeadAttention, split_heads
from .attention.scoring import ScaledDotAttention, ScoredAttention
from .data import Seq2SeqBatch
from .utils import count_parameters, seed_everything, train

__all__ = [
    "ATTENTION_TYPES",
    "AttentionCall",
    "AttentionCensus",
    "ConcatenationCheck",
    "DependencyResult",
    "DepthMismatch",
    "ModalityResult",
    "MultiHeadAdditiveAttention",
    "PatchReader",
    "OneLayerTagger",
    "PrefixLMCheck",
    "ScoredSelfAttention",
    "TrainedDates",
    "TransformerCensus",
    "attention_census",
    "check_cross_as_self",
    "check_prefix_lm",
    "classify_attention_call",
    "cross_attention_via_self_attention",
    "depth_mismatch",
    "earlier_occurrence_labels",
    "record_attention_calls",
    "text_over_image_patches",
    "trained_on_dates",
    "transformer_census",
    "two_digit_images",
    "within_sequence_dependency",
]

# --------------------------------------------------------------------------- provenance

#: The modules whose calls are attention: PyTorch's, the course's multi-head layer, chapter 2's
#: additive step and chapter 3's scorers. Each is called as ``module(query, key, ...)``.
ATTENTION_TYPES: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention,
    MultiHeadAttention,
    bahdanau.AdditiveAttention,
    ScoredAttention,
)


@dataclass
class AttentionCall:
    """One call of an attention module, with where its queries and keys came from."""

    module: str  # qualified name of the attention module that was called
    query_from: str  # the module whose output the queries are ("input" for the model's input)
    key_from: str  # the module whose output the keys are
    kind: str  # "self" (keys from where the queries come from) or "cross" (from elsewhere)
    query_shape: tuple[int, ...]  # e.g. (B, L, E), or (B, H) for one decoder step
    key_shape: tuple[int, ...]  # e.g. (B, S, E)


def classify_attention_call(query_from: str, key_from: str) -> str:
    """ "self" when the keys come from where the queries come from, else "cross".

    The rule of the chapter: self-attention reads the input of its own layer (queries and keys
    are one tensor, produced by one module); attention in the classic sense reads the states of
    ANOTHER component (a decoder's query reads an encoder's output). The module's name plays no
    part.
    """
    return "self" if query_from == key_from else "cross"


def _tensors_in(output) -> Iterator[Tensor]:
    """The tensors a module returned: a tensor, a tuple/list of them, or a dataclass's fields."""
    if isinstance(output, Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors_in(item)
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        for item in vars(output).values():
            yield from _tensors_in(item)


@contextlib.contextmanager
def _no_fast_path():
    """PyTorch's fused inference path skips ``self_attn``'s forward (and its hooks): turn it off."""
    mha = torch.backends.mha
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def record_attention_calls(
    model: nn.Module,
    run: Callable[[nn.Module], object],
    attention_types: tuple[type[nn.Module], ...] = ATTENTION_TYPES,
) -> list[AttentionCall]:
    """Run ``run(model)`` with forward hooks and return every attention call's provenance.

    A hook on EVERY submodule labels each tensor it returns with the module's name (the
    outermost module that returns a tensor names it last: an encoder's final LayerNorm output is
    labelled ``"encoder"``); tensors the model was given, or computed outside any module, keep
    the label ``"input"`` or ``"untracked <n>"`` (one label per tensor). A pre-hook on every
    module of ``attention_types`` reads its query and key (the first two arguments) and
    classifies the call with :func:`classify_attention_call`.
    """
    labels: dict[int, tuple[str, Tensor]] = {}  # id(tensor) -> (label, tensor kept alive)
    calls: list[AttentionCall] = []
    handles = []
    untracked = 0

    def label_of(tensor: Tensor) -> str:
        nonlocal untracked
        entry = labels.get(id(tensor))
        if entry is not None and entry[1] is tensor:
            return entry[0]
        untracked += 1
        labels[id(tensor)] = (f"untracked {untracked}", tensor)
        return f"untracked {untracked}"

    def label_outputs(name):
        def hook(module, args, output):
            for tensor in _tensors_in(output):
                labels[id(tensor)] = (name, tensor)

        return hook

    def label_inputs(module, args, kwargs):
        for tensor in _tensors_in(list(args) + list(kwargs.values())):
            labels.setdefault(id(tensor), ("input", tensor))

    def record_call(name):
        def hook(module, args, kwargs):
            query = args[0] if len(args) > 0 else kwargs["query"]
            key = args[1] if len(args) > 1 else kwargs.get("key", kwargs.get("keys"))
            query_from, key_from = label_of(query), label_of(key)
            kind = "self" if key is query else classify_attention_call(query_from, key_from)
            calls.append(
                AttentionCall(
                    name, query_from, key_from, kind, tuple(query.shape), tuple(key.shape)
                )
            )

        return hook

    handles.append(model.register_forward_pre_hook(label_inputs, with_kwargs=True))
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(label_outputs(name)))
        if isinstance(module, attention_types):
            handles.append(module.register_forward_pre_hook(record_call(name), with_kwargs=True))
    try:
        with _no_fast_path(), torch.enable_grad():
            run(model)
    finally:
        for handle in handles:
            handle.remove()
    return calls


@dataclass
class AttentionCensus:
    """The attention modules of one model, counted by class and by provenance."""

    name: str  # what was counted, e.g. "nn.Transformer() defaults"
    modules_by_class: int  # modules that are instances of ATTENTION_TYPES (what grep would count)
    module_kinds: dict[str, str]  # attention module name -> "self" / "cross" (from its calls)
    calls: list[AttentionCall] = field(default_factory=list)  # every call, in order

    @property
    def num_self(self) -> int:
        return sum(kind == "self" for kind in self.module_kinds.values())

    @property
    def num_cross(self) -> int:
        return sum(kind == "cross" for kind in self.module_kinds.values())


def attention_census(
    model: nn.Module,
    run: Callable[[nn.Module], object],
    name: str = "",
    attention_types: tuple[type[nn.Module], ...] = ATTENTION_TYPES,
) -> AttentionCensus:
    """Count a model's attention modules by provenance: one forward pass, hooks on every call.

    A module called several times (chapter 2's attention runs once per decoder step) must be of
    one kind in every call; a module never called is not attention in this model and is left out.
    """
    calls = record_attention_calls(model, run, attention_types)
    kinds: dict[str, str] = {}
    for call in calls:
        if kinds.setdefault(call.module, call.kind) != call.kind:
            raise ValueError(f"{call.module} is called as both self- and cross-attention")
    by_class = sum(isinstance(m, attention_types) for m in model.modules())
    return AttentionCensus(name, by_class, kinds, calls)


@dataclass
class TransformerCensus:
    """The counts of the chapter's table: ``nn.Transformer()`` and a BERT-base-sized encoder."""

    transformer: AttentionCensus  # nn.Transformer() with its defaults (6 + 6 layers, E 512)
    bert_base: AttentionCensus  # 12 encoder layers, E 768, 12 heads, FFN 3072 (random weights)
    transformer_parameters: int  # number of parameters of nn.Transformer()
    bert_parameters: int  # of the encoder stack (no embeddings, no pooler)


def transformer_census(seed: int = 0, length: int = 3) -> TransformerCensus:
    """Build ``nn.Transformer()`` and a BERT-base-sized ``nn.TransformerEncoder`` (random weights:
    the architecture alone decides provenance) and count their attention by one forward pass on
    ``length`` random vectors."""
    gen = seed_everything(seed)
    with warnings.catch_warnings():  # its nested-tensor notice concerns speed, not counting
        warnings.simplefilter("ignore", UserWarning)
        transformer = nn.Transformer()  # defaults: d_model 512, 8 heads, 6 + 6 layers, seq first
    bert_layer = nn.TransformerEncoderLayer(768, 12, 3072, activation="gelu", batch_first=True)
    bert = nn.TransformerEncoder(bert_layer, 12, enable_nested_tensor=False)
    src = torch.randn(length, 1, 512, generator=gen)  # (S, B, E): nn.Transformer is seq first
    tgt = torch.randn(length, 1, 512, generator=gen)  # (L, B, E)
    tokens = torch.randn(1, length, 768, generator=gen)  # (B, L, E)
    t_census = attention_census(transformer, lambda m: m(src, tgt), "nn.Transformer()")
    b_census = attention_census(bert, lambda m: m(tokens), "BERT-base-sized encoder")

    def size(model):
        return sum(p.numel() for p in model.parameters())

    return TransformerCensus(t_census, b_census, size(transformer), size(bert))


# --------------------------------------------------------------------------- SA simulates AT


def cross_attention_via_self_attention(
    attention: nn.Module, source: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """Cross-attention of ``target`` over ``source``, computed as SELF-attention over both.

    Concatenate ``[source; target]`` (B, S+T, E), run ``attention`` as self-attention (queries,
    keys and values all the concatenation) under :func:`cross_attention_block_mask` (every row
    may attend to the source columns only: True = may attend), and keep the target rows.

    Returns ``(output (B, T, E), weights (B, T, S+T))``; the weights on target columns are 0.
    """
    S, T = source.shape[1], target.shape[1]
    both = torch.cat([source, target], dim=1)  # (B, S, E) ++ (B, T, E) -> (B, S+T, E)
    mask = cross_attention_block_mask(S, T, device=source.device)  # (S+T, S+T)
    output, weights = attention(both, both, both, attn_mask=mask)  # (B, S+T, E), (B, S+T, S+T)
    return output[:, S:], weights[:, S:]  # the target rows: (B, T, E), (B, T, S+T)


@dataclass
class ConcatenationCheck:
    """Cross-attention vs self-attention over [source; target] with a block mask, same weights."""

    target_difference: float  # max |cross(target, source) - target rows of the self-attention|
    source_difference: float  # max |source rows - the source's own self-attention| (an encoder)
    weight_on_targets: float  # largest weight any row puts on a target column (0 by the mask)
    torch_difference: float  # max |target rows - nn.MultiheadAttention cross-attention|


def check_cross_as_self(
    seed: int = 0, batch: int = 2, source_length: int = 5, target_length: int = 3,
    embed_dim: int = 16, num_heads: int = 4,
) -> ConcatenationCheck:  # fmt: skip
    """Measure :func:`cross_attention_via_self_attention` against the cross-attention it simulates.

    One ``MultiHeadAttention`` (random weights) does both; PyTorch's ``nn.MultiheadAttention``
    with the same weights gives the cross-attention a second time, independently of our code.
    """
    gen = seed_everything(seed)
    attention = MultiHeadAttention(embed_dim, num_heads)
    source = torch.randn(batch, source_length, embed_dim, generator=gen)  # (B, S, E)
    target = torch.randn(batch, target_length, embed_dim, generator=gen)  # (B, T, E)
    with torch.no_grad():
        cross, _ = attention(target, source, source)  # (B, T, E): classic attention
        simulated, weights = cross_attention_via_self_attention(attention, source, target)
        both = torch.cat([source, target], dim=1)  # (B, S+T, E)
        mask = cross_attention_block_mask(source_length, target_length)
        rows, _ = attention(both, both, both, attn_mask=mask)  # (B, S+T, E)
        encoder, _ = attention(source, source, source)  # (B, S, E): self-attention of the source
        torch_mha = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        torch_mha.in_proj_weight.copy_(
            torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
        )
        torch_mha.in_proj_bias.copy_(
            torch.cat([attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias])
        )
        torch_mha.out_proj.load_state_dict(attention.out_proj.state_dict())
        torch_cross, _ = torch_mha(target, source, source)  # (B, T, E)
    return ConcatenationCheck(
        target_difference=(cross - simulated).abs().max().item(),
        source_difference=(rows[:, :source_length] - encoder).abs().max().item(),
        weight_on_targets=weights[..., source_length:].abs().max().item(),
        torch_difference=(torch_cross - simulated).abs().max().item(),
    )


@dataclass
class PrefixLMCheck:
    """What one softmax under :func:`prefix_lm_mask` does, measured on a random layer."""

    source_change: float  # max change of the SOURCE rows when every target token changes (0)
    past_change: float  # max change of target rows BEFORE a changed target position (0: causal)
    future_change: float  # min over later rows of their change (> 0: they read that position)
    row_sum_error: float  # max |sum of a row's weights - 1|: source and target share ONE softmax
    source_mass: float  # mean weight the target rows put on the source columns (the rest: targets)
    weights: Tensor  # (S+T, S+T) weights of one example, averaged over heads, for a figure


def check_prefix_lm(
    seed: int = 0, batch: int = 4, source_length: int = 6, target_length: int = 5,
    embed_dim: int = 16, num_heads: int = 4, changed: int = 2,
) -> PrefixLMCheck:  # fmt: skip
    """Run one self-attention layer over ``[source; target]`` with the prefix-LM mask, then change
    the target from position ``changed`` on and measure which rows move."""
    gen = seed_everything(seed)
    S, T = source_length, target_length
    attention = MultiHeadAttention(embed_dim, num_heads)
    source = torch.randn(batch, S, embed_dim, generator=gen)  # (B, S, E)
    target = torch.randn(batch, T, embed_dim, generator=gen)  # (B, T, E)
    edited = target.clone()
    edited[:, changed:] = torch.randn(batch, T - changed, embed_dim, generator=gen)
    mask = prefix_lm_mask(S, T)  # (S+T, S+T), True = may attend
    with torch.no_grad():
        both = torch.cat([source, target], dim=1)  # (B, S+T, E)
        both_edited = torch.cat([source, edited], dim=1)  # (B, S+T, E)
        out, weights = attention(both, both, both, attn_mask=mask)  # (B, S+T, E), (B, S+T, S+T)
        out_edited, _ = attention(both_edited, both_edited, both_edited, attn_mask=mask)
    change = (out - out_edited).abs().amax(dim=(0, 2))  # (S+T,): largest change of each row
    return PrefixLMCheck(
        source_change=change[:S].max().item(),
        past_change=change[S : S + changed].max().item() if changed else 0.0,
        future_change=change[S + changed :].min().item(),
        row_sum_error=(weights.sum(-1) - 1).abs().max().item(),
        source_mass=weights[:, S:, :S].sum(-1).mean().item(),
        weights=weights[0],
    )


class _ResidualAttentionBlock(nn.Module):
    """x + attention(x, memory, memory), then + a ReLU MLP: depth_mismatch's measuring device."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.attention = MultiHeadAttention(embed_dim, num_heads)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, 2 * embed_dim), nn.ReLU(), nn.Linear(2 * embed_dim, embed_dim)
        )

    def forward(self, x: Tensor, memory: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attention(x, memory, memory, attn_mask=attn_mask)[0]  # (B, L, E)
        return x + self.mlp(x)  # (B, L, E)


@dataclass
class DepthMismatch:
    """A concatenated self-attention stack vs an encoder-decoder with the SAME layers."""

    num_layers: int  # depth of every stack
    same_depth: list[float]  # per layer: max |target rows - decoder reading the source at the
    # same depth| (0: the concatenated stack IS that encoder-decoder)
    last_layer: list[float]  # per layer: relative difference to a decoder that reads the
    # encoder's LAST layer at every depth (the usual encoder-decoder): not 0


def depth_mismatch(
    seed: int = 0, num_layers: int = 3, batch: int = 4, source_length: int = 6,
    target_length: int = 4, embed_dim: int = 16, num_heads: int = 2,
) -> DepthMismatch:  # fmt: skip
    """Where self-attention over [source; target] stops being an encoder-decoder: in depth.

    Layer l of the concatenated stack (block mask: every row reads the source columns only)
    gives its target rows the source AT DEPTH l-1. A Transformer decoder's layer l reads the
    encoder's LAST layer instead. Both decoders here use the very same layers as the stack.
    """
    gen = seed_everything(seed)
    S, T = source_length, target_length
    layers = nn.ModuleList(_ResidualAttentionBlock(embed_dim, num_heads) for _ in range(num_layers))
    source = torch.randn(batch, S, embed_dim, generator=gen)  # (B, S, E)
    target = torch.randn(batch, T, embed_dim, generator=gen)  # (B, T, E)
    mask = cross_attention_block_mask(S, T)  # (S+T, S+T), True = may attend
    same_depth, last_layer = [], []
    with torch.no_grad():
        encoder_states = [source]  # the source at depth 0, 1, ..., num_layers
        for layer in layers:
            encoder_states.append(layer(encoder_states[-1], encoder_states[-1]))  # (B, S, E)
        both = torch.cat([source, target], dim=1)  # (B, S+T, E)
        layerwise, usual = target, target
        for depth, layer in enumerate(layers):
            both = layer(both, both, attn_mask=mask)  # (B, S+T, E): one self-attention stack
            layerwise = layer(layerwise, encoder_states[depth])  # reads the source at its depth
            usual = layer(usual, encoder_states[-1])  # reads the encoder's last layer
            stacked = both[:, S:]  # (B, T, E)
            same_depth.append((stacked - layerwise).abs().max().item())
            last_layer.append(((stacked - usual).norm() / stacked.norm()).item())
    return DepthMismatch(num_layers, same_depth, last_layer)


# --------------------------------------------------------------------------- within a sequence


def earlier_occurrence_labels(tokens: Tensor) -> Tensor:
    """Label 1 at position i when token i already occurred at some j < i, else 0: (B, L) -> (B, L).

    The output at i depends on OTHER positions of the same sequence, compared with token i.
    """
    L = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, L, L): token i == token j
    earlier = torch.ones(L, L, dtype=torch.bool, device=tokens.device).tril(-1)  # j < i
    return (same & earlier).any(dim=-1).long()  # (B, L)


class ScoredSelfAttention(nn.Module):
    """A one-head self-attention layer whose score is any of chapter 3's scorers.

    q, k, v = x W^Q, x W^K, x W^V, then ``scorer(q, k, v, mask)`` (a ``ScoredAttention``: the
    softmax and the expectation are shared, only ``score`` differs), then W^O. Called like
    ``MultiHeadAttention``: ``(query, key, value, attn_mask)``, True = may attend.
    """

    def __init__(self, embed_dim: int, scorer: ScoredAttention):
        super().__init__()
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.scorer = scorer

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)  # (B, L|S, E)
        context, weights = self.scorer(q, k, v, attn_mask)  # (B, L, E), (B, L, S)
        return self.out_proj(context), weights


class OneLayerTagger(nn.Module):
    """Token embeddings + learned positions -> ONE attention layer + residual -> a per-position MLP.

    ``kind="self"``: the queries are the tokens themselves (self-attention). ``kind="cross"``:
    the queries come from another component, a "decoder" that knows only the position it labels
    (one learned vector per output position), and the keys and values are the tokens'
    embeddings (a non-contextual encoder): attention in the classic sense, and nothing else.
    """

    def __init__(
        self, kind: str, vocab_size: int, length: int, embed_dim: int = 32, num_heads: int = 2,
        num_classes: int = 2, attention: nn.Module | None = None,
    ):  # fmt: skip
        super().__init__()
        if kind not in ("self", "cross"):
            raise ValueError(f"kind must be 'self' or 'cross', got {kind!r}")
        self.kind = kind
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.position = nn.Parameter(0.5 * torch.randn(length, embed_dim))  # encoder positions
        self.queries = nn.Parameter(0.5 * torch.randn(length, embed_dim))  # decoder positions
        self.attention = attention or MultiHeadAttention(embed_dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, L) -> logits (B, L, classes) and attention weights (B, L, L)."""
        B, L = tokens.shape
        x = self.embed(tokens) + self.position[:L]  # (B, L, E): the encoder, no context
        query = x if self.kind == "self" else self.queries[:L].expand(B, L, -1)  # (B, L, E)
        context, weights = self.attention(query, x, x)  # (B, L, E), (B, L, L)
        return self.mlp(query + context), weights  # (B, L, classes)


@dataclass
class DependencyResult:
    """One self-attention layer vs one cross-attention layer on ``earlier_occurrence_labels``."""

    self_accuracy: float  # held-out label accuracy, self-attention (2 heads)
    cross_accuracy: float  # the same, cross-attention from position queries (2 heads)
    position_baseline: float  # best accuracy from the position alone (per-position majority)
    scorer_accuracy: dict[str, float]  # one-head self-attention with each of chapter 3's scorers
    self_match_mass: float  # mean weight a query puts on EARLIER copies of its own token
    cross_match_mass: float  # the same for the cross-attention rows (same positions)
    tokens: Tensor  # (L,) one held-out sequence, for the figure
    self_weights: Tensor  # (L, L) its self-attention weights (mean over heads)
    cross_weights: Tensor  # (L, L) its cross-attention weights


def _fit_tagger(model, vocab_size, length, seed, steps, lr=1e-2, batch_size=64):
    gen = torch.Generator().manual_seed(seed + 1000)  # the data stream, apart from the weights

    def batches():
        while True:
            yield torch.randint(0, vocab_size, (batch_size, length), generator=gen)

    def loss_fn(model, tokens):
        logits, _ = model(tokens)  # (B, L, 2)
        return F.cross_entropy(logits.reshape(-1, 2), earlier_occurrence_labels(tokens).view(-1))

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    train(model, batches(), loss_fn, steps, optimizer, scheduler=schedule, progress=False)
    return model


def within_sequence_dependency(
    seed: int = 0, steps: int = 400, vocab_size: int = 8, length: int = 10, embed_dim: int = 32,
    scorers: tuple[str, ...] = ("scaled dot", "additive"), test_size: int = 2000,
) -> DependencyResult:  # fmt: skip
    """Train both taggers (same sizes, recipe, data) and the scorer swaps; held-out accuracy.

    The position-only baseline is the accuracy of guessing, at each position, the label that is
    more frequent there in the held-out set: what a model blind to the tokens could reach.
    """
    from .attention.scoring import AdditiveAttention, CosineAttention, GeneralAttention

    makers = {
        "scaled dot": lambda: ScaledDotAttention(),
        "additive": lambda: AdditiveAttention(embed_dim, embed_dim, embed_dim),
        "general": lambda: GeneralAttention(embed_dim, embed_dim),
        "cosine": lambda: CosineAttention(beta=4.0),
    }
    test = torch.randint(
        0, vocab_size, (test_size, length), generator=torch.Generator().manual_seed(10_000 + seed)
    )
    labels = earlier_occurrence_labels(test)  # (N, L)

    def accuracy(model):
        with torch.no_grad():
            logits, _ = model(test)
        return (logits.argmax(-1) == labels).float().mean().item()

    trained = {}
    for kind in ("self", "cross"):
        seed_everything(seed)
        model = OneLayerTagger(kind, vocab_size, length, embed_dim)
        trained[kind] = _fit_tagger(model, vocab_size, length, seed, steps)
    scorer_accuracy = {}
    for name in scorers:
        seed_everything(seed)
        attention = ScoredSelfAttention(embed_dim, makers[name]())
        model = OneLayerTagger("self", vocab_size, length, embed_dim, attention=attention)
        scorer_accuracy[name] = accuracy(_fit_tagger(model, vocab_size, length, seed, steps))
    rate = labels.float().mean(dim=0)  # (L,) share of 1s at each position
    with torch.no_grad():
        _, self_w = trained["self"](test)  # (N, L, L)
        _, cross_w = trained["cross"](test)  # (N, L, L)
    same = test[:, :, None] == test[:, None, :]  # (N, L, L): token i == token j
    earlier_copy = same & torch.ones(length, length, dtype=torch.bool).tril(-1)  # (N, L, L)
    has_copy = labels.bool()  # (N, L): rows with an earlier copy of their token

    def match_mass(weights):
        return (weights * earlier_copy).sum(-1)[has_copy].mean().item()

    return DependencyResult(
        self_accuracy=accuracy(trained["self"]),
        cross_accuracy=accuracy(trained["cross"]),
        position_baseline=torch.maximum(rate, 1 - rate).mean().item(),
        scorer_accuracy=scorer_accuracy,
        self_match_mass=match_mass(self_w),
        cross_match_mass=match_mass(cross_w),
        tokens=test[0],
        self_weights=self_w[0],
        cross_weights=cross_w[0],
    )


# --------------------------------------------------------------------------- multi-head AT


class MultiHeadAdditiveAttention(nn.Module):
    """Bahdanau's additive step with h heads: each head scores with its own W_i, U_i, v_i.

    e^i_j = v_i^T tanh(W_i s + U_i h_j), alpha^i = softmax_j(e^i), head i reads its own slice of
    projected values, c = W^O [sum_j alpha^1_j V_1 h_j; ...; sum_j alpha^h_j V_h h_j].
    One query per call (a decoder step), as in ``bahdanau.AdditiveAttention``; mask (B, S)
    boolean, True = MAY attend.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, num_heads: int):
        super().__init__()
        if key_dim % num_heads != 0:
            raise ValueError(f"key_dim={key_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.query_proj = nn.Linear(query_dim, num_heads * attn_dim, bias=False)  # W_1..W_h
        self.key_proj = nn.Linear(key_dim, num_heads * attn_dim, bias=False)  # U_1..U_h
        self.v = nn.Parameter(torch.empty(num_heads, attn_dim))  # v_1..v_h
        nn.init.uniform_(self.v, -(attn_dim**-0.5), attn_dim**-0.5)
        self.value_proj = nn.Linear(key_dim, key_dim, bias=False)  # V_1..V_h side by side
        self.out_proj = nn.Linear(key_dim, key_dim, bias=False)  # W^O

    @classmethod
    def from_additive(cls, module: bahdanau.AdditiveAttention) -> MultiHeadAdditiveAttention:
        """One head holding chapter 2's weights, identity V and W^O: the same function."""
        attn_dim, query_dim = module.query_proj.weight.shape
        key_dim = module.key_proj.weight.shape[1]
        layer = cls(query_dim, key_dim, attn_dim, num_heads=1)
        with torch.no_grad():
            layer.query_proj.weight.copy_(module.query_proj.weight)
            layer.key_proj.weight.copy_(module.key_proj.weight)
            layer.v.copy_(module.v[None])
            layer.value_proj.weight.copy_(torch.eye(key_dim))
            layer.out_proj.weight.copy_(torch.eye(key_dim))
        return layer

    def forward(
        self, query: Tensor, keys: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """query (B, Q), keys (B, S, K) -> context (B, K) and weights (B, h, S)."""
        B, S, K = keys.shape
        h = self.num_heads
        q = self.query_proj(query).view(B, h, 1, -1)  # (B, Q) -> (B, h, 1, A)
        k = split_heads(self.key_proj(keys), h)  # (B, S, h*A) -> (B, h, S, A)
        scores = (torch.tanh(q + k) * self.v[None, :, None, :]).sum(-1)  # (B, h, S)
        if mask is not None:
            mask = mask[:, None, :]  # (B, 1, S): the same keys for every head
        weights = masked_softmax(scores, mask)  # (B, h, S)
        values = split_heads(self.value_proj(keys), h)  # (B, S, K) -> (B, h, S, K/h)
        context = (weights.unsqueeze(-1) * values).sum(dim=2)  # (B, h, K/h)
        return self.out_proj(context.reshape(B, K)), weights  # (B, h*K/h) = (B, K)


# --------------------------------------------------------------------------- across modalities


def two_digit_images(
    images: Tensor, labels: Tensor, count: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``count`` random pairs of 8x8 digits side by side: images (count, 1, 8, 16), labels
    (count, 2) = (left digit, right digit)."""
    pick = torch.randint(0, len(images), (count, 2), generator=generator)  # (N, 2)
    pairs = torch.cat([images[pick[:, 0]], images[pick[:, 1]]], dim=-1)  # (N, 1, 8, 16)
    return pairs, labels[pick]  # (N, 1, 8, 16), (N, 2)


class PatchReader(nn.Module):
    """A question token ("left" = 0 or "right" = 1) reads the digit on that side of an image.

    The image is cut into 4x4 patches (8 for 8x16), each embedded linearly plus a learned
    position. ``kind="cross"``: the question attends over the patches (cross-attention: text
    queries, image keys). ``kind="concat"``: the question token and the patches form ONE sequence
    and a self-attention layer runs over it; the answer is read at the question's row.
    """

    def __init__(self, kind: str, embed_dim: int = 32, num_heads: int = 2, patch: int = 4):
        super().__init__()
        if kind not in ("cross", "concat"):
            raise ValueError(f"kind must be 'cross' or 'concat', got {kind!r}")
        self.kind, self.patch = kind, patch
        self.patch_embed = nn.Linear(patch * patch, embed_dim)
        self.position = nn.Parameter(0.5 * torch.randn(8, embed_dim))  # 8 patches of an 8x16
        self.question = nn.Embedding(2, embed_dim)  # the two words "left" and "right"
        self.attention = MultiHeadAttention(embed_dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, images: Tensor, side: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 1, 8, 16), side (B,) -> digit logits (B, 10), weights on patches (B, 8)."""
        cut = F.unfold(images, self.patch, stride=self.patch)  # (B, p*p, 8): one column a patch
        patches = self.patch_embed(cut.transpose(1, 2)) + self.position  # (B, 8, E)
        q = self.question(side)[:, None]  # (B, 1, E)
        if self.kind == "cross":
            context, weights = self.attention(q, patches, patches)  # (B, 1, E), (B, 1, 8)
            return self.mlp(q[:, 0] + context[:, 0]), weights[:, 0]
        both = torch.cat([q, patches], dim=1)  # (B, 9, E): one sequence, two modalities
        context, weights = self.attention(both, both, both)  # (B, 9, E), (B, 9, 9)
        return self.mlp(both[:, 0] + context[:, 0]), weights[:, 0, 1:]  # the question's row


@dataclass
class ModalityResult:
    """Text queries over image patches: cross-attention vs self-attention over the concatenation."""

    cross_accuracy: float  # held-out accuracy of the cross-attention reader
    concat_accuracy: float  # of the self-attention reader over [question; patches]
    cross_side_mass: float  # mean weight the question puts on the patches of the side asked
    concat_side_mass: float  # the same for the concatenated reader (its weight on the patches
    # only, renormalised: the question's row also attends to itself)
    image: Tensor  # (8, 16) one held-out pair, for the figure
    cross_weights: Tensor  # (2, 8) its weights when asked "left" (row 0) and "right" (row 1)


def text_over_image_patches(
    seed: int = 0, steps: int = 300, batch_size: int = 64
) -> ModalityResult:
    """Train both readers on scikit-learn's digits (held-out digits for the test pairs)."""
    from .vision import load_digits

    digits = load_digits(seed=0)
    test_gen = torch.Generator().manual_seed(20_000 + seed)
    test_images, test_labels = two_digit_images(digits.x_test, digits.y_test, 1000, test_gen)
    test_side = torch.randint(0, 2, (1000,), generator=test_gen)  # (N,) 0 = left, 1 = right
    rows = torch.arange(1000)
    results = {}
    for kind in ("cross", "concat"):
        seed_everything(seed)
        model = PatchReader(kind)
        gen = torch.Generator().manual_seed(seed + 1000)

        def batches(gen=gen):
            while True:
                images, labels = two_digit_images(digits.x_train, digits.y_train, batch_size, gen)
                side = torch.randint(0, 2, (batch_size,), generator=gen)  # (B,)
                yield images, side, labels[torch.arange(batch_size), side]

        def loss_fn(model, batch):
            images, side, target = batch
            return F.cross_entropy(model(images, side)[0], target)

        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps)
        train(model, batches(), loss_fn, steps, optimizer, scheduler=schedule, progress=False)
        with torch.no_grad():
            logits, weights = model(test_images, test_side)  # (N, 10), (N, 8)
        weights = weights / weights.sum(-1, keepdim=True)  # on the patches only
        on_left = weights[:, [0, 1, 4, 5]].sum(-1)  # patches 0,1 (top) and 4,5 (bottom): left
        side_mass = torch.where(test_side == 0, on_left, 1 - on_left).mean().item()
        accuracy = (logits.argmax(-1) == test_labels[rows, test_side]).float().mean().item()
        results[kind] = (model, accuracy, side_mass)
    with torch.no_grad():
        example = test_images[:1].expand(2, -1, -1, -1)  # (2, 1, 8, 16): ask both questions
        _, example_weights = results["cross"][0](example, torch.tensor([0, 1]))  # (2, 8)
    return ModalityResult(
        cross_accuracy=results["cross"][1],
        concat_accuracy=results["concat"][1],
        cross_side_mass=results["cross"][2],
        concat_side_mass=results["concat"][2],
        image=test_images[0, 0],
        cross_weights=example_weights,
    )


# --------------------------------------------------------------------------- trained on dates


@dataclass
class TrainedDates:
    """Chapter 2's RNNsearch, chapter 5's encoder-decoder and a prefix LM, trained on dates.

    All three see the same batches for the same number of steps (chapter 2's recipe) and are
    scored on the same held-out dates. The probability view is measured on ``batch`` (held-out
    dates, teacher forced): chapter 2's p(t | X) as the share of each output step's weight on the
    source field it is writing (and the same for chapter 5's cross-attention), chapter 5's encoder
    p(x_k | x_q) as the share of each source character's weight on characters of its own field,
    each beside its uniform-attention level.
    """

    rnnsearch: bahdanau.TrainedDateModel
    transformer: bahdanau.TrainedDateModel
    prefix_lm: bahdanau.TrainedDateModel
    exact: dict[str, float]  # held-out exact match, per model
    params: dict[str, int]
    batch: Seq2SeqBatch  # the held-out dates the probability view is read on
    cross_weights: Tensor  # (B, T, S) chapter 2's p(t | X): per output step, over the source
    self_weights: Tensor  # (B, S, S) the encoder's p(x_k | x_q), last layer, mean over heads
    cross_field_share: float  # mean weight of an output step on the field it writes
    cross_field_uniform: float  # the same for uniform attention over the source
    transformer_cross_field_share: float  # the same for chapter 5's cross-attention (last layer)
    self_field_share: float  # mean weight of a source character on its own field
    self_field_uniform: float  # the same for uniform attention


def _field_share(weights: Tensor, query_fields: Tensor, key_fields: Tensor) -> float:
    """Mean mass each query puts on keys of its own field, over queries in year/month/day."""
    same = query_fields[:, :, None] == key_fields[:, None, :]  # (B, Lq, Lk)
    mass = (weights * same).sum(dim=-1)  # (B, Lq)
    in_field = (query_fields >= 1) & (query_fields <= 3)  # year, month, day (data.FIELD_NAMES)
    return mass[in_field].mean().item()


def trained_on_dates(
    seed: int = 0,
    steps: int = 200,
    n_test: int = 500,
    prefix_lm_layers: int = 3,
    progress: bool = True,
) -> TrainedDates:
    """Train the three date models of chapter 6 on the same batches; measure what it compares.

    ``rnnsearch``: ``bahdanau.train_date_model`` (chapter 2). ``transformer``: chapter 5's
    :class:`~attention_course.transformer.Transformer`, one encoder and one decoder layer (E 32,
    4 heads, F 64), peak learning rate 1e-2. ``prefix_lm``: a
    :class:`~attention_course.transformer.DecoderOnly` prefix LM with the same widths and
    ``prefix_lm_layers`` layers over "date BOS ISO date", the same learning rate. Exact match on
    ``n_test`` held-out dates (chapter 2's test set).
    """
    from .transformer import Transformer, train_date_transformer  # chapter 5 imports our peers

    def transformer(prefix_lm: bool, layers: int) -> bahdanau.TrainedDateModel:
        return train_date_transformer(
            seed, steps=steps, peak_lr=1e-2, progress=progress, prefix_lm=prefix_lm,
            num_encoder_layers=1, num_decoder_layers=layers,
        )  # fmt: skip

    runs = {
        "rnnsearch": bahdanau.train_date_model(seed, steps=steps, progress=progress),
        "transformer": transformer(prefix_lm=False, layers=1),
        "prefix_lm": transformer(prefix_lm=True, layers=prefix_lm_layers),
    }
    task = runs["rnnsearch"].task
    held_out = task.sample(n_test, "test", seed=1)
    batch = task.sample(64, "test", seed=2)  # the probability view's dates
    fields = batch.src_fields  # (B, S) data.FIELD_NAMES index of every source character
    assert fields is not None
    with torch.no_grad():
        _, cross = runs["rnnsearch"].model(batch.src, batch.src_lengths, batch.tgt_in)  # (B,T,S)
        encoder_decoder = runs["transformer"].model
        assert isinstance(encoder_decoder, Transformer)
        maps = encoder_decoder.attention_maps(batch.src, batch.src_lengths, batch.tgt_in)
    selfw = maps.encoder_self[-1].mean(dim=1)  # (B, h, S, S) -> (B, S, S)
    real = batch.src_mask.float()  # (B, S)
    uniform_self = (real[:, None, :] / real.sum(-1)[:, None, None]).expand_as(selfw)  # (B, S, S)
    shares = bahdanau.field_attention_share(cross, batch)
    tf_shares = bahdanau.field_attention_share(maps.cross[-1].mean(dim=1), batch)  # (B, T, S)
    uniform = bahdanau.field_attention_share(cross, batch, uniform=True)
    return TrainedDates(
        **runs,
        exact={k: bahdanau.date_exact_match(r.model, held_out) for k, r in runs.items()},
        params={k: count_parameters(r.model) for k, r in runs.items()},
        batch=batch,
        cross_weights=cross,
        self_weights=selfw,
        cross_field_share=sum(shares.values()) / 3,
        cross_field_uniform=sum(uniform.values()) / 3,
        transformer_cross_field_share=sum(tf_shares.values()) / 3,
        self_field_share=_field_share(selfw, fields, fields),
        self_field_uniform=_field_share(uniform_self, fields, fields),
    )
