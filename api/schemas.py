"""Every request's fields, declared once as pydantic models: the same declaration validates the request and is the
schema ``/openapi.json`` publishes (see :mod:`api.openapi`).

A field given as ``""`` or ``null`` is absent, as the original service treated it; fields a model does not name are
ignored (old clients send more than we read). A refusal is a 400 whose message names the field, as
``'quality' must be between 1 and 100``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from upscaler.errors import InvalidInput
from upscaler.jobs.model import SIZINGS
from upscaler.media.formats import FORMATS
from upscaler.media.stored import STORED_CODECS
from upscaler.media.video import CODECS
from upscaler.migrate import ON_VERIFIED

#: Object keys as documented: a safe subset (the service also takes spaces and other Unicode in NFC; it refuses
#: empty, "." and ".." segments, control characters, backslashes and the reserved ".upscaler-" marker).
KEY_DOC: dict[str, Any] = {
    "minLength": 1,
    "pattern": r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_]+)*(/[A-Za-z0-9_-]+(\.[A-Za-z0-9_]+)*)*$",
}
BUCKET_DOC: dict[str, Any] = {"pattern": r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", "description": "default: configured"}
IMAGE_TARGET_DOC = {
    "type": "string",
    "pattern": r"^(exact|(bpp|bytes):[0-9]+(\.[0-9]+)?|((psnr|ssim):)?[0-9]+(\.[0-9]+)?(:(fast|exact))?)$",
    "description": "quality target: the smallest stored form whose retrieval meets it (psnr:35, ssim:0.95; a "
    "number is dB of PSNR-Y); append :fast to search with bicubic and verify the choice with the model once "
    "(psnr:35:fast); 'exact' for the smallest form that gives back the original file byte for byte (a JPEG "
    "recompressed into JPEG XL); a byte budget bpp:0.1 or bytes:50000 for the best PSNR-Y within it",
}
T = TypeVar("T")
_DATA_URL = re.compile(r"^data:[\w.+/-]+;base64,", re.IGNORECASE)


def _refuse(message: str) -> PydanticCustomError:
    """A refusal whose message follows the field's name: ``'<field>' <message>``."""
    return PydanticCustomError("upscaler", message)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON true is not the number 1
        raise _refuse("must be a number")
    return value


def _image_bytes(value: Any) -> bytes:
    """Base64 file bytes: a ``data:`` URL prefix and line breaks (MIME base64) are tolerated, padding is optional."""
    if not isinstance(value, str) or not value.strip():
        raise _refuse("must be a non-empty base64 string")
    text = "".join(_DATA_URL.sub("", value.strip()).split())
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("is not valid base64") from None
    if not data:
        raise _refuse("decodes to no bytes")
    return data


def _image_target(value: Any) -> str:
    """A quality target: ``"psnr:35"``, ``"ssim:0.95"``, ... or a bare number (PSNR-Y in dB)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"psnr:{value}"
    if not isinstance(value, str) or len(value) > 32:
        raise _refuse("must be like 'psnr:35', 'ssim:0.95' or a number of dB")
    return value


def Number(lo: float, hi: float, description: str | None = None) -> Any:
    """A finite number in ``lo..hi`` (a numeric string too: query strings are text)."""
    return Annotated[
        float, Field(ge=lo, le=hi, allow_inf_nan=False, description=description), BeforeValidator(_not_bool)
    ]


def Whole(lo: int, hi: int | None = None, description: str | None = None) -> Any:
    """A whole number in ``lo..hi`` (``80.0`` and ``"80"`` are 80; ``80.5`` is refused)."""
    return Annotated[int, Field(ge=lo, le=hi, description=description), BeforeValidator(_not_bool)]


def Text(max_len: int = 1024, **doc: Any) -> Any:
    """A string of at most ``max_len`` characters; ``doc`` adds to its published schema (enum, pattern, ...)."""
    description = doc.pop("description", None)
    return Annotated[str, Field(max_length=max_len, description=description, json_schema_extra=doc or None)]


Key = Text(1024, **KEY_DOC)
Bucket = Text(63, **BUCKET_DOC)
ImageBytes = Annotated[
    bytes,
    BeforeValidator(_image_bytes),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "description": "the image file, base64"}),
]
ImageTarget = Annotated[str, BeforeValidator(_image_target), WithJsonSchema(IMAGE_TARGET_DOC)]
Model = Text(64, description="a model of GET /v1/models (default: the one stored with the image, or configured)")
Endpoint = Text(63, description="a SageMaker endpoint, when the service calls one")
OutputKey = Text(1024, description="default: <key-without-ext>-downscaled.mp4 / -upscaled.mp4")


class Fields(BaseModel):
    """A request's fields. ``""`` and ``null`` are absent; other names are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _absent(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None and v != ""}
        return data

    def options(self, *names: str) -> dict[str, Any]:
        """The named fields as keyword arguments (absent ones as None)."""
        return {name: getattr(self, name) for name in names}


