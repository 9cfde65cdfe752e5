"""Archive migration throughput: objects/s and MP/s with 1 and 2 local workers on the same machine, and where
the time goes (listing, reading, model, encode/search, verification), from the migration's own report.

Each run migrates the same folder of generated images (crops of scikit-image's photographs and flat graphics,
JPEG and PNG, ``--side`` pixels on the longer side) into a fresh local store with a fresh SQLite queue and job
table, through the real ``upscaler worker`` processes (``python -m video_upscaler``). Runs alternate 1, 2, 1, 2 ...
(``--rounds``), so the two settings share the machine's load; the load average (1 minute, at the start and the
end of the run) is printed beside every run, and the medians and their ratio after.

    .venv/bin/python benchmarks/bench_migrate.py --objects 24 --side 256 --rounds 2 --target psnr:35
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from upscaler import migrate  # noqa: E402
from upscaler.config import Settings  # noqa: E402
from upscaler.jobs.factory import open_job_queue, open_job_store  # noqa: E402


def make_archive(folder: Path, count: int, side: int) -> None:
    """``count`` images: three in four photos (JPEG q90), one in four flat graphics (PNG)."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    for i in range(count):
        if i % 4 == 3:
            h, w = side * 3 // 4, side
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.zeros((h, w, 3), np.uint8)
            img[:] = rng.integers(0, 255, 3)
            img[(xx // 16 + yy // 24) % 2 == 0] = rng.integers(0, 255, 3)
            Image.fromarray(img).save(folder / f"g{i:03d}.png")
            continue
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        scale = side / max(h, w) * 1.6
        big = Image.fromarray(src).resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS)
        x, y = rng.integers(0, big.width - side), rng.integers(0, big.height - side * 3 // 4)
        buf = io.BytesIO()
        big.crop((x, y, x + side, y + side * 3 // 4)).save(buf, "JPEG", quality=90)
        (folder / f"p{i:03d}.jpg").write_bytes(buf.getvalue())


def run(folder: Path, workers: int, target: str, threads: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    env = {
        **os.environ,
        "UPSCALER_STORAGE": str(work / "objects"),
        "UPSCALER_JOB_STORE": str(work / "jobs.db"),
        "UPSCALER_JOB_QUEUE": str(work / "queue.db"),
        "UPSCALER_NCNN_THREADS": str(threads),
        "UPSCALER_MIGRATE_CHUNK_KEYS": "4",
        "UPSCALER_LOG_LEVEL": "WARNING",
    }
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("UPSCALER_")})
    from api.app import build_service

    service = build_service(settings)
    jobs = open_job_store(settings)
    spec = migrate.Spec.parse(str(folder), "s3://media/bench/", target)
    argv = [sys.executable, "-m", "video_upscaler", "--wait-seconds", "1"]
    load0 = os.getloadavg()[0]
    procs = [subprocess.Popen(argv, env=env, cwd=work) for _ in range(workers)]
    record = migrate.submit(spec, service, jobs, open_job_queue(settings), settings, on_verified="keep")
    while (state := migrate.status(jobs, spec.id, settings))["status"] == "running":
        time.sleep(0.2)
    chunks = migrate.chunks_of(jobs, jobs.get(record.id))  # from the first chunk taken to the last one done:
    wall = max(c.finished_at or 0 for c in chunks) - min(c.started_at or 1e18 for c in chunks)  # no start-up
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    rep = state["report"]
    shutil.rmtree(work, ignore_errors=True)
    return {
        "workers": workers,
        "objects": rep["objects"]["verified"],
        "failed": rep["objects"]["failed"],
        "megapixels": rep["time"]["megapixels"],
        "wall_s": round(wall, 2),
        "objects_per_s": round(rep["objects"]["verified"] / wall, 3),
        "mp_per_s": round(rep["time"]["megapixels"] / wall, 4),
        "share": rep["time"]["share"],
        "saved_percent": rep["bytes"]["saved_percent"],
        "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (1 worker, then 2)")
    parser.add_argument("--target", default="psnr:35")
    parser.add_argument("--threads", type=int, default=1, help="ncnn threads per worker (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="write the runs as JSON here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-migrate-src-")) / "archive"
    make_archive(folder, args.objects, args.side)
    runs = []
    print("| run | workers | objects/s | MP/s | wall s | verified | load average (start, end) |")
    print("|---|---|---|---|---|---|---|")
    for _ in range(args.rounds):
        for workers in (1, 2):
            result = run(folder, workers, args.target, args.threads)
            runs.append(result)
            print(
                f"| {len(runs)} | {workers} | {result['objects_per_s']:.3f} | {result['mp_per_s']:.4f} | "
                f"{result['wall_s']:.1f} | {result['objects']} | {result['load'][0]:.2f}, {result['load'][1]:.2f} |",
                flush=True,
            )
    print(f"\n{args.objects} objects of {args.side} px, target {args.target}, {os.cpu_count()} CPUs")
    print("| workers | runs | objects/s (median) | MP/s (median) | wall s | list | read | model | encode | verify |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workers in (1, 2):
        mine = [r for r in runs if r["workers"] == workers]
        share = {k: statistics.mean(r["share"].get(k, 0.0) for r in mine) for k in mine[0]["share"]}
        print(
            f"| {workers} | {len(mine)} | {statistics.median(r['objects_per_s'] for r in mine):.3f} | "
            f"{statistics.median(r['mp_per_s'] for r in mine):.4f} | "
            + ", ".join(f"{r['wall_s']:.1f}" for r in mine)
            + " | "
            + " | ".join(f"{100 * share.get(k, 0.0):.1f} %" for k in ("list", "read", "model", "encode", "verify"))
            + " |"
        )
    one = statistics.median(r["objects_per_s"] for r in runs if r["workers"] == 1)
    two = statistics.median(r["objects_per_s"] for r in runs if r["workers"] == 2)
    print(f"2 workers / 1 worker: {two / one:.2f}x objects/s (medians); load averages {[r['load'] for r in runs]}")
    if args.out:
        args.out.write_text(json.dumps(runs, indent=2))
    shutil.rmtree(folder.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
