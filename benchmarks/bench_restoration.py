"""Fine-tuned SPAN against stock SPAN, bicubic and full-size codecs at equal bytes, on held-out images (issue 19).

    .venv/bin/python benchmarks/bench_restoration.py [--limit 20] [--qualities 30,50,70,85] [--model span-x2-stored]
    .venv/bin/python benchmarks/bench_restoration.py --model span-x4-stored --out results/restoration_x4.jsonl
    .venv/bin/python benchmarks/bench_restoration.py --model span-x1-restorer --out results/restoration_x1.jsonl
    .venv/bin/python benchmarks/bench_restoration.py --report benchmarks/results/restoration.jsonl

Images: the held-out Debian wallpaper packages (``mate-backgrounds``, ``ukui-wallpapers``; never trained on — see
``training/data.py``), their JPEG photos first, spread over the list, then PNGs if short; each resized to about
``--megapixels`` (Lanczos, sides a multiple of 4) as ``bench_quality.py`` prepares them. The reference is that
resized image itself (lossless).

Per image, in one run, everything on the same stored bytes:

* the service's downscaled form at the fine-tuned model's scale (x2 or x4; below for x2):
  :func:`upscaler.engine.downscale` (antialiased bicubic), :func:`upscaler.media.encode_stored`
  with ``--codec`` (``avif``: 4:4:4, the fixed store's chroma) at each of ``--qualities``, decoded with
  :func:`upscaler.media.decode_stored`, then restored to full size by the engine (ncnn, as the service runs it)
  with bicubic, the stock model (``span-x2``, ``span-x4``) and the fine-tuned one (``--model``); the two models
  alternate which runs first, and each run is timed (same architecture: the cost per output MP should be equal);
* full-size AVIF 4:2:0 and JPEG XL (the service's encoders) at a ladder of qualities, scored on their own decode,
  and interpolated in log(bytes) to each downscaled form's byte count (no extrapolation: outside the ladder -> absent).

Scores: PSNR-Y and SSIM-Y with BasicSR's conventions (:mod:`upscaler.metrics`: BT.601 Y, ``crop_border`` = the
scale, for every method alike). Results go to a JSON-lines file (resumable); the tables are printed at the end.
A x1 model (``--model span-x1-restorer``, the restorer of full-size forms) is measured otherwise: each full-size
codec at ``--qualities`` (default 16-60), scored on its own decode and after the restorer, and the bytes the better
codec alone needs for the restored fidelity (its ladder interpolated): the bytes the restorer saves at equal
PSNR-Y, crop 2 as the x2 rows.

``--full-only`` measures the full-size ladders alone into ``--full-cache`` (a main run then reuses them: the
encoders are deterministic, so the bytes and scores are the same as measuring them again; the report says so).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photos import table
from bench_quality import PACKAGES, _megapixels, _package_files, _resized

from upscaler import media
from upscaler.config import Settings
from upscaler.engine import Engine, registry
from upscaler.metrics import psnr, ssim

RESULTS = Path(__file__).resolve().parent / "results"
LADDER = (2, 8, 16, 26, 36, 48, 60, 72, 84, 94)
FULL_CODECS = ("avif-420", "jxl")
BANDS = ((0.0, 0.02), (0.02, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.4))


def stock_of(model: str) -> tuple[str, int]:
    """The stock model a fine-tuned ``model`` started from, and its scale."""
    scale = registry.MODELS[model].scale
    return f"span-x{scale}", scale


def held_out(limit: int) -> list[Path]:
    photos, pngs = _package_files()
    if not photos and not pngs:
        raise SystemExit(f"no held-out images: apt-get install {' '.join(PACKAGES)}")
    step = max(1, len(photos) // limit)
    picked = photos[::step][:limit]
    picked += [p for p in pngs if _megapixels(p) >= 1.0][: limit - len(picked)]
    return picked


def _scores(ref: Image.Image, out: object, crop: int) -> dict[str, float]:
    return {"psnr": psnr(ref, out, crop_border=crop), "ssim": ssim(ref, out, crop_border=crop)}


def measure(
    engine: Engine, settings: Settings, name: str, ref: Image.Image, args: argparse.Namespace, full: dict | None = None
) -> dict:
    """One image: the downscaled forms restored three ways, and the full-size ladders (``full``: measured before)."""
    size = ref.size
    pixels = size[0] * size[1]
    stock, scale = stock_of(args.model)
    row: dict = {"name": name, "width": size[0], "height": size[1], "scale": scale, "stock": stock, "stored": []}
    small = engine.downscale(ref, float(scale))
    models = [stock, args.model]
    for i, quality in enumerate(args.qualities):
        blob = media.encode_stored(small, args.codec, quality, speed=settings.avif_speed, effort=settings.jxl_effort)
        lr = media.decode_stored(blob)
        entry: dict = {"quality": quality, "bytes": len(blob), "bpp": 8 * len(blob) / pixels, "seconds": {}}
        entry["bicubic"] = _scores(ref, engine.upscale(lr, size=size, model="bicubic"), scale)
        for model in models if i % 2 == 0 else models[::-1]:  # alternate which model runs first
            start = time.perf_counter()
            out = engine.upscale(lr, size=size, model=model)
            entry["seconds"][model] = time.perf_counter() - start
            entry[model] = _scores(ref, out, scale)
        row["stored"].append(entry)
    row["full"] = full or full_ladders(settings, ref, scale)
    row["full_cached"] = full is not None
    return row


def full_ladders(settings: Settings, ref: Image.Image, crop: int) -> dict[str, list[dict]]:
    """Full-size forms of ``ref`` at each :data:`LADDER` quality: bytes and scores (``crop`` border pixels left out,
    as for the downscaled forms they are compared with) on their own decode."""
    ladders: dict[str, list[dict]] = {}
    for codec in FULL_CODECS:
        ladder = []
        for quality in LADDER:
            blob = media.encode_stored(ref, codec, quality, speed=settings.avif_speed, effort=settings.jxl_effort)
            ladder.append({"quality": quality, "bytes": len(blob)} | _scores(ref, media.decode_stored(blob), crop))
        ladders[codec] = ladder
    return ladders


def at_bytes(ladder: list[dict], nbytes: int, key: str) -> float | None:
    """``key`` of a full-size codec interpolated in log(bytes) at ``nbytes``; None outside its ladder."""
    points = sorted((p["bytes"], p[key]) for p in ladder)
    for (b0, s0), (b1, s1) in itertools.pairwise(points):
        if b0 <= nbytes <= b1:
            if b1 == b0:
                return max(s0, s1)
            t = (math.log(nbytes) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return s0 + t * (s1 - s0)
    return None


def _mean(values: list[float | None]) -> str:
    kept = [v for v in values if v is not None]
    return f"{statistics.fmean(kept):.3f}" if kept else "-"


#: A point where some method restores the image (near) exactly: a flat graphic, whose PSNR (inf, 120 dB) would swamp
#: every mean. Such images are listed apart, not averaged.
DEGENERATE_DB = 60.0


def report(rows: list[dict], model: str) -> str:
    stock, scale = stock_of(model)
    lines = []
    flat = [r for r in rows if any(s[m]["psnr"] >= DEGENERATE_DB for s in r["stored"] for m in ("bicubic", model))]
    flat += [r for r in rows if r not in flat and any(s[stock]["psnr"] >= DEGENERATE_DB for s in r["stored"])]
    for r in flat:
        scores = "; ".join(
            f"q{s['quality']} {s['bpp']:.4f} bpp: bicubic {s['bicubic']['psnr']:.1f}, "
            f"stock {s[stock]['psnr']:.1f}, tuned {s[model]['psnr']:.1f} dB"
            for s in r["stored"]
        )
        lines.append(f"left out of the tables (restored near exactly, >= {DEGENERATE_DB:g} dB): {r['name']}: {scores}")
    rows = [r for r in rows if r not in flat]
    mp = statistics.fmean(r["width"] * r["height"] / 1e6 for r in rows)
    lines.append(
        f"{len(rows)} held-out images ({', '.join(PACKAGES)}), {mp:.2f} MP mean; x{scale} stored as "
        f"{rows[0].get('codec', '?')}; PSNR-Y/SSIM-Y (BT.601, crop {scale}), mean over images"
    )
    cached = sum(bool(r.get("full_cached")) for r in rows)
    if cached:
        lines.append(f"full-size ladders of {cached} images measured by an earlier --full-only pass (deterministic)")
    points = [(r, s) for r in rows for s in r["stored"]]
    qualities = sorted({s["quality"] for _, s in points})

    def full(r: dict, s: dict, codec: str, key: str) -> float | None:
        return at_bytes(r["full"][codec], s["bytes"], key)

    def best_full(r: dict, s: dict, key: str) -> float | None:
        found = [v for v in (full(r, s, c, key) for c in FULL_CODECS) if v is not None]
        return max(found) if found else None

    for key, label in (("psnr", "PSNR-Y dB"), ("ssim", "SSIM-Y")):
        headers = [f"x{scale} quality", "bpp", "bicubic", "stock SPAN", model, "tuned-stock", "tuned>stock"]
        headers += [f"full {c}" for c in FULL_CODECS] + ["tuned>best full", "stock>best full"]
        body = []
        for q in qualities:
            sel = [(r, s) for r, s in points if s["quality"] == q]
            diff = [s[model][key] - s[stock][key] for _, s in sel]
            bests = [(best_full(r, s, key), s) for r, s in sel]
            body.append(
                [
                    q,
                    _mean([s["bpp"] for _, s in sel]),
                    _mean([s["bicubic"][key] for _, s in sel]),
                    _mean([s[stock][key] for _, s in sel]),
                    _mean([s[model][key] for _, s in sel]),
                    f"{statistics.fmean(diff):+.3f}" if key == "psnr" else f"{statistics.fmean(diff):+.4f}",
                    f"{sum(d > 0 for d in diff)}/{len(diff)}",
                    *[_mean([full(r, s, c, key) for r, s in sel]) for c in FULL_CODECS],
                    f"{sum(b is not None and s[model][key] > b for b, s in bests)}/"
                    f"{sum(b is not None for b, _ in bests)}",
                    f"{sum(b is not None and s[stock][key] > b for b, s in bests)}/"
                    f"{sum(b is not None for b, _ in bests)}",
                ]
            )
        lines += [
            "",
            f"{label} by stored quality (full-size codecs interpolated to the same bytes per image; their means are",
            "over the images where the codec reaches those bytes, counted in the 'best full' denominators):",
        ]
        lines.append(table(headers, body))
    headers = ["bpp band", "points", "bicubic", "stock SPAN", model, "tuned-stock", "best full", "tuned-best full"]
    headers += ["tuned wins", "stock wins", "no full form"]
    body = []
    for lo, hi in BANDS:
        sel = [(r, s) for r, s in points if lo <= s["bpp"] < hi]
        if not sel:
            body.append([f"{lo}-{hi}", 0, *["-"] * 9])
            continue
        bests = [best_full(r, s, "psnr") for r, s in sel]
        paired = [(b, s) for b, (_, s) in zip(bests, sel, strict=True) if b is not None]
        body.append(
            [
                f"{lo}-{hi}",
                len(sel),
                _mean([s["bicubic"]["psnr"] for _, s in sel]),
                _mean([s[stock]["psnr"] for _, s in sel]),
                _mean([s[model]["psnr"] for _, s in sel]),
                f"{statistics.fmean(s[model]['psnr'] - s[stock]['psnr'] for _, s in sel):+.3f}",
                _mean([b for b, _ in paired]),
                f"{statistics.fmean(s[model]['psnr'] - b for b, s in paired):+.3f}" if paired else "-",
                f"{sum(s[model]['psnr'] > b for b, s in paired)}/{len(paired)}",
                f"{sum(s[stock]['psnr'] > b for b, s in paired)}/{len(paired)}",
                len(sel) - len(paired),
            ]
        )
    lines += [
        "",
        "PSNR-Y by bpp band (every image x quality point; 'best full': the better of the full-size codecs at the same",
        "bytes, on the points where one reaches them; wins: > it; 'no full form': points whose bytes are outside",
        f"both codecs' ladders (qualities {LADDER[0]}-{LADDER[-1]}), e.g. below the smallest full-size form):",
    ]
    lines.append(table(headers, body))
    ratios, per_mp = [], {stock: [], model: []}
    for r, s in points:
        mp_out = r["width"] * r["height"] / 1e6
        ratios.append(s["seconds"][model] / s["seconds"][stock])
        for m in per_mp:
            per_mp[m].append(s["seconds"][m] / mp_out)
    lines += [
        "",
        "Speed (ncnn, interleaved per stored form; seconds per output MP, median): "
        f"stock {statistics.median(per_mp[stock]):.2f}, {model} {statistics.median(per_mp[model]):.2f}; "
        f"ratio tuned/stock median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, "
        f"n={len(ratios)})",
    ]
    return "\n".join(lines)


#: Stored qualities of the full-size forms the x1 restorer is measured on (about 0.05-0.4 bpp on these images).
RESTORER_QUALITIES = (16, 26, 36, 48, 60)


def measure_restorer(engine: Engine, settings: Settings, name: str, ref: Image.Image, args: argparse.Namespace) -> dict:
    """One image: each full-size codec at each quality, scored on its own decode and after the x1 restorer."""
    size = ref.size
    row: dict = {"name": name, "width": size[0], "height": size[1], "scale": 1, "restored": {}}
    for codec in FULL_CODECS:
        points = []
        for quality in args.qualities:
            blob = media.encode_stored(ref, codec, quality, speed=settings.avif_speed, effort=settings.jxl_effort)
            decoded = media.decode_stored(blob)
            start = time.perf_counter()
            out = engine.upscale(decoded, scale=1, model=args.model)
            seconds = time.perf_counter() - start
            points.append(
                {
                    "quality": quality,
                    "bytes": len(blob),
                    "bpp": 8 * len(blob) / (size[0] * size[1]),
                    "plain": _scores(ref, decoded, 2),
                    "restored": _scores(ref, out, 2),
                    "seconds": seconds,
                }
            )
        row["restored"][codec] = points
    return row


def bytes_for(ladder: list[dict], score: float, key: str = "psnr") -> float | None:
    """Bytes a codec's ladder needs for ``score``, interpolated in log(bytes); None outside the ladder."""
    points = sorted((p["bytes"], p[key]) for p in ladder if math.isfinite(p[key]))
    for (b0, s0), (b1, s1) in itertools.pairwise(points):
        if min(s0, s1) <= score <= max(s0, s1) and s1 != s0:
            t = (score - s0) / (s1 - s0)
            return math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
    return None


