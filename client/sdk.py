"""``UpscalerClient``: the media-upscaler HTTP API from Python, over the legacy routes or ``/v1``.

    from client import UpscalerClient

    c = UpscalerClient("https://upscaler.example.com", token="...", ca_bundle="ca.pem")
    c.store(open("photo.jpg", "rb").read(), "photos/photo.jpg", bucket="media")   # -> what was stored
    full = c.retrieve("photos/photo.jpg", bucket="media")                          # -> original size and format
    job = c.store_video("clips/talk.mp4", bucket="media", max_size=540)           # -> job id
    c.wait(job, progress=lambda status: print(status["progress"]))

TLS certificates are verified by default (``ca_bundle`` adds a private CA, ``insecure=True`` turns verification off
and says so with a warning). 429 and 503 answers are retried up to ``retries`` times, after the server's
``Retry-After`` (or an exponential, jittered pause); connection failures are retried only for requests that are safe
to repeat. Every failure raises :class:`UpscalerError` with the HTTP status and the server's message.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

DEFAULT_URL = "https://127.0.0.1:8443"
FINAL_STATES = ("Completed", "Failed", "Cancelled")
#: Longest pause a Retry-After may impose on one retry, in seconds.
MAX_RETRY_AFTER = 60.0


class UpscalerError(Exception):
    """A request that failed: ``status`` is the HTTP status (0 when no answer came), ``message`` the server's."""

    def __init__(self, status: int, message: str, code: str = "", hint: str = "") -> None:
        text = f"{status}: {message}" if status else message
        super().__init__(f"{text} ({hint})" if hint else text)
        self.status, self.message, self.code, self.hint = status, message, code, hint


