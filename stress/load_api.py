"""Load run on loopback: mixed store/retrieve for a fixed time, then requests, error rate, latency and memory.

    .venv/bin/python stress/load_api.py [--seconds 120] [--clients 6] [--store-share 0.3] [--side 256]

Starts `upscaler serve` (gunicorn, TLS, embedded defaults) and drives it from ``--clients`` threads, each a
keep-alive HTTPS client: a share of the requests store a photo crop (``POST /store``), the rest retrieve one already
stored (``GET /retrieve``, which runs SPAN x4). It prints the count of requests by status, the rate of errors other
than 429 (the target is zero: 429 is the service refusing work it cannot take, with ``Retry-After``), p50/p99
latency per kind, and the resident memory of the server's processes (gunicorn master and workers, video worker) at
the start and at the end. The memory bound is stated and checked: the end may exceed the start (after the
warm-up requests) by at most ``--rss-growth-mb``.
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from tests.servers import api_server


def _crops(side: int, count: int) -> list[bytes]:
    from skimage import data

    out = []
    rng = random.Random(7)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        pixels = getattr(data, name)()
        for _ in range(count // 4 + 1):
            y = rng.randrange(0, max(1, pixels.shape[0] - side))
            x = rng.randrange(0, max(1, pixels.shape[1] - side))
            buf = io.BytesIO()
            Image.fromarray(pixels[y : y + side, x : x + side]).convert("RGB").save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out[:count]


def _server_rss(port: int) -> float:
    """MB resident in every process listening on ``port`` and their relatives (gunicorn master, workers, worker)."""
    total = 0.0
    seen: set[int] = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if (f"127.0.0.1:{port}" in cmd or "video_upscaler" in cmd) and proc.pid not in seen:
            for p in [proc, *proc.children(recursive=True)]:
                if p.pid not in seen:
                    seen.add(p.pid)
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss / 2**20
    return total


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--store-share", type=float, default=0.3)
    parser.add_argument("--side", type=int, default=256, help="photo crop side in pixels (retrieved at this size)")
    parser.add_argument("--rss-growth-mb", type=float, default=150.0, help="allowed memory growth, start to end")
    args = parser.parse_args()

    images = _crops(args.side, 16)
    with tempfile.TemporaryDirectory() as tmp, api_server(Path(tmp)) as url:
        port = int(url.rsplit(":", 1)[1])
        stored: list[str] = []
        session = requests.Session()
        for i, data in enumerate(images):  # warm-up: every image stored once, one retrieve
            body = {"image": base64.b64encode(data).decode(), "s3_key_name": f"warm/{i}.jpg"}
            assert session.post(url + "/store", json=body, verify=False).status_code == 200
            stored.append(f"warm/{i}.jpg")
        session.get(url + "/retrieve", params={"s3_key": stored[0]}, verify=False)
        rss_start = _server_rss(port)

        statuses: Counter[tuple[str, int]] = Counter()
        latency: dict[str, list[float]] = {"store": [], "retrieve": []}
        lock = threading.Lock()
        deadline = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            own = requests.Session()
            n = 0
            while time.monotonic() < deadline:
                kind = "store" if rng.random() < args.store_share else "retrieve"
                t0 = time.perf_counter()
                try:
                    if kind == "store":
                        key = f"load/{seed}/{n}.jpg"
                        body = {"image": base64.b64encode(rng.choice(images)).decode(), "s3_key_name": key}
                        resp = own.post(url + "/store", json=body, verify=False, timeout=120)
                        if resp.status_code == 200:
                            with lock:
                                stored.append(key)
                    else:
                        with lock:
                            key = rng.choice(stored)
                        resp = own.get(url + "/retrieve", params={"s3_key": key}, verify=False, timeout=120)
                    status = resp.status_code
                except requests.RequestException:
                    status = 0
                elapsed = time.perf_counter() - t0
                with lock:
                    statuses[(kind, status)] += 1
                    if status == 200:
                        latency[kind].append(elapsed)
                n += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        rss_end = _server_rss(port)

    total = sum(statuses.values())
    errors = sum(c for (kind, status), c in statuses.items() if status not in (200, 429))
    print(f"{args.clients} clients, {wall:.0f} s, {args.store_share:.0%} stores, {args.side}px photos (retrieve = x4)")
    print()
    print("| kind | requests | 200 | 429 | other | p50 s | p99 s | mean s |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("store", "retrieve"):
        n = sum(c for (k, _), c in statuses.items() if k == kind)
        ok, busy = statuses[(kind, 200)], statuses[(kind, 429)]
        lat = latency[kind]
        mean = statistics.fmean(lat) if lat else float("nan")
        print(
            f"| {kind} | {n} | {ok} | {busy} | {n - ok - busy} | {_pct(lat, 0.5):.3f} | {_pct(lat, 0.99):.3f} "
            f"| {mean:.3f} |"
        )
    print()
    print(f"requests: {total} ({total / wall:.1f}/s); errors other than 429: {errors} ({errors / max(1, total):.2%})")
    print(
        f"server RSS: {rss_start:.0f} MB after warm-up, {rss_end:.0f} MB at the end (bound +{args.rss_growth_mb:g} MB)"
    )
    ok = errors == 0 and rss_end - rss_start <= args.rss_growth_mb
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
