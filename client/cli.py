"""upscaler-client: store and retrieve images and videos on a media-upscaler service.

examples:
  upscaler-client store photo.jpg --key photos/photo.jpg --bucket media
  upscaler-client retrieve photos/photo.jpg --bucket media -o photo-back.jpg
  upscaler-client metadata photos/photo.jpg --bucket media
  upscaler-client video upload talk.mp4 --key clips/talk.mp4 --bucket media
  upscaler-client video submit downscale clips/talk.mp4 --bucket media --max-size 540 --wait
  upscaler-client video submit upscale clips/talk-downscaled.mp4 --bucket media --max-workers 8 --wait
  upscaler-client video status <job-id>
  upscaler-client video download clips/talk-upscaled.mp4 --bucket media -o talk-back.mp4

The service address, token and CA bundle come from --url/--token/--ca-bundle or UPSCALER_URL, UPSCALER_TOKEN,
UPSCALER_CA_BUNDLE. The local service's self-signed certificate is data/tls/cert.pem in its folder: run from
that folder against a loopback address, the client trusts it by itself; from elsewhere, pass it with --ca-bundle
rather than turning verification off with --insecure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from client.sdk import DEFAULT_URL, JobFailed, UpscalerClient, UpscalerError
from upscaler.console import run_quietly_piped

#: The certificate `upscaler serve` makes on its first start, in the folder it runs in.
LOCAL_CERT = Path("data/tls/cert.pem")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TLS_HINT = (
    "pass --ca-bundle with the service's certificate (data/tls/cert.pem in the folder where `upscaler serve` runs), "
    "or --insecure to skip verification"
)


def local_ca_bundle(url: str | None) -> str | None:
    """The local service's own certificate, when ``url`` is on loopback and no CA bundle is given: a CLI run in the
    folder of `upscaler serve` trusts it without --ca-bundle."""
    if os.environ.get("UPSCALER_CA_BUNDLE"):
        return None
    host = urlsplit(url or os.environ.get("UPSCALER_URL") or DEFAULT_URL).hostname
    return str(LOCAL_CERT) if host in LOOPBACK_HOSTS and LOCAL_CERT.is_file() else None


def client_from_args(args: argparse.Namespace) -> UpscalerClient:
    return UpscalerClient(
        args.url,
        token=args.token,
        ca_bundle=args.ca_bundle or (None if args.insecure else local_ca_bundle(args.url)),
        insecure=args.insecure,
        timeout=args.timeout,
        retries=args.retries,
        api=args.api,
    )


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _store(args: argparse.Namespace) -> int:
    path = Path(args.file)
    result = client_from_args(args).store(
        path.read_bytes(),
        args.key or path.name,
        args.bucket,
        scale=args.scale,
        codec=args.codec,
        quality=args.quality,
        model=args.model,
    )
    _print(result)
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    data = client_from_args(args).retrieve(
        args.key, args.bucket, endpoint=args.endpoint, model=args.model, format=args.format, quality=args.quality
    )
    out = Path(args.output or Path(args.key).name)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes)", file=sys.stderr)
    return 0


def _metadata(args: argparse.Namespace) -> int:
    _print(client_from_args(args).metadata(args.key, args.bucket))
    return 0


def _delete(args: argparse.Namespace) -> int:
    client_from_args(args).delete(args.key, args.bucket)
    print(f"deleted {args.key}", file=sys.stderr)
    return 0


def _wait(client: UpscalerClient, job_id: str, timeout: float | None) -> int:
    from tqdm import tqdm

    bar = tqdm(total=None, unit="frame", desc=f"job {job_id[:8]}", dynamic_ncols=True, file=sys.stderr)

    def show(status: dict[str, Any]) -> None:
        total = status.get("frames_total")
        if total and bar.total != total:
            bar.total = total
        bar.n = int(status.get("frames_done") or 0)
        bar.set_postfix_str(str(status.get("status")))
        bar.refresh()

    try:
        final = client.wait(job_id, timeout=timeout, progress=show)
    except JobFailed as exc:
        bar.close()
        _print(exc.job)
        return 1
    bar.close()
    _print(final)
    return 0


def _video_upload(args: argparse.Namespace) -> int:
    _print(client_from_args(args).upload_video(args.file, args.key or Path(args.file).name, args.bucket))
    return 0


def _video_submit(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    if args.method == "downscale":
        encoding = {"codec": args.codec, "crf": args.crf, "qp": args.qp, "preset": args.preset, "target": args.target}
        job_id = client.store_video(args.key, args.bucket, min_size=args.min_size, max_size=args.max_size, **encoding)
    else:
        job_id = client.retrieve_video(
            args.key, args.bucket, endpoint=args.endpoint, max_workers=args.max_workers, model=args.model
        )
    print(job_id)
    return _wait(client, job_id, args.timeout_job) if args.wait else 0


def _video_status(args: argparse.Namespace) -> int:
    _print(client_from_args(args).video_status(args.job_id))
    return 0


def _video_wait(args: argparse.Namespace) -> int:
    return _wait(client_from_args(args), args.job_id, args.timeout_job)


def _video_cancel(args: argparse.Namespace) -> int:
    _print(client_from_args(args).cancel_video(args.job_id))
    return 0


def _video_download(args: argparse.Namespace) -> int:
    out = client_from_args(args).download_video(args.key, args.output or Path(args.key).name, args.bucket)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upscaler-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=None, help=f"service address (default $UPSCALER_URL or {DEFAULT_URL})")
    parser.add_argument("--token", default=None, help="API token, sent as a bearer token (default $UPSCALER_TOKEN)")
    parser.add_argument(
        "--ca-bundle",
        default=None,
        help="CA certificate(s) to trust (default $UPSCALER_CA_BUNDLE; for a loopback URL, data/tls/cert.pem "
        "when it exists here)",
    )
    parser.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate (not advised)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    parser.add_argument("--retries", type=int, default=3, help="retries on 429/503, after Retry-After (default 3)")
    parser.add_argument(
        "--api", choices=("v1", "legacy"), default="v1", help="routes to use: v1 (default) or the original's"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def add(name: str, func: Any, help: str, parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("store", _store, "downscale and store an image file")
    p.add_argument("file", help="the image file")
    p.add_argument("--key", help="object key (default: the file name)")
    p.add_argument("--bucket", help="bucket (default: the service's)")
    p.add_argument("--scale", type=float, help="downscale factor 1-4 (default: the service's, 4)")
    p.add_argument("--codec", help="stored codec: avif, webp, webp-lossless, jpeg, png")
    p.add_argument("--quality", type=int, help="stored quality 1-100")
    p.add_argument("--model", help="model to restore with later (default: the service's)")

    p = add("retrieve", _retrieve, "get an image back at its original size")
    p.add_argument("key")
    p.add_argument("--bucket")
    p.add_argument("-o", "--output", help="file to write (default: the key's file name)")
    p.add_argument("--endpoint", help="SageMaker endpoint to upscale with")
    p.add_argument("--model", help="model (bicubic gives the interpolation baseline)")
    p.add_argument("--format", help="output format instead of the original's: png, jpeg, webp, avif, tiff")
    p.add_argument("--quality", type=int, help="output quality for lossy formats")

    for name, func, text in (("metadata", _metadata, "show what is stored"), ("delete", _delete, "delete an image")):
        p = add(name, func, text)
        p.add_argument("key")
        p.add_argument("--bucket")

    video = sub.add_parser("video", help="video jobs", description="Upload videos, run jobs, follow them.")
    vsub = video.add_subparsers(dest="video_command", required=True, metavar="command")
    p = add("upload", _video_upload, "put a video file into the store", vsub)
    p.add_argument("file")
    p.add_argument("--key", help="object key (default: the file name)")
    p.add_argument("--bucket")
    p = add("submit", _video_submit, "start a downscale or upscale job", vsub)
    p.add_argument("method", choices=("downscale", "upscale"))
    p.add_argument("key", help="the video's key (for upscale: the downscaled video)")
    p.add_argument("--bucket")
    p.add_argument(
        "--min-size",
        type=int,
        help="downscale: the original's min_size (width/4 and height from the aspect, then the first matching "
        "clamp: width > max, height > max, width < min, height < min); e.g. 1920x1080 with --max-size 540 -> 480x270",
    )
    p.add_argument("--max-size", type=int, help="downscale: the original's max_size (see --min-size)")
    p.add_argument("--codec", choices=("h264", "hevc", "av1"), help="downscale: stored codec (default: the service's)")
    p.add_argument(
        "--crf", type=int, help="downscale: constant quality (x264/x265 0-51, SVT-AV1 0-63; lower is better)"
    )
    p.add_argument("--qp", type=int, help="downscale: constant quantizer instead of --crf")
    p.add_argument("--preset", help="downscale: encoder preset (x264/x265: ultrafast..veryslow, SVT-AV1: 0..13)")
    p.add_argument(
        "--target",
        help="downscale: PSNR-Y (psnr:38) or SSIM-Y (ssim:0.97) the restored video must reach; the service picks "
        "scale, codec and CRF for the fewest bytes (not with --min-size/--max-size/--codec/--crf/--qp)",
    )
    p.add_argument("--endpoint", help="upscale: SageMaker endpoint")
    p.add_argument("--max-workers", type=int, help="upscale: frames in flight to the model")
    p.add_argument("--model", help="upscale: model (default: the service's video model)")
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    p.add_argument("--timeout-job", type=float, default=None, help="give up waiting after this many seconds")
    for name, func, text in (
        ("status", _video_status, "show a job's status"),
        ("wait", _video_wait, "follow a job with a progress bar until it ends (exit 1 if it fails)"),
        ("cancel", _video_cancel, "cancel a job that has not finished"),
    ):
        p = add(name, func, text, vsub)
        p.add_argument("job_id")
        if name == "wait":
            p.add_argument("--timeout-job", type=float, default=None, help="give up after this many seconds")
    p = add("download", _video_download, "download a stored video (a job's output)", vsub)
    p.add_argument("key")
    p.add_argument("--bucket")
    p.add_argument("-o", "--output", help="file to write (default: the key's file name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_quietly_piped(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UpscalerError as exc:
        print(f"error: {exc.message} ({TLS_HINT})" if exc.code == "tls" else f"error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
