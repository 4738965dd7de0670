"""The Wan2.2-S2V diffusion transformer, with the original checkpoint's parameter names."""

from pipeline.model.transformer import WanS2VTransformer

__all__ = ["WanS2VTransformer"]
