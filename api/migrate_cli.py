"""``upscaler migrate SOURCE DEST --target T``: convert an existing archive, object by object, never losing one.

Start with a dry run (the default: nothing is written). It lists SOURCE, sums its bytes, decides the stored form
of a sample of it exactly as a store would (without storing) and estimates the savings and the monthly bill:

  upscaler migrate s3://photos/2019/ s3://photos-small/2019/ --target psnr:38

Then convert, with --apply. The listing is cut into chunks that go on the job queue; the video workers you already
run take them (``upscaler serve`` starts one beside the API; ``upscaler worker`` starts more; at scale the worker
deployment scales on queue depth). ``--workers N`` starts N local workers for the length of the run instead:

  upscaler migrate s3://photos/2019/ s3://photos-small/2019/ --target psnr:38 --apply --workers 2

Every object is stored, then retrieved as a user would get it and checked (the target met on the retrieved file,
its size and format those of the original, and for ``exact`` the very same bytes) before it counts as migrated.
Then, with --on-verified:

  tag     (default) the original gets the S3 object tag upscaler-migrated=<migration id> (a folder: a hidden
          .<name>.upscaler-migrated file beside it). Nothing is deleted: a lifecycle rule of yours that filters on
          that tag expires the originals, or moves them to a colder class, when you decide.
  delete  the original is deleted, only once its stored form is verified and that is saved in the job store,
          and only if it has not changed since it was read.
  keep    nothing is done to the original.

A failed object (broken, not an image, over a limit, not verified) keeps its original and is listed with its
reason. Running the same command again resumes the same migration (same SOURCE, DEST and target: same id): what
was verified and has not changed is not done again, anything else is (a re-run after a crash, or with another
--on-verified, is safe). The report is written as report.json, objects.csv and report.html to --report.

SOURCE is a folder, s3://bucket/prefix, or a manifest: a CSV whose rows start with bucket and (URL-encoded) key,
as S3 Inventory writes them (a local file or s3://bucket/key.csv). DEST is s3://bucket/prefix. Both s3:// name
buckets of the service's object store (UPSCALER_STORAGE: S3, or a local folder); its bucket allow-list applies.
The job store and queue are UPSCALER_JOB_STORE and UPSCALER_JOB_QUEUE, as for video.

In place: DEST the same s3://bucket/prefix as SOURCE, with --originals s3://bucket/prefix (not overlapping
SOURCE), where each original is kept. For each object, in this order, each step saved in the job store before
the next: the original is copied to --originals under its key relative to SOURCE and read back (SHA-256 equal),
then its stored form and record are written at the original's key, then retrieved from there and verified. A
stored form that fails verification is replaced by the original again. Killed at any step, the key holds the
original, or a stored form whose original is kept byte for byte; running the command again finishes it.
--on-verified then applies to the kept copy: tag (default; your lifecycle rule on the originals location expires
or transitions it), delete (only once verified), keep. (A versioned bucket's previous version is not used as the
kept original: the copy is explicit, checked, and works on any store.) An object that is already a stored form
is never taken for an original.

  upscaler migrate s3://photos/2019/ s3://photos/2019/ --originals s3://photos-originals/2019/ --target psnr:38
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EXAMPLES = """examples:
  upscaler migrate ~/photos s3://media/photos/ --target psnr:38                 # the dry run
  upscaler migrate ~/photos s3://media/photos/ --target psnr:38 --apply --workers 2
  upscaler migrate s3://archive/raw/ s3://archive-small/raw/ --target exact --apply --on-verified keep
  upscaler migrate inventory.csv s3://archive-small/ --target ssim:0.97 --apply  # an S3 Inventory manifest
  upscaler migrate --status mig-0123456789abcdef                                 # where a migration stands
