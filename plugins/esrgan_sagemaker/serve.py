"""``serve``: what SageMaker runs in the container (``docker run <image> serve``).

gunicorn on ``0.0.0.0:${SAGEMAKER_BIND_TO_PORT:-8080}``; the worker timeout stays under SageMaker's 60 s per
invocation, and the graceful timeout under the 30 s between SIGTERM and SIGKILL. ``--bind`` overrides the address
(tests use loopback).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"], help="SageMaker passes 'serve'")
    port = os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")
    parser.add_argument("--bind", default=f"0.0.0.0:{port}", help=f"address:port (default 0.0.0.0:{port})")
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("MODEL_SERVER_WORKERS", "1")),
        help="gunicorn processes; each holds the models (default 1)",
    )
    parser.add_argument("--threads", type=int, default=int(os.environ.get("MODEL_SERVER_THREADS", "4")))
    args = parser.parse_args(argv)
    argv_out = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        args.bind,
        "--worker-class",
        "gthread",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--timeout",
        os.environ.get("MODEL_SERVER_TIMEOUT", "60"),
        "--graceful-timeout",
        "25",
        "--keep-alive",
        "5",
        "--error-logfile",
        "-",
        "plugins.esrgan_sagemaker.server:create_app()",
    ]
    print(f"model server on {args.bind}", file=sys.stderr, flush=True)
    os.execv(sys.executable, argv_out)  # gunicorn takes over this process and handles SIGTERM
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
