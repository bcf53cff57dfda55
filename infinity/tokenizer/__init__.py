"""The multi-scale bitwise tokenizer: a conv VAE whose latent is quantized into K residual scales of bits."""
from .config import TOKENIZER_PRESETS, TokenizerConfig, TokenizerPreset
from .model import BitwiseTokenizer
from .quantizer import BitQuantizer, MultiScaleCodes, MultiScaleQuantizer
from .self_correction import RandomFlips, SelfCorrection

__all__ = [
    "TOKENIZER_PRESETS",
    "BitQuantizer",
    "BitwiseTokenizer",
    "MultiScaleCodes",
    "MultiScaleQuantizer",
    "RandomFlips",
    "SelfCorrection",
    "TokenizerConfig",
    "TokenizerPreset",
]
