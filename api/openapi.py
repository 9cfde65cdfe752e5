"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from upscaler import __version__


def _pair(first: dict[str, Any]) -> dict[str, Any]:
    """The original's two-item body, ``[object, code]``."""
    return {
        "type": "array",
        "description": "The original service's body: [{data}, code] or [{error}, code]; the HTTP status matches code.",
        "items": {"anyOf": [first, {"type": "integer"}]},
        "minItems": 2,
        "maxItems": 2,
    }


def _legacy_ok(data_schema: dict[str, Any]) -> dict[str, Any]:
    return _pair({"type": "object", "properties": {"data": data_schema}, "required": ["data"]})


LEGACY_ERROR = _pair({"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]})
ERROR = {
    "type": "array",
    "prefixItems": [
        {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
        {"type": "integer"},
    ],
    "minItems": 2,
    "maxItems": 2,
}
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "code": {"type": "string"}, "status": {"type": "integer"}},
    "required": ["error", "code", "status"],
}
STORE_RESULT = {
    "type": "object",
    "properties": {
        "s3_bucket": {"type": "string"},
        "s3_key": {"type": "string"},
        "original": {"type": "object"},
        "stored": {"type": "object"},
        "saved_percent": {"type": "number"},
        "model": {"type": "string"},
        "decision": {"type": "object", "description": "how a quality target was met (when one was given)"},
    },
    "required": ["s3_bucket", "s3_key", "original", "stored", "saved_percent"],
}


def _errors(legacy: bool, *codes: int) -> dict[str, Any]:
    schema = LEGACY_ERROR if legacy else ERROR
    return {str(c): {"description": _REASONS[c], "content": {"application/json": {"schema": schema}}} for c in codes}


_REASONS = {
    400: "invalid input",
    401: "missing or invalid credentials",
    403: "not allowed (bucket, source host, key scope)",
    404: "no such object",
    405: "method not allowed",
    413: "over a configured limit (bytes, megapixels, seconds, frames)",
    415: "unsupported media type",
    409: "the job has already finished",
    422: "the image or video cannot be decoded",
    429: "too many requests in flight; retry after Retry-After",
    503: "a dependency (model, store, endpoint) is unavailable",
}

#: Object keys: this pattern is a safe subset (the service also takes spaces and other Unicode; it refuses empty,
#: "." and ".." segments, control characters, backslashes and the reserved ".upscaler-" marker).
KEY_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": 1024,
    "pattern": r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_]+)*(/[A-Za-z0-9_-]+(\.[A-Za-z0-9_]+)*)*$",
}
BUCKET_SCHEMA = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"}
_KEY = {"name": "key", "in": "path", "required": True, "schema": KEY_SCHEMA}
_BUCKET = {"name": "bucket", "in": "query", "schema": BUCKET_SCHEMA, "description": "default: configured"}
_STORE_QUERY = [
    {"name": "scale", "in": "query", "schema": {"type": "number", "minimum": 1, "maximum": 4}},
    {
        "name": "codec",
        "in": "query",
        "schema": {
            "type": "string",
            "enum": ["avif", "avif-420", "jxl", "jxl-lossless", "webp", "webp-lossless", "jpeg", "png"],
        },
    },
    {"name": "quality", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
    {"name": "model", "in": "query", "schema": {"type": "string"}},
    {
        "name": "target",
        "in": "query",
        "schema": {
            "type": "string",
            "pattern": r"^(exact|(bpp|bytes):[0-9]+(\.[0-9]+)?|((psnr|ssim):)?[0-9]+(\.[0-9]+)?(:(fast|exact))?)$",
        },
        "description": "quality target: the smallest stored form whose retrieval meets it (psnr:35, ssim:0.95); "
        "append :fast to search with bicubic and verify the choice with the model once (psnr:35:fast); "
        "'exact' for the smallest form that gives back the original file byte for byte (a JPEG recompressed "
        "into JPEG XL); a byte budget bpp:0.1 or bytes:50000 for the best PSNR-Y within it",
    },
]
_RETRIEVE_QUERY = [
    {
        "name": "format",
        "in": "query",
        "schema": {"type": "string", "enum": ["png", "jpeg", "webp", "avif", "jxl", "tiff", "gif", "bmp"]},
    },
    {"name": "quality", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
    {"name": "scale", "in": "query", "schema": {"type": "number", "minimum": 1, "maximum": 16}},
    {"name": "model", "in": "query", "schema": {"type": "string"}},
    {"name": "endpoint", "in": "query", "schema": {"type": "string"}},
]
_SOURCE_BODY = {
    "type": "object",
    "properties": {
        "img": {"type": "string", "description": "base64 image bytes"},
        "url": {"type": "string", "description": "http(s) URL on the source allow-list, or s3://bucket/key"},
        "scale": {"type": "number", "minimum": 1, "maximum": 4},
        "model": {"type": "string"},
        "format": {"type": "string"},
        "bucket": {"type": "string"},
        "codec": {"type": "string"},
        "quality": {"type": "integer", "minimum": 1, "maximum": 100},
        "target": {"type": ["string", "number"]},
    },
}


JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["Submitted", "Processing", "Completed", "Failed", "Cancelled"]},
        "method": {"type": "string", "enum": ["downscale", "upscale"]},
        "video": {"type": "string", "description": "s3://bucket/key of the source"},
        "output": {"type": ["string", "null"], "description": "s3://bucket/key once Completed"},
        "model": {"type": ["string", "null"]},
        "endpoint": {"type": ["string", "null"]},
        "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "frames_done": {"type": "integer"},
        "frames_total": {"type": ["integer", "null"]},
        "resumed_frames": {"type": "integer", "description": "frames taken from checkpoints of a killed run"},
        "error": {"type": ["string", "null"]},
        "attempts": {"type": "integer"},
        "sizing": {"type": "string", "enum": ["aspect", "original"]},
        "size_requested": {"type": ["string", "null"], "description": "WxH the sizing rule gave"},
        "size": {"type": ["string", "null"], "description": "WxH written (even sides for 4:2:0)"},
        "encoding": {"type": "object", "description": "codec, crf, qp, preset of the output"},
        "source_bytes": {"type": ["integer", "null"]},
        "output_bytes": {"type": ["integer", "null"]},
        "saved_percent": {"type": ["number", "null"], "description": "downscale: 100 x (1 - output/source)"},
        "target": {"type": ["string", "null"]},
        "decision": {"type": ["object", "null"], "description": "a target's choice: scale, codec, crf, candidates"},
        "fidelity": {"type": ["object", "null"], "description": "a target's metric on the stored clip, restored"},
        "timings": {"type": "object"},
    },
    "required": ["id", "status", "method", "video", "output", "progress", "frames_done", "error"],
}
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
_ENCODING = {
    "codec": {"type": "string", "enum": ["h264", "hevc", "av1"], "description": _CODEC_TEXT},
    "crf": {"type": "integer", "minimum": 0, "maximum": 63, "description": "constant quality (0 best)"},
    "qp": {"type": "integer", "minimum": 0, "maximum": 63, "description": "constant quantizer, instead of crf"},
    "preset": {"type": "string", "description": "x264/x265: ultrafast..veryslow; SVT-AV1: 0 (slowest)..13"},
    "target": {
        "type": "string",
        "pattern": r"^((psnr|ssim):)?[0-9]+(\.[0-9]+)?$",
        "description": "downscale: PSNR-Y (psnr:38) or SSIM-Y (ssim:0.97) of the restored video against the source; "
        "the worker measures sample segments at scales 1, 2, 4 in each codec and CRF and stores the fewest bytes "
        "that meet it (no min_size/max_size/scale/codec/crf/qp with it); the job reports decision and fidelity",
    },
}
_JOB_SUBMIT = {
    "type": "object",
    "required": ["method", "key"],
    "properties": {
        "method": {"type": "string", "enum": ["downscale", "upscale"]},
        "key": {"type": "string", "minLength": 1},
        "bucket": {"type": "string"},
        "min_size": {"type": "integer", "minimum": 1, "maximum": 16384},
        "max_size": {"type": "integer", "minimum": 1, "maximum": 16384},
        "sizing": {"type": "string", "enum": ["aspect", "original"], "default": "aspect", "description": _SIZING_TEXT},
        **_ENCODING,
        "scale": {"type": "number", "minimum": 1, "maximum": 8},
        "max_workers": {"type": "integer", "minimum": 1},
        "model": {"type": "string"},
        "endpoint": {"type": "string"},
        "output_key": {"type": "string", "description": "default: <key-without-ext>-downscaled.mp4 / -upscaled.mp4"},
    },
}
_JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 128}}


