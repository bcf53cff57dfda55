"""Infinity: bitwise visual autoregressive text-to-image (arXiv 2412.04431). Start with `InfinityPipeline`."""
from .pipeline import OFFICIAL_MODELS, InfinityPipeline, PipelineOutput, SamplingDefaults

__all__ = ["OFFICIAL_MODELS", "InfinityPipeline", "PipelineOutput", "SamplingDefaults"]
