"""Service benchmark: what the HTTP service adds to the engine, and what storage it saves.

    .venv/bin/python benchmarks/bench_service.py [--repeats 5]

Starts `upscaler serve` (gunicorn, TLS) on loopback with the embedded defaults, then in one run:
1. /retrieve (legacy, base64) and GET /v1/images (raw bytes) latency for a ~1 MP output, next to the engine's
   own upscale of the same stored image in this process (same threads). Target: the service adds <= 10 %.
2. Stored bytes vs. original bytes for the default codec and scale, on photos saved as JPEG q90 and as PNG.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photos import median_time, photos, table
from PIL import Image

from tests.servers import api_server
from upscaler import media
from upscaler.config import Settings
from upscaler.engine import Engine


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = Settings.from_env({}, ncnn_threads=2)
    engine = Engine(settings)
    name, photo = next(photos(limit=1, include_shared=False))
    original = photo.resize((1000, 1000), Image.Resampling.LANCZOS)
    jpeg = _encode(original, "JPEG", quality=90)

    with tempfile.TemporaryDirectory() as work, api_server(Path(work), {"UPSCALER_NCNN_THREADS": "2"}) as url:
        resp = requests.post(
            url + "/store",
            json={"image": base64.b64encode(jpeg).decode(), "s3_bucket": "bench", "s3_key_name": "one.jpg"},
            verify=False,
            timeout=120,
        )
        resp.raise_for_status()
        stored = Path(work) / "data/objects/bench/one.jpg"
        small = media.decode_stored(stored.read_bytes())
        engine.warmup("span")
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would override the session's CA below
        session.verify = str(Path(work) / "data/tls/cert.pem")  # the self-signed certificate serve made

        def legacy() -> None:
            r = session.get(url + "/retrieve", params={"s3_key": "one.jpg", "s3_bucket": "bench"}, timeout=120)
            assert r.json()[1] == 200

        def v1() -> None:
            r = session.get(url + "/v1/images/one.jpg", params={"bucket": "bench"}, timeout=120)
            assert r.status_code == 200

        legacy()  # warm the server's model
        t_engine = median_time(lambda: engine.upscale(small, model="span", size=(1000, 1000)), args.repeats)
        t_legacy = median_time(legacy, args.repeats)
        t_v1 = median_time(v1, args.repeats)
        t_engine2 = median_time(lambda: engine.upscale(small, model="span", size=(1000, 1000)), args.repeats)
        t_engine = min(t_engine, t_engine2)
        rows = [
            ["engine.upscale (in process)", f"{small.width}x{small.height} -> 1000x1000", t_engine, 1.0],
            ["GET /retrieve (legacy, base64 JSON)", "1.0 MP JPEG", t_legacy, t_legacy / t_engine],
            ["GET /v1/images/<key> (raw bytes)", "1.0 MP JPEG", t_v1, t_v1 / t_engine],
        ]
        print(f"\nTable 1. Retrieval latency, median of {args.repeats} ({name}, stored x4 AVIF, span-x4, 2 threads)")
        print(table(["path", "image", "seconds", "x engine"], rows))

        rows2 = []
        for pname, img in photos(include_shared=True, max_side=1024):
            for fmt, params in (("JPEG", {"quality": 90}), ("PNG", {})):
                data = _encode(img, fmt, **params)
                r = session.post(
                    url + "/store",
                    json={
                        "image": base64.b64encode(data).decode(),
                        "s3_bucket": "bench",
                        "s3_key_name": f"{pname}.{fmt.lower()}",
                    },
                    timeout=120,
                )
                stored_info = r.json()[0]["data"]
                rows2.append(
                    [
                        pname,
                        fmt,
                        f"{img.width}x{img.height}",
                        len(data),
                        stored_info["stored"]["bytes"],
                        stored_info["saved_percent"],
                    ]
                )
        print(
            f"\nTable 2. Stored bytes, default settings (scale {settings.default_scale}, "
            f"{settings.stored_codec} q{settings.stored_quality})"
        )
        print(table(["photo", "original", "size", "original bytes", "stored bytes", "saved %"], rows2))
        for fmt in ("JPEG", "PNG"):
            saved = [r[5] for r in rows2 if r[1] == fmt]
            print(f"mean saved vs {fmt} originals: {statistics.mean(saved):.1f} %")


if __name__ == "__main__":
    main()