def _video_paths() -> dict[str, Any]:
    job_id_legacy = _legacy_ok({"type": "string", "description": "the job id"})
    video_binary = {"video/*": {"schema": {"type": "string", "format": "binary"}}}
    any_binary = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "/storeVideo": {
            "post": {
                "summary": "Downscale a video already in the bucket (legacy); data is the job id",
                "description": "Sized exactly as the original's getNewDim (see sizing on /v1/jobs), then rounded "
                "down to even sides.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["s3_key_name"],
                                "properties": {
                                    "s3_key_name": KEY_SCHEMA,
                                    "s3_bucket": BUCKET_SCHEMA,
                                    "min_size": {"type": ["integer", "string"]},
                                    "max_size": {"type": ["integer", "string"]},
                                    "output_key": {"type": "string"},
                                    **_ENCODING,
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "accepted", "content": {"application/json": {"schema": job_id_legacy}}},
                    **_errors(True, 400, 403, 404, 413, 415, 503),
                },
            }
        },
        "/retrieveVideo": {
            "get": {
                "summary": "Upscale a downscaled video back to its original size (legacy); data is the job id",
                "parameters": [
                    {"name": "s3_key", "in": "query", "required": True, "schema": KEY_SCHEMA},
                    {"name": "s3_bucket", "in": "query", "schema": BUCKET_SCHEMA},
                    {"name": "endpoint", "in": "query", "schema": {"type": "string"}},
                    {"name": "max_workers", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    {"name": "model", "in": "query", "schema": {"type": "string"}},
                    {"name": "output_key", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "accepted", "content": {"application/json": {"schema": job_id_legacy}}},
                    **_errors(True, 400, 403, 404, 413, 503),
                },
            }
        },
        "/getVideoStatus": {
            "get": {
                "summary": "A video job's status (legacy); data is a JSON string {output, status, error, progress}",
                "parameters": [{"name": "id", "in": "query", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {
                        "description": "status",
                        "content": {"application/json": {"schema": _legacy_ok({"type": "string"})}},
                    },
                    **_errors(True, 400, 404, 503),
                },
            }
        },
        "/v1/videos/{key}": {
            "parameters": [_KEY, _BUCKET],
            "put": {
                "summary": "Upload a video (the raw file as the body); it is probed and checked against the limits",
                "requestBody": {
                    "required": True,
                    "content": {
                        **video_binary,
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "responses": {
                    "201": {"description": "stored", "content": {"application/json": {"schema": {"type": "object"}}}},
                    **_errors(False, 400, 403, 413, 415, 422, 503),
                },
            },
            "get": {
                "summary": "Download a stored video (a job's output, for instance)",
                "responses": {
                    "200": {"description": "the file", "content": any_binary},
                    **_errors(False, 400, 403, 404, 503),
                },
            },
        },
        "/v1/jobs": {
            "post": {
                "summary": "Submit a video job (downscale, or upscale back to the original size)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _JOB_SUBMIT}}},
                "responses": {
                    "202": {"description": "accepted", "content": {"application/json": {"schema": JOB}}},
                    **_errors(False, 400, 403, 404, 413, 415, 503),
                },
            }
        },
        "/v1/jobs/{id}": {
            "parameters": [_JOB_ID],
            "get": {
                "summary": "A job: status, progress, frames, output, error, timings",
                "responses": {
                    "200": {"description": "the job", "content": {"application/json": {"schema": JOB}}},
                    **_errors(False, 400, 404, 503),
                },
            },
            "delete": {
                "summary": "Cancel a job that has not finished",
                "responses": {
                    "200": {"description": "cancelled", "content": {"application/json": {"schema": JOB}}},
                    **_errors(False, 400, 404, 409, 503),
                },
            },
        },
    }


LEGACY_PATHS = frozenset({"/store", "/retrieve", "/health", "/storeVideo", "/retrieveVideo", "/getVideoStatus"})
OPEN_PATHS = frozenset({"/health", "/ready"})
#: Every operation may answer these (input, auth, limits, overload, dependencies); listed once here.
COMMON_ERRORS = (400, 401, 403, 404, 413, 415, 422, 429, 503)


def spec() -> dict[str, Any]:
    """The document, with security and the common error answers filled in on every operation."""
    doc = _document()
    doc["security"] = [{"bearer": []}, {"apiKey": []}]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            if path in OPEN_PATHS:
                op["security"] = []
                continue
            for code, answer in _errors(path in LEGACY_PATHS, *COMMON_ERRORS).items():
                op["responses"].setdefault(code, answer)
            op["responses"].setdefault("414", {"description": "request line over 8190 bytes (refused by gunicorn)"})
    return doc


def _document() -> dict[str, Any]:
    image_binary = {"image/*": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "media-upscaler",
            "version": __version__,
            "description": "Store images downscaled; get them back at full size with super-resolution. "
            "Legacy routes keep the original service's [{data}, code] bodies.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
        "paths": {
            "/store": {
                "post": {
                    "summary": "Downscale and store a base64 image (legacy)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image", "s3_key_name"],
                                    "properties": {
                                        "image": {"type": "string", "description": "base64 file bytes"},
                                        "s3_key_name": KEY_SCHEMA,
                                        "s3_bucket": BUCKET_SCHEMA,
                                        "endpoint": {"type": "string"},
                                        "upscaleMethod": {"type": "string"},
                                        "scale": {"type": "number", "minimum": 1, "maximum": 4},
                                        "codec": {"type": "string"},
                                        "quality": {"type": "integer", "minimum": 1, "maximum": 100},
                                        "model": {"type": "string"},
                                        "target": {"type": ["string", "number"]},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "stored",
                            "content": {"application/json": {"schema": _legacy_ok(STORE_RESULT)}},
                        },
                        **_errors(True, 400, 403, 413, 415, 422, 503),
                    },
                }
            },
            "/retrieve": {
                "get": {
                    "summary": "Upscale a stored image back to its original size and format (legacy, base64)",
                    "parameters": [
                        {"name": "s3_key", "in": "query", "required": True, "schema": KEY_SCHEMA},
                        {"name": "s3_bucket", "in": "query", "schema": BUCKET_SCHEMA},
                        *_RETRIEVE_QUERY,
                    ],
                    "responses": {
                        "200": {
                            "description": "base64 image",
                            "content": {"application/json": {"schema": _legacy_ok({"type": "string"})}},
                        },
                        **_errors(True, 400, 403, 404, 413, 503),
                    },
                }
            },
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/ready": {
                "get": {
                    "summary": "Readiness: model loaded, store reachable",
                    "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition"}}}
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
            "/v1/images/{key}": {
                "parameters": [_KEY, _BUCKET],
                "put": {
                    "summary": "Store an image given as the raw request body",
                    "parameters": _STORE_QUERY,
                    "requestBody": {
                        "required": True,
                        "content": {
                            **image_binary,
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "responses": {
                        "201": {"description": "stored", "content": {"application/json": {"schema": STORE_RESULT}}},
                        **_errors(False, 400, 403, 413, 415, 422, 503),
                    },
                },
                "post": {
                    "summary": "Store an image from a URL, s3:// or base64 JSON body",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _SOURCE_BODY}}},
                    "responses": {
                        "201": {"description": "stored", "content": {"application/json": {"schema": STORE_RESULT}}},
                        **_errors(False, 400, 403, 404, 413, 415, 422, 503),
                    },
                },
                "get": {
                    "summary": "The image upscaled to its original size and format (raw bytes)",
                    "parameters": _RETRIEVE_QUERY,
                    "responses": {
                        "200": {"description": "image", "content": image_binary},
                        **_errors(False, 400, 403, 404, 413, 503),
                    },
                },
                "head": {
                    "summary": "Headers describing the stored image; runs no model",
                    "responses": {"200": {"description": "exists"}, "404": {"description": "missing"}},
                },
                "delete": {
                    "summary": "Delete the stored image",
                    "responses": {"204": {"description": "deleted"}, **_errors(False, 400, 403, 404)},
                },
            },
            "/v1/images/{key}/metadata": {
                "get": {
                    "summary": "The stored record (original size, format, mode, stored form)",
                    "parameters": [_KEY, _BUCKET],
                    "responses": {
                        "200": {
                            "description": "record",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(False, 400, 403, 404),
                    },
                },
            },
            "/v1/upscale": {
                "post": {
                    "summary": "Upscale an image without storing it (img or url in, base64 out)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _SOURCE_BODY}}},
                    "responses": {
                        "200": {
                            "description": "upscaled",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "result": {"type": "string"},
                                            "content_type": {"type": "string"},
                                            "width": {"type": "integer"},
                                            "height": {"type": "integer"},
                                        },
                                        "required": ["result"],
                                    }
                                }
                            },
                        },
                        **_errors(False, 400, 403, 404, 413, 415, 422, 503),
                    },
                }
            },
            "/v1/models": {
                "get": {"summary": "Models this service can run", "responses": {"200": {"description": "models"}}}
            },
            **_video_paths(),
            **_migration_paths(),
        },
    }


def _migration_paths() -> dict[str, Any]:
    from api.migrations import openapi_paths  # beside the routes it describes

    return openapi_paths(_errors(False, 400, 403, 404, 503))
