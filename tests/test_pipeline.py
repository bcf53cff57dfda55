"""InfinityPipeline on CPU with tiny random-weight models: folders in our format, official weight files found in a
local folder, seeded determinism, streaming, input checks and the errors of missing or broken model files."""
import json
import math
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from infinity import pipeline as pipeline_module
from infinity import precision
from infinity.checkpoints import CheckpointError
from infinity.official import OFFICIAL_MODELS, OfficialModel, WeightsNotFoundError, find_weights
from infinity.options import SamplingDefaults
from infinity.pipeline import InfinityPipeline, PipelineOutput
from infinity.sampling import Intervention
from infinity.schedules import ASPECT_RATIOS, Schedule, get_schedule
from infinity.text import MiniLMTextEncoder, T5TextEncoder
from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig
from infinity.transformer import Infinity, TransformerConfig

PATCH = 4
TINY_TOKENIZER = TokenizerConfig(
    bits=8, base_channels=32, channel_multipliers=(1, 1, 1), num_res_blocks=1, patch_size=PATCH
)
# MiniLM gives E=384 channels; the SOS pool then has 384 // 128 = 3 heads, which must divide the width.
TINY_TRANSFORMER = TransformerConfig(
    depth=2, width=96, num_heads=2, bits=8, text_channels=384, text_maxlen=32, max_scales=4, drop_path_rate=0.0
)
SCHEDULES = {  # at patch 4: 16x16, 24x16 (landscape) and 16x24 (portrait) pixels
    "1:1": Schedule(((1, 1), (2, 2), (4, 4)), PATCH),
    "3:2": Schedule(((1, 1), (2, 3), (4, 6)), PATCH, h_div_w=0.667),
    "2:3": Schedule(((1, 1), (3, 2), (6, 4)), PATCH, h_div_w=1.5),
}
DEFAULTS = SamplingDefaults(cfg=3.0, tau=1.0, top_k=0, top_p=0.0)


def random_models(seed: int = 0) -> tuple[BitwiseTokenizer, Infinity]:
    torch.manual_seed(seed)
    transformer = Infinity(TINY_TRANSFORMER).eval()
    with torch.no_grad():  # the training init makes every block almost the identity; make the weights matter
        for p in transformer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return BitwiseTokenizer(TINY_TOKENIZER).eval(), transformer


@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder.from_pretrained(max_length=32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm):
    tokenizer, transformer = random_models()
    pipe = InfinityPipeline(
        tokenizer, transformer, minilm, SCHEDULES, DEFAULTS, "tiny", "cpu", torch.float32, examples=["a red cube"]
    )
    return pipe.save_pretrained(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return InfinityPipeline.from_pretrained(model_dir, device="cpu")


# ---- our folders ----


def test_saved_folder_holds_the_documented_pipeline_json(model_dir):
    config = json.loads((model_dir / "pipeline.json").read_text())
    assert config == {
        "format": "infinity-pipeline",
        "version": 1,
        "text_encoder": {"kind": "minilm", "max_length": 32},
        "patch_size": PATCH,
        "schedules": {name: [list(hw) for hw in s.scales] for name, s in SCHEDULES.items()},
        "defaults": {"cfg": 3.0, "tau": 1.0, "top_k": 0, "top_p": 0.0, "cfg_schedule": None, "tau_schedule": None},
        "examples": ["a red cube"],
    }
    files = {"pipeline.json", "tokenizer.safetensors", "transformer.safetensors"}
    assert {p.name for p in model_dir.iterdir()} == files


def test_folder_round_trip(pipe):
    assert pipe.aspect_ratios == ["1:1", "3:2", "2:3"] and pipe.examples == ("a red cube",)
    assert pipe.defaults == DEFAULTS and pipe.device_name == "CPU" and pipe.dtype == torch.float32
    assert pipe.schedules["3:2"].h_div_w == 0.667 and pipe.schedules["2:3"].pixel_hw == (24, 16)
    _, transformer = random_models()
    for key, value in transformer.state_dict().items():
        assert torch.equal(pipe.transformer.state_dict()[key], value), key


@pytest.mark.parametrize("aspect_ratio, size", [("1:1", (16, 16)), ("3:2", (24, 16)), ("2:3", (16, 24))])
def test_generates_an_rgb_image_of_the_schedule_size(pipe, aspect_ratio, size):
    out = pipe("a red cube", aspect_ratio=aspect_ratio, seed=3)
    assert isinstance(out, PipelineOutput) and out.seed == 3 and out.seconds > 0
    assert out.image.mode == "RGB" and out.image.size == size
    assert [tuple(b.shape) for b in out.bits] == [(1, h, w, 8) for h, w in SCHEDULES[aspect_ratio].scales]
    assert len(out.events) == 3 and out.events[-1].image_B3HW is not None


def test_same_seed_same_image_other_seed_other_bits(pipe):
    a, b, c = (pipe("a blue ball", seed=s) for s in (7, 7, 8))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))
    assert not all(torch.equal(x, y) for x, y in zip(a.bits, c.bits))


