"""Infinity-125M, the released model that runs on a CPU (`infinity_125M_256x256.pth` + `infinity_vae_d16.pth`):
files written in the official layout straight from the official key/shape manifests (random weights of the real
shapes, no network), the loader's refusals of bad files, and one 256x256 image end to end."""
import json
import shutil

import pytest
import torch

from infinity import InfinityPipeline
from infinity.checkpoints import CheckpointError, load_official_transformer
from infinity.official import OFFICIAL_MODELS
from infinity.text import T5TextEncoder
from reference_cases import FIXTURES

MODEL = OFFICIAL_MODELS["infinity-125m"]
TRANSFORMER_FILE, TOKENIZER_FILE = MODEL.transformer_weights, MODEL.tokenizer_file


def manifest_state_dict(name: str, seed: int, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Every key of an official manifest with random values of its shape (the official file's layout)."""
    manifest = json.loads((FIXTURES / "manifests" / name).read_text())
    generator = torch.Generator().manual_seed(seed)
    return {e["key"]: torch.randn(e["shape"], generator=generator) * std for e in manifest["state_dict"]}


@pytest.fixture(scope="module")
def transformer_state_dict():
    return manifest_state_dict("infinity_125m.json", seed=0)


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory, transformer_state_dict):
    """A folder as the Hugging Face repo holds the two files: a plain state dict, and the VAE under "vae"."""
    folder = tmp_path_factory.mktemp("infinity-125m")
    torch.save(transformer_state_dict, folder / TRANSFORMER_FILE)
    torch.save({"vae": manifest_state_dict("vae_d16.json", seed=1)}, folder / TOKENIZER_FILE)
    return folder


def test_the_released_model_names_the_files_the_official_scripts_pair():
    assert (TRANSFORMER_FILE, TOKENIZER_FILE) == ("infinity_125M_256x256.pth", "infinity_vae_d16.pth")
    assert MODEL.budget == "0.06M"
    assert MODEL.transformer.bits == MODEL.tokenizer.bits == 16 and MODEL.transformer.vocab == 32


# ---- loading that cannot silently go wrong ----


def test_the_official_layout_loads_key_for_key(official_dir, transformer_state_dict):
    model = load_official_transformer(official_dir / TRANSFORMER_FILE, MODEL.transformer, tokenizer_file=TOKENIZER_FILE)
    ours = model.state_dict()
    official = transformer_state_dict
    assert torch.equal(ours["blocks.11.ffn.fc2.weight"], official["block_chunks.3.module.2.ffn.fc2.weight"])
    assert torch.equal(ours["text_pool.mat_q"], transformer_state_dict["text_proj_for_sos.ca.mat_q"])


def test_a_d32_head_with_the_d16_tokenizer_is_refused_naming_the_tokenizer_it_needs(tmp_path, transformer_state_dict):
    path = tmp_path / TRANSFORMER_FILE
    d32 = dict(transformer_state_dict, **{"head.weight": torch.zeros(64, 768), "head.bias": torch.zeros(64)})
    torch.save(d32, path)
    with pytest.raises(CheckpointError) as e:
        load_official_transformer(path, MODEL.transformer, tokenizer_file=TOKENIZER_FILE)
    message = str(e.value)
    for part in (str(path), "64 outputs", "predicts 32 bits", "(infinity_vae_d16.pth) gives 16",
                 "infinity_vae_d32.pth or infinity_vae_d32reg.pth"):
        assert part in message, (part, message)


def _pipeline_error(folder) -> str:
    with pytest.raises(CheckpointError) as e:
        InfinityPipeline.from_pretrained(folder, device="cpu", local_files_only=True)
    return str(e.value)


def test_the_pipeline_refuses_a_head_of_another_tokenizer(tmp_path, official_dir, transformer_state_dict):
    shutil.copy(official_dir / TOKENIZER_FILE, tmp_path / TOKENIZER_FILE)
    torch.save(dict(transformer_state_dict, **{"head.weight": torch.zeros(64, 768)}), tmp_path / TRANSFORMER_FILE)
    assert "needs the tokenizer file infinity_vae_d32.pth or infinity_vae_d32reg.pth" in _pipeline_error(tmp_path)


def _bad_copy(folder, official_dir, state_dict=None) -> str:
    """The error of loading `folder`, holding the good tokenizer and `state_dict` as the transformer file."""
    shutil.copy(official_dir / TOKENIZER_FILE, folder / TOKENIZER_FILE)
    if state_dict is not None:
        torch.save(state_dict, folder / TRANSFORMER_FILE)
    return _pipeline_error(folder)


def test_missing_and_unexpected_keys_are_named_with_the_file(tmp_path, official_dir, transformer_state_dict):
    bad = {k: v for k, v in transformer_state_dict.items() if not k.startswith("block_chunks.3.module.2.")}
    bad["block_chunks.4.module.0.ada_gss"] = torch.zeros(1, 1, 6, 768)  # a 13th block
    message = _bad_copy(tmp_path, official_dir, bad)
    assert message.startswith(f"{tmp_path / TRANSFORMER_FILE}: does not fit Infinity")
    assert "missing keys: blocks.11." in message and "1 unexpected keys: blocks.12.ada_gss" in message


def test_wrong_shapes_are_named_with_the_file(tmp_path, official_dir, transformer_state_dict):
    message = _bad_copy(tmp_path, official_dir, dict(transformer_state_dict, **{"pos_start": torch.zeros(1, 1, 1024)}))
    assert f"{tmp_path / TRANSFORMER_FILE}: does not fit Infinity: 1 shape mismatches" in message
    assert "pos_start: file (1, 1, 1024) vs model (1, 1, 768)" in message


def test_a_truncated_file_is_named(tmp_path, official_dir):
    shutil.copy(official_dir / TOKENIZER_FILE, tmp_path / TOKENIZER_FILE)
    data = (official_dir / TRANSFORMER_FILE).read_bytes()
    (tmp_path / TRANSFORMER_FILE).write_bytes(data[: len(data) // 2])
    message = _pipeline_error(tmp_path)
    path = tmp_path / TRANSFORMER_FILE
    assert message.startswith(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?)")


@pytest.mark.parametrize("obj", [[torch.zeros(2)], {"step": 3, "note": "no tensors"}, {}])
def test_a_pickle_that_is_not_a_state_dict_is_named(tmp_path, official_dir, obj):
    message = _bad_copy(tmp_path, official_dir, obj)
    assert message.startswith(f"{tmp_path / TRANSFORMER_FILE}: no state dict found"), message


def test_a_tokenizer_file_that_is_not_a_state_dict_is_named(tmp_path, official_dir):
    shutil.copy(official_dir / TRANSFORMER_FILE, tmp_path / TRANSFORMER_FILE)
    torch.save({"vae": "weights elsewhere"}, tmp_path / TOKENIZER_FILE)
    assert _pipeline_error(tmp_path).startswith(f"{tmp_path / TOKENIZER_FILE}: no state dict found")


# ---- one image end to end ----


def small_t5_of_xl_width() -> T5TextEncoder:
    """A one-layer T5 encoder with Flan-T5-XL's output width (2048), random weights, random tokens: what the
    transformer sees has the real shape; the real 1.2 B-parameter encoder is timed in benchmarks/, not here."""
    from transformers import T5Config, T5EncoderModel

    from infinity.bench.models import RandomTokens

    config = T5Config(vocab_size=64, d_model=2048, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                      is_encoder_decoder=False, use_cache=False)
    torch.manual_seed(2)
    return T5TextEncoder(RandomTokens(num_tokens=12, vocab_size=64), T5EncoderModel(config).eval())


def test_one_image_end_to_end_from_the_released_name(official_dir, monkeypatch):
    monkeypatch.setenv("INFINITY_WEIGHTS_DIR", str(official_dir))
    monkeypatch.setattr(T5TextEncoder, "from_pretrained", lambda *args, **kwargs: small_t5_of_xl_width())
    pipe = InfinityPipeline.from_pretrained("infinity-125m", device="cpu", dtype=torch.float32, local_files_only=True)
    assert pipe.name == "infinity-125m" and pipe.schedule("1:1").pixel_hw == (256, 256)
    out = pipe("a red fox in the snow", seed=0)
    assert out.image.size == (256, 256) and out.image.mode == "RGB"
    assert [tuple(b.shape) for b in out.bits] == [(1, n, n, 16) for n in (1, 2, 4, 6, 8, 12, 16)]


def test_the_space_size_estimates_are_those_of_the_shapes():
    """docs/released-models.md quotes benchmarks/results/infinity125m_space_sizes.json: it must be what the
    script computes now from the manifests and Flan-T5-XL's configuration."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("space_sizes", root / "benchmarks" / "space_sizes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recorded = json.loads((root / "benchmarks" / "results" / "infinity125m_space_sizes.json").read_text())
    assert recorded == json.loads(json.dumps(module.sizes()))
    files = recorded["files"]
    assert files["FoundationVision/Infinity infinity_125M_256x256.pth"]["values"] == 125_168_000
