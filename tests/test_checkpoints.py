"""Loading official .pth files, sharded official checkpoints and our safetensors files; every bad file fails with
one clear message."""
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from infinity.checkpoints import (
    CheckpointError,
    load_model,
    load_official_tokenizer,
    load_official_transformer,
    official_tokenizer_key,
    official_transformer_state_dict,
    read_torch_weights,
    save_model,
)
from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig
from infinity.transformer import Infinity, TransformerConfig
from reference_cases import discover, tokenizer_config

CASE = discover("tokenizer")[0]
CONFIG = tokenizer_config(CASE.meta)
TINY = TokenizerConfig(bits=8, base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1, patch_size=2)


@pytest.fixture
def official_pth(tmp_path):
    """The fixture's weights saved the way the official files are: {"vae": state_dict} with wrapped names."""
    path = tmp_path / "infinity_vae_tiny.pth"
    torch.save({"vae": CASE.weights("vae.")}, path)
    return path


def test_official_file_loads_with_mapped_keys(official_pth):
    tok = load_official_tokenizer(official_pth, CONFIG)
    ref = CASE.weights("vae.")
    assert torch.equal(tok.encoder.conv_in.weight, ref["encoder.conv_in.conv.weight"])
    assert torch.equal(tok.decoder.up[4].upsample.conv.bias, ref["decoder.up.4.upsample.conv.conv.bias"])
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())


def test_official_file_with_plain_conv_names_loads(tmp_path):
    plain = {official_tokenizer_key(k): v for k, v in CASE.weights("vae.").items() if official_tokenizer_key(k)}
    path = tmp_path / "plain.pth"
    torch.save({"vae": plain}, path)
    load_official_tokenizer(path, CONFIG)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file") as e:
        load_official_tokenizer(tmp_path / "nope.pth", CONFIG)
    assert "nope.pth" in str(e.value)


