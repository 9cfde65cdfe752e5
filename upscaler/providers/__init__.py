"""Upscale providers behind one interface, chosen by the ``UPSCALER_UPSCALER`` setting."""

from __future__ import annotations

from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.providers.base import UpscaleProvider
from upscaler.providers.local import LocalUpscaleProvider

__all__ = ["LocalUpscaleProvider", "UpscaleProvider", "open_provider"]


def open_provider(settings: Settings, engine: Engine | None = None) -> UpscaleProvider:
    """``local`` / ``local:<model>`` -> the engine in process."""
    kind, _, arg = settings.upscaler.partition(":")
    kind = kind.strip().lower()
    if kind == "local":
        return LocalUpscaleProvider(engine or Engine(settings), model=arg or None)
    raise ValueError(f"UPSCALER_UPSCALER={settings.upscaler!r}: expected 'local' or 'local:<model>'")
