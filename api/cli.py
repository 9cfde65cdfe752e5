"""``upscaler``: run the service and its helpers.

  upscaler serve            HTTPS on 127.0.0.1:8443 with the embedded defaults (local folder, local queue, local
                            CPU model), plus a video worker beside the API (UPSCALER_VIDEO_WORKERS, default 1)
  upscaler worker           a video worker on its own (the scaled-out deployment: SQS, DynamoDB, S3)
  upscaler cert             make a self-signed certificate for local HTTPS
  upscaler keys new         make an API key scoped to buckets/prefixes (without keys: loopback only)
  upscaler models           list the models and where their weights come from
  upscaler migrate          convert an existing archive (folder, S3 prefix, manifest): dry run, then --apply

Settings come from UPSCALER_* environment variables (see upscaler/config.py); flags here cover the server only.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tempfile
from pathlib import Path

from api.tls import DEFAULT_HOSTS, make_self_signed
from upscaler.console import run_quietly_piped

DEFAULT_TLS_DIR = Path("data/tls")


def _anonymous_check(host: str) -> str | None:
    """None when the server may start; else why not. Without API keys the API serves loopback only."""
    from upscaler.auth import KeyRing
    from upscaler.config import Settings

    settings = Settings.from_env()
    try:
        keys = KeyRing(settings.api_keys_file or None, settings.api_keys).count
    except ValueError as exc:  # a document the service could not read: say so now, not at the first request
        return f"API keys: {exc}"
    if keys:
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        print("no API keys configured: serving without authentication, on loopback only", file=sys.stderr)
        return None
    if settings.allow_anonymous:
        print(
            f"WARNING: no API keys and UPSCALER_ALLOW_ANONYMOUS set: anyone reaching {host} can use the API",
            file=sys.stderr,
        )
        return None
    return (
        f"refusing to serve on {host} without API keys: make one with `upscaler keys new` and set "
        "UPSCALER_API_KEYS_FILE, or bind to 127.0.0.1 (or set UPSCALER_ALLOW_ANONYMOUS=1 behind an authenticating "
        "proxy)"
    )


def _serve(args: argparse.Namespace) -> int:
    refusal = _anonymous_check(args.host)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf", "--bind", f"{args.host}:{args.port}"]
    if not args.plain_http:
        cert, key = Path(args.certfile), Path(args.keyfile)
        if not cert.exists() or not key.exists():
            if args.certfile != str(DEFAULT_TLS_DIR / "cert.pem"):
                print(f"certificate {cert} or key {key} not found", file=sys.stderr)
                return 2
            make_self_signed(cert, key)
            print(f"made a self-signed certificate for {', '.join(DEFAULT_HOSTS)} in {cert.parent}", file=sys.stderr)
        argv += ["--certfile", str(cert), "--keyfile", str(key)]
    if args.workers:
        os.environ["GUNICORN_WORKERS"] = str(args.workers)
    if int(os.environ.get("GUNICORN_WORKERS", "1")) > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="upscaler-metrics-")
    argv.append("api.app:create_app()")
    scheme = "http" if args.plain_http else "https"
    from upscaler.config import Settings

    settings = Settings.from_env()
    video_workers = settings.video_workers
    print(
        f"serving on {scheme}://{args.host}:{args.port} (storage: {settings.storage}, default bucket: "
        f"{settings.default_bucket}; video workers beside it: {video_workers})",
        file=sys.stderr,
    )
    sys.stdout.flush()
    if video_workers <= 0:
        os.execv(sys.executable, argv)  # gunicorn becomes this process: signals reach it directly
    from api.supervisor import Supervisor

    worker = [sys.executable, "-m", "video_upscaler"]
    return Supervisor(argv, [worker] * video_workers).run()


def _keys_new(args: argparse.Namespace) -> int:
    from upscaler.auth import add_key

    access = [a.strip() for a in args.access.split(",") if a.strip()]
    grants = [{"bucket": b, "prefix": args.prefix, "access": access} for b in args.bucket or ["*"]]
    token = add_key(Path(args.file), args.name, grants)
    print(token)
    print(
        f"key {args.name!r} added to {args.file} (only its SHA-256 is stored; this is the only time it is shown). "
        f"Serve with UPSCALER_API_KEYS_FILE={args.file}; clients send it as 'Authorization: Bearer <key>'.",
        file=sys.stderr,
    )
    return 0


def _plan_sources(source: str, limit: int | None) -> list[tuple[str, object]]:
    """(name, loader) for each image under a folder or an ``s3://bucket/prefix``; an object this service stored is
    not an original (its loader raises :class:`Conflict`)."""
    items: list[tuple[str, object]] = []
    if source.startswith("s3://"):
        from upscaler.errors import Conflict
        from upscaler.media import RECORD_MARKER
        from upscaler.store.s3 import S3Store

        bucket, _, prefix = source.removeprefix("s3://").partition("/")
        store = S3Store(endpoint_url=os.environ.get("UPSCALER_S3_ENDPOINT_URL") or None)

        def load(key: str) -> bytes:
            obj = store.get(bucket, key)
            if RECORD_MARKER in obj.metadata:  # its bytes are the small form, not an original
                raise Conflict("already a stored form of this service: skipped (plan its original instead)")
            return obj.data

        for key in store.list(bucket, prefix):
            items.append((f"s3://{bucket}/{key}", lambda key=key: load(key)))
    else:
        root = Path(source)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        items = [(str(p), p.read_bytes) for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return items[:limit] if limit else items


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".avif", ".jxl", ".tif", ".tiff", ".bmp", ".gif"}


def _plan(args: argparse.Namespace) -> int:
    import statistics

    from upscaler.config import Settings
    from upscaler.errors import Conflict, UpscalerError
    from upscaler.quality import Target

    settings = Settings.from_env()
    goal = Target.parse(args.target)
    from api.app import build_service

    service = build_service(settings.replace(storage=tempfile.mkdtemp(prefix="upscaler-plan-")))
    items = _plan_sources(args.source, args.limit)
    if not items:
        print(f"no images under {args.source}", file=sys.stderr)
        return 1
    try:
        from tqdm import tqdm

        progress = tqdm(items, unit="image", file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        progress = items
    rows, failures, stored_forms = [], 0, 0
    for name, load in progress:
        try:
            data = load()  # type: ignore[operator]
            decision = service.decide(data, goal)
        except Conflict:
            stored_forms += 1
            continue
        except UpscalerError as exc:
            failures += 1
            print(f"{name}: {exc.message}", file=sys.stderr)
            continue
        d = decision.describe()
        rows.append((name, len(data), decision))
        if args.verbose:
            print(f"{name}\t{len(data)}\t{d['bytes']}\tx{d['scale']:g} {d['codec']} q{d['quality']}\t{d['fidelity']}")
    skipped = f", {stored_forms} already stored forms skipped" if stored_forms else ""
    if not rows:
        if skipped:
            print(f"nothing to plan under {args.source}: {stored_forms} already stored forms", file=sys.stderr)
        return 1
    original = sum(n for _, n, _ in rows)
    stored = sum(d.form.bytes for _, _, d in rows)
    finite = [d.form.score for _, _, d in rows if d.form.score != float("inf")]
    forms: dict[str, int] = {}
    for _, _, d in rows:
        label = "original" if d.form.codec == "original" else f"x{d.form.scale:g} {d.form.codec}"
        forms[label] = forms.get(label, 0) + 1
    mp = sum(d.megapixels for _, _, d in rows)
    seconds = sum(d.seconds for _, _, d in rows)
    print(f"target {goal} over {len(rows)} images ({failures} failed{skipped}), dry run: nothing stored")
    print(f"bytes: {original:,} original -> {stored:,} stored ({100 * (1 - stored / original):.1f}% saved)")
    if finite:
        q = statistics.quantiles(finite, n=10, method="inclusive") if len(finite) > 1 else [finite[0]] * 9
        print(f"fidelity at ingest: min {min(finite):.3f}, p10 {q[0]:.3f}, median {statistics.median(finite):.3f}")
    print("forms: " + ", ".join(f"{k}: {v}" for k, v in sorted(forms.items(), key=lambda kv: -kv[1])))
    print(f"cost of deciding: {seconds / max(mp, 1e-9):.2f} s per megapixel ({seconds:.1f} s for {mp:.1f} MP)")
    return 0


def _cert(args: argparse.Namespace) -> int:
    out = Path(args.out)
    make_self_signed(out / "cert.pem", out / "key.pem", tuple(args.host) or DEFAULT_HOSTS, args.days)
    print(f"wrote {out / 'cert.pem'} and {out / 'key.pem'}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from upscaler.engine import registry

    for spec in registry.MODELS.values():
        source = "built in"
        if spec.is_network:
            try:
                source = str(registry.weight_files(spec)[1])
            except Exception as exc:  # a missing package is reported, not raised
                source = f"missing: {exc}"
        scale = f"x{spec.scale}" if spec.scale else "any"
        print(f"{spec.name:26} {scale:4} {spec.kind:13} {spec.license or '-':40} {source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="upscaler", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="run the HTTP API under gunicorn", description="Run the HTTP API under gunicorn."
    )
    serve.add_argument(
        "--host", default=os.environ.get("UPSCALER_HOST", "127.0.0.1"), help="address to bind (default 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, default=int(os.environ.get("UPSCALER_PORT", "8443")), help="port (default 8443)"
    )
    serve.add_argument(
        "--certfile",
        default=str(DEFAULT_TLS_DIR / "cert.pem"),
        help="TLS certificate (default data/tls/cert.pem, made self-signed on first start)",
    )
    serve.add_argument("--keyfile", default=str(DEFAULT_TLS_DIR / "key.pem"), help="TLS private key")
    serve.add_argument("--plain-http", action="store_true", help="serve plain HTTP (behind a TLS-terminating proxy)")
    serve.add_argument(
        "--workers", type=int, default=0, help="gunicorn worker processes (default 1; each loads the models)"
    )
    serve.set_defaults(func=_serve)

    cert = sub.add_parser(
        "cert", help="make a self-signed TLS certificate", description="Make a self-signed certificate."
    )
    cert.add_argument("--out", default=str(DEFAULT_TLS_DIR), help="folder for cert.pem and key.pem")
    cert.add_argument("--host", action="append", default=[], help="host name or IP for the certificate (repeatable)")
    cert.add_argument("--days", type=int, default=825, help="validity in days")
    cert.set_defaults(func=_cert)

    import video_upscaler.__main__ as worker_main

    worker = sub.add_parser(
        "worker",
        help="run video jobs from the queue",
        description=worker_main.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker_main.build_parser(worker)
    worker.set_defaults(func=worker_main.run)

    keys = sub.add_parser(
        "keys",
        help="manage API keys",
        description="API keys: each is scoped to buckets and a key prefix, for reading and/or writing. The file "
        "holds only hashes and is re-read by the running service when it changes: add a key, move the clients, "
        "then delete the old entry from the file to rotate without a restart.",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="command")
    new = keys_sub.add_parser(
        "new",
        help="create a key, store its hash, print the key once",
        description="Create a key and print it (once). Example: upscaler keys new --name archive --bucket media "
        "--prefix archive/ --access read,write",
    )
    new.add_argument("--name", required=True, help="who the key is for (shown in logs and errors)")
    new.add_argument("--file", default="data/api-keys.json", help="key file (default data/api-keys.json)")
    new.add_argument("--bucket", action="append", help="bucket the key may use (repeatable; default: any)")
    new.add_argument("--prefix", default="", help="object key prefix the key is limited to (default: none)")
    new.add_argument("--access", default="read,write", help="read, write or read,write (default read,write)")
    new.set_defaults(func=_keys_new)

    plan = sub.add_parser(
        "plan",
        help="dry run of quality-targeted storage over a folder or an S3 prefix",
        description="For each image under SOURCE (a folder, a file, or s3://bucket/prefix), find the smallest "
        "stored form whose retrieval meets TARGET, as POST /store with 'target' would, without storing anything; "
        "then print the total savings, the fidelity distribution, the forms chosen and the cost of deciding. "
        "Example: upscaler plan psnr:35 ~/photos; 'upscaler plan exact ~/photos' for the lossless tier (a JPEG "
        "recompressed into JPEG XL gives back the very file), 'upscaler plan bpp:0.1 ~/photos' for a byte budget",
    )
    plan.add_argument(
        "target",
        help="psnr:<dB> (Y channel), ssim:<0..1> or a number of dB, each with :fast for the cheaper search; "
        "exact (the original file back, byte for byte); bpp:<bits per pixel> or bytes:<n> (best fidelity within)",
    )
    plan.add_argument("source", help="folder, image file, or s3://bucket/prefix")
    plan.add_argument("--limit", type=int, default=None, help="at most this many images")
    plan.add_argument("-v", "--verbose", action="store_true", help="one line per image")
    plan.set_defaults(func=_plan)

    import api.migrate_cli as migrate_cli

    migrate = sub.add_parser("migrate", help="convert an existing archive: dry run, then --apply on the workers")
    migrate_cli.build_parser(migrate)
    migrate.set_defaults(func=migrate_cli.run)

    models = sub.add_parser("models", help="list models and their weights", description="List the models.")
    models.set_defaults(func=_models)

    def run() -> int:
        args = parser.parse_args(argv)
        return int(args.func(args))

    return run_quietly_piped(run)


if __name__ == "__main__":
    sys.exit(main())
