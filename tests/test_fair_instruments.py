"""Fair comparisons: arms that differ in one thing share everything else (weights, data, dropout, loss scale), and
index-head models export and evaluate like bitwise ones."""
import dataclasses
from pathlib import Path

import pytest
import torch

from infinity.checkpoints import load_model, save_model
from infinity.tokenizer import BitwiseTokenizer
from infinity.train.engine import Distributed
from infinity.train.recipes import RECIPES
from infinity.train.transformer_trainer import TransformerLoss, TransformerTask
from infinity.transformer import Infinity

TINY = RECIPES["shapes-tiny"]
CPU = Distributed(0, 1, torch.device("cpu"))


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(BitwiseTokenizer(TINY.tokenizer), tmp_path_factory.mktemp("tok") / "tokenizer.safetensors")


def _task(tokenizer_file: Path, head: str = "bits", sc_scales: int = 0, seed: int = 0) -> TransformerTask:
    tokenizer = load_model(tokenizer_file)
    config = TINY.transformer_config(tokenizer.config, head)
    loss = TransformerLoss(self_correction_scales=sc_scales, cond_dropout=0.5)
    return TransformerTask(config, tokenizer, str(tokenizer_file), "minilm", TINY.schedules, loss, "shapes", 8, seed)


def test_arms_differing_only_in_the_head_start_from_the_same_trunk(tokenizer_file):
    torch.manual_seed(123)
    bits = _task(tokenizer_file, "bits").model.state_dict()
    torch.randn(1000)  # whatever ran before: the model depends on the run's seed alone
    index = _task(tokenizer_file, "index").model.state_dict()
    trunk = [k for k in bits if not k.startswith("head.")]
    assert len(trunk) > 50 and all(torch.equal(bits[k], index[k]) for k in trunk)
    assert bits["head.weight"].shape == (2 * 8, 48) and index["head.weight"].shape == (2**8, 48)
    other_seed = _task(tokenizer_file, seed=1).model.state_dict()
    assert not torch.equal(other_seed["word_embed.weight"], bits["word_embed.weight"])


class _Recorder(torch.nn.Module):
    """Stands in for the wrapped model: records what the step feeds it."""

    def __init__(self, model: Infinity):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, text_BTE, lens_B, x_BLd, schedule, drop_text_B=None):
        self.calls.append((x_BLd.clone(), drop_text_B.clone()))
        return self.model(text_BTE, lens_B, x_BLd, schedule, drop_text_B=drop_text_B)


def _fed(task: TransformerTask, steps: range) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    recorder = _Recorder(task.model)
    task.setup(CPU, recorder)
    images = []
    batch = task.source.batch
    task.source.batch = lambda *a: images.append(batch(*a).images_B3HW) or batch(*a)
    for step in steps:
        task.losses(step, CPU)
    return [(img, x, drop) for img, (x, drop) in zip(images, recorder.calls)]


def test_self_correction_changes_neither_the_data_nor_the_dropout_mask(tokenizer_file):
    plain = _fed(_task(tokenizer_file, sc_scales=0), range(3))
    corrected = _fed(_task(tokenizer_file, sc_scales=2), range(3))
    for (img_a, x_a, drop_a), (img_b, x_b, drop_b) in zip(plain, corrected):
        assert torch.equal(img_a, img_b) and torch.equal(drop_a, drop_b)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(plain, corrected))  # the flips did change the inputs
    assert len({tuple(d.tolist()) for _, _, d in plain}) > 1  # the mask itself varies by step


def test_both_heads_losses_are_in_nats_per_bit_at_initialisation(tokenizer_file):
    for head in ("bits", "index"):
        task = _task(tokenizer_file, head)
        task.setup(CPU, task.model)
        loss, _, _ = task.losses(0, CPU)
        assert abs(float(loss.detach()) - 0.6931) < 0.01, head  # ln 2 per bit, not d ln 2 per token


def test_recipe_bit_depth_comes_from_the_tokenizer_and_export_checks_the_rest():
    recipe = RECIPES["shapes-claims"]
    tok8 = recipe.tokenizer_config(8)
    assert tok8.bits == 8 and dataclasses.replace(tok8, bits=16) == recipe.tokenizer
    assert recipe.transformer_config(tok8, "index").bits == 8
    recipe.check("shapes-claims", tok8, recipe.transformer_config(tok8, "index", depth=2))
    wider = dataclasses.replace(recipe.transformer_config(tok8), width=192, num_heads=3)
    with pytest.raises(ValueError, match="transformer.width: 192"):
        recipe.check("shapes-claims", tok8, wider)
    with pytest.raises(ValueError, match="transformer.bits: 16"):
        recipe.check("shapes-claims", tok8, recipe.transformer)


def test_every_recipe_has_a_scale_embedding_for_each_of_its_scales():
    for name, recipe in RECIPES.items():
        assert recipe.transformer.max_scales >= max(s.num_scales for s in recipe.schedules.values()), name
    # the claims at 96 px: the 64 px recipe's models, one scale more (12x12)
    small, large = RECIPES["shapes-claims"], RECIPES["shapes-claims-96"]
    assert large.tokenizer == small.tokenizer
    assert dataclasses.replace(large.transformer, max_scales=5) == small.transformer
    assert large.schedules["1:1"].scales == small.schedules["1:1"].scales + ((12, 12),)


def test_an_index_head_model_exports_and_is_evaluated(tmp_path, tokenizer_file, capsys):
    from infinity.eval.__main__ import main as evaluate
    from infinity.train.__main__ import main as train_cli

    task = _task(tokenizer_file, "index")
    transformer = save_model(task.model, tmp_path / "transformer.safetensors")
    out = tmp_path / "model"
    assert train_cli(["export", "--recipe", "shapes-tiny", "--tokenizer", str(tokenizer_file),
                      "--transformer", str(transformer), "--out", str(out)]) == 0
    assert load_model(out / "transformer.safetensors").config.head == "index"
    assert evaluate(["shapes", "--weights", str(out), "--count", "2", "0", "0", "--cfg", "1",
                     "--json", str(tmp_path / "scores.json")]) == 0
    assert '"images": 2' in (tmp_path / "scores.json").read_text()
    other = save_model(Infinity(dataclasses.replace(task.config, width=96)), tmp_path / "wide.safetensors")
    assert train_cli(["export", "--recipe", "shapes-tiny", "--tokenizer", str(tokenizer_file),
                      "--transformer", str(other), "--out", str(tmp_path / "bad")]) == 2
    assert "transformer.width: 96" in capsys.readouterr().err


def test_an_empty_model_keeps_its_head_on_the_meta_device():
    from infinity.checkpoints import empty_model

    model = empty_model(Infinity, TINY.transformer)
    assert {p.device.type for p in model.parameters()} == {"meta"}
