"""Attention functions and layers, each checked against PyTorch in ``tests/``.

Conventions, everywhere in the course (PyTorch's names in brackets):

- batch first: ``(B, L, E)`` for queries, ``(B, S, E)`` for keys and values;
- B batch [N], L query/target length, S key/source length, E embedding width,
  h heads, d = E // h per-head width;
- a boolean mask is True where a query MAY attend to a key, as in
  ``torch.nn.functional.scaled_dot_product_attention`` (``nn.MultiheadAttention`` uses the
  opposite: True = may NOT attend).

Submodules: ``core`` (masked softmax, scaled dot-product attention; chapter 3),
``scoring`` (the scoring-function zoo; chapter 3), ``multihead`` (multi-head attention,
positions and causal masks; chapter 4). Everything is re-exported here.
"""

from .core import *  # noqa: F403
from .efficient import *  # noqa: F403
from .masks import *  # noqa: F403
from .multihead import *  # noqa: F403
from .scoring import *  # noqa: F403
