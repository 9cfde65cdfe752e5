"""Python SDK and command line for the media-upscaler HTTP API (see :mod:`client.sdk`)."""

from __future__ import annotations

from client.sdk import JobFailed, UpscalerClient, UpscalerError

__all__ = ["JobFailed", "UpscalerClient", "UpscalerError"]