def test_options_change_the_result(pipe):
    base = pipe("a blue ball", seed=1)
    explicit = pipe("a blue ball", seed=1, cfg=DEFAULTS.cfg, tau=DEFAULTS.tau, top_k=DEFAULTS.top_k, top_p=DEFAULTS.top_p)
    assert all(torch.equal(x, y) for x, y in zip(base.bits, explicit.bits))  # None takes the model's defaults
    for options in ({"cfg": 1.0}, {"negative_prompt": "green"}, {"tau_schedule": [1.0, 1.0, 0.05]}):
        other = pipe("a blue ball", seed=1, **options)
        assert not all(torch.equal(x, y) for x, y in zip(base.bits, other.bits)), options


def test_offloaded_text_encoder_gives_the_same_image(model_dir, pipe):
    offloaded = InfinityPipeline.from_pretrained(model_dir, device="cpu", text_encoder_device="offload")
    assert offloaded.offload_text_encoder and offloaded.text_encoder.device.type == "cpu"
    assert np.array_equal(np.asarray(offloaded("a cube", seed=5).image), np.asarray(pipe("a cube", seed=5).image))


def test_stream_yields_one_event_per_scale_with_previews(pipe):
    events = list(pipe.stream("a red cube", aspect_ratio="3:2", seed=2))
    assert [e.scale_index for e in events] == [0, 1, 2]
    assert all(e.preview_B3HW is not None and e.preview_B3HW.shape == (1, 3, 16, 24) for e in events)
    # The stream and the call draw the same bits.
    assert all(torch.equal(e.bits_Bhwd, b) for e, b in zip(events, pipe("a red cube", aspect_ratio="3:2", seed=2).bits))


