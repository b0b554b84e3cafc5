"""Notebook 06b's claims on trained date models, at two more seeds through the same function."""

import pytest

from attention_course import versus


@pytest.mark.parametrize("seed", [11, 12])
def test_trained_on_dates_claims(seed):
    """About 25 s CPU per seed: three date models, 200 steps each."""
    trained = versus.trained_on_dates(seed, progress=False)
    exact = trained.exact
    assert exact["rnnsearch"] >= 0.97, exact
    assert exact["transformer"] >= 0.4, exact
    assert exact["prefix_lm"] >= 0.1, exact
    assert exact["prefix_lm"] <= exact["transformer"] - 0.1, exact
    assert trained.params["prefix_lm"] > trained.params["transformer"], trained.params
    assert trained.cross_field_share >= trained.cross_field_uniform + 0.4
    assert trained.transformer_cross_field_share >= trained.cross_field_uniform + 0.2
    assert trained.self_field_share <= trained.cross_field_share - 0.3
    # rows are distributions: over the source per output step, over the input per input character
    real = trained.batch.src_mask
    rows = trained.cross_weights.sum(-1)[trained.batch.tgt_mask]
    assert (rows - 1).abs().max() < 1e-4
    self_rows = trained.self_weights.sum(-1)[real]
    assert (self_rows - 1).abs().max() < 1e-4
    assert trained.self_weights.shape[1] == trained.self_weights.shape[2] == real.shape[1]
