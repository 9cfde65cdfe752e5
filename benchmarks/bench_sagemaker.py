"""SageMaker path benchmark: the HTTP hop and encoding of the SageMaker provider, and tile fan-out.

    .venv/bin/python benchmarks/bench_sagemaker.py [--repeats 3]

Starts the model server (plugins/esrgan_sagemaker, gunicorn, 4 threads) on loopback and calls it through boto3's
sagemaker-runtime client, as in production. In one run:
1. the same upscale (250x250 -> 1000x1000, span-x4) through LocalUpscaleProvider and SagemakerRTUpscaleProvider;
2. a tiled upscale (payload cap lowered so the image needs many tiles) with 1, 2 and 4 tiles in flight.
On a 2-core machine the server's model already uses both cores, so fan-out mostly hides the PNG encoding and the
HTTP time; on an endpoint with several instances or a GPU it multiplies throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photos import median_time, photos, table
from PIL import Image

from tests.servers import AWS_TEST_ENV, model_server
from upscaler.config import Settings
from upscaler.engine import Engine
from upscaler.providers import LocalUpscaleProvider
from upscaler.providers.sagemaker import SagemakerRTUpscaleProvider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(AWS_TEST_ENV)
    photo = next(photos(limit=1, include_shared=False))[1]
    small = photo.resize((250, 250), Image.Resampling.BICUBIC)
    big_in = photo.resize((400, 400), Image.Resampling.BICUBIC)
    with tempfile.TemporaryDirectory() as work, model_server(Path(work)) as url:
        local = LocalUpscaleProvider(Engine(Settings.from_env({}, ncnn_threads=2)), model="span")
        remote = SagemakerRTUpscaleProvider(Settings.from_env({}, sagemaker_endpoint_url=url), "bench")
        local.upscale(small, size=(1000, 1000))
        remote.upscale(small, size=(1000, 1000), model="span")
        t_local = median_time(lambda: local.upscale(small, size=(1000, 1000)), args.repeats)
        t_remote = median_time(lambda: remote.upscale(small, size=(1000, 1000), model="span"), args.repeats)
        print("\nTable 1. One upscale, 250x250 -> 1000x1000 (span-x4), median of", args.repeats)
        print(
            table(
                ["provider", "seconds", "x local"],
                [
                    ["local (in process)", t_local, 1.0],
                    ["sagemaker (boto3 -> model server on loopback)", t_remote, t_remote / t_local],
                ],
            )
        )
        rows = []
        base = None
        for workers in (1, 2, 4):
            settings = Settings.from_env(
                {}, sagemaker_endpoint_url=url, sagemaker_max_payload=400_000, sagemaker_concurrency=workers
            )
            provider = SagemakerRTUpscaleProvider(settings, "bench")
            provider.upscale(big_in, size=(1600, 1600), model="span")
            calls_before = provider.calls
            t = median_time(lambda p=provider: p.upscale(big_in, size=(1600, 1600), model="span"), args.repeats)
            tiles = (provider.calls - calls_before) // args.repeats
            base = base or t
            rows.append([workers, tiles, t, base / t])
        t_local_big = median_time(lambda: local.upscale(big_in, size=(1600, 1600)), args.repeats)
        rows.append(["local, untiled", "-", t_local_big, base / t_local_big])
        print("\nTable 2. Tiled through SageMaker, 400x400 -> 1600x1600 (span-x4), payload cap 400 kB")
        print(table(["tiles in flight", "tiles", "seconds", "speed-up vs 1"], rows))


if __name__ == "__main__":
    main()
