"""PyTorch runtime: the shipped ncnn models as ``torch.nn.Module``s, on CUDA in fp16/bf16 or on the CPU (fp32, or
bf16 convolutions inside an fp32 network on CPUs with AMX: ``bf16-mixed``).

:class:`GraphModule` is built from :class:`upscaler.engine.graph.Graph` — the same ``.param``/``.bin`` files ncnn
runs, converted here, so there is no second source of weights. Convolutions are ``nn.Conv2d`` and PReLU slopes are
``nn.PReLU``, so the module is also what a fine-tuned model is trained from (``state_dict`` keys are the ncnn layer
names). :class:`TorchNetwork` is the engine's runtime over it: batches of equal-size tiles, channels-last,
uint8 <-> float conversion on the device from pinned host buffers, and host copies on a side stream so the next
batch's upload overlaps the current batch's compute.

``torch`` is an optional dependency (the ``gpu`` extra); importing this module without it raises ImportError.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from upscaler.engine.graph import BINARY_OPS, Graph, Layer, UnsupportedGraph

log = logging.getLogger(__name__)

_INTERP_MODES = {1: "nearest", 2: "bilinear", 3: "bicubic"}


def _module_name(layer: Layer) -> str:
    return "".join(c if c.isalnum() else "_" for c in layer.name).strip("_") or "layer"


class GraphModule(nn.Module):
    """Runs an ncnn graph on NCHW tensors. Input and output follow the ncnn model's own ranges."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph_name = graph.name
        self.input_blob = graph.input
        self.output_blob = graph.output
        self.layers_ = nn.ModuleDict()
        self.steps: list[tuple[Layer, str]] = []
        last_use: dict[str, int] = {}
        for index, layer in enumerate(graph.layers):
            for blob in layer.inputs:
                last_use[blob] = index
            key = _module_name(layer)
            while key in self.layers_:
                key += "_"
            if layer.type == "Convolution":
                w = layer.weights["weight"]
                left, right, top, bottom = graph.convolution_padding(layer)
                symmetric = left == right and top == bottom
                conv = nn.Conv2d(
                    w.shape[1],
                    w.shape[0],
                    (w.shape[2], w.shape[3]),
                    stride=(layer.int_param(13, layer.int_param(3, 1)), layer.int_param(3, 1)),
                    dilation=(layer.int_param(12, layer.int_param(2, 1)), layer.int_param(2, 1)),
                    padding=(top, left) if symmetric else 0,
                    bias="bias" in layer.weights,
                )
                conv.weight.data = torch.from_numpy(w.copy())
                if conv.bias is not None:
                    conv.bias.data = torch.from_numpy(layer.weights["bias"].copy())
                self.layers_[key] = conv
            elif layer.type == "PReLU":
                slope = layer.weights["slope"]
                prelu = nn.PReLU(num_parameters=slope.size)
                prelu.weight.data = torch.from_numpy(slope.copy())
                self.layers_[key] = prelu
            elif layer.type == "MemoryData":
                self.register_buffer(f"const_{key}", torch.from_numpy(layer.weights["data"].copy()))
            self.steps.append((layer, key))
        self._last_use = last_use

    def lower_inner_convolutions(self, dtype: torch.dtype, keep_first: int = 1, keep_last: int = 2) -> int:
        """Run every convolution but the first ``keep_first`` and the last ``keep_last`` in ``dtype`` (weights and
        arithmetic), the rest of the network (activations between layers, additions, the kept ends) as it is; how
        many were lowered. The ends matter: bf16 keeps 8 significant bits, so a bf16 first convolution reads the
        8-bit input rounded by up to half a level, and bf16 last convolutions round the output as much."""
        convs = [m for m in self.layers_.values() if isinstance(m, nn.Conv2d)]
        inner = convs[keep_first : len(convs) - keep_last]
        for conv in inner:
            conv.to(dtype)
        return len(inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blobs: dict[str, torch.Tensor] = {self.input_blob: x}
        for index, (layer, key) in enumerate(self.steps):
            if layer.type == "Input":
                continue
            args = [blobs[name] for name in layer.inputs]
            outs = self._op(layer, key, args)
            for name, value in zip(layer.outputs, outs, strict=True):
                blobs[name] = value
            for name in layer.inputs:  # free intermediates as soon as nothing reads them again
                if self._last_use.get(name) == index and name != self.output_blob:
                    blobs.pop(name, None)
        return blobs[self.output_blob]

    def _op(self, layer: Layer, key: str, args: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        t = layer.type
        if t == "MemoryData":
            const = getattr(self, f"const_{key}")
            return [const if const.dim() != 3 else const.unsqueeze(0)]
        if t == "Split":
            return [args[0]] * len(layer.outputs)
        if t == "Convolution":
            x = args[0]
            conv: nn.Conv2d = self.layers_[key]  # type: ignore[assignment]
            if conv.padding == 0 or conv.padding == (0, 0):
                left, right, top, bottom = _padding(layer)
                if left or right or top or bottom:
                    x = F.pad(x, (left, right, top, bottom), value=layer.float_param(18, 0.0))
            if conv.weight.dtype != x.dtype:  # a bf16 convolution inside an fp32 network (precision bf16-mixed)
                return [_activation(conv(x.to(conv.weight.dtype)).to(x.dtype), layer)]
            return [_activation(conv(x), layer)]
        if t == "PReLU":
            return [self.layers_[key](args[0])]
        if t == "ReLU":
            slope = layer.float_param(0, 0.0)
            return [F.leaky_relu(args[0], slope) if slope else F.relu(args[0])]
        if t == "Sigmoid":
            return [torch.sigmoid(args[0])]
        if t == "Swish":
            return [F.silu(args[0])]
        if t == "BinaryOp":
            return [_binary(layer, args)]
        if t == "Eltwise":
            return [_eltwise(layer, args)]
        if t == "Concat":
            axis = layer.int_param(0, 0)
            return [torch.cat(args, dim=(axis % 3) + 1)]
        if t == "PixelShuffle":
            if layer.int_param(1, 0) != 0:
                raise UnsupportedGraph(f"{self.graph_name}: {layer.name} uses PixelShuffle mode 1")
            return [F.pixel_shuffle(args[0], layer.int_param(0, 1))]
        if t == "Interp":
            return [_interp(layer, args[0], self.graph_name)]
        raise UnsupportedGraph(f"{self.graph_name}: no PyTorch translation for {t}")


def _padding(layer: Layer) -> tuple[int, int, int, int]:
    left = layer.int_param(4, 0)
    top = layer.int_param(14, left)
    return left, layer.int_param(15, left), top, layer.int_param(16, top)


def _activation(x: torch.Tensor, layer: Layer) -> torch.Tensor:
    kind = layer.int_param(9, 0)
    params = layer.param(10, [])
    values = [float(v) for v in params] if isinstance(params, list) else []
    if kind == 0:
        return x
    if kind == 1:
        return F.relu(x)
    if kind == 2:
        return F.leaky_relu(x, values[0] if values else 0.0)
    if kind == 3:
        return torch.clamp(x, values[0], values[1])
    if kind == 4:
        return torch.sigmoid(x)
    raise UnsupportedGraph(f"{layer.name}: fused activation {kind} is not supported")


def _binary(layer: Layer, args: list[torch.Tensor]) -> torch.Tensor:
    op = BINARY_OPS.get(layer.int_param(0, 0))
    if op is None:
        raise UnsupportedGraph(f"{layer.name}: BinaryOp type {layer.int_param(0)} is not supported")
    a = args[0]
    b: torch.Tensor | float = layer.float_param(2, 0.0) if layer.int_param(1, 0) else args[1]
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if op == "div":
        return a / b
    if op == "rsub":
        return b - a
    if op == "rdiv":
        return b / a
    other = b if isinstance(b, torch.Tensor) else torch.full_like(a, b)
    return torch.maximum(a, other) if op == "max" else torch.minimum(a, other)


def _eltwise(layer: Layer, args: list[torch.Tensor]) -> torch.Tensor:
    op = layer.int_param(0, 1)
    coeffs = layer.param(1, [])
    if op == 0:
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if op == 2:
        out = args[0]
        for a in args[1:]:
            out = torch.maximum(out, a)
        return out
    weights = [float(c) for c in coeffs] if isinstance(coeffs, list) and coeffs else [1.0] * len(args)
    out = args[0] * weights[0] if weights[0] != 1.0 else args[0]
    for a, c in zip(args[1:], weights[1:], strict=True):
        out = out + (a * c if c != 1.0 else a)
    return out


def _interp(layer: Layer, x: torch.Tensor, graph_name: str) -> torch.Tensor:
    mode = _INTERP_MODES.get(layer.int_param(0, 0))
    if mode is None:
        raise UnsupportedGraph(f"{graph_name}: {layer.name} uses Interp type {layer.int_param(0)}")
    h, w = x.shape[-2:]
    out_h, out_w = layer.int_param(3, 0), layer.int_param(4, 0)
    if not (out_h and out_w):
        out_h, out_w = int(h * layer.float_param(1, 1.0)), int(w * layer.float_param(2, 1.0))
    if mode == "nearest":
        return F.interpolate(x, size=(out_h, out_w), mode="nearest")
    return F.interpolate(x, size=(out_h, out_w), mode=mode, align_corners=bool(layer.int_param(6, 0)))


# ---- the engine's runtime ----------------------------------------------------------------------------------


def cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver must not stop the CPU path
        return False


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX tiles and AVX-512 BF16: Intel Xeon 4th generation,
    "Sapphire Rapids", and later), where oneDNN runs a bf16 convolution several times faster than an fp32 one."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    try:
        return all(probe is not None and probe() for probe in probes)
    except Exception:  # a private probe that changed: the plain fp32 path is always right
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``precision`` stands for on ``device``: ``auto`` is fp16 on CUDA, ``bf16-mixed`` on a CPU with
    AMX (the same 8-bit results within a few hundredths of a dB, measured in ``benchmarks/bench_engine.py``), else
    fp32; the others must be possible on the device."""
    if precision in ("auto", ""):
        if device.type == "cuda":
            return "fp16"
        return "bf16-mixed" if cpu_has_amx_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UnsupportedGraph(
            "precision fp16 needs a CUDA device; use UPSCALER_PRECISION=fp32 (or bf16-mixed on a CPU with AMX)"
        )
    if precision in ("bf16", "bf16-mixed") and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UnsupportedGraph("this GPU has no bf16; use UPSCALER_PRECISION=fp16")
    if precision not in PRECISIONS:
        raise UnsupportedGraph(f"unknown precision {precision!r}; use {', '.join(('auto', *PRECISIONS))}")
    return precision


#: What UPSCALER_PRECISION may say besides ``auto``. ``bf16-mixed``: bf16 convolutions inside, fp32 at both ends
#: and between layers (see :meth:`GraphModule.lower_inner_convolutions`).
PRECISIONS = ("fp32", "fp16", "bf16", "bf16-mixed")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the network's activations for ``precision`` on ``device`` (fp32 for ``bf16-mixed``)."""
    precision = resolve_precision(precision, device)
    if precision in ("fp32", "bf16-mixed"):
        return torch.float32
    return torch.float16 if precision == "fp16" else torch.bfloat16


class TorchNetwork:
    """One model on one device. Thread-safe: CUDA work is serialised by a lock, CPU calls run concurrently."""

    runtime = "torch"

    def __init__(self, graph: Graph, scale: int, *, device: str = "auto", precision: str = "auto", threads: int = 0):
        if device == "auto":
            device = "cuda" if cuda_available() else "cpu"
        self.device = torch.device(device)
        self._precision = resolve_precision(precision, self.device)
        self.dtype = resolve_dtype(self._precision, self.device)
        self.scale = scale
        self.on_gpu = self.device.type == "cuda"
        if not self.on_gpu and threads > 0:
            torch.set_num_threads(threads)
        # channels-last everywhere: cuDNN's and oneDNN's fast convolutions (AMX included) want it, and the engine's
        # HxWx3 tiles already are that layout once permuted, so nothing is copied on the way in
        self.memory_format = torch.channels_last
        if self.on_gpu:
            torch.backends.cudnn.benchmark = True  # tiles and frames repeat their sizes: pick the fastest kernels once
        module = GraphModule(graph).eval()
        self.module = module.to(device=self.device, dtype=self.dtype, memory_format=self.memory_format)
        if self._precision == "bf16-mixed":
            self.module.lower_inner_convolutions(torch.bfloat16)
        self._lock = threading.Lock() if self.on_gpu else None
        self._copy_stream = torch.cuda.Stream(self.device) if self.on_gpu else None
        self.name = graph.name

    @property
    def precision(self) -> str:
        return self._precision

    def free_memory(self) -> int:
        """Bytes the device can still give (the host's memory is not measured: 0 on the CPU)."""
        if not self.on_gpu:
            return 0
        free, _total = torch.cuda.mem_get_info(self.device)
        return int(free)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype).contiguous(memory_format=self.memory_format))

    # float32 planes in [0, 1], the engine's general path
    def run(self, hwc: np.ndarray) -> np.ndarray:
        return self.run_batch([hwc])[0]

    @torch.inference_mode()
    def run_batch(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Equal-size float32 HxWx3 tiles in, their (H*s)x(W*s)x3 float32 results out (unclipped)."""
        stack = np.stack([np.asarray(t, dtype=np.float32) for t in tiles])
        x = torch.from_numpy(stack).permute(0, 3, 1, 2)
        if self._lock is None:
            out = self._forward(x)
            return list(out.float().permute(0, 2, 3, 1).contiguous().numpy())
        with self._lock:
            out = self._forward(x.to(self.device))
            result = out.float().permute(0, 2, 3, 1).contiguous().cpu()
        return list(result.numpy())

    # uint8 frames, converted on the device: the video path and large retrievals
    @torch.inference_mode()
    def run_uint8(self, frames: np.ndarray, batch: int = 4) -> np.ndarray:
        """uint8 NxHxWx3 in, uint8 Nx(H*s)x(W*s)x3 out, rounded; batches of ``batch`` frames.

        On CUDA the next batch is uploaded on a side stream while the current one computes, and results come back
        through pinned memory.
        """
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if not frames.flags.writeable:  # torch wraps arrays it may write to; a read-only one is copied once
            frames = frames.copy()
        n, h, w, c = frames.shape
        out = np.empty((n, h * self.scale, w * self.scale, c), np.uint8)
        if not self.on_gpu:
            for i in range(0, n, batch):
                x = torch.from_numpy(frames[i : i + batch]).permute(0, 3, 1, 2).float().div_(255.0)
                y = self._forward(x).float().clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
                out[i : i + batch] = y.permute(0, 2, 3, 1).numpy()
            return out
        assert self._lock is not None and self._copy_stream is not None
        host_in = torch.from_numpy(frames).pin_memory()
        host_out = torch.empty(out.shape, dtype=torch.uint8).pin_memory()
        compute = torch.cuda.current_stream(self.device)
        with self._lock:
            chunks = list(range(0, n, batch))
            uploaded: list[tuple[torch.Tensor, torch.cuda.Event] | None] = []

            def upload(i: int) -> None:
                with torch.cuda.stream(self._copy_stream):
                    dev = host_in[i : i + batch].to(self.device, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(self._copy_stream)
                uploaded.append((dev, event))

            upload(chunks[0])
            for k, i in enumerate(chunks):
                if k + 1 < len(chunks):
                    upload(chunks[k + 1])
                dev, event = uploaded[k]  # type: ignore[misc]
                uploaded[k] = None  # record_stream below keeps its memory until the compute stream is done with it
                compute.wait_event(event)
                dev.record_stream(compute)
                x = dev.permute(0, 3, 1, 2).to(self.dtype).div_(255.0)
                y = self.module(x.contiguous(memory_format=self.memory_format))
                y = y.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1)
                host_out[i : i + batch].copy_(y, non_blocking=True)
            compute.synchronize()
        out[...] = host_out.numpy()
        return out