# ---- images ------------------------------------------------------------------------------------------------------
class StoreOptions(Fields):
    """How an image is stored (each optional: a fixed x4 AVIF form, or the configured target, otherwise)."""

    scale: Number(1, 4, "downscale factor of the stored form") | None = None
    codec: Text(32, enum=list(STORED_CODECS)) | None = None
    quality: Whole(1, 100) | None = None
    model: Model | None = None
    target: ImageTarget | None = None

    def store_options(self) -> dict[str, Any]:
        return self.options("scale", "codec", "quality", "model", "target")


class RetrieveOptions(Fields):
    """How an image comes back (default: the original's size and format)."""

    format: Text(16, enum=[f.lower() for f in FORMATS]) | None = None
    quality: Whole(1, 100) | None = None
    scale: Number(1, 16, "output size as the stored size times this, instead of the original's") | None = None
    model: Model | None = None

    def retrieve_options(self) -> dict[str, Any]:
        return self.options("format", "quality", "scale", "model")


class LegacyStore(StoreOptions):
    """``POST /store``: the original service's body (``endpoint`` and ``upscaleMethod`` accepted, unused)."""

    image: ImageBytes
    s3_key_name: Key
    s3_bucket: Bucket | None = None
    endpoint: Endpoint | None = None
    upscaleMethod: Text(64, description="sageMakerRT or stableDiffusionJT; any value is accepted") | None = None


class LegacyRetrieve(RetrieveOptions):
    """``GET /retrieve``'s query."""

    s3_key: Key
    s3_bucket: Bucket | None = None
    endpoint: Endpoint | None = None


class BucketQuery(Fields):
    bucket: Bucket | None = None


class PutImageQuery(StoreOptions, BucketQuery):
    """``PUT /v1/images/{key}``'s query: the bucket and how to store."""


class GetImageQuery(RetrieveOptions, BucketQuery):
    """``GET /v1/images/{key}``'s query: the bucket and how to retrieve."""

    endpoint: Endpoint | None = None


_URL_TEXT = "an http(s) URL on the source allow-list, or s3://bucket/key (an object this service stored is restored)"


class ImageSource(Fields):
    """An image given in a JSON body: base64 bytes or a URL (one of them)."""

    img: ImageBytes | None = Field(None, validation_alias=AliasChoices("img", "image"))
    url: Text(4096, description=_URL_TEXT) | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImageSource:
        if (self.img is None) == (self.url is None):
            raise _refuse("give exactly one of 'img' (base64) or 'url'")
        return self


class PostImage(StoreOptions, ImageSource, BucketQuery):
    """``POST /v1/images/{key}``: store from a URL or base64."""


class Upscale(ImageSource):
    """``POST /v1/upscale``: super-resolution without storing."""

    scale: Number(1, 4, "output size as the input's times this (default 2)") | None = None
    model: Model | None = None
    format: Text(16, enum=[f.lower() for f in FORMATS]) | None = None


# ---- video -------------------------------------------------------------------------------------------------------
_SIZING_TEXT = (
    "How min_size/max_size size a downscale. aspect (default): the aspect ratio kept, the longer side brought down "
    "to max_size or the shorter side up to min_size (no bound: width/scale). original: as the original's getNewDim "
    "and legacy /storeVideo: width/4 and height from the aspect (truncated), then only the first of width > max, "
    "height > max, width < min, height < min applies (1920x1080 with 270..540 -> 480x270, where aspect gives "
    "540x304). Both are then rounded down to even sides for 4:2:0; the job says size_requested and size."
)
_CODEC_TEXT = (
    "Codec of the output (a downscale's stored video, an upscale's result); default from the settings. "
    "h264 = libx264, hevc = libx265, av1 = libsvtav1; 400 naming codec when this build lacks the encoder."
)
_VIDEO_TARGET_TEXT = (
    "downscale: PSNR-Y (psnr:38) or SSIM-Y (ssim:0.97) of the restored video against the source; the worker "
    "measures sample segments at scales 1, 2, 4 in each codec and CRF and stores the fewest bytes that meet it (no "
    "min_size/max_size/scale/codec/crf/qp with it); the job reports decision and fidelity"
)