def test_encoded_image_as_prefix_and_intervention(pipe):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    bits = pipe.encode_image(image, "2:3")
    assert [tuple(b.shape) for b in bits] == [(1, 1, 1, 8), (1, 3, 2, 8), (1, 6, 4, 8)]
    events = list(pipe.stream("a red cube", aspect_ratio="2:3", prefix_bits=bits[:2], preview=False))
    assert torch.equal(events[0].bits_Bhwd, bits[0]) and torch.equal(events[1].bits_Bhwd, bits[1])
    flipped = list(pipe.stream("a red cube", aspect_ratio="2:3", intervention=Intervention(1, 0.5)))
    plain = list(pipe.stream("a red cube", aspect_ratio="2:3"))
    assert int((flipped[1].bits_Bhwd != plain[1].bits_Bhwd).sum()) == round(0.5 * 3 * 2 * 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "prompt must be a non-empty string"),
        ({"prompt": "   "}, "prompt must be a non-empty string"),
        ({"prompt": None}, "prompt must be a non-empty string"),
        ({"prompt": "x" * 2001}, "2001 characters long; at most 2000"),
        ({"negative_prompt": 3}, "negative_prompt must be a string"),
        ({"cfg": math.nan}, "cfg must be a finite number"),
        ({"cfg": math.inf}, "cfg must be a finite number"),
        ({"cfg": -1.0}, "cfg must be >= 0"),
        ({"tau": 0.0}, "tau (temperature) must be > 0"),
        ({"tau": math.nan}, "tau must be a finite number"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0"),
        ({"top_p": 1.5}, "top_p must be in [0, 1]"),
        ({"top_p": -0.1}, "top_p must be in [0, 1]"),
        ({"aspect_ratio": "16:9"}, "unknown aspect ratio '16:9'; this model has 1:1, 3:2, 2:3"),
        ({"seed": -1}, "seed must be an integer in [0, 2**53 - 1]"),
        ({"seed": 2**53}, "seed must be an integer in [0, 2**53 - 1]"),
        ({"seed": 1.0}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"cfg_schedule": [3.0, 3.0]}, "cfg_schedule needs one value per scale: 3 for this aspect ratio, got 2"),
        ({"cfg_schedule": [3.0, math.nan, 3.0]}, "cfg_schedule[1] must be a finite number"),
        ({"tau_schedule": "1,1,1"}, "tau_schedule must be a list of 3 numbers"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(pipe, kwargs, message):
    kwargs = {"prompt": "a red cube", **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe(**kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe.stream(**kwargs)  # checked when called, before the first scale


def test_components_must_fit(minilm):
    tokenizer, transformer = random_models()
    with pytest.raises(ValueError, match="has 16 px per token, the models 4"):
        InfinityPipeline(tokenizer, transformer, minilm, None, DEFAULTS, "x", "cpu", torch.float32)
    with pytest.raises(ValueError, match="default cfg_schedule has 2 values"):
        InfinityPipeline(tokenizer, transformer, minilm, SCHEDULES, replace(DEFAULTS, cfg_schedule=(1.0, 2.0)),
                         "x", "cpu", torch.float32)
    long_prompts = MiniLMTextEncoder(minilm.tokenizer, minilm.model, max_length=64)
    with pytest.raises(ValueError, match="up to 64 tokens; the transformer takes 384 channels and at most 32 tokens"):
        InfinityPipeline(tokenizer, transformer, long_prompts, SCHEDULES, DEFAULTS, "x", "cpu", torch.float32)
    with pytest.raises(ValueError, match="a transformer token must be an s x s patch"):
        InfinityPipeline(BitwiseTokenizer(replace(TINY_TOKENIZER, bits=3)), transformer, minilm, SCHEDULES, DEFAULTS,
                         "x", "cpu", torch.float32)


# ---- broken folders ----


def _broken_copy(model_dir, tmp_path, edit):
    folder = tmp_path / "broken"
    shutil.copytree(model_dir, folder)
    edit(folder)
    return folder


def _edit_json(change):
    def edit(folder):
        config = json.loads((folder / "pipeline.json").read_text())
        change(config)
        (folder / "pipeline.json").write_text(json.dumps(config))
    return edit


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda f: (f / "pipeline.json").unlink(), WeightsNotFoundError, "no pipeline.json (our format)"),
        (lambda f: (f / "pipeline.json").write_text("{"), CheckpointError, "not a readable JSON file"),
        (lambda f: (f / "transformer.safetensors").unlink(), CheckpointError, "transformer.safetensors: no such file"),
        (lambda f: shutil.copy(f / "tokenizer.safetensors", f / "transformer.safetensors"), CheckpointError,
         "holds a BitwiseTokenizer, expected Infinity"),
        (_edit_json(lambda c: c.update(format="other")), CheckpointError, "not an Infinity pipeline file"),
        (_edit_json(lambda c: c.update(version=2)), CheckpointError, "unsupported version 2"),
        (_edit_json(lambda c: c.update(colour="red")), CheckpointError, "unknown keys ['colour']"),
        (_edit_json(lambda c: c.pop("defaults")), CheckpointError, "missing keys ['defaults']"),
        (_edit_json(lambda c: c.update(text_encoder={"kind": "clip"})), CheckpointError, "text_encoder.kind must be"),
        (_edit_json(lambda c: c["schedules"].update({"1:1": [[1, 1], [2]]})), CheckpointError, "[h, w] grids"),
        (_edit_json(lambda c: c["schedules"].update({"1:1": [[4, 4], [2, 2]]})), CheckpointError, "the largest grid"),
        (_edit_json(lambda c: c["defaults"].update(tau=-1)), CheckpointError, "tau (temperature) must be > 0"),
        (_edit_json(lambda c: c.update(patch_size=8)), ValueError, "has 8 px per token, the models 4"),
    ],
)
def test_broken_folders_give_one_clear_error(model_dir, tmp_path, edit, error, message):
    folder = _broken_copy(model_dir, tmp_path, edit)
    with pytest.raises(error, match=re.escape(message)) as e:
        InfinityPipeline.from_pretrained(folder, device="cpu")
    assert "broken" in str(e.value) or error is ValueError


