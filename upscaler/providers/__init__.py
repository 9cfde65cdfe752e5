"""Upscale providers behind one interface, chosen by the ``UPSCALER_UPSCALER`` setting."""

from __future__ import annotations

from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.providers.base import UpscaleProvider
from upscaler.providers.local import LocalUpscaleProvider

__all__ = ["LocalUpscaleProvider", "UpscaleProvider", "open_provider"]


def open_provider(settings: Settings, engine: Engine | None = None) -> UpscaleProvider:
    """``local`` / ``local:<model>`` -> the engine in process; ``sagemaker:<endpoint>`` -> a SageMaker real-time
    endpoint (dialect from ``UPSCALER_SAGEMAKER_DIALECT``)."""
    kind, _, arg = settings.upscaler.partition(":")
    kind = kind.strip().lower()
    if kind == "local":
        return LocalUpscaleProvider(engine or Engine(settings), model=arg or None)
    if kind == "sagemaker":
        from upscaler.providers.sagemaker import SagemakerRTUpscaleProvider

        if not arg:
            raise ValueError("UPSCALER_UPSCALER=sagemaker:<endpoint-name>")
        return SagemakerRTUpscaleProvider(settings, arg)
    raise ValueError(f"UPSCALER_UPSCALER={settings.upscaler!r}: expected 'local[:model]' or 'sagemaker:<endpoint>'")
