"""Quality test bench: store every image of a CSV on the service, get it back, and score what came back.

    python testing/testHelp.py ~/photos                               # -> testFile.csv (header image_path)
    python testing/testBenchClient.py testFile.csv --ca-bundle data/tls/cert.pem
    python -m testing.testBenchClient testFile.csv --url https://upscaler.example.com --workers 4

For each image, like the original bench: POST /store, GET /retrieve, the restored image saved under
TestResults/<timestamp>/ (with the extension of its real format), and TestResults/<timestamp>/testResults.csv
whose first columns are the original's: path, destPath, testResults (orb_sim as "NN%"). Then, per image:

  * PSNR-Y and SSIM-Y (BasicSR conventions: BT.601 luma, border crop = scale) and orb_sim, of the restored image;
  * the same scores for bicubic: the same stored bytes restored with model=bicubic through the same service path;
  * the same scores for the full-size AVIF baseline: the original encoded at full size with AVIF, its quality
    bisected to weigh what we stored (above about 0.1 bits per pixel it restores better than downscale + SR;
    the report says so when it does);
  * stored vs. original bytes (savings %), bits per pixel (stored bytes * 8 / original pixels), store and
    retrieve times, and the model and stored form used.

A video in the CSV (by its extension: .mp4 .mov .m4v .mkv .webm .avi) is uploaded (PUT /v1/videos), stored by a
downscale job (/storeVideo, or /v1/jobs with --api v1; --target, --video-codec, --video-crf), waited for, then given
back by an upscale job and downloaded (as .mp4) beside the images. Its row has kind=video: source and stored bytes,
saved %, bits per pixel per frame, the stored size, codec and CRF, the target and the fidelity the job measured for
it (met or not), the bench's own PSNR-Y/SSIM-Y/orb_sim of the download on --video-samples frames spread over the
clip, and the time of each job. The report lists the videos in a table of their own (no bicubic or full-size
baseline for videos: benchmarks/bench_video.py --storage measures those).

A failing image or video (unreadable, refused by the service, a failed job, ...) is recorded in the CSV with its
error; the run goes on.
At the end: report.html (self-contained: summary table, plots, side-by-side crops of the worst and best images)
in the same folder, and a summary on the terminal. Exit status: 0 when every image was measured, 1 when some
failed, 2 when nothing could run (no images, service unreachable).

The service, its token and CA come from --url/--token/--ca-bundle or UPSCALER_URL, UPSCALER_TOKEN,
UPSCALER_CA_BUNDLE; the bucket from --bucket or UPSCALER_BUCKET. TLS is verified (the original used
verify=False): give the local service's data/tls/cert.pem with --ca-bundle, or --insecure to turn it off.
Keys are <prefix><path relative to the images' common folder>, so files with the same name in different folders
never collide.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runs as `python testing/testBenchClient.py`

import argparse
import contextlib
import csv
import datetime
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from client.cli import client_from_args  # the SDK client from the same flags as upscaler-client
from client.sdk import DEFAULT_URL, UpscalerClient
from client.sdk import UpscalerError as ClientError
from testing import fidelity, report
from testing.report import ImageResult
from testing.testHelp import is_video, read_csv
from upscaler import media
from upscaler.quality import Target
from upscaler.store.keys import RESERVED

#: Decoding limits of the bench itself (the service applies its own).
LIMITS = media.DecodeLimits(max_bytes=1 << 34, max_megapixels=1000.0)
#: Spellings of each format's extension that are already right (compared in lower case).
SAME_EXTENSIONS = {"JPEG": (".jpg", ".jpeg", ".jpe"), "TIFF": (".tif", ".tiff")}


@dataclass(frozen=True)
class Item:
    path: str  # as written in the CSV
    key: str
    dest: Path
    label: str  # the path relative to the images' common folder


def _clean_key(text: str) -> str:
    text = "".join("_" if ord(c) < 0x20 or c in "\\\x7f" else c for c in text)
    return text.replace(RESERVED, "_upscaler-")


def _unique(candidate: str, used: set[str], fold: bool = False) -> str:
    """``candidate``, or ``stem~N.ext`` for the first N that is not in ``used`` (compared lower-cased with
    ``fold``); the result is added to ``used``."""
    stem, dot, ext = candidate.rpartition(".")
    if not dot or "/" in ext:
        stem, dot, ext = candidate, "", ""
    name, n = candidate, 1
    while (name.lower() if fold else name) in used:
        n += 1
        name = f"{stem}~{n}{dot}{ext}"
    used.add(name.lower() if fold else name)
    return name


def _right_suffix(path: Path) -> str:
    """The extension of ``path``'s real format (sniffed), keeping the file's own when it is already right."""
    try:
        with open(path, "rb") as fh:
            fmt = media.sniff(fh.read(256))
    except OSError:
        fmt = None
    if fmt is None:
        return path.suffix
    if path.suffix.lower() in SAME_EXTENSIONS.get(fmt, ()) or path.suffix.lower() == media.extension_for(fmt):
        return path.suffix
    return media.extension_for(fmt)


def plan_items(paths: list[str], prefix: str, out_dir: Path) -> list[Item]:
    """A unique key and result path for each image: the path relative to the images' common folder."""
    resolved = [Path(p).expanduser().resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved])) if resolved else Path()
    keys: set[str] = set()
    dests: set[str] = set()
    items = []
    for given, path in zip(paths, resolved, strict=True):
        rel = path.relative_to(root).as_posix()
        key = _unique(prefix + _clean_key(rel), keys)
        if is_video(path):  # given back by an upscale job: always MP4
            dest_rel = Path(rel).with_suffix(".mp4").as_posix()
        else:
            dest_rel = Path(rel).with_suffix(_right_suffix(path)).as_posix() if Path(rel).suffix else rel
        dest = out_dir / _unique(dest_rel, dests, fold=True)
        items.append(Item(given, key, dest, rel))
    return items


