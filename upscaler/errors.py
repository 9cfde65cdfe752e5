"""One exception family for the whole core.

Every error the core raises on purpose is an :class:`UpscalerError`. Each subclass carries the HTTP status a
service layer should answer with, so the API, the model server and the worker map errors the same way without
knowing where they came from.
"""

from __future__ import annotations


class UpscalerError(Exception):
    """Base class: catch this to handle every expected failure of the core."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


class InvalidInput(UpscalerError):
    """The request is malformed: wrong parameter, bad key, bad base64."""

    status = 400
    code = "invalid_input"


class UnknownModel(InvalidInput):
    code = "unknown_model"


class UnsupportedScale(InvalidInput):
    code = "unsupported_scale"


class Unauthorized(UpscalerError):
    status = 401
    code = "unauthorized"


class Forbidden(UpscalerError):
    status = 403
    code = "forbidden"


class NotFound(UpscalerError):
    status = 404
    code = "not_found"


class Conflict(UpscalerError):
    status = 409
    code = "conflict"


class TooLarge(UpscalerError):
    """Bytes, megapixels, frames or duration over a configured limit."""

    status = 413
    code = "too_large"


class UnsupportedMedia(UpscalerError):
    """A format or pixel mode we do not handle."""

    status = 415
    code = "unsupported_media"


class UndecodableImage(UpscalerError):
    """Bytes that claim to be an image but cannot be decoded (empty, truncated, corrupt)."""

    status = 422
    code = "undecodable"


class Cancelled(UpscalerError):
    """The work stopped because nobody wants its result any more: the client went away, the job was cancelled.
    Status 499 (nginx's "client closed request"): logged, never read by the one who left."""

    status = 499
    code = "cancelled"


class Busy(UpscalerError):
    status = 429
    code = "busy"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(UpscalerError):
    """A dependency (model, store, endpoint) cannot serve right now."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
