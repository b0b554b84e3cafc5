"""Chapter 5c: DecoderOnly's embedding and positions, and the decoder-only claims at more seeds."""

import pytest
import torch

from attention_course.transformer import DecoderOnly, TransformerConfig, decoder_only_on_copy


def _model(target_positions="continue", **config):
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=9, tgt_vocab_size=5, embed_dim=16, **config)
    return DecoderOnly(config, target_positions=target_positions).eval()


def test_source_and_target_ids_use_separate_rows():
    """Target id t reads row V_src + t: the same id in source and target embeds differently."""
    model = _model()
    src, tgt_in = torch.tensor([[3, 4]]), torch.tensor([[1, 3]])
    with torch.no_grad():
        row = model.embed.embedding.weight
        assert not torch.allclose(row[3], row[9 + 3])
        logits, _ = model(src, torch.tensor([2]), tgt_in)
    assert logits.shape == (1, 2, 5)  # the target vocabulary only
    with pytest.raises(IndexError):
        model(src, torch.tensor([2]), torch.tensor([[1, 5]]))  # id 5 is not a target id


def test_restarted_positions_number_the_target_from_zero():
    """With positions restarting, the target's encodings do not depend on the source length."""
    restart, cont = _model("restart"), _model("continue")
    cont.load_state_dict(restart.state_dict())
    tgt_in = torch.tensor([[1, 2, 3]])
    seen = {}
    for name, model in (("restart", restart), ("continue", cont)):
        positions: list[torch.Tensor] = []
        hook = model.embed.register_forward_hook(
            lambda m, args, out, seen=positions: seen.append(args[1])
        )
        for S in (2, 4):
            model(torch.full((1, S), 5), torch.tensor([S]), tgt_in)
        hook.remove()
        seen[name] = [p[0, -3:].tolist() for p in positions]
    assert seen["restart"] == [[0, 1, 2], [0, 1, 2]]
    assert seen["continue"] == [[2, 3, 4], [4, 5, 6]]
    with pytest.raises(ValueError):
        _model("sometimes")


def test_without_positions_the_two_numberings_agree():
    restart, cont = _model("restart", positions="none"), _model("continue", positions="none")
    cont.load_state_dict(restart.state_dict())
    src, lengths, tgt_in = torch.tensor([[5, 6, 7, 0]]), torch.tensor([3]), torch.tensor([[1, 2]])
    with torch.no_grad():
        torch.testing.assert_close(restart(src, lengths, tgt_in)[0], cont(src, lengths, tgt_in)[0])


@pytest.mark.parametrize("seed", [11, 12])
def test_decoder_only_claims(seed):
    """Notebook 05c's claims at two more seeds, through the same function (~25 s CPU each)."""
    result = decoder_only_on_copy(seed, progress=False)
    lengths = result.curves["encoder-decoder"].lengths
    i8, i12 = lengths.index(8), lengths.index(12)
    seq = {k: c.sequence_accuracy for k, c in result.curves.items()}
    tok = {k: c.token_accuracy for k, c in result.curves.items()}
    ED, GPT, RESTART = "encoder-decoder", "decoder-only", "decoder-only, positions restart"
    assert seq[ED][i8] >= 0.85 and seq[RESTART][i8] >= 0.85, seq
    assert tok[GPT][i12] <= tok[ED][i12] - 0.1, tok
    assert tok[RESTART][i12] >= tok[GPT][i12] + 0.1, tok
    assert max(result.params.values()) / min(result.params.values()) < 1.01, result.params
