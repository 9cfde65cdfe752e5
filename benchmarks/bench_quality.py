"""Quality-targeted storage against the best single codec, on held-out images of at least 1 MP.

    .venv/bin/python benchmarks/bench_quality.py [--limit 20] [--megapixels 1.5] [--out benchmarks/results/q.jsonl]
    .venv/bin/python benchmarks/bench_quality.py --report benchmarks/results/q.jsonl   # tables from a (partial) run

Images: desktop wallpapers from Debian packages that no model or setting was tuned on (``mate-backgrounds``,
``ukui-wallpapers``: ``apt-get install mate-backgrounds ukui-wallpapers``; photos are their JPEGs, graphics their
PNGs), plus generated graphics (a chart, text, a colour map), each resized to about ``--megapixels`` and given as
a JPEG q90 original — what most archives hold. Without the packages it falls back to scikit-image's photographs
upscaled to the same size (training data of the project, so *not* held out) and says so.

Per image, in one run (every fidelity measured on a real retrieval through the service's code path):

* targeted, exact search and fast search (``psnr:35`` / ``psnr:35:fast``): stored bytes, decision seconds per MP,
  model runs;
* each single codec at full size tuned to the target by an integer-quality search — AVIF 4:2:0, AVIF 4:4:4,
  JPEG XL, WebP — measured through the same retrieval (re-encoded to the original's format, as the user gets it
  back), and the per-image best of those; plus AVIF 4:2:0 scored on its own decode (a plain encoder serving its
  own file), for reference;
* the exact tier (``exact``) on the JPEG originals and on the packages' own PNG files: bytes saved, SHA-256 equal;
* byte budgets ``bpp:0.03/0.05/0.1/0.2``: PSNR-Y reached, next to full-size AVIF and JPEG XL within the same budget.

``--models`` measures instead targeted storage with the stock models only against the same search with the
fine-tuned models added (UPSCALER_TARGET_MODELS=span-x2-stored, issue 19): stored bytes, whether each image still
meets the target on a retrieval, and model runs.

``--searches`` measures instead the exact search's two ways of placing its model runs, interleaved per image and
target (A B, then B A on the next): bisection on the real retrieval (``guided=False``, the reference) against the
guided search (bicubic's scores corrected by the model's gain; the default). Each decision starts from no encodes.
Printed: stored bytes (total, ratio, worst image), model runs and seconds per MP, mean and max.

Results go to a JSON-lines file, one line per image (a run can be stopped and resumed: images already there are
skipped); the tables are printed at the end, or from the file with ``--report``. The machine was a shared 2-core
CPU: times are indicative.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _photos import table

from upscaler import media
from upscaler.config import Settings
from upscaler.engine import Engine, registry
from upscaler.errors import InvalidInput
from upscaler.providers import open_provider
from upscaler.quality import Candidate, Target, choose_form
from upscaler.service import S3CommonUpscaler
from upscaler.store.local import LocalFolderStore

PACKAGES = ("mate-backgrounds", "ukui-wallpapers")
TARGETS = ("psnr:32", "psnr:35", "psnr:38", "psnr:40", "ssim:0.95")
SINGLE = ("avif-420", "avif", "jxl", "webp")
BUDGETS = ("bpp:0.03", "bpp:0.05", "bpp:0.1", "bpp:0.2")
RESULTS = Path(__file__).resolve().parent / "results"


# ---- images -------------------------------------------------------------------------------------------------------


def _package_files() -> tuple[list[Path], list[Path]]:
    """(photos, graphics) shipped by the held-out packages: their JPEG and PNG files."""
    files: list[Path] = []
    for package in PACKAGES:
        try:
            listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        files += [Path(p) for p in listing.splitlines() if Path(p).suffix.lower() in (".jpg", ".png")]
    files = sorted({p for p in files if p.is_file() and "_3840x" not in p.name and "_5640x" not in p.name})
    files = [p for p in files if p.suffix.lower() == ".jpg" or _megapixels(p) <= 3.0]  # PNGs kept as they are
    return [p for p in files if p.suffix.lower() == ".jpg"], [p for p in files if p.suffix.lower() == ".png"]


def _megapixels(path: Path) -> float:
    with Image.open(path) as img:
        return img.width * img.height / 1e6


def _resized(img: Image.Image, megapixels: float) -> Image.Image:
    """About ``megapixels``, each side a multiple of 4 (x2/x4 downscales are exact)."""
    if img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        img = flat
    img = img.convert("RGB")
    factor = math.sqrt(megapixels * 1e6 / (img.width * img.height))
    size = (max(4, round(img.width * factor / 4) * 4), max(4, round(img.height * factor / 4) * 4))
    return img.resize(size, Image.Resampling.LANCZOS)


def _generated(megapixels: float) -> list[tuple[str, Image.Image]]:
    width = round(math.sqrt(megapixels * 1e6 * 4 / 3) / 4) * 4
    height = width * 3 // 4
    chart = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(chart)
    for i in range(12):
        h = int((0.2 + 0.06 * ((i * 37) % 12)) * height)
        x0 = 40 + i * (width - 80) // 12
        d.rectangle([x0, height - h, x0 + (width - 80) // 14, height - 30], fill=(30 * i % 255, 90, 200 - 15 * i))
    d.line([(30, 20), (30, height - 30), (width - 20, height - 30)], fill="black", width=3)
    text = Image.new("RGB", (width, height), (250, 248, 240))
    d = ImageDraw.Draw(text)
    for row in range(height // 14):
        d.text((10, 4 + row * 14), "Storage saved is money saved; fidelity is what users keep. " * 4, fill=(20,) * 3)
    y, x = np.mgrid[0:height, 0:width]
    cmap = np.stack([(x * 255 // width), (y * 510 // height) % 256, ((x + y) * 3) % 256], axis=2).astype(np.uint8)
    return [("generated/chart", chart), ("generated/text", text), ("generated/colormap", Image.fromarray(cmap))]


def images(limit: int, megapixels: float, graphics: int) -> tuple[list[tuple[str, str, bytes]], list[Path], str]:
    """([(name, kind, JPEG q90 bytes)], the packages' PNG files, where the images came from)."""
    photo_files, png_files = _package_files()
    out: list[tuple[str, str, bytes]] = []
    if photo_files:
        source = f"held-out Debian packages {', '.join(PACKAGES)} (+ generated graphics)"
        graphics_files = png_files[:: max(1, len(png_files) // max(graphics, 1))][:graphics]
        picked = [(p, "photo") for p in photo_files[: max(0, limit - graphics - 3)]]
        picked += [(p, "graphic") for p in graphics_files]
        for path, kind in picked:
            with Image.open(path) as img:
                out.append((f"{path.parent.name}/{path.stem}", kind, _jpeg(_resized(img, megapixels))))
    else:
        from _photos import photos

        source = (
            f"FALLBACK: {', '.join(PACKAGES)} not installed; scikit-image photographs upscaled (training data, NOT "
            "held out) + generated graphics"
        )
        for name, img in photos(limit=max(0, limit - 3), include_shared=False):
            out.append((name, "photo", _jpeg(_resized(img, megapixels))))
    out += [(name, "graphic", _jpeg(img)) for name, img in _generated(megapixels)][: max(0, limit - len(out))]
    photos_, graphics_ = [x for x in out if x[1] == "photo"], [x for x in out if x[1] == "graphic"]
    step = max(1, len(photos_) // max(1, len(graphics_)))  # graphics spread out: a partial run has some
    mixed = [
        x
        for i, p in enumerate(photos_)
        for x in ([p] + ([graphics_.pop(0)] if (i + 1) % step == 0 and graphics_ else []))
    ]
    return (mixed + graphics_)[:limit], png_files, source


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ---- measuring one image ------------------------------------------------------------------------------------------


def measure(
    svc: S3CommonUpscaler, name: str, kind: str, data: bytes, targets: tuple[str, ...], shared: dict, timed: bool
) -> dict:
    """One image, every target. ``shared`` holds the encodes made of this image (encoders are deterministic, so
    sharing them changes no result, only the time); a ``timed`` image's exact and fast searches start from no
    encodes, as a store does, so that their seconds are the real cost of deciding."""
    decoded = media.decode(data, svc.limits)
    pixels, record = decoded.pixels, decoded.record
    megapixels = record.width * record.height / 1e6
    row: dict = {"name": name, "kind": kind, "bytes": len(data), "megapixels": megapixels, "targets": {}}
    row["timed"] = timed

    def direct(scale: float, codec: str, quality: int) -> bytes:
        return media.encode_stored(pixels, codec, quality, speed=svc.settings.avif_speed)

    for text in targets:
        goal = Target.parse(text)
        exact = svc.decide(data, goal, cache=None if timed else shared)
        fast = svc.decide(data, Target(goal.metric, goal.value, "fast"), cache=None if timed else shared)
        single = svc.decide(
            data, goal, forms=tuple(Candidate(1.0, c) for c in SINGLE), prune=False, keep_original=False, cache=shared
        )
        own = choose_form(
            pixels,
            data,
            goal,
            direct,
            lambda s, b: media.decode_stored(b),
            forms=(Candidate(1.0, "avif-420"),),
            keep_original=False,
            cache=shared,
        )
        row["targets"][text] = {
            "exact": _form(exact) | {"s_per_mp": exact.seconds_per_megapixel, "model_runs": exact.model_runs},
            "fast": _form(fast) | {"s_per_mp": fast.seconds_per_megapixel, "model_runs": fast.model_runs},
            "single": {codec: _plain(single.best_of.get(f"x1 {codec}")) for codec in SINGLE},
            "avif-420 own decode": _plain(own.best_of.get("x1 avif-420")),
        }
    return row


def budgets(svc: S3CommonUpscaler, data: bytes, shared: dict) -> dict:
    out = {}
    for text in BUDGETS:
        try:
            targeted = svc.decide(data, text, cache=shared)
        except Exception as exc:  # a budget nothing fits
            out[text] = {"error": str(exc)}
            continue
        forms = (Candidate(1.0, "avif-420"), Candidate(1.0, "jxl"))
        try:
            full = svc.decide(data, text, forms=forms, keep_original=False, prune=False, cache=shared)
            best_of = full.best_of
        except InvalidInput:  # even quality 1 at full size is over the budget
            best_of = {}
        out[text] = {
            "targeted": _form(targeted),
            "avif-420": _plain(best_of.get("x1 avif-420")),
            "jxl": _plain(best_of.get("x1 jxl")),
        }
    return out


def exact_tier(svc: S3CommonUpscaler, key: str, data: bytes) -> dict:
    stored = svc.store_image(data, bucket="bench", key=key, target="exact")
    back = svc.retrieve_image(bucket="bench", key=key)
    same = hashlib.sha256(back.data).hexdigest() == hashlib.sha256(data).hexdigest()
    svc.delete_image(bucket="bench", key=key)
    return {"bytes": len(data), "stored": stored.record.stored_bytes, "codec": stored.record.stored_codec, "same": same}


def _names(path: Path | None) -> set[str]:
    if path is None or not path.exists():
        return set()
    return {json.loads(x).get("name") for x in path.read_text().splitlines() if x.strip()}


def _form(decision) -> dict:
    model = f" {decision.form.model}" if decision.form.model else ""
    label = f"x{decision.form.scale:g} {decision.form.codec} q{decision.form.quality}{model}"
    return {"form": label} | _plain(decision.form)


def _measured(decision) -> dict:
    """A decision's form, its model, cost and whether it meets its target (on the retrieval it measured)."""
    return _form(decision) | {
        "model": decision.form.model,
        "s_per_mp": decision.seconds_per_megapixel,
        "model_runs": decision.model_runs,
        "met": decision.target.met(decision.form.score),
    }


#: The fine-tuned models ``--models`` adds to the search (UPSCALER_TARGET_MODELS): every one the registry lists.
TUNED_MODELS = tuple(name for name, spec in registry.MODELS.items() if spec.family == "span-stored")


def models(stock: S3CommonUpscaler, tuned: S3CommonUpscaler, name: str, data: bytes, targets: tuple[str, ...]) -> dict:
    """One image: per target, the exact search with the stock models only and with :data:`TUNED_MODELS` added,
    sharing the encodes (deterministic); each choice's fidelity is that of a real retrieval."""
    row: dict = {"name": name, "models": {}}
    shared: dict = {}
    for text in targets:
        cell = {}
        for label, svc in (("stock", stock), ("tuned", tuned)):
            cell[label] = _measured(svc.decide(data, text, cache=shared))
        row["models"][text] = cell
    return row


def report_models(rows: list[dict]) -> None:
    targets = [t for t in TARGETS if all(t in r["models"] for r in rows)]
    out = []
    for t in targets:
        cells = [r["models"][t] for r in rows]
        stock, tuned = [c["stock"] for c in cells], [c["tuned"] for c in cells]
        ratios = [b["bytes"] / a["bytes"] for a, b in zip(stock, tuned, strict=True)]
        chose = [b["model"] for b in tuned if b["model"]]
        out.append(
            [
                t,
                len(cells),
                sum(a["bytes"] for a in stock),
                sum(b["bytes"] for b in tuned),
                sum(b["bytes"] for b in tuned) / sum(a["bytes"] for a in stock),
                statistics.median(ratios),
                min(ratios),
                max(ratios),
                ", ".join(f"{m} {chose.count(m)}" for m in sorted(set(chose))) or "0",
                f"{sum(a['met'] for a in stock)}/{sum(b['met'] for b in tuned)}",
                statistics.mean(a["model_runs"] for a in stock),
                statistics.mean(b["model_runs"] for b in tuned),
            ]
        )
    print(f"\nTargeted storage with the fine-tuned models added to the search ({', '.join(TUNED_MODELS)}), per target:")
    print("stored bytes of the exact search's choice with the stock models only and with them added; 'chose tuned' =")
    print("images whose chosen form restores with a fine-tuned model; met = images meeting the target on a retrieval")
    print("ratio = total bytes with / without them (the largest images weigh most); median image = the per-image")
    print("ratio's median, each image an object stored for itself")
    headers = ["target", "images", "stock bytes", "with tuned", "ratio", "median image", "best image", "worst image"]
    print(table([*headers, "chose tuned", "met stock/tuned", "model runs stock", "model runs tuned"], out))


def _plain(form) -> dict:
    if form is None:
        return {"bytes": None, "score": None}
    return {"bytes": form.bytes, "score": None if math.isinf(form.score) else form.score}


# ---- report -------------------------------------------------------------------------------------------------------


def report(rows: list[dict], source: str) -> None:
    print(
        f"{len(rows)} images ({sum(r['kind'] == 'photo' for r in rows)} photos, "
        f"{sum(r['kind'] == 'graphic' for r in rows)} graphics), {source}"
    )
    mp = [r["megapixels"] for r in rows]
    print(f"JPEG q90 originals, {min(mp):.2f}-{max(mp):.2f} MP; PSNR-Y/SSIM-Y over the whole image on the retrieval")
    targets = [t for t in TARGETS if all(t in r["targets"] for r in rows)]
    headers = [
        "target",
        "targeted exact",
        "targeted fast",
        *SINGLE,
        "best single",
        "exact/best",
        "worst image",
        "fast/exact",
        "AVIF 4:2:0 own decode",
    ]
    out = []
    for t in targets:
        cells = [r["targets"][t] for r in rows]
        exact = sum(c["exact"]["bytes"] for c in cells)
        fast = sum(c["fast"]["bytes"] for c in cells)
        originals = [r["bytes"] for r in rows]
        singles = {k: [c["single"][k]["bytes"] for c in cells] for k in SINGLE}
        best = [
            min((b for b in (c["single"][k]["bytes"] for k in SINGLE) if b is not None), default=None) for c in cells
        ]
        # an image no single codec reaches at full size keeps the original file (its bytes): what a user would store
        best_or_original = [_or(b, n) for b, n in zip(best, originals, strict=True)]
        worst = max(c["exact"]["bytes"] / b for c, b in zip(cells, best_or_original, strict=True))
        own = [c["avif-420 own decode"]["bytes"] for c in cells]
        totals = [_total(v, originals) for v in singles.values()]
        best_total = sum(best_or_original)
        ratios = [f"{exact / best_total:.3f}", f"{worst:.3f}", f"{fast / exact:.3f}"]
        out.append([t, f"{exact:,}", f"{fast:,}", *totals, f"{best_total:,}", *ratios, _total(own, originals)])
    print("\nStored bytes, totals over the images (a single codec's total is marked * when it cannot reach the")
    print("target on some image; those images count the original's bytes):")
    print(table(headers, out))
    cost = []
    timed = [r for r in rows if r.get("timed", True)]
    for search in ("exact", "fast"):
        per_mp = [r["targets"][t][search]["s_per_mp"] for r in timed for t in targets]
        runs = [r["targets"][t][search]["model_runs"] for r in rows for t in targets]
        cost.append(
            [
                search,
                f"{statistics.fmean(per_mp):.1f}" if per_mp else "-",
                f"{max(per_mp):.1f}" if per_mp else "-",
                f"{statistics.fmean(runs):.1f}",
                f"{max(runs)}",
            ]
        )
    print(
        f"\nCost of deciding (2 CPU cores shared with other work; seconds on the {len(timed)} timed images, model runs"
    )
    print("on all; the other images' searches reuse encodes made for the same image, which changes no result):")
    print(table(["search", "s/MP mean", "s/MP max", "model runs mean", "model runs max"], cost))
    tiers = [r["exact_jpeg"] for r in rows if "exact_jpeg" in r] + [r["exact_png"] for r in rows if "exact_png" in r]
    if tiers:
        print("\nExact tier (target 'exact'):")
        out = []
        for label, field in (("JPEG q90", "exact_jpeg"), ("PNG (the packages' files)", "exact_png")):
            picked = [r[field] for r in rows if field in r]
            if not picked:
                continue
            total, stored = sum(p["bytes"] for p in picked), sum(p["stored"] for p in picked)
            codecs = sorted({p["codec"] for p in picked})
            out.append(
                [
                    label,
                    len(picked),
                    f"{total:,}",
                    f"{stored:,}",
                    f"{100 * (1 - stored / total):.1f}%",
                    f"{sum(p['same'] for p in picked)}/{len(picked)}",
                    ", ".join(codecs),
                ]
            )
        print(table(["originals", "files", "bytes", "stored", "saved", "sha256 equal", "forms"], out))
    budget_rows = []
    for b in BUDGETS:
        cells = [r["budgets"][b] for r in rows if b in r.get("budgets", {}) and "targeted" in r["budgets"][b]]
        if not cells:
            continue
        line = [b, len(cells), f"{statistics.fmean(min(_value(c['targeted']), 60.0) for c in cells):.2f}"]
        for key in ("avif-420", "jxl"):
            fits = [c for c in cells if c[key]["bytes"] is not None]
            finite = [(_value(c["targeted"]), _value(c[key])) for c in fits]
            finite = [(t, a) for t, a in finite if math.isfinite(t) and math.isfinite(a)]
            deltas = [t - a for t, a in finite]
            line += [
                f"{len(fits)}",
                f"{statistics.fmean(a for _, a in finite):.2f}" if finite else "-",
                f"{statistics.fmean(deltas):+.2f} / {min(deltas):+.2f}" if deltas else "-",
                f"{sum(_ge(c['targeted'], c[key]) for c in fits)}/{len(fits)}",
            ]
        line.append(f"{sum(1 for c in cells if not c['targeted']['form'].startswith('x1 '))}/{len(cells)}")
        budget_rows.append(line)
    if budget_rows:
        print("\nByte budgets: PSNR-Y after retrieval. Full-size AVIF 4:2:0 / JPEG XL: on how many images some")
        print("quality fits the budget, their mean PSNR-Y there, targeted minus it on the same images (mean / worst;")
        print("forms that restore exactly are left out of the means), and on how many targeted is as faithful or more:")
        headers = ["budget", "images", "targeted (mean, exact as 60)"]
        for name in ("AVIF", "JXL"):
            headers += [f"{name} fits", f"{name} PSNR-Y", f"targeted - {name}", f"targeted >= {name}"]
        print(table([*headers, "downscaled"], budget_rows))


def _value(form: dict) -> float:
    """PSNR-Y of a form (no form within the budget: -inf; exact: inf)."""
    if form["bytes"] is None:
        return -math.inf
    return math.inf if form["score"] is None else form["score"]


def _ge(a: dict, b: dict) -> bool:
    """Whether form ``a`` is at least as faithful as ``b``."""
    return _value(a) >= _value(b)


def _or(value: int | None, original: int) -> int:
    return original if value is None else value


def _total(values: list, originals: list[int]) -> str:
    total = sum(_or(v, n) for v, n in zip(values, originals, strict=True))
    return f"{total:,}" + ("*" if any(v is None for v in values) else "")


# ---- guided vs bisected -------------------------------------------------------------------------------------------


def searches(svc: S3CommonUpscaler, name: str, data: bytes, targets: tuple[str, ...], flip: bool) -> dict:
    """One image: per target, the exact search bisecting (reference) and guided, in alternating order."""
    row: dict = {"name": name, "searches": {}}
    for j, text in enumerate(targets):
        cell = {}
        order = (False, True) if (j + flip) % 2 == 0 else (True, False)
        for guided in order:
            cell["guided" if guided else "bisected"] = _measured(svc.decide(data, text, guided=guided))
        row["searches"][text] = cell
    return row


def report_searches(rows: list[dict]) -> None:
    targets = [t for t in TARGETS if all(t in r["searches"] for r in rows)]
    out = []
    for t in [*targets, "all"]:
        cells = [r["searches"][x] for r in rows for x in (targets if t == "all" else [t])]
        bis, gui = [c["bisected"] for c in cells], [c["guided"] for c in cells]
        total_b, total_g = sum(c["bytes"] for c in bis), sum(c["bytes"] for c in gui)
        ratios = [g["bytes"] / b["bytes"] for g, b in zip(gui, bis, strict=True)]
        same = sum(g["form"] == b["form"] for g, b in zip(gui, bis, strict=True))
        runs_b, runs_g = [c["model_runs"] for c in bis], [c["model_runs"] for c in gui]
        spm_b, spm_g = [c["s_per_mp"] for c in bis], [c["s_per_mp"] for c in gui]
        out.append(
            [
                t,
                len(cells),
                f"{total_b:,}",
                f"{total_g:,}",
                f"{total_g / total_b:.3f}",
                f"{min(ratios):.3f}-{max(ratios):.3f}",
                f"{same}/{len(cells)}",
                f"{sum(c['met'] for c in gui)}/{len(cells)}",
                f"{statistics.fmean(runs_b):.1f} / {max(runs_b)}",
                f"{statistics.fmean(runs_g):.1f} / {max(runs_g)}",
                f"{statistics.fmean(spm_b):.1f} / {max(spm_b):.1f}",
                f"{statistics.fmean(spm_g):.1f} / {max(spm_g):.1f}",
                f"{sum(spm_g) / sum(spm_b):.2f}",
            ]
        )
    print(f"\nExact search, bisected (reference) vs guided, {len(rows)} images, interleaved, each from no encodes:")
    headers = [
        "target",
        "decisions",
        "bytes bisected",
        "bytes guided",
        "guided/bisected",
        "per image",
        "same form",
        "guided met",
        "runs bisected (mean/max)",
        "runs guided (mean/max)",
        "s/MP bisected (mean/max)",
        "s/MP guided (mean/max)",
        "time guided/bisected",
    ]
    print(table(headers, out))


# ---- main ---------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=20, help="images (default 20: 16 photos + 4 graphics)")
    parser.add_argument("--graphics", type=int, default=1, help="of which the packages' PNG graphics (default 1)")
    parser.add_argument("--megapixels", type=float, default=1.5, help="size of each image (default 1.5)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--no-budgets", action="store_true", help="skip the byte-budget table")
    parser.add_argument(
        "--timed", type=int, default=4, help="images whose searches start with no encodes (timed; default 4)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_quality.jsonl")
    parser.add_argument("--report", type=Path, nargs="+", help="only print the tables of results files (merged)")
    parser.add_argument(
        "--reverse", action="store_true", help="last image first (a second process, with --also, takes the other end)"
    )
    parser.add_argument("--also", type=Path, help="another run's results file: images already there are skipped")
    parser.add_argument(
        "--models",
        action="store_true",
        help="stock models vs the fine-tuned ones added to the search (results: bench_quality_models.jsonl)",
    )
    parser.add_argument(
        "--searches",
        action="store_true",
        help="guided vs bisected exact search instead (default results file bench_quality_searches.jsonl)",
    )
    args = parser.parse_args()
    if args.searches and args.out == RESULTS / "bench_quality.jsonl":
        args.out = RESULTS / "bench_quality_searches.jsonl"
    if args.models and args.out == RESULTS / "bench_quality.jsonl":
        args.out = RESULTS / "bench_quality_models.jsonl"
    if args.report:
        lines = [json.loads(x) for path in args.report for x in path.read_text().splitlines() if x.strip()]
        if any("searches" in x for x in lines):
            report_searches(list({x["name"]: x for x in lines if "searches" in x}.values()))
        if any("models" in x for x in lines):
            report_models(list({x["name"]: x for x in lines if "models" in x}.values()))
        rows = list({x["name"]: x for x in lines if "targets" in x}.values())
        if rows:
            report(rows, next((x["source"] for x in lines if "source" in x), "?"))
        return
    settings = Settings.from_env({}, ncnn_threads=2)
    engine = Engine(settings)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    picked, pngs, source = images(args.limit, args.megapixels, args.graphics)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        done = {json.loads(x).get("name") for x in args.out.read_text().splitlines() if x.strip()}
    print(f"{len(picked)} images from {source}; results in {args.out}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, args.out.open("a") as sink:
        if not done:
            sink.write(json.dumps({"source": source}) + "\n")
        svc = S3CommonUpscaler(LocalFolderStore(Path(tmp)), open_provider(settings, engine), engine, settings)
        with_tuned = settings.replace(target_models=TUNED_MODELS)
        tuned = S3CommonUpscaler(LocalFolderStore(Path(tmp)), open_provider(with_tuned, engine), engine, with_tuned)
        order = list(enumerate(picked))
        for i, (name, kind, data) in reversed(order) if args.reverse else order:
            if name in done | _names(args.also):
                continue
            start = time.perf_counter()
            if args.models:
                row = models(svc, tuned, name, data, targets)
                row["seconds"] = time.perf_counter() - start
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                print(f"[{i + 1}/{len(picked)}] {name}: {row['seconds']:.0f} s", flush=True)
                continue
            if args.searches:
                row = searches(svc, name, data, targets, flip=bool(i % 2))
                row["seconds"] = time.perf_counter() - start
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                print(f"[{i + 1}/{len(picked)}] {name}: {row['seconds']:.0f} s", flush=True)
                continue
            shared: dict = {}
            row = measure(svc, name, kind, data, targets, shared, timed=i < args.timed)
            row["exact_jpeg"] = exact_tier(svc, f"{i}.jpg", data)
            if i < len(pngs):
                row["exact_png"] = exact_tier(svc, f"{i}.png", pngs[i].read_bytes())
            if not args.no_budgets:
                row["budgets"] = budgets(svc, data, shared)
            row["seconds"] = time.perf_counter() - start
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(f"[{i + 1}/{len(picked)}] {name}: {row['seconds']:.0f} s", flush=True)
    lines = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()]
    if args.searches:
        report_searches([x for x in lines if "searches" in x])
    elif args.models:
        report_models([x for x in lines if "models" in x])
    else:
        report([x for x in lines if "targets" in x], source)


if __name__ == "__main__":
    main()