class Bench:
    """One run: the service, the store options, the results folder."""

    def __init__(self, args: argparse.Namespace, out_dir: Path) -> None:
        self.args, self.out_dir = args, out_dir
        self._local = threading.local()
        self.store_options = {
            k: v
            for k, v in {
                "scale": args.scale,
                "codec": args.codec,
                "quality": args.quality,
                "model": args.model,
                "target": args.target,
            }.items()
            if v is not None
        }
        video = {"target": args.target, "codec": args.video_codec, "crf": args.video_crf}
        self.video_options = {k: v for k, v in video.items() if v is not None}

    def client(self) -> UpscalerClient:
        """One client (and HTTP session) per worker thread."""
        if not hasattr(self._local, "client"):
            self._local.client = client_from_args(self.args)
        return self._local.client

    def measure(self, item: Item) -> ImageResult:
        """Store, retrieve, save and score one image (or video); a failure at any stage is recorded, never raised."""
        if is_video(item.path):
            return self.measure_video(item)
        result = ImageResult(path=item.path, key=item.key, label=item.label)
        stage = "read"
        try:
            data = Path(item.path).expanduser().read_bytes()
            result.original_bytes = len(data)
            stage = "store"
            client, bucket = self.client(), self.args.bucket
            t0 = time.perf_counter()
            stored = client.store(data, item.key, bucket, **self.store_options)
            result.store_s = time.perf_counter() - t0
            self._record_stored(result, stored)
            stage = "retrieve"
            t0 = time.perf_counter()
            restored = client.retrieve(item.key, bucket, endpoint=self.args.endpoint)
            result.retrieve_s = time.perf_counter() - t0
            stage = "save"
            item.dest.parent.mkdir(parents=True, exist_ok=True)
            item.dest.write_bytes(restored)
            result.destPath = str(item.dest)
            stage = "retrieve bicubic"
            t0 = time.perf_counter()
            bicubic = client.retrieve(item.key, bucket, model="bicubic")
            result.bicubic_s = time.perf_counter() - t0
            stage = "score"
            self._score(result, data, restored, bicubic)
        except ClientError as exc:
            result.status, result.error = "failed", f"{stage}: {exc}"
        except Exception as exc:  # a per-image failure must never end the run
            result.status, result.error = "failed", f"{stage}: {type(exc).__name__}: {exc}"
        return result

    def measure_video(self, item: Item) -> ImageResult:
        """Upload one video, store it with a downscale job, get it back with an upscale job, save and score it."""
        result = ImageResult(path=item.path, key=item.key, label=item.label, kind="video")
        stage = "read"
        try:
            path = Path(item.path).expanduser()
            result.original_bytes = path.stat().st_size
            client, bucket, timeout = self.client(), self.args.bucket, self.args.job_timeout
            stage = "upload"
            t0 = time.perf_counter()
            uploaded = client.upload_video(path, item.key, bucket)
            result.width, result.height, result.frames = uploaded["width"], uploaded["height"], uploaded["frames"]
            result.format = str(uploaded.get("codec") or "")
            stage = "store"
            stored = client.wait(client.store_video(item.key, bucket, **self.video_options), timeout=timeout)
            result.store_s = time.perf_counter() - t0
            self._record_video_job(result, stored)
            stage = "retrieve"
            t0 = time.perf_counter()
            stored_bucket, stored_key = _split_url(stored["output"])
            job = client.retrieve_video(stored_key, stored_bucket, endpoint=self.args.endpoint, model=self.args.model)
            back = client.wait(job, timeout=timeout)
            item.dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_video(_split_url(back["output"])[1], item.dest, stored_bucket)
            result.retrieve_s = time.perf_counter() - t0
            result.destPath = str(item.dest)
            result.model = str(back.get("model") or self.args.model or "(service default)")
            stage = "score"
            crop = fidelity.crop_for(result.scale or 1.0)
            scores, frames = fidelity.score_video(path, item.dest, self.args.video_samples, crop)
            result.psnr_y, result.ssim_y, result.orb_sim = scores.psnr_y, scores.ssim_y, scores.orb
            result.testResults = f"{round(100 * scores.orb)}%"
            result.frames = frames
            if result.stored_bytes is not None and result.width and result.height and frames:
                result.bpp = 8.0 * result.stored_bytes / (result.width * result.height * frames)
        except ClientError as exc:
            result.status, result.error = "failed", f"{stage}: {exc}"
        except Exception as exc:  # a per-video failure must never end the run
            result.status, result.error = "failed", f"{stage}: {type(exc).__name__}: {exc}"
        return result

    @staticmethod
    def _record_video_job(result: ImageResult, job: dict[str, Any]) -> None:
        """Bytes, saved %, the stored size and encoding, and a target's decision and fidelity, from the job."""
        result.original_bytes = job.get("source_bytes") or result.original_bytes
        result.stored_bytes = job.get("output_bytes")
        result.saved_percent = job.get("saved_percent")
        encoding, decision = job.get("encoding") or {}, job.get("decision") or {}
        result.stored_codec = str(encoding.get("codec") or "")
        result.rate_control = "crf" if encoding.get("crf") is not None else "qp" if encoding.get("qp") else ""
        result.stored_quality = encoding.get("crf") if encoding.get("crf") is not None else encoding.get("qp")
        result.stored_size = str(job.get("size") or "")
        if decision.get("scale"):
            result.scale = float(decision["scale"])
        elif result.stored_size and result.width:
            result.scale = round(result.width / int(result.stored_size.split("x")[0]), 2)
        result.target = str(job.get("target") or "")
        checked = job.get("fidelity") or {}
        values = [v for k, v in checked.items() if k not in ("frames", "met") and isinstance(v, int | float)]
        result.target_fidelity = float(values[0]) if values else None
        result.target_met = checked.get("met")

    def _record_stored(self, result: ImageResult, stored: dict[str, Any]) -> None:
        original, form = stored.get("original", {}), stored.get("stored", {})
        result.width, result.height = original.get("width"), original.get("height")
        result.format = str(original.get("format", ""))
        result.original_bytes = original.get("bytes", result.original_bytes)
        result.stored_bytes = form.get("bytes")
        result.scale = float(form.get("scale", 1.0))
        result.stored_codec, result.stored_quality = str(form.get("codec", "")), form.get("quality")
        result.model = str(stored.get("model") or self.args.default_model)
        if result.stored_bytes is not None and result.original_bytes:
            result.saved_percent = 100.0 * (1 - result.stored_bytes / result.original_bytes)
        if result.stored_bytes is not None and result.width and result.height:
            result.bpp = 8.0 * result.stored_bytes / (result.width * result.height)
        decision = stored.get("decision") or {}
        if decision and self.args.target:  # the fidelity the service measured for the target (None: identical)
            result.target = self.args.target
            value = decision.get("fidelity")
            result.target_fidelity = math.inf if value is None else float(value)
            result.target_met = Target.parse(self.args.target).met(result.target_fidelity)

    def _score(self, result: ImageResult, data: bytes, restored: bytes, bicubic: bytes) -> None:
        decoded = media.decode(data, LIMITS)
        original = decoded.pixels
        crop = fidelity.crop_for(result.scale or 1.0)
        back = media.decode(restored, LIMITS).pixels
        model = fidelity.score(original, back, crop)
        result.psnr_y, result.ssim_y, result.orb_sim = model.psnr_y, model.ssim_y, model.orb
        result.testResults = f"{round(100 * model.orb)}%"
        bic = media.decode(bicubic, LIMITS).pixels
        scores = fidelity.score(original, bic, crop)
        result.bicubic_psnr_y, result.bicubic_ssim_y, result.bicubic_orb_sim = scores.psnr_y, scores.ssim_y, scores.orb
        variants: dict[str, object] = {"bicubic": bic, "model": back}
        if self.args.full_size != "none" and result.stored_bytes:
            full = fidelity.encode_at_bytes(original, result.stored_bytes, self.args.full_size)
            if full is not None:
                full_back = fidelity.restore_full_size(full, decoded.record)
                scores = fidelity.score(original, full_back, crop)
                result.fullsize_codec, result.fullsize_quality = full.codec, full.quality
                result.fullsize_bytes = full.bytes
                result.fullsize_psnr_y, result.fullsize_ssim_y = scores.psnr_y, scores.ssim_y
                result.fullsize_orb_sim = scores.orb
                result.fullsize_saved_percent = 100.0 * (1 - full.bytes / max(result.original_bytes or 1, 1))
                if result.width and result.height:
                    result.fullsize_bpp = 8.0 * full.bytes / (result.width * result.height)
                variants["full"] = full_back
        result.crops = report.crops(original, variants)


