"""The embedded default: the engine, in this process, on the CPU (or a Vulkan GPU when ncnn finds one)."""

from __future__ import annotations

from typing import Any

from upscaler.engine import Engine, runtime
from upscaler.engine.pixels import ImageLike
from upscaler.providers.base import UpscaleProvider


class LocalUpscaleProvider(UpscaleProvider):
    name = "local"

    def __init__(self, engine: Engine, model: str | None = None) -> None:
        self.engine = engine
        self.model = model or engine.settings.default_model

    def upscale(
        self,
        image: ImageLike,
        *,
        size: tuple[int, int],
        model: str | None = None,
        endpoint: str | None = None,
    ) -> ImageLike:
        return self.engine.upscale(image, model=model or self.model, size=size)

    def warmup(self) -> None:
        self.engine.warmup(self.model)

    def check_ready(self) -> None:
        # Resolving and loading raise Unavailable/UnknownModel when weights are missing.
        self.engine.warmup(self.model)

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "model": self.model,
            "loaded": runtime.loaded(),
            "gpu": self.engine.options.use_gpu(),
            "threads": self.engine.options.resolved_threads(),
        }
