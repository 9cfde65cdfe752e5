"""The quality test bench (testing/) against the real service (gunicorn, TLS verified, loopback), its HTML report in
headless Chromium, its scores, and the storage plan."""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from testing import fidelity, report, storage_plan, testBenchClient, testHelp
from tests.servers import ROOT
from upscaler import media

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
#: Images only: no video worker beside the API (it takes seconds to stop).
SERVICE_ENV = {"UPSCALER_VIDEO_WORKERS": "0"}
PERCENT = re.compile(r"^\d{1,3}%$")


def _photo(name: str, box: tuple[int, int, int, int]) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).crop(box)


def _graphic(size: tuple[int, int] = (160, 120)) -> Image.Image:
    """Generated: gradients, shapes and text (edges SR has to restore)."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    img = Image.fromarray(np.stack([x * 255 // size[0], y * 255 // size[1], (x ^ y) % 256], 2).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((20, 20, 90, 90), outline="white", width=3)
    draw.text((8, 100), "test bench 0123", fill="black")
    return img


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as people have them: nested, duplicate names, upper-case extensions, a wrong extension, a broken
    file, and a text file that is not an image."""
    root = tmp_path_factory.mktemp("bench-images")
    for sub in ("a", "b", "nested/deeper"):
        (root / sub).mkdir(parents=True)
    _photo("astronaut", (160, 40, 352, 232)).save(root / "a" / "photo.jpg", quality=92)  # 192x192
    _photo("coffee", (200, 100, 456, 292)).save(root / "b" / "photo.jpg", quality=92)  # same name, other folder
    _photo("chelsea", (100, 40, 292, 232)).save(root / "nested" / "deeper" / "CAT.PNG")  # upper-case extension
    _photo("camera", (128, 64, 320, 256)).save(root / "Grey.JPG", quality=90)  # grey, upper-case
    _graphic().save(root / "graphic.png")
    _photo("rocket", (200, 100, 360, 220)).save(root / "really-a-png.jpg", format="PNG")  # wrong extension
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 200)  # JPEG magic, then nothing
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def bench_run(tls_service: tuple[str, Path], images: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """testHelp.py then testBenchClient.py, each run as a script from the repository root, as the original was."""
    url, cert = tls_service
    work = tmp_path_factory.mktemp("bench-run")
    csv_path = work / "testFile.csv"
    helper = subprocess.run(
        [sys.executable, "testing/testHelp.py", str(images), "-o", str(csv_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helper.returncode == 0, helper.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_")}
    options = ["--out", str(work / "TestResults"), "--workers", "2", "--bucket", "media"]
    bench = subprocess.run(
        [sys.executable, "testing/testBenchClient.py", str(csv_path), "--url", url, "--ca-bundle", str(cert), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    folders = list((work / "TestResults").iterdir())
    assert len(folders) == 1, (bench.stdout, bench.stderr)
    rows = _csv_rows(folders[0] / "testResults.csv")
    with open(folders[0] / "testResults.csv", newline="") as fh:
        header = next(csv.reader(fh))
    return {
        "csv": csv_path,
        "proc": bench,
        "out": folders[0],
        "header": header,
        "rows": {Path(r["path"]).relative_to(images).as_posix(): r for r in rows},
    }


# ---- testHelp.py ---------------------------------------------------------------------------------------------


def test_test_help_lists_every_image_whatever_the_case(bench_run: dict) -> None:
    listed = testHelp.read_csv(bench_run["csv"])
    assert bench_run["csv"].read_text().splitlines()[0] == "image_path"
    names = sorted(Path(p).name for p in listed)
    assert names == ["CAT.PNG", "Grey.JPG", "broken.jpg", "graphic.png", "photo.jpg", "photo.jpg", "really-a-png.jpg"]


# ---- testBenchClient.py: the CSV, the files, the scores ----------------------------------------------------


def test_results_csv_keeps_the_original_columns_first(bench_run: dict) -> None:
    assert bench_run["header"][:3] == ["path", "destPath", "testResults"]
    assert set(testBenchClient.report.CSV_COLUMNS) == set(bench_run["header"])
    ok = [r for r in bench_run["rows"].values() if r["status"] == "ok"]
    assert len(ok) == 6
    for row in ok:
        assert PERCENT.match(row["testResults"]), row["testResults"]
        assert Path(row["destPath"]).is_file() and bench_run["out"] in Path(row["destPath"]).parents
    assert bench_run["out"].parent.name == "TestResults"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", bench_run["out"].name)  # TestResults/<timestamp>/


def test_a_broken_image_is_recorded_and_the_run_goes_on(bench_run: dict) -> None:
    broken = bench_run["rows"]["broken.jpg"]
    assert broken["status"] == "failed" and broken["error"].startswith("store: 422")
    assert broken["destPath"] == "" and broken["testResults"] == ""
    assert bench_run["proc"].returncode == 1  # some image failed; everything else was measured and written
    assert "FAILED" in bench_run["proc"].stdout and "broken.jpg" in bench_run["proc"].stdout


def test_duplicate_names_get_unique_keys_and_files(bench_run: dict) -> None:
    a, b = bench_run["rows"]["a/photo.jpg"], bench_run["rows"]["b/photo.jpg"]
    assert a["key"] != b["key"] and a["key"].endswith("a/photo.jpg") and b["key"].endswith("b/photo.jpg")
    assert a["destPath"] != b["destPath"]
    assert Path(a["destPath"]).read_bytes() != Path(b["destPath"]).read_bytes()
    keys = [r["key"] for r in bench_run["rows"].values()]
    assert len(set(keys)) == len(keys)


def test_results_are_saved_with_the_extension_of_their_format(bench_run: dict) -> None:
    for row in bench_run["rows"].values():
        if row["status"] != "ok":
            continue
        dest = Path(row["destPath"])
        fmt = media.sniff(dest.read_bytes())
        assert fmt == row["format"]
        assert dest.suffix.lower() in ({".jpg", ".jpeg"} if fmt == "JPEG" else {media.extension_for(fmt)})
    assert Path(bench_run["rows"]["really-a-png.jpg"]["destPath"]).name == "really-a-png.png"
    assert Path(bench_run["rows"]["nested/deeper/CAT.PNG"]["destPath"]).name == "CAT.PNG"


def test_scores_bytes_and_times_are_real(bench_run: dict) -> None:
    for name, row in bench_run["rows"].items():
        if row["status"] != "ok":
            continue
        w, h = int(row["width"]), int(row["height"])
        stored, original = int(row["stored_bytes"]), int(row["original_bytes"])
        assert stored < original and row["stored_codec"] == "avif" and row["scale"] == "4"
        assert float(row["bpp"]) == pytest.approx(stored * 8 / (w * h), abs=1e-4)
        assert float(row["saved_percent"]) == pytest.approx(100 * (1 - stored / original), abs=0.01)
        assert 18 < float(row["psnr_y"]) < 45 and 0.3 < float(row["ssim_y"]) <= 1, name
        assert 18 < float(row["bicubic_psnr_y"]) < 45, name
        assert row["fullsize_codec"] == "avif" and 1 <= int(row["fullsize_quality"]) <= 100
        assert abs(int(row["fullsize_bytes"]) - stored) <= max(0.25 * stored, 400), name  # bisected to the bytes
        assert 18 < float(row["fullsize_psnr_y"]) < 60, name
        assert float(row["store_s"]) > 0 and float(row["retrieve_s"]) > 0 and row["model"] == "span"
        assert int(row["testResults"].rstrip("%")) == round(100 * float(row["orb_sim"]))
    photos = [bench_run["rows"][n] for n in ("a/photo.jpg", "b/photo.jpg", "nested/deeper/CAT.PNG")]
    assert sum(float(r["psnr_y"]) > float(r["bicubic_psnr_y"]) for r in photos) >= 2  # SPAN beats bicubic


def test_terminal_summary_and_progress(bench_run: dict) -> None:
    out, err = bench_run["proc"].stdout, bench_run["proc"].stderr
    assert "6 image(s) measured, 1 failed" in out
    for words in ("PSNR-Y", "SSIM-Y", "orb_sim", "bits per pixel", "savings", "full-size AVIF", "bicubic"):
        assert words in out
    assert "image/s" in err or "s/image" in err  # tqdm's bar


def test_the_report_is_self_contained_with_plots_and_crops(bench_run: dict) -> None:
    page = (bench_run["out"] / "report.html").read_text()
    assert page.count("<svg") == 3 and page.count("<circle") >= 12 and "<rect" in page
    assert page.count('src="data:image/png;base64,') >= 8  # original, bicubic, model, full-size: worst and best
    assert not re.search(r"""(src|href)=["']?(https?:)?//|@import|url\(\s*['"]?https?:|<script""", page)
    assert "How to read the baseline columns" in page and "0.1 bits per pixel" in page
    assert "broken.jpg" in page  # the failure is listed


def test_the_report_renders_in_headless_chromium(bench_run: dict, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (Debian: apt-get install -y chromium)")
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
    flags += [f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000"]
    proc = subprocess.run(
        [str(CHROMIUM), *flags, (bench_run["out"] / "report.html").resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2000, 1280)
    assert (pixels.min(axis=2) < 235).mean() > 0.03  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 300  # text, plots, colours
    for colour in report.COLORS.values():  # each series of the plots is drawn, in its own colour
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).max(axis=2) <= 12).sum() > 300, colour


def test_an_identical_restoration_scores_inf(tls_service: tuple[str, Path], tmp_path: Path, capsys) -> None:
    """Stored without downscaling, losslessly: the retrieval is the original, PSNR is inf in the CSV."""
    url, cert = tls_service
    image = tmp_path / "graphic.png"
    _photo("astronaut", (160, 40, 288, 136)).save(image)
    listing = tmp_path / "one.csv"
    testHelp.write_csv([image], listing)
    argv = [str(listing), "--url", url, "--ca-bundle", str(cert), "--out", str(tmp_path / "out"), "--no-progress"]
    assert testBenchClient.main([*argv, "--scale", "1", "--codec", "png", "--prefix", "identical/"]) == 0
    (folder,) = (tmp_path / "out").iterdir()
    (row,) = _csv_rows(folder / "testResults.csv")
    assert row["psnr_y"] == "inf" and float(row["ssim_y"]) == 1.0 and row["testResults"] == "100%"
    assert row["key"] == "identical/graphic.png"
    assert "inf" in (folder / "report.html").read_text()
    assert "1 image(s) measured, 0 failed" in capsys.readouterr().out


# ---- scoring and keys, directly ------------------------------------------------------------------------------


def test_scores_identical_shuffled_and_noise() -> None:
    photo = _photo("astronaut", (0, 0, 256, 192))
    same = fidelity.score(photo, photo.copy(), crop_border=4)
    assert math.isinf(same.psnr_y) and same.ssim_y == pytest.approx(1.0) and same.orb == 1.0
    rng = np.random.default_rng(0)
    flat = np.asarray(photo).reshape(-1, 3).copy()
    rng.shuffle(flat)
    for other in (
        Image.fromarray(flat.reshape(192, 256, 3)),
        Image.fromarray(rng.integers(0, 256, (192, 256, 3), np.uint8)),
    ):
        low = fidelity.score(photo, other, crop_border=4)
        assert low.psnr_y < 15 and low.ssim_y < 0.1 and low.orb < 0.2
    blank = Image.new("RGB", (64, 64), "grey")
    assert fidelity.score(blank, blank).orb == 0.0  # no keypoints: 0, not a crash (the original crashed)
    with pytest.raises(ValueError):
        fidelity.score(photo, photo.resize((128, 96)))


def test_full_size_encoding_is_bisected_to_the_byte_budget() -> None:
    photo = _photo("coffee", (0, 0, 256, 256))
    for budget in (1500, 4000, 12000):
        full = fidelity.encode_at_bytes(photo, budget)
        assert full is not None and full.codec == "avif" and media.sniff(full.data) == "AVIF"
        assert abs(full.bytes - budget) < 0.2 * budget, (budget, full)
        for q in (full.quality - 1, full.quality + 1):  # no neighbouring quality is closer
            if 1 <= q <= 100:
                assert abs(len(media.encode_stored(photo, "avif", q)) - budget) >= abs(full.bytes - budget)
    assert fidelity.encode_at_bytes(photo, 10).quality == 1  # under the smallest file: the smallest file
    assert fidelity.same_bytes(1100, 1000) and fidelity.same_bytes(500, 1000) and not fidelity.same_bytes(1101, 1000)


def test_keys_and_result_paths_are_unique(tmp_path: Path) -> None:
    for rel in ("x/p.jpg", "y/p.jpg", "p.JPG", "q.jpg", "q.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)  # all PNG, whatever their names
    paths = [str(tmp_path / p) for p in ("x/p.jpg", "y/p.jpg", "p.JPG", "q.jpg", "q.png", "x/p.jpg")]
    items = testBenchClient.plan_items(paths, "run/", tmp_path / "out")
    keys = [i.key for i in items]
    assert keys == ["run/x/p.jpg", "run/y/p.jpg", "run/p.JPG", "run/q.jpg", "run/q.png", "run/x/p~2.jpg"]
    dests = [i.dest.relative_to(tmp_path / "out").as_posix() for i in items]
    assert dests == ["x/p.png", "y/p.png", "p.png", "q.png", "q~2.png", "x/p~2.png"]


# ---- the storage plan ----------------------------------------------------------------------------------------


def test_storage_plan_prints_each_setting_next_to_full_size(images: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "plan"
    folder.mkdir()
    shutil.copy(images / "a" / "photo.jpg", folder / "astronaut.jpg")
    shutil.copy(images / "nested" / "deeper" / "CAT.PNG", folder / "cat.PNG")
    argv = [str(folder), "--codecs", "avif,webp", "--qualities", "80", "--csv", str(tmp_path / "plan.csv")]
    assert storage_plan.main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "PSNR-Y full AVIF" in out and "SR - full dB" in out and "bpp" in out and "Where downscale + SR wins" in out
    lines = {line.split("  ")[0].strip(): line.split() for line in out.splitlines() if line.startswith("x")}
    assert set(lines) == {"x2 avif q80", "x4 avif q80", "x2 webp q80", "x4 webp q80"}
    for cells in lines.values():
        bpp, saved, psnr, bicubic = (float(c) for c in cells[3:7])
        assert 0 < bpp < 2 and 50 < saved < 100 and 20 < psnr < 50 and 20 < bicubic < 50
        wins = re.search(r"(\d)/(\d)( \(\+(\d)\*\))?$", " ".join(cells))  # "1/2", or "0/1 (+1*)"
        assert wins, cells
        compared, too_small = int(wins.group(2)), int(wins.group(4) or 0)
        assert compared + too_small == 2  # every image, either compared at the same bytes or said to be too small
        assert (cells[7] == "-") == (compared == 0) and (compared == 0 or 20 < float(cells[7]) < 60)
    assert float(lines["x4 avif q80"][3]) < float(lines["x2 avif q80"][3])  # x4 stores fewer bits
    rows = _csv_rows(tmp_path / "plan.csv")
    assert len(rows) == 8 and {r["fullsize_codec"] for r in rows} == {"avif"}


@pytest.mark.parametrize(
    "argv",
    [
        ["testing/testBenchClient.py", "--help"],
        ["-m", "testing.testBenchClient", "--help"],
        ["-m", "testing.storage_plan", "--help"],
        ["testing/storage_plan.py", "--help"],
        ["-m", "testing.testHelp", "--help"],
    ],
)
def test_runs_as_a_script_and_as_a_module(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and ("0.1" in proc.stdout or "image_path" in proc.stdout or "TLS" in proc.stdout)


def test_report_helpers_on_edge_values(tmp_path: Path) -> None:
    """An all-failed run and an empty one still give a summary and a page (no division by zero)."""
    failed = [report.ImageResult(path="x.png", status="failed", error="store: 422: broken")]
    keeper = report.CropKeeper()
    keeper.offer(failed[0])
    assert "0 image(s) measured, 1 failed" in report.terminal_summary(failed, {})
    page = report.write_html(tmp_path / "report.html", failed, keeper, {}).read_text()
    assert "<svg" in page and "store: 422: broken" in page
    assert "<svg" in report.write_html(tmp_path / "empty.html", [], report.CropKeeper(), {}).read_text()


# ---- videos: a downscale job, then an upscale job, in the same CSV and report ---------------------------------


@pytest.fixture(scope="module")
def video_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`upscaler serve` with its video worker (small segments, fast encoder), TLS verified as for the images."""
    from tests.servers import api_server

    work = tmp_path_factory.mktemp("bench-video-api")
    env = {"UPSCALER_VIDEO_SEGMENT_FRAMES": "8", "UPSCALER_VIDEO_PRESET": "veryfast", "UPSCALER_VIDEO_WORKERS": "1"}
    with api_server(work, env) as url:
        yield url.replace("127.0.0.1", "localhost"), work / "data" / "tls" / "cert.pem"


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clip (H.264 + AAC, as a camera writes) beside a photo, as testHelp.py finds them."""
    from tests.test_video_pipeline import make_clip

    root = tmp_path_factory.mktemp("bench-videos")
    make_clip(root / "clip.MP4", frames=24, size=(128, 96))
    _photo("coffee", (200, 100, 328, 196)).save(root / "photo.png")
    return root


def _video_bench(service: tuple[str, Path], folder: Path, out: Path, *options: str) -> tuple[int, dict[str, dict]]:
    url, cert = service
    listing = out / "list.csv"
    assert testHelp.main([str(folder), "-o", str(listing)]) == 0
    argv = [str(listing), "--url", url, "--ca-bundle", str(cert), "--out", str(out / "TestResults"), "--no-progress"]
    code = testBenchClient.main([*argv, "--bucket", "media", "--prefix", f"{out.name}/", *options])
    (folder_out,) = (out / "TestResults").iterdir()
    rows = {Path(r["path"]).name: r for r in _csv_rows(folder_out / "testResults.csv")}
    return code, {"rows": rows, "out": folder_out}  # type: ignore[dict-item]


def test_a_video_is_stored_by_a_job_given_back_and_reported(
    video_service: tuple[str, Path], video_folder: Path, tmp_path: Path, capsys
) -> None:
    import av

    code, run = _video_bench(video_service, video_folder, tmp_path)
    out = capsys.readouterr().out
    assert code == 0, out
    video, photo = run["rows"]["clip.MP4"], run["rows"]["photo.png"]
    assert video["kind"] == "video" and photo["kind"] == "image"
    source = (video_folder / "clip.MP4").stat().st_size
    stored, frames = int(video["stored_bytes"]), int(video["frames"])
    assert int(video["original_bytes"]) == source and 0 < stored < source and frames == 24
    assert float(video["saved_percent"]) == pytest.approx(100 * (1 - stored / source), abs=0.01)
    assert float(video["bpp"]) == pytest.approx(8 * stored / (128 * 96 * frames), abs=1e-4)
    assert video["stored_size"] == "32x24" and video["scale"] == "4"  # the service's defaults: x4, AV1 crf 30
    assert (video["stored_codec"], video["rate_control"], video["stored_quality"]) == ("av1", "crf", "30")
    assert video["target"] == "" and video["target_fidelity"] == "" and video["target_met"] == ""
    assert 10 < float(video["psnr_y"]) < 60 and 0 < float(video["ssim_y"]) <= 1 and PERCENT.match(video["testResults"])
    assert float(video["store_s"]) > 0 and float(video["retrieve_s"]) > 0
    back = Path(video["destPath"])
    assert back.name == "clip.mp4" and run["out"] in back.parents
    with av.open(str(back)) as c:  # given back at the source's size, every frame, the audio kept
        assert (c.streams.video[0].width, c.streams.video[0].height) == (128, 96)
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 24 and len(c.streams.audio) == 1
    assert photo["status"] == "ok" and photo["stored_codec"] == "avif"
    assert "1 image(s) measured, 0 failed" in out and "1 video(s) measured, 0 failed" in out
    assert "x4 av1 crf 30 (32x24)" in out and "saved" in out
    page = (run["out"] / "report.html").read_text()
    assert "<h2>Videos (1)</h2>" in page and f"{stored:,}" in page and "x4 av1 crf 30" in page
    assert page.count("<svg") == 3  # the plots stay the images'


def test_a_targeted_video_reports_the_jobs_fidelity(
    video_service: tuple[str, Path], video_folder: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "only"
    folder.mkdir()
    shutil.copy(video_folder / "clip.MP4", folder / "clip.mp4")
    code, run = _video_bench(video_service, folder, tmp_path, "--api", "v1", "--target", "psnr:30")
    out = capsys.readouterr().out
    assert code == 0, out
    row = run["rows"]["clip.mp4"]
    assert row["target"] == "psnr:30" and row["target_met"] == "True" and float(row["target_fidelity"]) >= 30
    assert int(row["stored_bytes"]) < int(row["original_bytes"])
    assert float(row["psnr_y"]) >= 29  # the bench's own measurement of the download agrees
    assert "1 of 1 met their target" in out
    assert 'class="win"' in (run["out"] / "report.html").read_text()
