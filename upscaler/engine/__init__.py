"""Super-resolution engine: SPAN and Real-ESRGAN on ncnn, tiled, alpha-aware, exact size."""

from upscaler.engine.core import Engine, default_engine, downscale, downscale_size, upscale
from upscaler.engine.registry import MODELS, ModelSpec, model_names, resolve

__all__ = [
    "MODELS",
    "Engine",
    "ModelSpec",
    "default_engine",
    "downscale",
    "downscale_size",
    "model_names",
    "resolve",
    "upscale",
]
