"""``SagemakerRTUpscaleProvider``: upscaling on a SageMaker real-time endpoint through boto3.

Two dialects: ``byoc`` (our model server, plugins/esrgan_sagemaker: PNG bytes in and out, options in the custom
attributes, alpha kept) and ``jumpstart-sd-x4`` (JumpStart's Stable Diffusion x4 upscaler: JSON with a prompt,
base64 JPEG in and out, x4 only). A request over the payload cap (6 MiB for real-time endpoints), or an answer
that would be, is cut into overlapping tiles by the engine's tiler and sent concurrently (bounded); the tiles are
blended and resized to the exact size. Throttling, 5xx and connection failures are retried with exponential
backoff and full jitter within a total deadline; then :class:`Unavailable`. The endpoint comes from the request
(``endpoint``, as in the original) or the configuration, checked against an allow-list.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import random
import time
from typing import Any

import numpy as np
from PIL import Image

from upscaler.aws import LazyClient
from upscaler.config import Settings
from upscaler.engine import pixels, tiling
from upscaler.engine.pixels import ImageLike
from upscaler.errors import Forbidden, InvalidInput, TooLarge, Unavailable, UpscalerError
from upscaler.providers.base import UpscaleProvider

log = logging.getLogger(__name__)

DIALECTS = ("byoc", "jumpstart-sd-x4")
RETRYABLE = {
    "ThrottlingException",
    "Throttling",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailableException",
    "ModelNotReadyException",
}
SD_DEFAULTS = {"num_inference_steps": 50, "guidance_scale": 7.5, "noise_level": 20}


class SagemakerRTUpscaleProvider(UpscaleProvider):
    name = "sagemaker"

    def __init__(self, settings: Settings, endpoint: str, *, dialect: str | None = None, client: Any = None) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.dialect = (dialect or settings.sagemaker_dialect).lower()
        if self.dialect not in DIALECTS:
            raise ValueError(f"sagemaker dialect must be one of {DIALECTS}, got {self.dialect!r}")
        # retries are ours (deadline-aware); botocore only connects and reads
        self._clients = LazyClient(
            "sagemaker-runtime",
            endpoint_url=settings.sagemaker_endpoint_url or None,
            client=client,
            config={
                "retries": {"total_max_attempts": 1, "mode": "standard"},
                "connect_timeout": min(settings.sagemaker_connect_timeout, settings.sagemaker_deadline),
                "read_timeout": min(settings.sagemaker_read_timeout, settings.sagemaker_deadline),
                "max_pool_connections": max(10, 2 * settings.sagemaker_concurrency),
            },
        )
        self.calls = 0  # invocations sent, retries included (for logs and benchmarks)

    @property
    def client(self) -> Any:
        return self._clients.get()

    def check_request(self, *, model: str | None = None, endpoint: str | None = None) -> None:
        self.resolve_endpoint(endpoint)  # the endpoint chooses the model; ``model`` is passed along to it

    def dialect_for(self, endpoint: str) -> str:
        """JumpStart's SD x4 for endpoints listed in ``UPSCALER_SAGEMAKER_JUMPSTART_ENDPOINTS``, else the default
        dialect; so one service can serve ``upscaleMethod=stableDiffusionJT`` clients and our container."""
        return "jumpstart-sd-x4" if endpoint in self.settings.sagemaker_jumpstart_endpoints else self.dialect

    def resolve_endpoint(self, endpoint: str | None) -> str:
        name = endpoint or self.endpoint
        if not name:
            raise InvalidInput("no SageMaker endpoint named in the request or the configuration")
        allowed = set(self.settings.allowed_endpoints) | {self.endpoint}
        if name not in allowed:
            raise Forbidden(f"endpoint {name!r} is not in this service's endpoint allow-list")
        return name

    # ---- UpscaleProvider ---------------------------------------------------------------------------------
    def upscale(
        self, image: ImageLike, *, size: tuple[int, int], model: str | None = None, endpoint: str | None = None
    ) -> ImageLike:
        name = self.resolve_endpoint(endpoint)
        deadline = time.monotonic() + self.settings.sagemaker_deadline
        width, height = pixels.dimensions(image)
        dialect = self.dialect_for(name)
        if dialect == "byoc":
            whole = self._encode_png(image)
            if (
                len(whole) <= self.settings.sagemaker_max_payload
                and size[0] * size[1] * 4 <= self.settings.sagemaker_max_payload
            ):
                attrs = f"width={size[0]},height={size[1]}" + (f",model={model}" if model else "")
                out = self._invoke(name, whole, "image/png", "image/png", attrs, deadline)
                return _like(image, Image.open(io.BytesIO(out)))
            scale = min(4, max(2, math.ceil(max(size[0] / width, size[1] / height))))
            tile = self._byoc_tile(scale)
        else:
            scale, tile = 4, self.settings.sagemaker_sd_tile
        planes = pixels.to_planes(image)
        stacked = planes.color if planes.alpha is None else np.dstack([planes.color, planes.alpha])
        if dialect == "jumpstart-sd-x4" and stacked.shape[2] != 3:
            stacked = stacked[:, :, :3] if stacked.shape[2] == 4 else np.repeat(stacked, 3, axis=2)
            if planes.alpha is not None:
                log.info("JumpStart SD x4 has no alpha channel: alpha upscaled with bicubic")

        def remote(part: np.ndarray) -> np.ndarray:
            return self._tile(name, dialect, part, scale, model, deadline)

        up = tiling.apply(
            stacked,
            scale,
            remote,
            tile=tile,
            overlap=self.settings.tile_overlap,
            max_workers=self.settings.sagemaker_concurrency,
        )
        up = pixels.resize(up, size, Image.Resampling.LANCZOS)
        color = up[:, :, : planes.color.shape[2]] if up.shape[2] >= planes.color.shape[2] else up
        alpha = None
        if planes.alpha is not None:
            alpha = (
                up[:, :, -1]
                if up.shape[2] == planes.color.shape[2] + 1
                else pixels.resize(planes.alpha, size, Image.Resampling.BICUBIC)
            )
        if dialect == "jumpstart-sd-x4" and planes.color.shape[2] == 1:
            color = up.mean(axis=2, keepdims=True)
        return pixels.from_planes(planes, np.ascontiguousarray(color), alpha)

    def check_ready(self) -> None:
        if not self.endpoint:
            raise Unavailable("no SageMaker endpoint configured")

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "endpoint": self.endpoint, "dialect": self.dialect}

    # ---- pieces ------------------------------------------------------------------------------------------
    def _byoc_tile(self, scale: int) -> int:
        """Input tile side whose PNG request and response both stay under the payload cap (4 B/px worst case)."""
        cap = self.settings.sagemaker_max_payload
        side = int(math.sqrt(cap / 4.4) / scale)
        return max(64, side // 16 * 16)

    @staticmethod
    def _encode_png(image: ImageLike) -> bytes:
        img = image if isinstance(image, Image.Image) else Image.fromarray(_to_uint8(image))
        if img.mode not in ("RGB", "RGBA", "L", "LA"):
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=1)
        return buf.getvalue()

    def _tile(
        self, name: str, dialect: str, part: np.ndarray, scale: int, model: str | None, deadline: float
    ) -> np.ndarray:
        h, w, c = part.shape
        arr = np.rint(np.clip(part, 0, 1) * 255).astype(np.uint8)
        img = Image.fromarray(arr if c != 1 else arr[:, :, 0])
        if dialect == "byoc":
            body = self._encode_png(img)
            attrs = f"width={w * scale},height={h * scale}" + (f",model={model}" if model else "")
            out = Image.open(io.BytesIO(self._invoke(name, body, "image/png", "image/png", attrs, deadline)))
        else:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, "JPEG", quality=95)
            payload = {"prompt": "", "image": base64.b64encode(buf.getvalue()).decode("ascii"), **SD_DEFAULTS}
            raw = self._invoke(
                name, json.dumps(payload).encode(), "application/json;jpeg", "application/json;jpeg", "", deadline
            )
            try:
                generated = json.loads(raw)["generated_images"][0]
                out = Image.open(io.BytesIO(base64.b64decode(generated)))
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise Unavailable(f"endpoint {name} answered an unexpected body: {exc}") from None
            if out.size != (w * scale, h * scale):
                out = out.resize((w * scale, h * scale), Image.Resampling.LANCZOS)
        result = np.asarray(out.convert({1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]), dtype=np.float32) / 255.0
        return result if result.ndim == 3 else result[:, :, None]

    def _invoke(self, name: str, body: bytes, content_type: str, accept: str, attrs: str, deadline: float) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        if len(body) > self.settings.sagemaker_max_payload:
            raise TooLarge(f"request of {len(body)} bytes is over the endpoint payload cap")
        attempt = 0
        while True:
            attempt += 1
            if time.monotonic() >= deadline:  # no attempt starts after it (the tiles of an image share it)
                raise Unavailable(
                    f"SageMaker endpoint {name!r} did not answer within {self.settings.sagemaker_deadline:g} s "
                    "(UPSCALER_SAGEMAKER_DEADLINE)",
                    retry_after=2,
                )
            self.calls += 1
            try:
                kwargs: dict[str, Any] = {
                    "EndpointName": name,
                    "Body": body,
                    "ContentType": content_type,
                    "Accept": accept,
                }
                if attrs:
                    kwargs["CustomAttributes"] = attrs
                return self.client.invoke_endpoint(**kwargs)["Body"].read()
            except ClientError as exc:
                err = exc.response.get("Error", {})
                code = str(err.get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
                message = str(err.get("Message", code))
                if code == "ValidationError" or code == "ValidationException":
                    if "not found" in message.lower():
                        raise Unavailable(f"SageMaker endpoint {name!r} not found") from None
                    raise InvalidInput(f"SageMaker refused the request: {message}") from None
                if code == "ModelError":
                    original = int(exc.response.get("OriginalStatusCode", 0) or 0)
                    if 400 <= original < 500:
                        raise UpscalerError(f"model on {name!r} refused the image: {message}") from None
                    retryable = True
                else:
                    retryable = code in RETRYABLE or status >= 500 or status == 429
                if not retryable:
                    raise Unavailable(f"SageMaker endpoint {name!r} failed: {code or status}") from None
                reason = code or str(status)
            except BotoCoreError as exc:
                reason = type(exc).__name__
            backoff = min(8.0, 0.1 * 2 ** (attempt - 1)) * random.random()
            if time.monotonic() + backoff >= deadline:
                raise Unavailable(
                    f"SageMaker endpoint {name!r} still failing after {attempt} tries ({reason})", retry_after=2
                )
            log.info("retrying SageMaker", extra={"endpoint": name, "attempt": attempt, "reason": reason})
            time.sleep(backoff)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return np.rint(arr / 257.0).astype(np.uint8)
    return np.rint(np.clip(arr, 0, 1) * 255).astype(np.uint8)


def _like(original: ImageLike, result: Image.Image) -> ImageLike:
    """The endpoint's answer in the caller's type (numpy callers get numpy back)."""
    if isinstance(original, np.ndarray):
        arr = np.asarray(result)
        if original.dtype == np.uint16:
            return (arr.astype(np.uint16) * 257).astype(np.uint16)
        if original.dtype.kind == "f":
            return arr.astype(np.float32) / 255.0
        return arr
    return result
