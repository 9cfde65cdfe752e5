"""The second runtime: every shipped model converted from its ncnn files to ONNX (and PyTorch where installed) and
checked against ncnn itself on a real photo crop; the reader's handling of weight encodings and bad files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from upscaler.config import Settings
from upscaler.engine import Engine, graph, registry, runtime, tiling
from upscaler.errors import InvalidInput, Unavailable

NETWORKS = [name for name, spec in registry.MODELS.items() if spec.is_network]


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """A 40x36 float32 crop of a real photograph in [0, 1]."""
    from skimage import data

    return data.astronaut()[110:150, 190:226].astype(np.float32) / 255.0


def _ncnn(name: str, x: np.ndarray) -> np.ndarray:
    return runtime.load(registry.MODELS[name], runtime.RuntimeOptions(threads=2, gpu="off", runtime="ncnn")).run(x)


@pytest.mark.parametrize("name", NETWORKS)
def test_onnx_matches_ncnn_on_every_shipped_model(name: str, crop: np.ndarray) -> None:
    pytest.importorskip("onnxruntime")
    from upscaler.engine.onnx_net import OnnxNetwork

    spec = registry.MODELS[name]
    net = OnnxNetwork(graph.read(*registry.weight_files(spec)), spec.scale, device="cpu", threads=2)
    ref = _ncnn(name, crop)
    out = net.run(crop)
    assert out.shape == ref.shape == (crop.shape[0] * spec.scale, crop.shape[1] * spec.scale, 3)
    assert float(np.abs(out - ref).max()) < 1e-3


@pytest.mark.parametrize("name", NETWORKS)
def test_torch_matches_ncnn_on_every_shipped_model(name: str, crop: np.ndarray) -> None:
    pytest.importorskip("torch", reason="the torch runtime is the 'gpu' extra; CI checks the same graph through ONNX")
    from upscaler.engine.torch_net import TorchNetwork

    spec = registry.MODELS[name]
    net = TorchNetwork(graph.read(*registry.weight_files(spec)), spec.scale, device="cpu", precision="fp32")
    ref = _ncnn(name, crop)
    assert float(np.abs(net.run(crop) - ref).max()) < 1e-3
    batch = net.run_batch([crop, crop[::-1].copy()])
    assert float(np.abs(batch[1] - _ncnn(name, crop[::-1].copy())).max()) < 1e-3
    frames = np.round(crop * 255).astype(np.uint8)[None]
    as_bytes = net.run_uint8(frames)[0].astype(np.float32)
    expected = np.round(np.clip(_ncnn(name, frames[0].astype(np.float32) / 255), 0, 1) * 255)
    assert float(np.abs(as_bytes - expected).max()) <= 1.0


@pytest.mark.parametrize("name", ["span-x4", "span-x2", "realesr-animevideov3-x2"])
def test_bf16_mixed_keeps_both_ends_in_fp32_and_restores_within_a_level_of_ncnn(name: str, crop: np.ndarray) -> None:
    torch = pytest.importorskip("torch", reason="the torch runtime is the 'gpu' extra")
    from torch import nn

    from upscaler.engine.torch_net import TorchNetwork

    spec = registry.MODELS[name]
    net = TorchNetwork(graph.read(*registry.weight_files(spec)), spec.scale, device="cpu", precision="bf16-mixed")
    convs = [m for m in net.module.layers_.values() if isinstance(m, nn.Conv2d)]
    dtypes = [c.weight.dtype for c in convs]
    assert net.precision == "bf16-mixed" and dtypes[0] == dtypes[-1] == dtypes[-2] == torch.float32
    assert dtypes[1:-2] == [torch.bfloat16] * (len(convs) - 3)
    frames = np.round(crop * 255).astype(np.uint8)[None]
    got = net.run_uint8(frames)[0].astype(np.float32)
    expected = np.round(np.clip(_ncnn(name, frames[0].astype(np.float32) / 255), 0, 1) * 255)
    assert float(np.abs(got - expected).max()) <= 3.0 and float(np.abs(got - expected).mean()) < 0.5


def test_precision_names_resolve_per_device_and_wrong_ones_name_the_setting() -> None:
    torch = pytest.importorskip("torch", reason="the torch runtime is the 'gpu' extra")
    from upscaler.engine.graph import UnsupportedGraph
    from upscaler.engine.torch_net import cpu_has_amx_bf16, resolve_dtype, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16-mixed" if cpu_has_amx_bf16() else "fp32")
    assert resolve_dtype("bf16-mixed", cpu) == torch.float32 and resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(UnsupportedGraph, match="UPSCALER_PRECISION=fp32"):
        resolve_precision("fp16", cpu)
    with pytest.raises(UnsupportedGraph, match="bf16-mixed"):
        resolve_precision("int4", cpu)


def test_engine_on_onnx_runtime_restores_like_ncnn_tiled_and_untiled(photo) -> None:
    pytest.importorskip("onnxruntime")
    small = photo.resize((48, 32))
    base = dict(ncnn_threads=2, gpu="off")
    ncnn_engine = Engine(Settings.from_env({}, runtime="ncnn", **base))
    onnx_engine = Engine(Settings.from_env({}, runtime="onnx", **base))
    for tile in (0, 32):
        a = np.asarray(ncnn_engine.upscale(small, 2, model="span", tile=tile), np.int16)
        b = np.asarray(onnx_engine.upscale(small, 2, model="span", tile=tile), np.int16)
        assert a.shape == b.shape == (64, 96, 3)
        assert int(np.abs(a - b).max()) <= 1  # the same float result, rounded to 8 bits
    assert onnx_engine.options.resolved_runtime() == "onnx"


def test_auto_runtime_is_ncnn_without_cuda_and_bad_names_name_the_setting() -> None:
    options = runtime.RuntimeOptions(gpu="off")
    assert options.resolved_runtime() == ("torch" if runtime.cpu_amx_bf16() else "ncnn")  # torch: CPU with AMX
    assert runtime.RuntimeOptions(gpu="off", precision="fp32").resolved_runtime() == "ncnn"
    assert not runtime._cpu_flags_allow("no_such_cpu_flag")  # a CPU without AMX never imports torch to ask
    with pytest.raises(InvalidInput, match="UPSCALER_RUNTIME"):
        runtime.RuntimeOptions(runtime="tensorflow").resolved_runtime()


def test_batched_tiles_blend_exactly_like_one_at_a_time() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((70, 90, 3), dtype=np.float32)

    def fn(t: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(t * 0.5 + 0.1, 2, axis=0), 2, axis=1)

    calls: list[int] = []

    def batch_fn(tiles: list[np.ndarray]) -> list[np.ndarray]:
        assert len({t.shape for t in tiles}) == 1  # equal sizes only
        calls.append(len(tiles))
        return [fn(t) for t in tiles]

    one = tiling.apply(image, 2, fn, tile=32, overlap=8)
    batched = tiling.apply(image, 2, fn, tile=32, overlap=8, batch_fn=batch_fn, batch=4)
    np.testing.assert_array_equal(one, batched)
    assert max(calls) > 1 and sum(calls) == tiling.tile_count(70, 90, 32, 8)


# ---- the reader -------------------------------------------------------------------------------------------


def _tiny_model(tmp_path: Path, weights: bytes, extra_layer: str = "") -> tuple[Path, Path]:
    """A 3->3 1x1 convolution with bias, then a Sigmoid: small enough to write by hand."""
    layers = [
        "Input data 0 1 data",
        "Convolution conv 1 1 data conv 0=3 1=1 5=1 6=9",
        "Sigmoid act 1 1 conv output",
    ]
    if extra_layer:
        layers.append(extra_layer)
    param = tmp_path / "tiny.param"
    param.write_text(f"7767517\n{len(layers)} {len(layers)}\n" + "\n".join(layers) + "\n")
    binary = tmp_path / "tiny.bin"
    binary.write_bytes(weights)
    return param, binary


def _ncnn_file(param: Path, binary: Path, x: np.ndarray) -> np.ndarray:
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(binary)) == 0
    chw = np.ascontiguousarray(x.transpose(2, 0, 1))
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(chw))
    _, out = ex.extract("output")
    return np.array(out).transpose(1, 2, 0)


@pytest.mark.parametrize("encoding", ["float32", "float16"])
def test_reader_decodes_weight_encodings_as_ncnn_does(tmp_path: Path, encoding: str) -> None:
    pytest.importorskip("onnxruntime")
    from upscaler.engine.onnx_net import OnnxNetwork

    rng = np.random.default_rng(7)
    w = rng.normal(size=9).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    if encoding == "float16":
        blob = struct.pack("<I", 0x01306B47) + w.astype("<f2").tobytes() + b"\0\0"  # 18 bytes, padded to 20
    else:
        blob = struct.pack("<I", 0) + w.astype("<f4").tobytes()
    param, binary = _tiny_model(tmp_path, blob + bias.astype("<f4").tobytes())
    g = graph.read(param, binary)
    x = rng.random((5, 6, 3), dtype=np.float32)
    expected = _ncnn_file(param, binary, x)
    out = OnnxNetwork(g, 1, device="cpu").run(x)
    assert float(np.abs(out - expected).max()) < 1e-5
    np.testing.assert_allclose(g.layers[1].weights["weight"].ravel(), w, atol=1e-2 if encoding == "float16" else 0)


def test_reader_refuses_what_it_cannot_translate(tmp_path: Path) -> None:
    weights = struct.pack("<I", 0) + bytes(36) + bytes(12)
    param, binary = _tiny_model(tmp_path, weights, "Deconvolution up 1 1 output up2 0=3 1=2 6=36")
    with pytest.raises(graph.UnsupportedGraph, match="Deconvolution"):
        graph.read(param, binary)
    param, binary = _tiny_model(tmp_path, weights[:20])
    with pytest.raises(graph.UnsupportedGraph, match="weights end early"):
        graph.read(param, binary)
    param, binary = _tiny_model(tmp_path, weights + bytes(8))
    with pytest.raises(graph.UnsupportedGraph, match="left unread"):
        graph.read(param, binary)
    param.write_text("not a model\n")
    with pytest.raises(graph.UnsupportedGraph, match="not an ncnn param file"):
        graph.read(param, binary)
    assert issubclass(graph.UnsupportedGraph, Unavailable)


def test_gpu_tile_side_keeps_a_1080p_frame_whole_when_memory_allows() -> None:
    from upscaler.engine.core import gpu_tile_side

    span_x2 = registry.MODELS["span-x2"].bytes_per_input_pixel
    assert gpu_tile_side(139 * 2**30, span_x2, "fp16", 1) >= 1920  # an H200: frames run in one piece
    small = gpu_tile_side(8 * 2**30, span_x2, "fp32", 4)
    assert 64 <= small < gpu_tile_side(8 * 2**30, span_x2, "fp16", 4) < 1920
    assert gpu_tile_side(10**6, span_x2, "fp32", 8) == 64  # never below the smallest useful tile


def test_onnx_export_command_writes_a_model_any_onnx_consumer_runs(tmp_path: Path, crop: np.ndarray) -> None:
    ort = pytest.importorskip("onnxruntime")
    from upscaler.engine import onnx_net

    out = tmp_path / "span-x2.onnx"
    assert onnx_net.main(["span-x2", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"data": np.ascontiguousarray(crop.transpose(2, 0, 1)[None])})
    assert float(np.abs(y[0].transpose(1, 2, 0) - _ncnn("span-x2", crop)).max()) < 1e-3
    with pytest.raises(SystemExit):
        onnx_net.main(["bicubic", str(tmp_path / "x.onnx")])  # no network to export: argparse's error, exit 2