def report_restorer(rows: list[dict], model: str) -> str:
    """By bpp band: each codec alone, with the restorer, and the bytes the best codec alone needs for the restored
    fidelity (its full ladder, interpolated)."""
    rows = [r for r in rows if not any(p["plain"]["psnr"] >= DEGENERATE_DB for c in r["restored"].values() for p in c)]
    points = [(r, c, p) for r in rows for c, ladder in r["restored"].items() for p in ladder]
    lines = [
        f"{len(rows)} held-out images; full-size AVIF 4:2:0 / JPEG XL at qualities "
        f"{sorted({p['quality'] for _, _, p in points})}, each restored by {model} (x1); PSNR-Y/SSIM-Y crop 2",
        "'bytes vs best alone' = these bytes / the bytes the better codec alone needs for the restored PSNR-Y",
        "(its ladder of qualities 2-94 interpolated; < 1 = the restorer saves bytes at equal fidelity)",
    ]
    headers = ["bpp band", "codec", "points", "alone PSNR-Y", "restored", "gain dB", "gain SSIM-Y", "restored better"]
    headers += ["bytes vs best alone (median)", "(min, max)"]
    body = []
    for lo, hi in BANDS[1:]:
        for codec in FULL_CODECS:
            sel = [(r, p) for r, c, p in points if c == codec and lo <= p["bpp"] < hi]
            if not sel:
                continue
            gains = [p["restored"]["psnr"] - p["plain"]["psnr"] for _, p in sel]
            ratios = []
            for r, p in sel:
                need = [bytes_for(r["full"][c], p["restored"]["psnr"]) for c in FULL_CODECS if c in r.get("full", {})]
                need = [n for n in need if n is not None]
                if need:
                    ratios.append(p["bytes"] / min(need))
            body.append(
                [
                    f"{lo}-{hi}",
                    codec,
                    len(sel),
                    _mean([p["plain"]["psnr"] for _, p in sel]),
                    _mean([p["restored"]["psnr"] for _, p in sel]),
                    f"{statistics.fmean(gains):+.3f}",
                    f"{statistics.fmean(p['restored']['ssim'] - p['plain']['ssim'] for _, p in sel):+.4f}",
                    f"{sum(g > 0 for g in gains)}/{len(gains)}",
                    f"{statistics.median(ratios):.3f}" if ratios else "-",
                    f"{min(ratios):.3f}, {max(ratios):.3f}" if ratios else "-",
                ]
            )
    lines.append(table(headers, body))
    per_mp = [p["seconds"] / (r["width"] * r["height"] / 1e6) for r, _, p in points]
    lines.append(f"Speed (ncnn): {statistics.median(per_mp):.2f} s per MP restored (median of {len(per_mp)})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--megapixels", type=float, default=1.05)
    parser.add_argument(
        "--qualities",
        default=None,
        help="stored qualities of the downscaled form (default 30,50,70,85; for a x1 model, of the full-size forms: "
        "16,26,36,48,60)",
    )
    parser.add_argument("--codec", default="avif", help="stored codec of the downscaled form")
    parser.add_argument("--model", default="span-x2-stored", help="the fine-tuned model (registry name)")
    parser.add_argument("--out", type=Path, default=RESULTS / "restoration.jsonl")
    parser.add_argument("--report", type=Path, nargs="+", default=None, help="only print the tables of results files")
    parser.add_argument("--part", default="0/1", help="i/n: this process measures every n-th image from the i-th")
    parser.add_argument(
        "--full-cache",
        type=Path,
        default=None,
        help="full-size ladders already measured (the encoders are deterministic: same bytes, same scores); default "
        "results/restoration_full.jsonl for x2 models, restoration_full_x4.jsonl for x4 (scored with that crop)",
    )
    parser.add_argument("--full-only", action="store_true", help="only measure the full-size ladders into the cache")
    args = parser.parse_args()
    if args.model not in registry.MODELS or registry.MODELS[args.model].scale not in (1, 2, 4):
        parser.error(f"--model must name a x1, x2 or x4 model of the registry, got {args.model!r}")
    scale = registry.MODELS[args.model].scale
    default = RESTORER_QUALITIES if scale == 1 else (30, 50, 70, 85)
    args.qualities = [int(q) for q in args.qualities.split(",")] if args.qualities else list(default)
    if args.full_cache is None:  # the x1 restorer is scored with crop 2 and compared with the x2 ladders
        args.full_cache = RESULTS / ("restoration_full.jsonl" if scale < 4 else f"restoration_full_x{scale}.jsonl")
    if args.report:
        rows = [json.loads(x) for path in args.report for x in path.read_text().splitlines() if x.strip()]
        unique = list({r["name"]: r for r in rows}.values())
        print(report_restorer(unique, args.model) if scale == 1 else report(unique, args.model))
        return
    settings = Settings.from_env({}, ncnn_threads=2)
    engine = Engine(settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        done = {json.loads(x)["name"] for x in args.out.read_text().splitlines() if x.strip()}
    part, parts = (int(x) for x in args.part.split("/"))
    paths = held_out(args.limit)[part::parts]
    print(f"{len(paths)} held-out images; results in {args.out}", flush=True)
    cached: dict[str, dict] = {}
    if args.full_cache.exists():
        cached = {r["name"]: r["full"] for r in map(json.loads, args.full_cache.read_text().splitlines()) if r}
    if args.full_only:
        with args.full_cache.open("a") as sink:
            for i, path in enumerate(paths):
                name = f"{path.parent.name}/{path.stem}"
                if name not in cached:
                    with Image.open(path) as img:
                        ref = _resized(img, args.megapixels)
                    ladders = full_ladders(settings, ref, max(2, scale))
                    sink.write(json.dumps({"name": name, "full": ladders}) + "\n")
                    sink.flush()
                    print(f"[{i + 1}/{len(paths)}] {name}: full-size ladders", flush=True)
        return
    with args.out.open("a") as sink:
        for i, path in enumerate(paths):
            name = f"{path.parent.name}/{path.stem}"
            if name in done:
                continue
            start = time.perf_counter()
            with Image.open(path) as img:
                ref = _resized(img, args.megapixels)
            if scale == 1:
                full = cached.get(name) or full_ladders(settings, ref, 2)
                row = measure_restorer(engine, settings, name, ref, args) | {"full": full}
                row["seconds_total"] = time.perf_counter() - start
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                p = row["restored"]["avif-420"][len(args.qualities) // 2]
                print(
                    f"[{i + 1}/{len(paths)}] {name}: avif-420 q{p['quality']} {p['plain']['psnr']:.2f} -> "
                    f"{p['restored']['psnr']:.2f} ({row['seconds_total']:.0f} s)",
                    flush=True,
                )
                continue
            row = measure(engine, settings, name, ref, args, cached.get(name)) | {"codec": args.codec}
            row["seconds_total"] = time.perf_counter() - start
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            s = row["stored"][len(row["stored"]) // 2]
            print(
                f"[{i + 1}/{len(paths)}] {name} {row['width']}x{row['height']}: q{s['quality']} bicubic "
                f"{s['bicubic']['psnr']:.2f} stock {s[row['stock']]['psnr']:.2f} tuned {s[args.model]['psnr']:.2f} "
                f"({row['seconds_total']:.0f} s)",
                flush=True,
            )
    rows = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()]
    print(report_restorer(rows, args.model) if scale == 1 else report(rows, args.model))


if __name__ == "__main__":
    main()
