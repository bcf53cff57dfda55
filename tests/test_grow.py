"""Deepening a trained transformer (`--depth` with `--init-from`): the same function at the start, then it trains."""
import dataclasses

import pytest
import torch

from infinity.checkpoints import save_model
from infinity.tokenizer import BitwiseTokenizer
from infinity.train.grow import deepen
from infinity.train.recipes import RECIPES
from infinity.train.transformer_trainer import TransformerLoss, TransformerTask
from infinity.transformer import Infinity

TINY = RECIPES["shapes-tiny"]
SCHEDULE = TINY.schedules["1:1"]


def _trained_looking(config) -> Infinity:
    """A model whose every weight is non-trivial (fresh init leaves the gates near zero, which would hide a bug)."""
    torch.manual_seed(0)
    model = Infinity(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _logits(model: Infinity) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    L = sum(h * w for h, w in SCHEDULE.scales)
    x = torch.randn(2, L - 1, model.config.bits, generator=g)
    text = torch.randn(2, 7, model.config.text_channels, generator=g)
    return model(text, torch.tensor([7, 3]), x, SCHEDULE)


def test_deepened_model_computes_the_same_logits_and_keeps_the_old_blocks():
    shallow = _trained_looking(TINY.transformer)
    deep = deepen(shallow, dataclasses.replace(TINY.transformer, depth=TINY.transformer.depth + 2))
    assert len(deep.blocks) == TINY.transformer.depth + 2
    torch.testing.assert_close(_logits(deep), _logits(shallow), rtol=0, atol=1e-6)
    assert torch.equal(deep.blocks[0].ffn.fc1.weight, shallow.blocks[0].ffn.fc1.weight)
    assert deep.blocks[-1].ffn.fc1.weight.abs().sum() > 0  # new blocks are initialised, only their outputs are zero


def test_the_new_blocks_receive_gradient():
    deep = deepen(_trained_looking(TINY.transformer), dataclasses.replace(TINY.transformer, depth=4))
    _logits(deep).square().mean().backward()
    for block in deep.blocks[2:]:
        assert block.ffn.fc2.weight.grad.abs().sum() > 0 and block.sa.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("change", [dict(depth=1), dict(depth=2), dict(depth=3, width=96)])
def test_deepen_refuses_anything_but_a_deeper_copy(change):
    with pytest.raises(ValueError, match="deepen"):
        deepen(Infinity(TINY.transformer), dataclasses.replace(TINY.transformer, **change))


def test_trainer_starts_a_deeper_model_from_a_shallower_file(tmp_path):
    shallow = save_model(_trained_looking(TINY.transformer), tmp_path / "transformer.safetensors")
    tokenizer = save_model(BitwiseTokenizer(TINY.tokenizer), tmp_path / "tokenizer.safetensors")
    config = dataclasses.replace(TINY.transformer, depth=3)
    task = TransformerTask(config, BitwiseTokenizer(TINY.tokenizer), str(tokenizer), "minilm", TINY.schedules,
                           TransformerLoss(), "shapes", 2, 0, init_from=str(shallow))
    assert len(task.model.blocks) == 3
    torch.testing.assert_close(_logits(task.model), _logits(_trained_looking(TINY.transformer)), rtol=0, atol=1e-6)
    wider = dataclasses.replace(TINY.transformer, width=96)
    with pytest.raises(ValueError, match="another model"):
        TransformerTask(wider, BitwiseTokenizer(TINY.tokenizer), str(tokenizer), "minilm", TINY.schedules,
                        TransformerLoss(), "shapes", 2, 0, init_from=str(shallow))


def test_export_takes_a_deeper_transformer_of_the_recipe(tmp_path):
    from infinity import InfinityPipeline
    from infinity.train.__main__ import main

    deep = save_model(deepen(Infinity(TINY.transformer), dataclasses.replace(TINY.transformer, depth=3)),
                      tmp_path / "transformer.safetensors")
    tokenizer = save_model(BitwiseTokenizer(TINY.tokenizer), tmp_path / "tokenizer.safetensors")
    args = ["export", "--recipe", "shapes-tiny", "--tokenizer", str(tokenizer), "--out", str(tmp_path / "model")]
    assert main([*args, "--transformer", str(deep)]) == 0
    assert len(InfinityPipeline.from_pretrained(str(tmp_path / "model")).transformer.blocks) == 3
    wider = save_model(Infinity(dataclasses.replace(TINY.transformer, width=96)), tmp_path / "wider.safetensors")
    assert main([*args, "--transformer", str(wider)]) == 2