class Encoding(Fields):
    """A video job's output encoding; the job checks the combination (VideoJobs.submit)."""

    codec: Text(16, enum=list(CODECS), description=_CODEC_TEXT) | None = None
    crf: Whole(0, 63, "constant quality (0 best)") | None = None
    qp: Whole(0, 63, "constant quantizer, instead of crf") | None = None
    preset: Text(16, description="x264/x265: ultrafast..veryslow; SVT-AV1: 0 (slowest)..13") | None = None
    target: Text(32, pattern=r"^((psnr|ssim):)?[0-9]+(\.[0-9]+)?$", description=_VIDEO_TARGET_TEXT) | None = None

    def encoding_options(self) -> dict[str, Any]:
        return self.options("codec", "crf", "qp", "preset", "target")


def _at_most_setting(name: str, lo: int, setting: str) -> Any:
    """A validator bounding the whole-number field ``name`` by a setting, given as the validation context under the
    field's name (``parse(..., max_workers=settings.video_max_workers)``)."""

    def check(cls: Any, value: int | None, info: ValidationInfo) -> int | None:
        most = (info.context or {}).get(name)
        if value is not None and most is not None and value > most:
            raise _refuse(f"must be between {lo} and {most} ({setting})")
        return value

    return field_validator(name)(classmethod(check))


class Workers(Fields):
    """``max_workers``: at most the service's ``UPSCALER_VIDEO_MAX_WORKERS`` (given as the validation context)."""

    max_workers: Whole(1, description="parallel model calls; at most UPSCALER_VIDEO_MAX_WORKERS") | None = None

    _at_most_configured = _at_most_setting("max_workers", 1, "UPSCALER_VIDEO_MAX_WORKERS")


_SIZE = Whole(1, 16384)


class StoreVideo(Encoding):
    """``POST /storeVideo``: downscale a video already in the bucket, sized as the original's getNewDim."""

    s3_key_name: Key
    s3_bucket: Bucket | None = None
    min_size: _SIZE | None = None
    max_size: _SIZE | None = None
    output_key: OutputKey | None = None


class RetrieveVideo(Encoding, Workers):
    """``GET /retrieveVideo``'s query: upscale a downscaled video back to its original size."""

    s3_key: Key
    s3_bucket: Bucket | None = None
    endpoint: Endpoint | None = None
    model: Model | None = None
    output_key: OutputKey | None = None


class VideoStatus(Fields):
    """``GET /getVideoStatus``'s query."""

    id: Text(128)


class JobSubmit(Encoding, Workers):
    """``POST /v1/jobs``: a video job."""

    method: Text(16, enum=["downscale", "upscale"])
    key: Key
    bucket: Bucket | None = None
    min_size: _SIZE | None = None
    max_size: _SIZE | None = None
    sizing: Text(16, enum=list(SIZINGS), description=_SIZING_TEXT) = "aspect"
    scale: Number(1, 8) | None = None
    model: Model | None = None
    endpoint: Endpoint | None = None
    output_key: OutputKey | None = None


# ---- migrations ---------------------------------------------------------------------------------------------------
class MigrationSubmit(Fields):
    """``POST /v1/migrations``: the dry run (the default) or, with ``apply``, the conversion of an archive.
    ``sample`` is at most ``UPSCALER_MIGRATE_PLAN_SAMPLE`` (given as the validation context)."""

    source: Text(2048, description="s3://bucket/prefix, or an s3:// S3 Inventory / CSV manifest (.csv)")
    dest: Text(
        2048, description="s3://bucket/prefix for the stored forms (not overlapping), or the source itself (in place)"
    )
    originals: (
        Text(2048, description="in place: s3://bucket/prefix where each original is kept (copied, checked) first")
        | None
    ) = None
    target: ImageTarget
    apply: StrictBool = Field(False, description="false: the dry run (nothing written); true: convert")
    on_verified: Literal[ON_VERIFIED] = Field(  # type: ignore[valid-type]
        "tag", description="what happens to a verified original: tagged (default), deleted, or kept as it is"
    )
    sample: Whole(0, description="dry run: objects decided by a real search (nothing stored)") | None = None

    _at_most_configured = _at_most_setting("sample", 0, "UPSCALER_MIGRATE_PLAN_SAMPLE")


class Published(GenerateJsonSchema):
    """JSON Schema as ``/openapi.json`` publishes it: an absent field is just absent (no ``null`` branch and no
    ``"default": null``), and no generated titles."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        out = super().default_schema(schema)
        if out.get("default", 0) is None:
            out.pop("default")
        return out

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


# ---- parsing -----------------------------------------------------------------------------------------------------
M = TypeVar("M", bound=Fields)


def parse(model: type[M], data: Any, **context: Any) -> M:
    """``data`` validated by ``model``; :class:`InvalidInput` naming the first field refused otherwise."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise InvalidInput(_message(model, exc.errors()[0])) from None