"""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="upscaler migrate")
    parser.description = __doc__
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("source", nargs="?", help="folder, s3://bucket/prefix, or a manifest (.csv)")
    parser.add_argument("dest", nargs="?", help="s3://bucket/prefix where the stored forms go")
    parser.add_argument(
        "--target",
        help="the quality each object must come back at: psnr:<dB>, ssim:<0..1> (each with :fast for the cheaper "
        "search), exact (the very file back), bpp:<bits per pixel> or bytes:<n> (best fidelity within)",
    )
    parser.add_argument(
        "--originals",
        metavar="S3URL",
        default="",
        help="in place (DEST is SOURCE): s3://bucket/prefix where each original is kept, copied and checked before "
        "its stored form takes its key (see above)",
    )
    parser.add_argument("--apply", action="store_true", help="convert (without it: the dry run, nothing written)")
    parser.add_argument(
        "--on-verified",
        choices=("tag", "delete", "keep"),
        default="tag",
        help="what happens to an original once its stored form is verified (default tag; see above)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="start this many local workers for the run (default 0: yours)"
    )
    parser.add_argument("--no-wait", action="store_true", help="submit and print the migration id, do not wait")
    parser.add_argument("--status", metavar="ID", help="print where migration ID stands and write its report")
    parser.add_argument("--report", metavar="DIR", help="folder for the report (default ./migration-<id>)")
    parser.add_argument("--sample", type=int, default=None, help="objects the dry run decides (default 20)")
    parser.add_argument("--timeout", type=float, default=0, help="give up waiting after this many seconds")
    return parser


def _service(settings: Any) -> Any:
    from api.app import build_service

    return build_service(settings)


def _bar(total: int, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="obj", desc=desc, file=sys.stderr, dynamic_ncols=True)


def _summary(status: dict[str, Any]) -> str:
    rep = status["report"]
    o, b, t = rep["objects"], rep["bytes"], rep["time"]
    fid = rep["fidelity"]["measured"] or {}
    cost = rep["cost"]
    lines = [
        f"migration {status['id']}: {status['status']}, round {status['round']} "
        f"({status['source']} -> {status['dest']}, target {status['target']}, on verified: {status['on_verified']})",
        f"objects: {o['listed']} listed, {o['verified']} verified ({o['carried_over']} from earlier runs), "
        f"{o['failed']} failed, {o['changed']} changed, {o['gone']} gone; originals: "
        + ", ".join(f"{k} {v}" for k, v in o["actions"].items()),
        f"bytes: {b['before']:,} -> {b['after']:,} ({b['saved_percent']}% saved)",
    ]
    if fid:
        lines.append(f"fidelity on retrieval: min {fid['min']}, median {fid['median']}, max {fid['max']}")
    lines.append(f"identical files: {rep['fidelity']['identical']}")
    lines.append("forms: " + ", ".join(f"{k}: {v}" for k, v in sorted(rep["forms"].items(), key=lambda kv: -kv[1])))
    if rep["failures"]:
        lines.append("failures: " + ", ".join(f"{k}: {v}" for k, v in rep["failures"].items()))
    lines.append(
        f"time: {t['megapixels']} MP, {t['seconds_per_megapixel']} s/MP; share "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in t["share"].items())
    )
    per_tib = cost["usd_per_month_per_tib_of_originals"]
    lines.append(
        "USD/month per TiB of originals like these, before -> after: "
        + ", ".join(f"{k} {v['before']:,.2f} -> {v['after']:,.2f}" for k, v in per_tib.items())
        + f" (prices of {cost['prices'].get('as_of')})"
    )
    return "\n".join(lines)


def _workers(count: int, folder: Path) -> list[subprocess.Popen]:
    """``count`` local workers (``python -m video_upscaler``), each in its own process group, logging (JSON lines)
    to ``folder``/workers.log."""
    if not count:
        return []
    argv = [sys.executable, "-m", "video_upscaler", "--wait-seconds", "1"]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "workers.log", "ab") as log:
        return [
            subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True) for _ in range(count)
        ]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _follow(jobs: Any, mid: str, settings: Any, args: argparse.Namespace) -> dict[str, Any]:
    from upscaler import migrate
    from upscaler.errors import Unavailable

    state = migrate.status(jobs, mid, settings)
    bar = _bar(state["objects"], mid)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    hinted = time.monotonic() + 30
    while state["status"] == "running":
        if bar is not None:
            bar.n = state["objects_done"]
            bar.refresh()
        if not args.workers and state["objects_done"] == 0 and time.monotonic() > hinted:
            print("no progress yet: is a worker running? (upscaler worker, or --workers N)", file=sys.stderr)
            hinted = float("inf")
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(1.0)
        try:
            state = migrate.status(jobs, mid, settings)
        except Unavailable as exc:  # the job store failed this once (a timeout): the run goes on, ask again
            print(f"upscaler migrate: {exc.message}; asking again", file=sys.stderr)
    if bar is not None:
        bar.n = state["objects_done"]
        bar.close()
    return state


def _write(jobs: Any, state: dict[str, Any], args: argparse.Namespace) -> None:
    from upscaler import migrate

    folder = Path(args.report or f"migration-{state['id']}")
    paths = migrate.write_reports(folder, state, migrate.results_of(jobs, state["id"]))
    print(_summary(state))
    print("report: " + ", ".join(str(p) for p in paths))


def run(args: argparse.Namespace) -> int:
    from upscaler import logs, migrate
    from upscaler.config import Settings
    from upscaler.errors import UpscalerError
    from upscaler.jobs.factory import open_job_queue, open_job_store

    logs.configure(os.environ.get("UPSCALER_LOG_LEVEL", "WARNING"))
    settings = Settings.from_env()
    try:
        if args.status:
            jobs = open_job_store(settings)
            state = migrate.status(jobs, args.status, settings)
            _write(jobs, state, args)
            return 0 if state["status"] == "completed" else 1
        if not (args.source and args.dest and args.target):
            print("SOURCE, DEST and --target are needed (see upscaler migrate --help)", file=sys.stderr)
            return 2
        spec = migrate.Spec.parse(args.source, args.dest, args.target, originals=args.originals)
        service = _service(settings)
        if not args.apply:
            sample = settings.migrate_plan_sample if args.sample is None else args.sample
            bar = _bar(sample, "dry run")
            found = migrate.plan(spec, service, sample=sample, progress=(lambda n: bar.update(1)) if bar else None)
            if bar is not None:
                bar.close()
            out = found.to_dict(settings)
            folder = Path(args.report or f"migration-{spec.id}")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "plan.json").write_text(json.dumps(out, indent=2))
            est, smp = out["estimate"], out["sample"]
            print(f"dry run of {spec.id}: nothing written ({folder / 'plan.json'})")
            print(f"{out['objects']} objects, {out['bytes']:,} bytes under {spec.source}")
            print(
                f"sample of {smp['objects']}: {smp['failed']} would fail, stored/original {smp['stored_ratio']}, "
                f"{smp['seconds_per_megapixel']} s/MP; forms: {smp['forms']}"
            )
            if est["bytes_after"] is not None:
                print(f"estimate: {est['bytes_after']:,} bytes after ({est['saved_percent']}% saved)")
                print(
                    "USD/month per TiB of originals like these, before -> after: "
                    + ", ".join(
                        f"{k} {v['before']:,.2f} -> {v['after']:,.2f}"
                        for k, v in est["usd_per_month_per_tib_of_originals"].items()
                    )
                    + f" (prices of {est['prices_as_of']})"
                )
            keep = f" --originals {args.originals}" if args.originals else ""
            print(f"to convert: upscaler migrate {args.source} {args.dest}{keep} --target {args.target} --apply")
            return 0
        jobs, queue = open_job_store(settings), open_job_queue(settings)
        record = migrate.submit(spec, service, jobs, queue, settings, on_verified=args.on_verified)
        print(f"migration {record.id}: {record.frames_total} objects on the queue", file=sys.stderr)
        if args.no_wait:
            print(record.id)
            return 0
        procs = _workers(args.workers, Path(args.report or f"migration-{record.id}"))
        try:
            state = _follow(jobs, record.id, settings, args)
        finally:
            _stop(procs)
        _write(jobs, state, args)
        return 0 if state["status"] == "completed" else 1
    except UpscalerError as exc:
        print(f"upscaler migrate: {exc.message}", file=sys.stderr)
        return 2
