"""Tokenizers of several bit depths started from one trained trunk (--init-trunk-from)."""
import dataclasses

import pytest
import torch

from infinity.checkpoints import load_model, save_model
from infinity.tokenizer import BitwiseTokenizer
from infinity.train.tokenizer_trainer import LATENT_LAYERS, load_trunk
from infinity.train.recipes import RECIPES

TINY = RECIPES["shapes-tiny"].tokenizer


@pytest.mark.parametrize("bits", [TINY.bits, 2 * TINY.bits])
def test_trunk_is_copied_and_the_latent_layers_start_fresh(tmp_path, bits):
    torch.manual_seed(0)
    path = save_model(BitwiseTokenizer(TINY), tmp_path / "trunk.safetensors")
    trunk = load_model(path)
    torch.manual_seed(1)
    fresh = BitwiseTokenizer(dataclasses.replace(TINY, bits=bits))
    model = BitwiseTokenizer(dataclasses.replace(TINY, bits=bits))
    model.load_state_dict(fresh.state_dict())
    load_trunk(model, str(path))
    for k, v in model.state_dict().items():
        if k.startswith(LATENT_LAYERS):  # fresh at every depth, the same depth included
            assert torch.equal(v, fresh.state_dict()[k])
        else:
            assert torch.equal(v, trunk.state_dict()[k]), k


def test_trunk_of_another_architecture_is_refused(tmp_path):
    path = save_model(BitwiseTokenizer(dataclasses.replace(TINY, base_channels=64)), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a tokenizer of this architecture"):
        load_trunk(BitwiseTokenizer(TINY), str(path))