def test_missing_embedded_model_and_unknown_names(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline_module, "EMBEDDED_DIR", tmp_path / "assets" / "embedded")
    with pytest.raises(FileNotFoundError, match="the embedded model .*assets/embedded is not in this checkout"):
        InfinityPipeline.from_pretrained(device="cpu")
    with pytest.raises(FileNotFoundError, match="infinity-3b: neither a model name"):
        InfinityPipeline.from_pretrained("infinity-3b", device="cpu")
    with pytest.raises(ValueError, match="unknown device"):
        InfinityPipeline.from_pretrained("infinity-2b", device="toaster")


# ---- official weights ----


def _official_state_dict(transformer: Infinity) -> dict[str, torch.Tensor]:
    """Our names -> the official ones (inverse of checkpoints.official_transformer_key), one block per chunk."""
    renames = (("text_pool.", "text_proj_for_sos.ca."), ("text_proj.", "text_proj_for_ca."), ("head_norm.", "head_nm."))
    official = {}
    for key, value in transformer.state_dict().items():
        key = re.sub(r"^blocks\.(\d+)\.", r"block_chunks.\1.module.0.", key)
        for ours, theirs in renames:
            if key.startswith(ours):
                key = theirs + key[len(ours):]
        official[key] = value
    return official


# Tiny stand-ins of the released architectures (same bits ratio: Infinity-8B's token is a 2x2 patch of latent cells).
TINY_OFFICIAL = {
    "infinity-2b": (replace(TINY_TOKENIZER, channel_multipliers=(1, 1, 1, 1, 1), patch_size=16), TINY_TRANSFORMER),
    "infinity-8b": (replace(TINY_TOKENIZER, bits=2, channel_multipliers=(1, 1, 1, 1), patch_size=8), TINY_TRANSFORMER),
}


def use_tiny_official(monkeypatch, minilm, name: str) -> OfficialModel:
    """`name` with tiny architectures at the 0.06M budget (7 scales, 256x256 px) and MiniLM in place of Flan-T5."""
    tokenizer, transformer = TINY_OFFICIAL[name]
    model = replace(OFFICIAL_MODELS[name], tokenizer=tokenizer, transformer=replace(transformer, max_scales=15),
                    budget="0.06M")
    monkeypatch.setitem(OFFICIAL_MODELS, name, model)
    monkeypatch.setattr(T5TextEncoder, "from_pretrained", lambda *args, **kwargs: minilm)
    monkeypatch.setattr(precision, "cpu_flags", lambda *args: frozenset())  # fp32 on any CPU: exact weights below
    monkeypatch.delenv("INFINITY_WEIGHTS_DIR", raising=False)
    return model


def write_official_files(model: OfficialModel, folder) -> Infinity:
    """Random weights in the official formats: {"vae": ...} .pth, and a .pth or a sharded folder with an index."""
    torch.manual_seed(0)
    tokenizer, transformer = BitwiseTokenizer(model.tokenizer), Infinity(model.transformer)
    torch.save({"vae": tokenizer.state_dict()}, folder / model.tokenizer_file)
    state_dict = _official_state_dict(transformer)
    if not model.sharded:
        torch.save(state_dict, folder / model.transformer_weights)
        return transformer
    shard_dir = folder / model.transformer_weights
    shard_dir.mkdir()
    keys = sorted(state_dict)
    shards = {f"model-0000{i + 1}-of-00002.safetensors": keys[i::2] for i in range(2)}
    for shard, shard_keys in shards.items():
        save_file({k: state_dict[k].contiguous() for k in shard_keys}, shard_dir / shard)
    weight_map = {k: shard for shard, shard_keys in shards.items() for k in shard_keys}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return transformer


