"""Text encoders, offline on CPU: the bundled MiniLM for real, and the T5 path's packing and padding with a tiny
random T5 encoder and a word-level stand-in tokenizer (the real Flan-T5-XL is 11 GB)."""
import pytest
import torch

from infinity.text import MiniLMTextEncoder, T5TextEncoder

PROMPTS = ["a red cube", "", "a small dog running on a sunny beach next to the sea"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return MiniLMTextEncoder.from_pretrained(max_length=32)


# ---- MiniLM ----


def test_minilm_shapes_and_lengths(minilm):
    text_BTE, lens_B = minilm.encode(PROMPTS)
    expected = minilm.tokenizer(PROMPTS)["attention_mask"]
    assert lens_B.tolist() == [sum(m) for m in expected]
    assert lens_B.dtype == torch.int64 and text_BTE.dtype == torch.float32
    assert text_BTE.shape == (3, int(lens_B.max()), 384) and minilm.channels == 384
    assert lens_B[1] >= 1  # an empty prompt keeps its special tokens
    for row_TE, n in zip(text_BTE, lens_B.tolist()):
        assert row_TE[n:].abs().sum() == 0
        assert row_TE[:n].abs().sum(dim=-1).min() > 0


def test_minilm_deterministic_and_distinct(minilm):
    a_BTE, _ = minilm.encode(["a red cube", "a blue cube"])
    b_BTE, _ = minilm.encode(["a red cube", "a blue cube"])
    assert torch.equal(a_BTE, b_BTE)
    assert not torch.allclose(a_BTE[0], a_BTE[1], atol=1e-3)


def test_minilm_batch_equals_alone(minilm):
    batch_BTE, lens_B = minilm.encode(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        alone_1TE, alone_lens = minilm.encode([prompt])
        assert alone_lens.item() == lens_B[i]
        torch.testing.assert_close(batch_BTE[i, : lens_B[i]], alone_1TE[0], atol=1e-5, rtol=1e-5)


def test_minilm_truncates(minilm):
    short = MiniLMTextEncoder(minilm.tokenizer, minilm.model, max_length=6)
    text_BTE, lens_B = short.encode([PROMPTS[2], "cube"])
    assert lens_B.tolist() == [6, 3] and text_BTE.shape == (2, 6, 384)


@pytest.mark.parametrize("bad", ["a cat", [], ["a cat", 3], [None], ("ok", b"bytes")])
def test_bad_prompts(minilm, bad):
    with pytest.raises(ValueError, match="prompts must"):
        minilm.encode(bad)


def test_minilm_missing_folder(tmp_path):
    with pytest.raises(RuntimeError, match="cannot load text encoder"):
        MiniLMTextEncoder.from_pretrained(tmp_path / "nothing-here")


# ---- T5 path, with a tiny random encoder ----

WORDS = "a red cube small dog running on sunny beach next to the sea".split()


def tiny_t5_tokenizer():
    """Word-level tokenizer that, like T5's, appends </s> to every prompt and pads with <pad> (id 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_t5(max_length=16):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=len(WORDS) + 3, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return T5TextEncoder(tiny_t5_tokenizer(), T5EncoderModel(config), max_length=max_length)


def test_t5_packs_valid_rows():
    encoder = tiny_t5()
    text_BTE, lens_B = encoder.encode(PROMPTS)
    assert lens_B.tolist() == [4, 1, 13]  # words + </s>; "" is </s> alone
    assert text_BTE.shape == (3, 13, 32) and encoder.channels == 32
    for i, prompt in enumerate(PROMPTS):
        # The same prompt through the model with no padding at all.
        ids_1L = encoder.tokenizer([prompt], return_tensors="pt")["input_ids"]
        expected_LE = encoder.model(input_ids=ids_1L).last_hidden_state[0]
        torch.testing.assert_close(text_BTE[i, : lens_B[i]], expected_LE, atol=1e-5, rtol=1e-5)
        assert text_BTE[i, lens_B[i] :].abs().sum() == 0


def run_lengths(encoder):
    """The token counts the encoder's network is run over, one entry per call."""
    seen = []
    model_forward = encoder.model.forward

    def spy(input_ids, attention_mask):
        seen.append(input_ids.shape[1])
        return model_forward(input_ids=input_ids, attention_mask=attention_mask)

    encoder.model.forward = spy
    return seen


def test_t5_runs_at_the_prompts_length_or_pads_like_the_official_code():
    encoder = tiny_t5(max_length=16)
    seen = run_lengths(encoder)
    encoder.encode(["a red cube"])
    official = T5TextEncoder(encoder.tokenizer, encoder.model, max_length=16, pad_to_max_length=True)
    official.encode(["a red cube"])
    assert seen == [4, 16]  # 3 words + </s>; the official padding to max_length


@pytest.mark.parametrize("max_length", [16, 512])
def test_prompt_length_encoding_equals_the_padded_encoding(max_length):
    """The official code pads to 512 and masks the padding; T5's relative position bias, layer norms and
    feed-forward layers see each token alone, so the prompt's tokens get the same features unpadded."""
    encoder = tiny_t5(max_length=max_length)
    with torch.no_grad():  # random weights of a larger spread than the init, so every layer matters
        for p in encoder.model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    padded = T5TextEncoder(encoder.tokenizer, encoder.model, max_length=max_length, pad_to_max_length=True)
    seen = run_lengths(encoder)
    for prompt in PROMPTS:
        short_1TE, short_lens = encoder.encode([prompt])
        long_1TE, long_lens = padded.encode([prompt])
        assert torch.equal(short_lens, long_lens) and seen[-2:] == [short_lens.item(), max_length]
        torch.testing.assert_close(short_1TE, long_1TE, atol=1e-5, rtol=1e-5)
    # Several prompts at once pad to the longest of them; the valid rows are the same again.
    batch_BTE, lens_B = encoder.encode(PROMPTS)
    full_BTE, _ = padded.encode(PROMPTS)
    torch.testing.assert_close(batch_BTE, full_BTE, atol=1e-5, rtol=1e-5)


def test_t5_truncates_keeping_eos():
    encoder = tiny_t5(max_length=5)
    _, lens_B = encoder.encode([PROMPTS[2]])
    ids = encoder.tokenizer([PROMPTS[2]], max_length=5, truncation=True)["input_ids"][0]
    assert lens_B.tolist() == [5] and ids[-1] == 1


def test_t5_from_pretrained_folder(tmp_path):
    encoder = tiny_t5()
    encoder.model.save_pretrained(tmp_path)
    encoder.tokenizer.save_pretrained(tmp_path)
    loaded = T5TextEncoder.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.max_length == 512
    seen = run_lengths(loaded)
    expected_BTE, expected_lens = encoder.encode(PROMPTS)
    text_BTE, lens_B = loaded.encode(PROMPTS)
    assert torch.equal(lens_B, expected_lens) and seen == [13]  # the longest prompt's tokens, not 512
    torch.testing.assert_close(text_BTE, expected_BTE, atol=1e-5, rtol=1e-5)


def test_t5_missing_model_is_one_clear_line():
    with pytest.raises(RuntimeError) as info:
        T5TextEncoder.from_pretrained("infinity-tests/no-such-flan-t5", local_files_only=True)
    message = str(info.value)
    assert "infinity-tests/no-such-flan-t5" in message and "\n" not in message
