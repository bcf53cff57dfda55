"""The Infinity transformer: configuration, model, KV cache."""
from .config import TRANSFORMER_PRESETS, TransformerConfig
from .kv_cache import KVCache
from .model import Infinity, TextConditioning

__all__ = ["TRANSFORMER_PRESETS", "Infinity", "KVCache", "TextConditioning", "TransformerConfig"]
