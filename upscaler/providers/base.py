"""The one provider interface: something that turns a small image into a bigger one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from upscaler.engine.pixels import ImageLike


class UpscaleProvider(ABC):
    """Upscales images. Implementations: :class:`~upscaler.providers.local.LocalUpscaleProvider` (the engine in
    this process) and :class:`~upscaler.providers.sagemaker.SagemakerRTUpscaleProvider` (a SageMaker real-time
    endpoint). Providers are thread-safe and shared by every request of a process."""

    #: Short name used in logs, metrics and responses ("local", "sagemaker").
    name: str = "provider"

    @abstractmethod
    def upscale(
        self,
        image: ImageLike,
        *,
        size: tuple[int, int],
        model: str | None = None,
        endpoint: str | None = None,
    ) -> ImageLike:
        """Upscale ``image`` to exactly ``size`` = (width, height) with ``model`` (a name of the engine's
        registry, or the provider's default). ``endpoint`` names a remote endpoint where the provider has them."""

    @abstractmethod
    def check_ready(self) -> None:
        """Raise :class:`upscaler.errors.Unavailable` when the provider cannot serve now."""

    def check_request(self, *, model: str | None = None, endpoint: str | None = None) -> None:
        """Raise the error an :meth:`upscale` with these options would raise before any work (an unknown model, an
        endpoint off the allow-list), so a job can be refused when it is submitted rather than when it runs."""
        if model:
            from upscaler.engine import registry

            registry.resolve(model, 1.0)

    def describe(self) -> dict[str, Any]:
        """What /ready and logs show about this provider."""
        return {"provider": self.name}
