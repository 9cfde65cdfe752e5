"""Issue 19: the training package (pairs made as the service stores them, a few real fine-tuning steps with
checkpoint and resume, the ncnn export) and the committed fine-tuned model served end to end.

The fine-tuning tests need PyTorch and skip without it (CI has none); the data, registry and end-to-end tests run
everywhere: the fine-tuned model is an ncnn model like the stock ones.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import data as tdata
from upscaler import media
from upscaler.config import Settings
from upscaler.engine import Engine, downscale, registry
from upscaler.engine import graph as graph_io
from upscaler.metrics import psnr
from upscaler.providers import open_provider
from upscaler.quality import LOSSLESS
from upscaler.service import S3CommonUpscaler
from upscaler.store.local import LocalFolderStore

TINY_SPREAD = (("avif", 40, 40), ("png", 100, 100))


def _tiny_dataset(folder: Path) -> list[tdata.Pair]:
    """Two generated images (one per split) of 128x96, stored as AVIF q40 and lossless PNG at x2."""
    images = (s for s in tdata.generated_sources(size=(128, 96)) if s.name in ("generated/text", "generated/shapes"))
    return tdata.build(folder, (2,), spread=TINY_SPREAD, images=images, progress=False)


def test_pairs_are_the_service_stored_form(tmp_path: Path) -> None:
    pairs = _tiny_dataset(tmp_path)
    assert {(p.split, p.codec) for p in pairs} == {(s, c) for s in ("train", "val") for c in ("avif", "png")}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest) == len(pairs) == 4
    pair = next(p for p in pairs if p.codec == "avif")
    hr = Image.open(tmp_path / pair.hr).convert("RGB")
    settings = Settings()
    blob = media.encode_stored(downscale(hr, 2.0), "avif", pair.quality, speed=settings.avif_speed)
    assert pair.stored_bytes == len(blob) and pair.bpp == pytest.approx(8 * len(blob) / (128 * 96))
    stored = np.asarray(media.decode_stored(blob).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / pair.lr)), stored)  # the very pixels a retrieval sees
    lossless = next(p for p in pairs if p.codec == "png" and p.image == pair.image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / lossless.lr)), np.asarray(downscale(hr, 2.0)))


def test_the_evaluation_wallpapers_are_refused() -> None:
    assert tdata.is_held_out("/usr/share/backgrounds/mate/nature/Garden.jpg", owned=set())
    assert tdata.is_held_out("/usr/share/backgrounds/ukui-wallpapers/x.png", owned=set())
    assert not tdata.is_held_out("/usr/share/backgrounds/sway/Sway_Wallpaper_Blue_2048x1536.png", owned=set())
    assert {"skimage/coffee", "generated/shapes"} <= tdata.VALIDATION_GROUPS
    assert tdata.plan("skimage/coffee") == tdata.plan("skimage/coffee")  # seeded by the name: rebuilds agree


def test_the_fine_tuned_model_is_listed_and_its_weights_are_the_stock_graph() -> None:
    spec = registry.resolve("span-x2-stored", 2)
    assert spec.scale == 2 and spec.kind == registry.FIDELITY and "span-x2-stored" in registry.model_names()
    assert registry.resolve("span", 2).name == "span-x2"  # the stock family is unchanged
    param, weights = registry.weight_files(spec)
    stock_param, stock_weights = registry.weight_files(registry.MODELS["span-x2"])
    assert param.read_text() == stock_param.read_text()
    assert weights.stat().st_size == stock_weights.stat().st_size and weights.read_bytes() != stock_weights.read_bytes()
    assert len(graph_io.read(param, weights).layers) == len(graph_io.read(stock_param, stock_weights).layers)
    card = param.with_suffix(".md").read_text()
    assert "held-out" in card and "Licence" in card


def test_the_x4_model_is_listed_with_its_card_and_its_weights_are_the_stock_graph() -> None:
    spec = registry.MODELS["span-x4-stored"]
    param, weights = registry.weight_files(spec)
    stock_param, stock_weights = registry.weight_files(registry.MODELS["span-x4"])
    assert spec.scale == 4 and spec.kind == registry.FIDELITY and spec.family == "span-stored"
    assert param.read_text() == stock_param.read_text() and weights.read_bytes() != stock_weights.read_bytes()
    assert len(graph_io.read(param, weights).layers) == len(graph_io.read(stock_param, stock_weights).layers)
    card = param.with_suffix(".md").read_text()
    assert "held-out" in card and "Licence" in card and "Not measured yet" not in card


def _service(folder: Path) -> tuple[Engine, S3CommonUpscaler]:
    settings = Settings.from_env({}, ncnn_threads=2)
    engine = Engine(settings)
    return engine, S3CommonUpscaler(LocalFolderStore(folder), open_provider(settings, engine), engine, settings)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_a_stored_object_restores_with_the_model_its_record_names(tmp_path: Path) -> None:
    """Stored with model span-x2-stored at x2 AVIF: the record names the model and a retrieval (no model asked)
    restores with it, better than bicubic on the same stored bytes."""
    from skimage import data

    engine, service = _service(tmp_path)
    original = np.ascontiguousarray(data.astronaut()[128:320, 128:320])
    stored = service.store_image(
        _png(original), bucket="media", key="a.png", scale=2, codec="avif", quality=60, model="span-x2-stored"
    )
    assert stored.record.model == "span-x2-stored" and stored.model == "span-x2-stored"
    assert service.record("media", "a.png").model == "span-x2-stored"
    back = np.asarray(Image.open(io.BytesIO(service.retrieve_image(bucket="media", key="a.png").data)).convert("RGB"))
    small = media.decode_stored(service.store.get("media", "a.png").data)
    tuned = np.asarray(engine.upscale(small, size=(192, 192), model="span-x2-stored"))
    bicubic = np.asarray(engine.upscale(small, size=(192, 192), model="bicubic"))
    assert np.array_equal(back, tuned)
    assert psnr(original, back, crop_border=2) > psnr(original, bicubic, crop_border=2)


def test_the_x1_restorer_is_listed_and_restores_a_full_size_object_end_to_end(tmp_path: Path) -> None:
    """span-x1-restorer (SPAN x2's blocks, a bounded correction added to the input) is a registry model with its
    card; an object stored full size as JPEG XL with it names it in its record, and a retrieval restores with it:
    closer to the original than the stored form itself, and never more than 8 grey levels from it."""
    spec = registry.MODELS["span-x1-restorer"]
    assert spec.scale == 1 and spec.family == "span-stored" and registry.resolve("span-stored", 1) is spec
    param, _ = registry.weight_files(spec)
    assert "/restorer/skip" in param.read_text() and "PixelShuffle" not in param.read_text()
    card = param.with_suffix(".md").read_text()
    assert "held-out" in card and "Licence" in card and "Not measured yet" not in card

    from skimage import data

    _, service = _service(tmp_path)
    original = np.ascontiguousarray(data.chelsea()[60:252, 100:292])
    stored = service.store_image(
        _png(original), bucket="media", key="c.png", scale=1, codec="jxl", quality=50, model="span-x1-restorer"
    )
    assert stored.record.model == "span-x1-restorer"
    back = np.asarray(Image.open(io.BytesIO(service.retrieve_image(bucket="media", key="c.png").data)).convert("RGB"))
    plain = np.asarray(media.decode_stored(service.store.get("media", "c.png").data).convert("RGB"))
    assert back.shape == plain.shape == original.shape
    assert np.abs(back.astype(int) - plain).max() <= 8
    assert psnr(original, back, crop_border=2) > psnr(original, plain, crop_border=2)


# ---- PyTorch: a few real training steps, resume, export ------------------------------------------------------------


def test_training_runs_checkpoints_and_resumes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from training import export, train

    _tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--data", str(tmp_path / "data"), "--run", str(run), "--batch", "2", "--patch", "16"]
    common += ["--val-every", "2", "--save-every", "2", "--quiet", "--threads", "1", "--warmup", "1"]
    assert train.main([*common, "--steps", "3", "--precision", "fp32"]) == 0
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["step"] == 3
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["device"], summary["precision"]) == ("cpu", "fp32")
    assert [h["step"] for h in summary["history"] if "val" in h] == [0, 2, 3]
    assert all(math.isfinite(h["loss"]) for h in summary["history"] if "loss" in h)
    stock = train.stock_module(2).state_dict()
    assert any(not torch.equal(stock[k], v) for k, v in state["model"].items())  # the weights moved
    assert train.main([*common, "--steps", "5", "--resume", "--precision", "bf16"]) == 0  # mixed precision goes on
    resumed = torch.load(run / "last.pt", weights_only=False)
    assert resumed["step"] == 5 and resumed["history"][: len(state["history"])] == state["history"]
    assert json.loads((run / "summary.json").read_text())["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in resumed["model"].values())  # the weights themselves stay fp32
    assert all(math.isfinite(h["loss"]) for h in resumed["history"] if "loss" in h)

    # export: the stock weights round-trip to the very bytes shipped; the trained ones load in every runtime
    _, stock_bin = export.export(stock, 2, tmp_path / "stock")
    assert stock_bin.read_bytes() == registry.weight_files(registry.MODELS["span-x2"])[1].read_bytes()
    param, weights = export.export(resumed["model"], 2, tmp_path / "tuned", fp16=False)
    module = train.GraphModule(graph_io.read(param, weights)).eval()
    trained = train.stock_module(2)
    trained.load_state_dict(resumed["model"])
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(module(x), trained.eval()(x), atol=1e-5)


def test_the_x1_restorer_starts_near_the_identity_trains_and_runs_in_ncnn(tmp_path: Path) -> None:
    """SPAN x2's blocks with a 3-channel last convolution added to the input: before training it gives back a
    photograph exactly; a few steps on full-size stored forms move it; its export loads in bare ncnn
    and agrees with the PyTorch module."""
    torch = pytest.importorskip("torch")
    import ncnn

    from training import export, train

    images = (s for s in tdata.generated_sources(size=(96, 64)) if s.name in ("generated/text", "generated/shapes"))
    pairs = tdata.build(tmp_path / "data", (1,), spread=TINY_SPREAD, images=images, progress=False)
    assert {p.scale for p in pairs} == {1}
    stored = next(p for p in pairs if p.codec == "avif")
    hr = np.asarray(Image.open(tmp_path / "data" / stored.hr).convert("RGB"))
    lr = np.asarray(Image.open(tmp_path / "data" / stored.lr).convert("RGB"))
    assert lr.shape == hr.shape  # a full-size form
    from skimage import data

    photo = np.ascontiguousarray(data.astronaut()[100:228, 100:228])
    module = train.stock_module(1).eval()
    with torch.no_grad():
        y = module(torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255)[0]
    y = y.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(y, photo)  # before any training: the input itself (the skip, a last layer of zeros)
    x = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255

    run = tmp_path / "run"
    common = ["--data", str(tmp_path / "data"), "--run", str(run), "--scale", "1", "--batch", "2", "--patch", "24"]
    flags = ["--steps", "2", "--quiet", "--threads", "1", "--warmup", "1", "--val-every", "2"]
    assert train.main([*common, *flags, "--identity-pairs", "--select", "pooled"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    lossy = [p for p in pairs if p.split == "train" and p.codec not in LOSSLESS]
    assert summary["train_pairs"] == len(lossy) + len({p.image for p in lossy})  # + each image's lossless form
    assert summary["select"] == "pooled" and summary["history"][-1]["val"]["psnr_y_pooled"] > 0
    assert train._pooled([30.0, math.inf]) == pytest.approx(30 + 10 * math.log10(2))  # the mean of the errors
    state = torch.load(run / "last.pt", weights_only=False)["model"]
    param, weights = export.export(state, 1, tmp_path / "restorer", fp16=False)
    assert "PixelShuffle" not in param.read_text() and "/restorer/skip" in param.read_text()
    net = ncnn.Net()
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    ex = net.create_extractor()
    chw = np.ascontiguousarray(x[0].numpy())  # the Mat wraps this memory: it must outlive the extract
    ex.input("data", ncnn.Mat(chw))
    _, out = ex.extract("output")
    trained = train.stock_module(1)
    trained.load_state_dict(state)
    with torch.no_grad():
        expected = trained.eval()(x)[0].numpy()
    assert np.asarray(out).shape == expected.shape == (3, *hr.shape[:2])
    assert np.abs(np.asarray(out) - expected).max() < 1e-3

    # The correction is bounded: a last layer pushing every pixel up by a whole range moves none by more than
    # RESTORER_MAX_CORRECTION, in ncnn as in PyTorch.
    state["layers_.upsampler_upsampler_0_Conv.bias"] = torch.ones(3)
    param, weights = export.export(state, 1, tmp_path / "pushed", fp16=False)
    net = ncnn.Net()
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(chw))
    _, out = ex.extract("output")
    trained.load_state_dict(state)
    with torch.no_grad():
        pushed = trained.eval()(x)[0].numpy()
    for moved in (np.asarray(out) - chw, pushed - chw):
        assert np.allclose(moved, train.RESTORER_MAX_CORRECTION, atol=1e-5)
