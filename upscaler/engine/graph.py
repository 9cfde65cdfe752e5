"""Read an ncnn model (``.param`` text + ``.bin`` weights) into a plain graph that other runtimes are built from.

The shipped models are small feed-forward graphs (SPAN, Real-ESRGAN compact and RRDB): convolutions, element-wise
ops, activations, a pixel shuffle and an interpolation. :func:`read` parses both files into :class:`Graph` — a list
of :class:`Layer` in topological order with numpy weights — and :mod:`upscaler.engine.torch_net` and
:mod:`upscaler.engine.onnx_net` turn it into a ``torch.nn.Module`` or an ONNX model. Nothing is downloaded: the
weights are the very files ncnn runs. An operator outside the supported set raises :class:`UnsupportedGraph`
naming it, instead of building a network that computes something else.

Formats follow ncnn's documentation ("param and model file structure", "operation param weight table"): a param
line is ``type name n_in n_out in... out... key=value...``; keys at or below -23300 carry arrays
(``-233xx=n,v1,...,vn`` for key ``xx``); a weight blob opened with a 4-byte tag is float32 (tag 0 or
0x0002C056), float16 (0x01306B47) or 8-bit indices into a 256-entry table (any other non-zero tag).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from upscaler.errors import Unavailable

#: Layer types this reader (and both builders) understand.
SUPPORTED = frozenset(
    {
        "Input",
        "MemoryData",
        "Split",
        "Convolution",
        "BinaryOp",
        "Eltwise",
        "ReLU",
        "PReLU",
        "Sigmoid",
        "Swish",
        "Concat",
        "PixelShuffle",
        "Interp",
    }
)

# BinaryOp operation types (ncnn's numbering).
BINARY_OPS = {0: "add", 1: "sub", 2: "mul", 3: "div", 4: "max", 5: "min", 7: "rsub", 8: "rdiv"}
# Convolution fused activations.
ACTIVATIONS = {0: "none", 1: "relu", 2: "leakyrelu", 3: "clip", 4: "sigmoid"}
# Interp resize types.
RESIZE = {1: "nearest", 2: "bilinear", 3: "bicubic"}

_MAGIC = 7767517
_FP16_TAG = 0x01306B47
_INT8_TAG = 0x000D4B38
_RAW_SCALED_TAG = 0x0002C056


class UnsupportedGraph(Unavailable):
    """The model uses an operator or a parameter the converter does not translate."""


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, int | float | list[int | float]]
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def param(self, key: int, default: int | float | list[int | float]) -> int | float | list[int | float]:
        return self.params.get(key, default)

    def int_param(self, key: int, default: int = 0) -> int:
        return int(self.params.get(key, default))  # type: ignore[arg-type]

    def float_param(self, key: int, default: float = 0.0) -> float:
        return float(self.params.get(key, default))  # type: ignore[arg-type]


@dataclass
class Graph:
    layers: list[Layer]
    input: str
    output: str
    name: str = ""

    def convolution_padding(self, layer: Layer) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) input padding of a Convolution layer, in pixels."""
        left = layer.int_param(4, 0)
        top = layer.int_param(14, left)
        right = layer.int_param(15, left)
        bottom = layer.int_param(16, top)
        if min(left, top, right, bottom) < 0:  # -233/-234: "same" padding chosen at run time
            raise UnsupportedGraph(f"{self.name}: layer {layer.name} uses automatic padding ({left})")
        return left, right, top, bottom

    @property
    def flops_per_pixel(self) -> float:
        """Multiply-adds x 2 per *input* pixel of the convolutions (a guide for throughput ceilings)."""
        total, scale = 0.0, 1.0
        for layer in self.layers:
            if layer.type == "Convolution":
                w = layer.weights["weight"]
                total += 2.0 * w.size * scale
            elif layer.type == "PixelShuffle":
                scale *= layer.int_param(0, 1) ** 2
        return total