def _split_url(url: str) -> tuple[str, str]:
    """(bucket, key) of a job's ``s3://bucket/key``."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def results_folder(base: Path) -> Path:
    """``base/<timestamp>/``, new (a suffix is added when two runs start in the same second)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out, n = base / stamp, 1
    while out.exists():
        n += 1
        out = base / f"{stamp}-{n}"
    out.mkdir(parents=True)
    return out


def write_csv(path: Path, results: list[ImageResult]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(report.CSV_COLUMNS)
        writer.writerows(report.csv_row(r) for r in results)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testBenchClient.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", nargs="?", default="testFile.csv", help="CSV of images (default testFile.csv)")
    service = parser.add_argument_group("service")
    service.add_argument("--url", default=None, help=f"service address (default $UPSCALER_URL or {DEFAULT_URL})")
    service.add_argument("--token", default=None, help="API key, sent as a bearer token (default $UPSCALER_TOKEN)")
    tls = service.add_mutually_exclusive_group()
    tls.add_argument("--ca-bundle", default=None, help="CA certificate(s) to trust (default $UPSCALER_CA_BUNDLE)")
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS certificates (the original's way)")
    service.add_argument(
        "--api", choices=("legacy", "v1"), default="legacy", help="routes: legacy /store + /retrieve (default) or v1"
    )
    service.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    service.add_argument("--retries", type=int, default=3, help="retries on 429/503, after Retry-After (default 3)")
    service.add_argument("--endpoint", default=None, help="SageMaker endpoint to restore with (the original's)")
    store = parser.add_argument_group("what to store (default: the service's settings)")
    store.add_argument("--bucket", default=os.environ.get("UPSCALER_BUCKET"), help="bucket (default $UPSCALER_BUCKET)")
    store.add_argument("--prefix", default=None, help="key prefix (default testbench/<timestamp>/)")
    store.add_argument("--scale", type=float, default=None, help="downscale factor 1-4")
    store.add_argument("--codec", default=None, help="stored codec: avif, webp, webp-lossless, jpeg, png")
    store.add_argument("--quality", type=int, default=None, help="stored quality 1-100")
    store.add_argument("--model", default=None, help="model to restore with (default: the service's)")
    store.add_argument("--target", default=None, help="quality target, e.g. psnr:35 or ssim:0.95 (service picks)")
    video = parser.add_argument_group("videos (run as a downscale job, then an upscale job)")
    video.add_argument("--video-codec", choices=("h264", "hevc", "av1"), default=None, help="stored video codec")
    video.add_argument("--video-crf", type=int, default=None, help="stored video CRF")
    video.add_argument(
        "--video-samples", type=int, default=12, help="frames spread over each video that are scored (default 12)"
    )
    video.add_argument(
        "--job-timeout", type=float, default=3600.0, help="seconds to wait for each video job (default 3600)"
    )
    run = parser.add_argument_group("run")
    run.add_argument("--workers", type=int, default=2, help="images in flight at once (default 2)")
    run.add_argument("--out", default="TestResults", help="results folder; a <timestamp>/ is made in it")
    run.add_argument(
        "--full-size",
        choices=(*fidelity.FULL_SIZE_CODECS, "none"),
        default="avif",
        help="codec of the full-size baseline at the same bytes (default avif; none skips it)",
    )
    run.add_argument("--limit", type=int, default=None, help="only the first N images of the CSV")
    run.add_argument(
        "--delete", action="store_true", help="delete the stored images at the end (the API deletes no video)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _service_info(client: UpscalerClient) -> str:
    """The service's default model (from /v1/models), or a placeholder when it cannot be asked."""
    try:
        return str(client.request("GET", "/v1/models").json().get("default") or "default model")
    except (ClientError, ValueError, AttributeError):
        return "default model"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        paths = read_csv(args.csv)
    except OSError as exc:
        print(f"error: cannot read {args.csv}: {exc} (make it with testing/testHelp.py <folder>)", file=sys.stderr)
        return 2
    paths = paths[: args.limit] if args.limit else paths
    if not paths:
        print(f"error: no images listed in {args.csv}", file=sys.stderr)
        return 2
    probe = client_from_args(args)
    try:
        probe.request("GET", "/health")
    except ClientError as exc:
        print(f"error: the service does not answer: {exc}", file=sys.stderr)
        return 2
    args.default_model = _service_info(probe) if not args.model else args.model
    out_dir = results_folder(Path(args.out))
    prefix = args.prefix if args.prefix is not None else f"testbench/{out_dir.name}/"
    items = plan_items(paths, prefix, out_dir)
    bench = Bench(args, out_dir)
    keeper = report.CropKeeper()
    started, t0 = datetime.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
    results: list[ImageResult | None] = [None] * len(items)
    from tqdm import tqdm

    bar = tqdm(total=len(items), unit="image", file=sys.stderr, dynamic_ncols=True, disable=args.no_progress)
    failed = 0
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(bench.measure, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            result = future.result()
            results[futures[future]] = result
            keeper.offer(result)
            failed += not result.ok
            bar.update(1)
            bar.set_postfix(failed=failed)
    bar.close()
    done = [r for r in results if r is not None]
    if args.delete:
        for item in (i for i in items if not is_video(i.path)):  # no route deletes a video
            with contextlib.suppress(ClientError):  # never stored, or already gone
                probe.delete(item.key, args.bucket)
    info = _run_info(args, bench, done, probe.base_url, out_dir, started, time.perf_counter() - t0)
    write_csv(out_dir / "testResults.csv", done)
    report.write_html(out_dir / "report.html", done, keeper, info)
    print(report.terminal_summary(done, info))
    print(f"\nwrote {out_dir / 'testResults.csv'} and {out_dir / 'report.html'}")
    return 0 if not failed else 1


def _run_info(
    args: argparse.Namespace,
    bench: Bench,
    results: list[ImageResult],
    url: str,
    out_dir: Path,
    started: str,
    seconds: float,
) -> dict[str, Any]:
    forms = sorted({report.stored_form(r) for r in results if r.ok})
    models = sorted({r.model for r in report.images_of(results) if r.ok}) or [args.default_model]
    options = ", ".join(f"{k}={v}" for k, v in bench.store_options.items()) or "the service's defaults"
    shown = ", ".join(forms[:4]) + (f" (+{len(forms) - 4} more)" if len(forms) > 4 else "")
    return {
        "url": url,
        "api": args.api,
        "out": str(out_dir),
        "started": started,
        "seconds": seconds,
        "workers": args.workers,
        "store_label": f"{shown or '-'} ({options})",
        "model_label": " / ".join(models),
        "full_label": f"full-size {args.full_size.upper()}" if args.full_size != "none" else "full-size (skipped)",
    }


if __name__ == "__main__":
    sys.exit(main())
