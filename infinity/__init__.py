"""Infinity: bitwise visual autoregressive text-to-image (arXiv 2412.04431). Start with `InfinityPipeline`."""
from .official import OFFICIAL_MODELS
from .options import SamplingDefaults
from .pipeline import InfinityPipeline, PipelineOutput

__all__ = ["OFFICIAL_MODELS", "InfinityPipeline", "PipelineOutput", "SamplingDefaults"]