def test_truncated_file(official_pth):
    data = official_pth.read_bytes()
    official_pth.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_official_tokenizer(official_pth, CONFIG)
    assert str(official_pth) in str(e.value)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_torch_weights(tmp_path / "empty.pth")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"vae": {"encoder.conv_in.conv.weight": torch.zeros(1)}, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refused") as e:
        load_official_tokenizer(path, CONFIG)
    assert "evil.pth" in str(e.value)
    assert not (tmp_path / "pwned_by_pickle").exists()
    with open(tmp_path / "evil.pkl", "wb") as f:  # a plain (non-zip) pickle too
        pickle.dump(_RunsCode(), f)
    with pytest.raises(CheckpointError):
        read_torch_weights(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_wrong_keys_are_named(official_pth):
    sd = CASE.weights("vae.")
    sd["encoder.extra.weight"] = torch.zeros(1)
    del sd["decoder.conv_out.conv.bias"]
    torch.save({"vae": sd}, official_pth)
    with pytest.raises(CheckpointError) as e:
        load_official_tokenizer(official_pth, CONFIG)
    msg = str(e.value)
    assert "missing keys: decoder.conv_out.bias" in msg and "unexpected keys: encoder.extra.weight" in msg


def test_wrong_architecture_names_first_shape_mismatches(official_pth):
    other = TokenizerConfig(**{**CONFIG.to_dict(), "bits": 32})
    with pytest.raises(CheckpointError, match=r"3 shape mismatches: .*encoder.conv_out.weight: file \(16, 64, 3, 3\) vs model \(32, 64, 3, 3\)"):
        load_official_tokenizer(official_pth, other)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_official_tokenizer(path, CONFIG)


def test_unknown_preset(official_pth):
    with pytest.raises(CheckpointError, match="unknown tokenizer preset"):
        load_official_tokenizer(official_pth, "infinity-vae-d99")


def test_safetensors_round_trip_carries_the_config(tmp_path):
    torch.manual_seed(0)
    tok = BitwiseTokenizer(TINY)
    path = save_model(tok, tmp_path / "tok.safetensors")
    assert not (tmp_path / "tok.safetensors.tmp").exists()
    loaded = load_model(path)
    assert isinstance(loaded, BitwiseTokenizer) and loaded.config == TINY
    for (k, a), (_, b) in zip(tok.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_safetensors_errors(tmp_path):
    path = save_model(BitwiseTokenizer(TINY), tmp_path / "tok.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an Infinity model file"):
        load_model(foreign)

    bad_config = tmp_path / "bad_config.safetensors"
    save_file({"w": torch.zeros(2)}, bad_config, metadata={"format": "infinity", "kind": "tokenizer", "config": "{}x"})
    with pytest.raises(CheckpointError, match="invalid tokenizer config"):
        load_model(bad_config)

    mismatched = tmp_path / "mismatched.safetensors"
    sd = BitwiseTokenizer(TINY).state_dict()
    save_file({k: v for k, v in sd.items() if "decoder" not in k}, mismatched,
              metadata={"format": "infinity", "kind": "tokenizer", "config": '{"bits": 8, "base_channels": 32, '
                        '"channel_multipliers": [1, 2], "num_res_blocks": 1, "patch_size": 2}'})
    with pytest.raises(CheckpointError, match="missing keys: decoder.conv_in.weight"):
        load_model(mismatched)


def _transformer_case():
    from test_transformer_parity import TRANSFORMER_CASES, transformer_config

    case = TRANSFORMER_CASES[0]
    return case, transformer_config(case)


def test_official_transformer_file_loads(tmp_path):
    from infinity.checkpoints import load_official_transformer

    case, config = _transformer_case()
    path = tmp_path / "infinity_tiny.pth"
    torch.save(case.weights("model."), path)  # released files are a plain state dict
    model = load_official_transformer(path, config)
    assert torch.equal(model.blocks[1].ffn.fc2.bias, case.weights("model.")["block_chunks.1.module.0.ffn.fc2.bias"])
    torch.save({"trainer": {"gpt_fsdp": case.weights("model.")}}, path)  # a full training checkpoint
    load_official_transformer(path, config)
    with pytest.raises(CheckpointError, match="predicts 16 bits per token; the chosen tokenizer gives 32. This "
                                              "checkpoint needs the tokenizer file infinity_vae_d16.pth"):
        load_official_transformer(path, "infinity-2b")


def test_transformer_safetensors_round_trip(tmp_path):
    from infinity.transformer import Infinity

    _, config = _transformer_case()
    model = Infinity(config)
    loaded = load_model(save_model(model, tmp_path / "t.safetensors"))
    assert isinstance(loaded, Infinity) and loaded.config == config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


# ---- sharded official checkpoints (the Infinity-8B layout) ----

SHARDED = TransformerConfig(depth=4, width=64, num_heads=4, bits=8, text_channels=128, text_maxlen=12)


def _official_key(ours: str, blocks_per_chunk: int) -> str:
    """The inverse of official_transformer_key: our name -> the official (chunked) one."""
    if ours.startswith("blocks."):
        i, rest = ours[len("blocks."):].split(".", 1)
        return f"block_chunks.{int(i) // blocks_per_chunk}.module.{int(i) % blocks_per_chunk}.{rest}"
    for official, mine in (("text_proj_for_sos.ca.", "text_pool."), ("text_proj_for_ca.", "text_proj."),
                           ("head_nm.", "head_norm.")):
        if ours.startswith(mine):
            return official + ours[len(mine):]
    return ours


def _official_state_dict(model, blocks_per_chunk=2):
    official = {_official_key(k, blocks_per_chunk): v.clone() for k, v in model.state_dict().items()}
    for prefix in ["text_proj_for_sos.ca."] + [
        f"block_chunks.{i // blocks_per_chunk}.module.{i % blocks_per_chunk}.{m}." for i in range(SHARDED.depth)
        for m in ("sa", "ca")
    ]:
        official[prefix + "zero_k_bias"] = torch.zeros(SHARDED.width)  # buffers of the official model
    return official


def _save_shards(folder, official, fmt="bin", num_shards=3):
    """The Hugging Face sharded layout: shard files plus an index naming the shard of every key."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(official)
    weight_map = {}
    for i in range(num_shards):
        name = f"model-{i + 1:05d}-of-{num_shards:05d}.{fmt}"
        part = {k: official[k].contiguous() for k in keys[i::num_shards]}
        if fmt == "bin":
            torch.save(part, folder / name)
        else:
            save_file(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder / index


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return Infinity(SHARDED).eval()


def test_official_keys_round_trip_through_the_mapping(random_model):
    official = _official_state_dict(random_model)
    assert set(official_transformer_state_dict(official)) == set(random_model.state_dict())


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_sharded_checkpoint_loads(tmp_path, random_model, fmt):
    index = _save_shards(tmp_path / "infinity_8b_weights", _official_state_dict(random_model), fmt)
    for path in (index.parent, index):  # the directory, or the index itself
        model = load_official_transformer(path, SHARDED)
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        for (k, a), (_, b) in zip(random_model.state_dict().items(), model.state_dict().items(), strict=True):
            assert torch.equal(a, b) and not b.is_meta, k
    half = load_official_transformer(index.parent, SHARDED, dtype=torch.bfloat16)
    # The official bf16 scheme: the blocks' weights in bf16, their norms and everything outside them in fp32.
    assert {p.dtype for n, p in half.named_parameters() if n.startswith("blocks.") and "norm" not in n} == {torch.bfloat16}
    assert {p.dtype for n, p in half.named_parameters() if not n.startswith("blocks.")} == {torch.float32}
    assert torch.equal(half.blocks[0].ffn.fc1.weight, random_model.blocks[0].ffn.fc1.weight.to(torch.bfloat16))
    assert torch.equal(half.head.weight, random_model.head.weight)


def test_loading_assigns_the_read_tensors_without_a_copy(tmp_path, random_model, monkeypatch):
    import infinity.checkpoints as ckpt

    index = _save_shards(tmp_path / "shards", _official_state_dict(random_model), "bin")
    read, real = {}, ckpt._read_shard

    def spy(path):
        tensors = real(path)
        read.update(tensors)
        return tensors

    monkeypatch.setattr(ckpt, "_read_shard", spy)
    model = load_official_transformer(index.parent, SHARDED)
    assert model.blocks[3].sa.mat_qkv.weight.data_ptr() == read["block_chunks.1.module.1.sa.mat_qkv.weight"].data_ptr()
    assert model.head.weight.data_ptr() == read["head.weight"].data_ptr()


def test_sharded_checkpoint_errors(tmp_path, random_model):
    official = _official_state_dict(random_model)
    with pytest.raises(CheckpointError, match="without an \\*.index.json"):
        load_official_transformer(tmp_path, SHARDED)
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_official_transformer(tmp_path / "nope.index.json", SHARDED)

    # A key the model needs is in no shard: named with our name, like the single-file path.
    del official["block_chunks.1.module.0.ffn.fc1.bias"]
    official["block_chunks.0.module.0.extra"] = torch.zeros(1)
    index = _save_shards(tmp_path / "incomplete", official)
    with pytest.raises(CheckpointError) as e:
        load_official_transformer(index.parent, SHARDED)
    msg = str(e.value)
    assert str(index.parent) in msg
    assert "1 missing keys: blocks.2.ffn.fc1.bias" in msg and "1 unexpected keys: blocks.0.extra" in msg
    with pytest.raises(CheckpointError, match=r"its head has 16 outputs, 2 per bit, so it predicts 8 bits per token; "
                                              r"the chosen tokenizer gives 32"):
        load_official_transformer(_save_shards(tmp_path / "ok", _official_state_dict(random_model)).parent,
                                  TransformerConfig(**{**SHARDED.to_dict(), "bits": 32}))
    wider_ffn = TransformerConfig(**{**SHARDED.to_dict(), "mlp_ratio": 8})
    with pytest.raises(CheckpointError, match=r"12 shape mismatches: blocks.0.ffn.fc1.weight: file \(256, 64\) vs"):
        load_official_transformer(index.parent.parent / "ok", wider_ffn)

    # The index and the shards disagree, or a shard is gone.
    index = _save_shards(tmp_path / "broken", _official_state_dict(random_model))
    weight_map = json.loads(index.read_text())["weight_map"]
    weight_map["head.extra"] = "model-00001-of-00003.bin"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"model-00001-of-00003.bin: lacks 1 keys: head.extra that"):
        load_official_transformer(index.parent, SHARDED)
    (index.parent / "model-00002-of-00003.bin").unlink()
    with pytest.raises(CheckpointError, match="names the shard model-00002-of-00003.bin, which is not in"):
        load_official_transformer(index.parent, SHARDED)
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a shard index"):
        load_official_transformer(index, SHARDED)