class JobFailed(UpscalerError):
    """A video job that ended Failed or Cancelled; ``job`` is its last status."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(0, f"job {job.get('id', '')} {job.get('status')}: {job.get('error') or 'no reason given'}")
        self.job = job


class UpscalerClient:
    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        verify: bool | str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        api: str = "v1",
        session: requests.Session | None = None,
    ) -> None:
        """``base_url`` defaults to ``$UPSCALER_URL`` or https://127.0.0.1:8443, ``token`` to ``$UPSCALER_TOKEN``
        and ``ca_bundle`` to ``$UPSCALER_CA_BUNDLE``. ``api`` picks the image routes: ``v1`` (raw bytes) or
        ``legacy`` (the original's base64 JSON). ``verify`` (requests' own argument) wins over both TLS options."""
        if api not in ("v1", "legacy"):
            raise ValueError("api must be 'v1' or 'legacy'")
        self.base_url = (base_url or os.environ.get("UPSCALER_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("UPSCALER_TOKEN") or None
        bundle = ca_bundle if ca_bundle is not None else os.environ.get("UPSCALER_CA_BUNDLE") or None
        if verify is not None:
            self.verify: bool | str = verify
        elif insecure:
            self.verify = False
        else:
            self.verify = str(bundle) if bundle else True
        if self.verify is False:
            warnings.warn(f"TLS certificate verification is off for {self.base_url}", stacklevel=2)
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.timeout, self.retries, self.api = timeout, retries, api
        self.session = session or requests.Session()

    # ---- transport ---------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> requests.Response:
        """Send one request (with retries) and return the response; raise :class:`UpscalerError` on failure."""
        safe = method in ("GET", "HEAD", "PUT", "DELETE") if idempotent is None else idempotent
        headers = dict(kwargs.pop("headers", None) or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = self.base_url + path
        for attempt in range(self.retries + 1):
            try:
                resp = self.session.request(
                    method, url, headers=headers, timeout=self.timeout, verify=self.verify, **kwargs
                )
            except requests.exceptions.SSLError as exc:
                raise UpscalerError(
                    0,
                    f"TLS failed for {url}: {exc}",
                    "tls",
                    "give ca_bundle=<the service's certificate> or insecure=True",
                ) from None
            except requests.RequestException as exc:
                if not safe or attempt == self.retries:
                    raise UpscalerError(0, f"{method} {url} failed: {type(exc).__name__}: {exc}") from None
                time.sleep(self._backoff(attempt, None))
                continue
            if resp.status_code in (429, 503) and attempt < self.retries:
                time.sleep(self._backoff(attempt, resp.headers.get("Retry-After")))
                continue
            if resp.status_code >= 400:
                raise _error(resp)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _backoff(attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(MAX_RETRY_AFTER, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return min(MAX_RETRY_AFTER, 0.5 * 2**attempt) * (0.5 + random.random() / 2)

    def _legacy_data(self, resp: requests.Response) -> Any:
        body = resp.json()
        return body[0]["data"]

    # ---- images --------------------------------------------------------------------------------------------------
    def store(
        self,
        data: bytes,
        key: str,
        bucket: str | None = None,
        *,
        scale: float | None = None,
        codec: str | None = None,
        quality: int | None = None,
        model: str | None = None,
        target: str | None = None,
    ) -> dict[str, Any]:
        """Downscale and store an image file's bytes; returns what was stored (sizes, codec, bytes, savings).
        ``target`` (``"psnr:35"``, ``"ssim:0.95"``) lets the service choose the smallest form meeting it."""
        options = _clean({"scale": scale, "codec": codec, "quality": quality, "model": model, "target": target})
        if self.api == "legacy":
            body = {"image": base64.b64encode(data).decode("ascii"), "s3_key_name": key, **options}
            if bucket:
                body["s3_bucket"] = bucket
            return self._legacy_data(self.request("POST", "/store", json=body, idempotent=True))
        resp = self.request(
            "PUT",
            f"/v1/images/{_path(key)}",
            params=_clean({"bucket": bucket, **options}),
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return resp.json()

    def retrieve(
        self,
        key: str,
        bucket: str | None = None,
        *,
        endpoint: str | None = None,
        model: str | None = None,
        format: str | None = None,
        quality: int | None = None,
    ) -> bytes:
        """The stored image upscaled back to its original size (and format, unless ``format`` names another).
        ``model="bicubic"`` gives the plain-interpolation baseline of the same stored bytes."""
        options = _clean({"endpoint": endpoint, "model": model, "format": format, "quality": quality})
        if self.api == "legacy":
            params = {"s3_key": key, **_clean({"s3_bucket": bucket}), **options}
            return base64.b64decode(self._legacy_data(self.request("GET", "/retrieve", params=params)))
        return self.request("GET", f"/v1/images/{_path(key)}", params=_clean({"bucket": bucket, **options})).content

    def metadata(self, key: str, bucket: str | None = None) -> dict[str, Any]:
        """The stored record: original size, format, mode, and the stored form."""
        return self.request("GET", f"/v1/images/{_path(key)}/metadata", params=_clean({"bucket": bucket})).json()

    def delete(self, key: str, bucket: str | None = None) -> None:
        self.request("DELETE", f"/v1/images/{_path(key)}", params=_clean({"bucket": bucket}))

    # ---- videos --------------------------------------------------------------------------------------------------
    def upload_video(self, path: str | os.PathLike[str], key: str, bucket: str | None = None) -> dict[str, Any]:
        """Put a video file into the store (probed and checked against the limits by the server)."""
        with open(path, "rb") as fh:
            return self.request(
                "PUT",
                f"/v1/videos/{_path(key)}",
                params=_clean({"bucket": bucket}),
                data=fh,
                headers={"Content-Type": "video/mp4"},
                idempotent=False,  # a streamed body cannot be sent twice
            ).json()

    def download_video(self, key: str, dest: str | os.PathLike[str], bucket: str | None = None) -> Path:
        resp = self.request("GET", f"/v1/videos/{_path(key)}", params=_clean({"bucket": bucket}), stream=True)
        out = Path(dest)
        with out.open("wb") as fh:
            for chunk in resp.iter_content(1 << 20):
                fh.write(chunk)
        return out

    def store_video(
        self,
        key: str,
        bucket: str | None = None,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        **encoding: Any,
    ) -> str:
        """Start downscaling a video already in the bucket (to ``<key-without-ext>-downscaled.mp4``); the job id.
        ``min_size``/``max_size`` mean what the original's did (its getNewDim: width/4, then the first matching
        clamp), on both APIs; ``encoding``: ``codec`` (h264, hevc, av1), ``crf`` or ``qp``, ``preset``."""
        bounds = _clean({"min_size": min_size, "max_size": max_size, **encoding})
        if self.api == "legacy":
            body = {"s3_key_name": key, **_clean({"s3_bucket": bucket}), **bounds}
            return self._legacy_data(self.request("POST", "/storeVideo", json=body))
        return self.submit_job("downscale", key, bucket, sizing="original", **bounds)["id"]

    def retrieve_video(
        self,
        key: str,
        bucket: str | None = None,
        *,
        endpoint: str | None = None,
        max_workers: int | None = None,
        model: str | None = None,
    ) -> str:
        """Start upscaling a downscaled video back to its original size (to ``<stem>-upscaled.mp4``); the job id."""
        if self.api == "legacy":
            params = {"s3_key": key, **_clean({"s3_bucket": bucket, "endpoint": endpoint, "max_workers": max_workers})}
            params.update(_clean({"model": model}))
            return self._legacy_data(self.request("GET", "/retrieveVideo", params=params, idempotent=False))
        return self.submit_job("upscale", key, bucket, endpoint=endpoint, max_workers=max_workers, model=model)["id"]

    def submit_job(self, method: str, key: str, bucket: str | None = None, **options: Any) -> dict[str, Any]:
        """``POST /v1/jobs``: any job option (``scale``, ``output_key``, ...); the job's status object."""
        body = {"method": method, "key": key, **_clean({"bucket": bucket, **options})}
        return self.request("POST", "/v1/jobs", json=body).json()

    def video_status(self, job_id: str) -> dict[str, Any]:
        """The job's status: ``status``, ``output``, ``progress``, ``frames_done``/``frames_total``, ``error``."""
        if self.api == "legacy":
            data = self._legacy_data(self.request("GET", "/getVideoStatus", params={"id": job_id}))
            return {"id": job_id, **json.loads(data)}
        return self.request("GET", f"/v1/jobs/{quote(job_id, safe='')}").json()

    def cancel_video(self, job_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/jobs/{quote(job_id, safe='')}").json()

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 1.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
        raise_on_failure: bool = True,
    ) -> dict[str, Any]:
        """Poll a job until it ends; ``progress`` sees every status. A Failed or Cancelled job raises
        :class:`JobFailed` (unless ``raise_on_failure`` is false); a timeout raises :class:`TimeoutError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.video_status(job_id)
            if progress:
                progress(status)
            if status.get("status") in FINAL_STATES:
                if raise_on_failure and status["status"] != "Completed":
                    raise JobFailed(status)
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {status.get('status')} after {timeout} s")
            time.sleep(poll)

    def health(self) -> bool:
        try:
            self.request("GET", "/health")
            return True
        except UpscalerError:
            return False


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _path(key: str) -> str:
    return quote(key, safe="/")


def _error(resp: requests.Response) -> UpscalerError:
    message, code = resp.reason or "error", ""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, list) and body and isinstance(body[0], dict):  # legacy [{"error": ...}, code]
        message = str(body[0].get("error", message))
    elif isinstance(body, dict):
        message, code = str(body.get("error", message)), str(body.get("code", ""))
    elif resp.text:
        message = resp.text[:300]
    return UpscalerError(resp.status_code, message, code)
