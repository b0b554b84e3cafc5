"""Code behind the course "Attention, from RNNs to CNNs".

Submodules (import them by name; their names are permanent, later chapters rely on them):

- ``attention_course.data``      seeded synthetic tasks (copy, reverse, dates) as batched tensors
- ``attention_course.seq2seq``   the GRU encoder-decoder of chapters 1-2: training, evaluation
- ``attention_course.bahdanau``  additive attention and the attention decoder (chapter 2)
- ``attention_course.plots``     attention heatmaps, learning curves, accuracy-vs-length curves
- ``attention_course.utils``     seeding, device choice, a small training loop, parameter counts
- ``attention_course.attention`` attention functions and layers, checked against PyTorch
- ``attention_course.versus``    attention vs self-attention, each claim one measurement (chapter 6)
- ``attention_course.vision``    attention inside CNNs: SE, CBAM, non-local, conv as attention, ViT;
  scikit-learn's 8x8 digits (chapter 7)
- ``attention_course.grading``   ``check(...)`` for students, batch grading for instructors
"""

__version__ = "0.1.0"
