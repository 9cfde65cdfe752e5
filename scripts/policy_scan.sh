#!/usr/bin/env bash
# Policy scan of the Kubernetes manifests and the three Dockerfiles with checkov, run from its own virtual
# environment (.venv-tools): checkov pins a boto3 that conflicts with the project's, so it never enters .venv.
#   python3 -m venv .venv-tools && .venv-tools/bin/pip install -q checkov==3.3.30   # once
#   scripts/policy_scan.sh              # human-readable report; exit 1 if any check fails
#   scripts/policy_scan.sh -o json      # what tests/test_manifests.py reads
# Every skipped check is justified where it is skipped: a checkov.io/skip<N> annotation in the manifest (or a
# `#checkov:skip=<id>:<reason>` comment in a Dockerfile); the test allows only the skips it lists, each with a reason.
# --skip-download keeps checkov offline (no policy or guideline downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
checkov="${CHECKOV:-.venv-tools/bin/checkov}"
if [ ! -x "$checkov" ]; then
  echo "checkov not found at $checkov; install it with:" >&2
  echo "  python3 -m venv .venv-tools && .venv-tools/bin/pip install -q checkov==3.3.30" >&2
  exit 3
fi
exec "$checkov" --framework kubernetes dockerfile --skip-download \
  -f manifests/*.yaml api/Dockerfile video_upscaler/Dockerfile plugins/esrgan_sagemaker/Dockerfile \
  plugins/esrgan_sagemaker/Dockerfile.gpu "$@"
