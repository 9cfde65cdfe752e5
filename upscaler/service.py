"""Store and retrieve images: the product's core flow, with no web framework in it.

``S3CommonUpscaler`` (the original service's name) downscales an image and stores the small version with a record
of everything needed to restore it (:class:`upscaler.media.ImageRecord`), in S3 or a local folder; ``retrieve``
reads it back and upscales it through an :class:`~upscaler.providers.UpscaleProvider` to the original size,
format and mode.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from upscaler import media
from upscaler.backpressure import WorkSlots
from upscaler.config import Settings
from upscaler.engine import Engine, downscale_size, registry
from upscaler.errors import Conflict, Forbidden, InvalidInput, UndecodableImage
from upscaler.providers import UpscaleProvider
from upscaler.quality import FORMS, Decision, Target, choose_form, with_models
from upscaler.store import ObjectStore
from upscaler.store.keys import validate_bucket, validate_key

log = logging.getLogger(__name__)


@dataclass
class StoreResult:
    bucket: str
    key: str
    record: media.ImageRecord
    seconds: float
    #: How a quality target was met (see upscaler.quality.Decision.describe), when one was asked.
    decision: dict[str, object] | None = None
    #: The model a retrieval uses when it names none (the one stored with the image, else the service's default).
    model: str = ""

    @property
    def saved_ratio(self) -> float:
        """Share of the original bytes saved (0.9 = 90 % smaller)."""
        return 1.0 - self.record.stored_bytes / max(self.record.original_bytes, 1)

    def to_dict(self) -> dict[str, object]:
        r = self.record
        return {
            "s3_bucket": self.bucket,
            "s3_key": self.key,
            "original": {
                "width": r.width,
                "height": r.height,
                "format": r.format,
                "mode": r.mode,
                "bytes": r.original_bytes,
            },
            "stored": {
                "width": r.stored_width,
                "height": r.stored_height,
                "codec": r.stored_codec,
                "quality": r.stored_quality,
                "bytes": r.stored_bytes,
                "scale": r.scale,
            },
            "saved_percent": round(100.0 * self.saved_ratio, 2),
            "model": self.model or r.model,
            **({"decision": self.decision} if self.decision else {}),
        }


@dataclass
class RetrieveResult:
    data: bytes
    content_type: str
    record: media.ImageRecord
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)


class S3CommonUpscaler:
    """Downscale + store, and read + upscale, over an :class:`ObjectStore` and an :class:`UpscaleProvider`."""

    def __init__(self, store: ObjectStore, provider: UpscaleProvider, engine: Engine, settings: Settings) -> None:
        self.store = store
        self.provider = provider
        self.engine = engine
        self.settings = settings
        self.limits = media.DecodeLimits(
            max_bytes=settings.max_image_bytes, max_megapixels=settings.max_source_megapixels
        )
        self.slots = WorkSlots(settings.max_inflight, settings.inflight_wait, queue=settings.max_queued)

    def _default_model(self) -> str:
        """The model a retrieval naming none runs: the local provider's, or the SageMaker endpoint it calls."""
        info = self.provider.describe()
        if info.get("model"):
            return str(info["model"])
        return f"sagemaker:{info['endpoint']}" if info.get("endpoint") else self.settings.default_model

    # ---- checks ------------------------------------------------------------------------------------------
    def bucket(self, bucket: str | None) -> str:
        name = validate_bucket(bucket or self.settings.default_bucket)
        allowed = self.settings.allowed_buckets
        if allowed and name not in allowed:
            raise Forbidden(f"bucket {name!r} is not in the allow-list of this service")
        return name

    def _options(self, scale: float | None, codec: str | None, quality: int | None) -> tuple[float, str, int]:
        scale = float(self.settings.default_scale if scale is None else scale)
        if scale not in (1.0, 2.0, 3.0, 4.0):
            raise InvalidInput(f"scale must be 1, 2, 3 or 4, got {scale:g}")
        codec = (codec or self.settings.stored_codec).lower()
        if codec not in media.STORED_CODECS:
            raise InvalidInput(f"codec must be one of {', '.join(media.STORED_CODECS)}, got {codec!r}")
        quality = self.settings.stored_quality if quality is None else int(quality)
        if not 1 <= quality <= 100:
            raise InvalidInput(f"quality must be between 1 and 100, got {quality}")
        return scale, codec, quality

    # ---- store -------------------------------------------------------------------------------------------
    def store_image(
        self,
        data: bytes,
        *,
        bucket: str | None,
        key: str,
        scale: float | None = None,
        codec: str | None = None,
        quality: int | None = None,
        model: str | None = None,
        target: str | Target | None = None,
    ) -> StoreResult:
        """Decode ``data``, downscale it by ``scale``, and store it under ``bucket``/``key`` with its record.
        With a quality ``target`` (``"psnr:35"``, ``"ssim:0.95"``), the scale, codec and quality are chosen per
        image instead: the smallest form whose real retrieval meets the target (see :mod:`upscaler.quality`)."""
        start = time.perf_counter()
        bucket = self.bucket(bucket)
        key = validate_key(key)
        fixed = scale is not None or codec is not None or quality is not None
        scale, codec, quality = self._options(scale, codec, quality)
        if target is None and not fixed and self.settings.default_target:
            target = self.settings.default_target  # UPSCALER_DEFAULT_TARGET
        goal = Target.parse(target) if isinstance(target, str) else target
        if model is not None:
            self.engine.resolve(model, max(scale, 1.0))  # unknown model -> 400 now, not at retrieve time
        decision = None
        with self.slots.take():
            decoded = media.decode(data, self.limits)
            record = decoded.record
            record.model = model or ""
            if goal is None:
                small = self.engine.downscale(decoded.pixels, scale) if scale > 1 else decoded.pixels
                blob = media.encode_stored(small, codec, quality, speed=self.settings.avif_speed)
                width, height = _dimensions(small)
            else:
                decision = self._choose(data, decoded.pixels, record, goal)
                scale, quality, blob = decision.form.scale, decision.form.quality, decision.form.data
                record.model = decision.form.model or record.model  # the model its fidelity was measured with
                width, height = (
                    (record.width, record.height) if scale == 1 else downscale_size(record.width, record.height, scale)
                )
                record.target, record.fidelity = str(goal), _finite(decision.form.score)
            del decoded
            if getattr(blob, "codec", "") == "jxl-jpeg":  # the original file must come back: check it now
                back = hashlib.sha256(media.reconstruct_jpeg(blob)).hexdigest()
                if back != record.sha256:
                    raise UndecodableImage("the JPEG XL recompression does not give back the original JPEG")
        record.scale = scale
        record.stored_codec = getattr(blob, "codec", "original")  # raw bytes: the original file, kept as it came
        record.stored_quality = quality
        record.stored_width, record.stored_height = width, height
        record.stored_bytes = len(blob)
        content_type = getattr(blob, "content_type", None) or media.content_type_for(record.format)
        self.store.put(bucket, key, bytes(blob), metadata=record.to_metadata(), content_type=content_type)
        result = StoreResult(
            bucket,
            key,
            record,
            time.perf_counter() - start,
            decision.describe() if decision else None,
            model=record.model or self._default_model(),
        )
        log.info(
            "stored",
            extra={
                "bucket": bucket,
                "key": key,
                "original_bytes": record.original_bytes,
                "stored_bytes": record.stored_bytes,
                "scale": scale,
                "codec": record.stored_codec,
            },
        )
        return result

    def decide(self, data: bytes, target: str | Target, model: str | None = None, **search: Any) -> Decision:
        """What :meth:`store_image` would store for ``data`` with this quality target (a dry run). ``search``
        narrows the candidates (:func:`upscaler.quality.choose_form`'s ``forms``, ``prune``, ``keep_original``,
        ``cache``)."""
        goal = Target.parse(target) if isinstance(target, str) else target
        with self.slots.take():
            decoded = media.decode(data, self.limits)
            decoded.record.model = model or ""
            return self._choose(data, decoded.pixels, decoded.record, goal, **search)

    def _choose(self, data: bytes, pixels: object, record: media.ImageRecord, goal: Target, **search: Any) -> Decision:
        """Search the stored forms by running, for each candidate, the retrieval :meth:`retrieve_image` runs."""
        smalls: dict[float, object] = {}
        model = record.model or None
        speed, effort = self.settings.avif_speed, self.settings.jxl_effort

        def encode(scale: float, codec: str, quality: int) -> bytes:
            if codec == "jxl-jpeg":
                if record.format != "JPEG":
                    raise InvalidInput("only a JPEG file can be recompressed into JPEG XL")
                return media.recompress_jpeg(data, effort=effort)
            if scale not in smalls:
                smalls[scale] = self.engine.downscale(pixels, scale) if scale > 1 else pixels
            return media.encode_stored(smalls[scale], codec, quality, speed=speed, effort=effort)

        def restorer(upscale: Callable[..., object]) -> Callable[..., bytes]:
            def restore_file(scale: float, stored: bytes, *other: str) -> bytes:  # what retrieve_image answers
                small = media.decode_stored(stored)
                size = (record.width, record.height)
                full_size = _dimensions(small) == size  # full size: no model, unless a restorer is named
                big = small if full_size and not other else upscale(small, size, *other)
                return media.encode_restored(big, record)[0]

            return restore_file

        real = restorer(lambda small, size, other="": self.provider.upscale(small, size=size, model=other or model))
        bicubic = restorer(lambda small, size: self.engine.upscale(small, size=size, model="bicubic"))  # fast search

        def pixels_of(restore_file: Callable[..., bytes]) -> Callable[..., object]:
            return lambda scale, stored, *other: media.decode(restore_file(scale, stored, *other), self.limits).pixels

        forms = search.pop("forms", FORMS)
        if model is None:  # a request that names its model is restored with that one only
            forms = with_models(forms, self._target_models())
        return choose_form(
            pixels,  # type: ignore[arg-type]
            data,
            goal,
            encode,
            pixels_of(real),  # type: ignore[arg-type]
            proxy=pixels_of(bicubic),  # type: ignore[arg-type]
            restore_file=real,
            forms=forms,
            **search,
        )

    def _target_models(self) -> dict[float, tuple[str, ...]]:
        """UPSCALER_TARGET_MODELS by the scale each serves natively (the only scale it is tried at)."""
        by_scale: dict[float, tuple[str, ...]] = {}
        for name in self.settings.target_models:
            spec = registry.MODELS.get(name)
            if spec is None or not spec.is_network:
                raise InvalidInput(f"UPSCALER_TARGET_MODELS names {name!r}, not a model: {registry.model_names()}")
            by_scale[float(spec.scale)] = (*by_scale.get(float(spec.scale), ()), spec.name)
        return by_scale

    # ---- retrieve ----------------------------------------------------------------------------------------
    def record(self, bucket: str | None, key: str) -> media.ImageRecord:
        info = self.store.head(self.bucket(bucket), validate_key(key))
        return media.ImageRecord.from_metadata(info.metadata)

    def retrieve_image(
        self,
        *,
        bucket: str | None,
        key: str,
        format: str | None = None,
        quality: int | None = None,
        scale: float | None = None,
        model: str | None = None,
        endpoint: str | None = None,
    ) -> RetrieveResult:
        """Read ``bucket``/``key`` and upscale it to the original size (or the stored size times ``scale``),
        in the original format (or ``format``)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        obj = self.store.get(self.bucket(bucket), validate_key(key))
        record = media.ImageRecord.from_metadata(obj.metadata)
        size = _output_size(record, scale)
        stored, stored_type = obj.data, obj.content_type
        if record.stored_codec == "jxl-jpeg":  # the original JPEG recompressed: reconstructed byte for byte
            stored, stored_type = _reconstructed(obj.data, record), media.content_type_for("JPEG")
        original = record.stored_codec in ("original", "jxl-jpeg")
        if _as_stored(record, format, quality, size):
            timings["read"] = time.perf_counter() - t0  # the original file: given back byte for byte
            return RetrieveResult(stored, stored_type, record, size[0], size[1], timings)
        with self.slots.take():
            small = media.decode(stored, self.limits).pixels if original else media.decode_stored(stored)
            timings["read"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            full_size = size == _dimensions(small)
            # A restorer (a x1 model) named by the record runs on the full-size form it was measured with; an
            # upscale to another size uses the default model instead.
            use = model or (record.model if full_size or not _restorer(record.model) else "") or None
            if full_size and not (use and _restorer(use)):
                big = small
            else:
                big = self.provider.upscale(small, size=size, model=use, endpoint=endpoint)
            timings["upscale"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            data, content_type = media.encode_restored(big, record, format=format, quality=quality)
            timings["encode"] = time.perf_counter() - t2
        return RetrieveResult(data, content_type, record, size[0], size[1], timings)

    def source_image(self, bucket: str | None, key: str) -> bytes:
        """The image at ``bucket``/``key`` taken as a source (an ``s3://`` URL of the /v1 API): an object this service
        stored holds a downscaled form, so it is restored first and its original comes back, as a retrieval gives
        it; any other object is read as it is. Never the stored bytes as if they were an original."""
        name = self.bucket(bucket)
        metadata = self.store.head(name, validate_key(key)).metadata
        if media.RECORD_MARKER not in metadata:
            return self.store.get(name, key).data
        try:
            media.ImageRecord.from_metadata(metadata)
        except media.InvalidRecord:
            raise Conflict(
                f"s3://{name}/{key} was stored by this service but its record cannot be read, so its original "
                "cannot be restored; its stored bytes are a downscaled form, not a source"
            ) from None
        return self.retrieve_image(bucket=name, key=key).data

    def retrieval_head(
        self,
        *,
        bucket: str | None,
        key: str,
        format: str | None = None,
        quality: int | None = None,
        scale: float | None = None,
    ) -> tuple[media.ImageRecord, tuple[int, int], str, int | None]:
        """What :meth:`retrieve_image` would answer, known without running a model: the record, the output size,
        the content type and, only when the stored bytes are given back as they are, the length."""
        record = self.record(bucket, key)
        size = _output_size(record, scale)
        if _as_stored(record, format, quality, size):
            return record, size, media.content_type_for(record.format), record.original_bytes
        return record, size, media.content_type_for(format or record.format), None

    def upscale_bytes(
        self, data: bytes, *, scale: float, model: str | None = None, format: str | None = None
    ) -> tuple[bytes, str, tuple[int, int]]:
        """Upscale an image given as bytes, without storing it (the /v1/upscale route)."""
        with self.slots.take():
            decoded = media.decode(data, self.limits)
            width, height = _dimensions(decoded.pixels)
            size = (round(width * scale), round(height * scale))
            big = self.provider.upscale(decoded.pixels, size=size, model=model)
            out, content_type = media.encode_restored(big, decoded.record, format=format)
        return out, content_type, size

    def delete_image(self, *, bucket: str | None, key: str) -> bool:
        return self.store.delete(self.bucket(bucket), validate_key(key))


def _output_size(record: media.ImageRecord, scale: float | None) -> tuple[int, int]:
    """The original size, or the stored size times ``scale``."""
    if scale is None:
        return record.width, record.height
    if not 1.0 <= float(scale) <= 16.0:
        raise InvalidInput(f"scale must be between 1 and 16, got {scale}")
    return round(record.stored_width * float(scale)), round(record.stored_height * float(scale))


def _as_stored(record: media.ImageRecord, format: str | None, quality: int | None, size: tuple[int, int]) -> bool:
    """Whether a retrieval gives the stored bytes back as they are (an original kept whole, asked for as it is)."""
    return (
        record.stored_codec in ("original", "jxl-jpeg")
        and format is None
        and quality is None
        and size == (record.width, record.height)
    )


def _reconstructed(blob: bytes, record: media.ImageRecord) -> bytes:
    """The original JPEG kept in a ``jxl-jpeg`` blob, checked against the record's SHA-256."""
    jpeg = media.reconstruct_jpeg(blob)
    if record.sha256 and hashlib.sha256(jpeg).hexdigest() != record.sha256:
        raise UndecodableImage("the stored JPEG XL does not give back the original JPEG (SHA-256 differs)")
    return jpeg


def _finite(value: float) -> float | None:
    return None if value == float("inf") else round(value, 4)


def _restorer(name: str) -> bool:
    """Whether ``name`` is a restorer of full-size forms (a x1 model): it runs at the stored size."""
    spec = registry.MODELS.get(name)
    return spec is not None and spec.is_network and spec.scale == 1


def _dimensions(pixels: object) -> tuple[int, int]:
    from upscaler.engine.pixels import dimensions

    return dimensions(pixels)  # type: ignore[arg-type]