def _message(model: type[Fields], error: Any) -> str:
    """The words of the hand-written checks this replaced, which clients and tests read."""
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx") or {}
    if not loc:  # the model's own check (one source, ...)
        return str(error["msg"])
    name = str(loc[0])
    field = f"'{name}'"
    given = error.get("input")
    if kind == "missing":
        return f"{field} is required"
    if kind == "upscaler":
        return f"{field} {error['msg']}"
    if kind == "string_type":
        return f"{field} must be a string"
    if kind == "string_too_long":
        return f"{field} is longer than {ctx['max_length']} characters"
    if kind == "int_from_float":
        return f"{field} must be a whole number"
    number_kinds = ("greater_than_equal", "less_than_equal", "finite_number")
    if kind in number_kinds or (isinstance(given, int) and kind in ("float_type", "float_parsing")):
        lo, hi = _bounds(model, name)
        return f"{field} must be between {lo:g} and {hi:g}" if hi is not None else f"{field} must be at least {lo:g}"
    if kind.startswith(("int_", "float_")):
        return f"{field} must be a number"
    return f"{field} is not valid: {error['msg']}"


def _bounds(model: type[Fields], name: str) -> tuple[float, float | None]:
    """The field's range as published (so the message and the document agree)."""
    prop = model.model_json_schema(schema_generator=Published)["properties"][name]
    return prop.get("minimum", float("-inf")), prop.get("maximum")


# ---- answers: what the routes send back, as published (each built by the core; tests check real answers) ---------
class Answer(BaseModel):
    """An answer's documented fields; an answer may carry more (fields added later, extra detail)."""

    model_config = ConfigDict(extra="allow")


class OriginalImage(Answer):
    width: int
    height: int
    format: str
    mode: str
    bytes: int


class StoredForm(Answer):
    width: int
    height: int
    codec: str
    quality: int | None
    bytes: int
    scale: float


class StoreResult(Answer):
    s3_bucket: str
    s3_key: str
    original: OriginalImage
    stored: StoredForm
    saved_percent: float
    model: str | None = None
    decision: dict[str, Any] | None = Field(None, description="how a quality target was met (when one was given)")


class Upscaled(Answer):
    result: str = Field(description="the image file, base64")
    content_type: str
    width: int
    height: int


class Job(Answer):
    """A video job, as /v1 shows it."""

    id: str
    status: str = Field(description="Submitted, Processing, Completed, Failed or Cancelled")
    method: str = Field(description="downscale or upscale")
    video: str = Field(description="s3://bucket/key of the source")
    output: str | None = Field(description="s3://bucket/key once Completed")
    progress: float | None = Field(description="0..1")
    frames_done: int
    frames_total: int | None = None
    resumed_frames: int | None = Field(None, description="frames taken from checkpoints of a killed run")
    error: str | None
    attempts: int | None = None
    sizing: str | None = None
    size_requested: str | None = Field(None, description="WxH the sizing rule gave")
    size: str | None = Field(None, description="WxH written (even sides for 4:2:0)")
    encoding: dict[str, Any] | None = Field(None, description="codec, crf, qp, preset of the output")
    source_bytes: int | None = None
    output_bytes: int | None = None
    saved_percent: float | None = Field(None, description="downscale: 100 x (1 - output/source)")
    decision: dict[str, Any] | None = Field(None, description="a target's choice: scale, codec, crf, candidates")
    fidelity: dict[str, Any] | None = Field(None, description="a target's metric on the stored clip, restored")
    timings: dict[str, Any] | None = None


class VideoStored(Answer):
    """What an uploaded video holds."""

    bucket: str
    key: str


class MigrationState(Answer):
    """A migration: its progress and its report so far."""

    id: str
    status: Literal["running", "completed", "failed"]
    source: str
    dest: str
    target: str
    on_verified: str | None = None
    round: int = Field(description="runs of the migration so far (a re-run redoes only what is not verified)")
    objects: int
    objects_done: int
    progress: float | None = Field(description="0..1")
    chunks: dict[str, int] = Field(description="chunks on the job queue, by status")
    report: dict[str, Any] = Field(
        description="objects and bytes before/after, saved %, fidelity, forms chosen, failures by reason, time per "
        "megapixel, monthly cost by storage class"
    )


class MigrationPlan(Answer):
    """The dry run: what the migration would save, from a sample decided by the real search (nothing written)."""


class ApiError(Answer):
    """A /v1 refusal."""

    error: str
    code: str
    status: int


class LegacyData(BaseModel, Generic[T]):
    data: T


class LegacyError(BaseModel):
    error: str


def legacy(data: Any) -> Any:
    """The original service's body, ``[{"data": ...}, code]`` (the HTTP status matches code)."""
    return tuple[LegacyData[data], int]  # type: ignore[valid-type]


LEGACY_ERROR = tuple[LegacyError, int]