def _value(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse_params(tokens: list[str], where: str) -> dict[int, int | float | list[int | float]]:
    params: dict[int, int | float | list[int | float]] = {}
    for token in tokens:
        key_text, sep, value_text = token.partition("=")
        if not sep:
            raise UnsupportedGraph(f"{where}: malformed parameter {token!r}")
        key = int(key_text)
        if key <= -23300:
            count, *values = value_text.split(",")
            if int(count) != len(values):
                raise UnsupportedGraph(f"{where}: array parameter {token!r} declares {count} values")
            params[-key - 23300] = [_value(v) for v in values]
        else:
            params[key] = _value(value_text)
    return params


def parse_param(text: str, name: str = "") -> Graph:
    """Parse a ``.param`` file's text (no weights yet)."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [str(_MAGIC)]:
        raise UnsupportedGraph(f"{name}: not an ncnn param file (magic {lines[0] if lines else 'missing'})")
    layer_count = int(lines[1][0])
    layers: list[Layer] = []
    for tokens in lines[2 : 2 + layer_count]:
        ltype, lname, n_in, n_out = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
        if ltype not in SUPPORTED:
            raise UnsupportedGraph(f"{name}: layer {lname} is a {ltype}, which the converter does not support")
        inputs = tokens[4 : 4 + n_in]
        outputs = tokens[4 + n_in : 4 + n_in + n_out]
        params = _parse_params(tokens[4 + n_in + n_out :], f"{name}:{lname}")
        layers.append(Layer(ltype, lname, inputs, outputs, params))
    if len(layers) != layer_count:
        raise UnsupportedGraph(f"{name}: declares {layer_count} layers, has {len(layers)}")
    inputs = [layer.outputs[0] for layer in layers if layer.type == "Input"]
    if len(inputs) != 1:
        raise UnsupportedGraph(f"{name}: expected one Input layer, found {len(inputs)}")
    consumed = {blob for layer in layers for blob in layer.inputs}
    outputs = [blob for layer in layers for blob in layer.outputs if blob not in consumed]
    if len(outputs) != 1:
        raise UnsupportedGraph(f"{name}: expected one output blob, found {outputs}")
    return Graph(layers, inputs[0], outputs[0], name)


class _Weights:
    """Sequential reader of an ncnn ``.bin`` file."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.name = name

    def _take(self, nbytes: int) -> memoryview:
        if self.pos + nbytes > len(self.data):
            raise UnsupportedGraph(f"{self.name}: weights end early (need {nbytes} bytes at {self.pos})")
        chunk = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def raw(self, count: int) -> np.ndarray:
        return np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)

    def tagged(self, count: int) -> np.ndarray:
        tag = int.from_bytes(self._take(4), "little")
        if tag == _FP16_TAG:
            values = np.frombuffer(self._take(2 * count), dtype="<f2").astype(np.float32)
            self._take((-2 * count) % 4)  # blobs are aligned to 4 bytes
            return values
        if tag == _INT8_TAG:
            raise UnsupportedGraph(f"{self.name}: int8-quantised weights are not supported")
        if tag in (0, _RAW_SCALED_TAG):
            return self.raw(count)
        table = self.raw(256)
        index = np.frombuffer(self._take(count), dtype=np.uint8)
        self._take((-count) % 4)
        return table[index].astype(np.float32)


def _load_weights(graph: Graph, data: bytes) -> None:
    reader = _Weights(data, graph.name)
    for layer in graph.layers:
        if layer.type == "Convolution":
            out_ch = layer.int_param(0)
            kw = layer.int_param(1)
            kh = layer.int_param(11, kw)
            size = layer.int_param(6)
            if layer.int_param(8, 0):
                raise UnsupportedGraph(f"{graph.name}: layer {layer.name} is int8-quantised")
            if layer.int_param(7, 1) != 1:
                raise UnsupportedGraph(f"{graph.name}: layer {layer.name} is a grouped convolution")
            in_ch = size // (out_ch * kh * kw)
            if in_ch * out_ch * kh * kw != size:
                raise UnsupportedGraph(f"{graph.name}: layer {layer.name} has {size} weights for {out_ch}x?x{kh}x{kw}")
            layer.weights["weight"] = reader.tagged(size).reshape(out_ch, in_ch, kh, kw)
            if layer.int_param(5, 0):
                layer.weights["bias"] = reader.raw(out_ch)
        elif layer.type == "PReLU":
            layer.weights["slope"] = reader.raw(max(1, layer.int_param(0, 0)))
        elif layer.type == "MemoryData":
            w, h, c = layer.int_param(0, 0), layer.int_param(1, 0), layer.int_param(2, 0)
            shape = tuple(n for n in (c, h, w) if n > 0)
            layer.weights["data"] = reader.raw(int(np.prod(shape))).reshape(shape)
    if reader.pos != len(reader.data):
        raise UnsupportedGraph(f"{graph.name}: {len(reader.data) - reader.pos} bytes of weights left unread")


def read(param_path: str | os.PathLike[str], bin_path: str | os.PathLike[str]) -> Graph:
    """Parse an ncnn model pair into a :class:`Graph` with its weights."""
    param_path, bin_path = Path(param_path), Path(bin_path)
    graph = parse_param(param_path.read_text(encoding="utf-8"), name=param_path.stem)
    _load_weights(graph, bin_path.read_bytes())
    return graph
