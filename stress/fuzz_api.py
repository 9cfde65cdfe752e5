"""Fuzz the HTTP API with schemathesis against its own ``/openapi.json``: zero 5xx, zero schema violations.

    .venv/bin/pip install schemathesis        # not in the dev extra: this run is long and stays out of the suite
    .venv/bin/python stress/fuzz_api.py [--max-examples 100] [--seed N]

Starts `upscaler serve` (gunicorn, TLS) on loopback with an API key, then runs every schemathesis check on every
operation (examples, coverage, fuzzing and stateful phases), sending the key, except two checks whose premise
does not hold for this API, on purpose (and hypothesis' "too many examples filtered" health check, which the key
pattern trips on the video upload):

* ``positive_data_acceptance``: a schema-valid request may still be refused, rightly, because validity depends on
  content (the base64 must decode to a real image, the object must exist, min_size <= max_size).
* ``negative_data_rejection``: the key pattern in the document is a safe subset; the service also accepts other
  keys (spaces, Unicode), so a request outside the pattern may rightly succeed.

It prints schemathesis' summary and the number of generated cases, and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import api_server
from upscaler.auth import add_key

EXCLUDED = "positive_data_acceptance,negative_data_rejection"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=100, help="cases per operation and phase")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if not st:
        print("schemathesis is not installed: .venv/bin/pip install schemathesis", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        token = add_key(work / "keys.json", "fuzz", [{"bucket": "*", "prefix": "", "access": ["read", "write"]}])
        env = {"UPSCALER_API_KEYS_FILE": str(work / "keys.json"), "UPSCALER_MAX_SOURCE_MEGAPIXELS": "4"}
        with api_server(work, env) as url:
            argv = [
                st,
                "run",
                f"{url}/openapi.json",
                "--exclude-checks",
                EXCLUDED,
                "--max-examples",
                str(args.max_examples),
                "--tls-verify",
                "false",
                "-w",
                str(args.workers),
                "-H",
                f"Authorization: Bearer {token}",
                "--suppress-health-check",
                "filter_too_much",
            ]
            if args.seed is not None:
                argv += ["--seed", str(args.seed)]
            proc = subprocess.run(argv, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    print(out[-6000:])
    cases = re.search(r"(\d+) generated", out)
    server_errors = len(re.findall(r"Server error", out))
    print(
        f"cases generated: {cases.group(1) if cases else '?'}; server errors: {server_errors}; exit {proc.returncode}"
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