@pytest.mark.parametrize(
    "name, defaults", [("infinity-2b", (3.0, 0.5, 900, 0.97)), ("infinity-8b", (3.0, 1.0, 900, 0.97))]
)
def test_official_files_from_a_local_folder(name, defaults, tmp_path, monkeypatch, minilm):
    model = use_tiny_official(monkeypatch, minilm, name)
    transformer = write_official_files(model, tmp_path)

    pipe = InfinityPipeline.from_pretrained(tmp_path, device="cpu", local_files_only=True)  # the folder itself
    assert pipe.name == name
    assert (pipe.defaults.cfg, pipe.defaults.tau, pipe.defaults.top_k, pipe.defaults.top_p) == defaults
    assert pipe.aspect_ratios == list(ASPECT_RATIOS) and pipe.schedules["7:4"] == get_schedule("7:4", "0.06M")
    for key, value in transformer.state_dict().items():
        assert torch.equal(pipe.transformer.state_dict()[key], value), key
    out = pipe("a red cube", seed=0)
    assert out.image.size == (256, 256) and [tuple(b.shape) for b in out.bits][-1] == (1, 16, 16, 8)
    prefix = pipe.encode_image(out.image, "1:1")  # per transformer token, as the events
    assert [b.shape for b in prefix] == [b.shape for b in out.bits]
    assert len(list(pipe.stream("a red cube", prefix_bits=prefix[:3]))) == 7

    monkeypatch.setenv("INFINITY_WEIGHTS_DIR", str(tmp_path))  # the name, weights in $INFINITY_WEIGHTS_DIR
    assert InfinityPipeline.from_pretrained(name, device="cpu", local_files_only=True).name == name


@pytest.fixture
def tiny_official(monkeypatch, minilm):
    return use_tiny_official(monkeypatch, minilm, "infinity-2b")


def test_official_weights_missing_offline_is_one_message(tiny_official, tmp_path):
    with pytest.raises(WeightsNotFoundError) as e:
        InfinityPipeline.from_pretrained("infinity-2b", device="cpu", local_files_only=True, cache_dir=tmp_path)
    message = str(e.value)
    for part in ("infinity_vae_d32reg.pth, infinity_2b_reg.pth", "FoundationVision/Infinity", "INFINITY_WEIGHTS_DIR",
                 "downloads are off"):
        assert part in message, part


def test_official_weights_download_failure_is_one_message(tiny_official, tmp_path, monkeypatch):
    import huggingface_hub

    def unreachable(*args, local_files_only=False, **kwargs):
        raise (huggingface_hub.errors.LocalEntryNotFoundError("not cached") if local_files_only
               else ConnectionError("hub unreachable"))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setenv("INFINITY_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"the download failed \(ConnectionError: hub unreachable\)") as e:
        InfinityPipeline.from_pretrained("infinity-2b", device="cpu", cache_dir=tmp_path)
    assert f"neither in {tmp_path}" in str(e.value)


def test_sharded_weights_folder_is_found_locally_and_in_the_cache(tmp_path, monkeypatch):
    import huggingface_hub

    (tmp_path / "local" / "infinity_8b_weights").mkdir(parents=True)
    found = find_weights("infinity_8b_weights", True, tmp_path / "local", None, True)
    assert found == tmp_path / "local" / "infinity_8b_weights"

    snapshot = tmp_path / "snapshot"
    (snapshot / "infinity_8b_weights").mkdir(parents=True)
    (snapshot / "infinity_8b_weights" / "model.safetensors.index.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *args, **kwargs: str(snapshot))
    found = find_weights("infinity_8b_weights", True, None, None, True)
    assert found == snapshot / "infinity_8b_weights"
