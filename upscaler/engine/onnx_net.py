"""ONNX runtime: the shipped ncnn models as ONNX graphs, run by ONNX Runtime (CPU, CUDA or TensorRT providers).

:func:`to_onnx` translates :class:`upscaler.engine.graph.Graph` node for node (Conv, PRelu, Add/Mul/..., Sigmoid,
Concat, DepthToSpace in CRD order like PyTorch's pixel shuffle, Resize with ncnn's coordinate conventions), with
dynamic batch, height and width. It needs only the ``onnx`` package, not PyTorch, which is how the suite checks the
converted graph against ncnn on a machine without the (several GB) CUDA build of torch. The same file can be handed
to any ONNX consumer (TensorRT's ``trtexec``, ONNX Runtime's TensorRT provider) for deployment.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from upscaler.engine.graph import BINARY_OPS, Graph, Layer, UnsupportedGraph

OPSET = 17
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min"}


def to_onnx(graph: Graph, *, dtype: str = "float32"):  # -> onnx.ModelProto
    """The ONNX model of ``graph`` (input ``data`` NCHW, output ``output``), float32 or float16 weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    np_dtype = np.float16 if dtype == "float16" else np.float32
    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    nodes: list = []
    inits: list = []
    alias: dict[str, str] = {}  # ncnn Split outputs are the same tensor
    counter = iter(range(1_000_000))

    def name(blob: str) -> str:
        return alias.get(blob, blob)

    def const(values: np.ndarray, hint: str) -> str:
        cname = f"{hint}_{next(counter)}"
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=np_dtype), cname))
        return cname

    def const_f32(values: Sequence[float], hint: str) -> str:
        cname = f"{hint}_{next(counter)}"
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.float32), cname))
        return cname

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=f"n{next(counter)}_{op}", **attrs))
        return output

    for layer in graph.layers:
        ins = [name(b) for b in layer.inputs]
        out = layer.outputs[0] if layer.outputs else ""
        t = layer.type
        if t == "Input":
            continue
        if t == "Split":
            for blob in layer.outputs:
                alias[blob] = ins[0]
        elif t == "MemoryData":
            data = layer.weights["data"]
            data = data[None] if data.ndim == 3 else data
            nodes.append(helper.make_node("Identity", [const(data, "memdata")], [out], name=f"{out}_const"))
        elif t == "Convolution":
            _conv(layer, graph, ins[0], out, node, const)
        elif t == "PReLU":
            slope = layer.weights["slope"].reshape(-1, 1, 1)
            node("PRelu", [ins[0], const(slope, "slope")], out)
        elif t == "ReLU":
            slope = layer.float_param(0, 0.0)
            node("LeakyRelu", ins, out, alpha=slope) if slope else node("Relu", ins, out)
        elif t == "Sigmoid":
            node("Sigmoid", ins, out)
        elif t == "Swish":
            node("Mul", [ins[0], node("Sigmoid", ins, f"{out}_sigmoid")], out)
        elif t == "BinaryOp":
            op = BINARY_OPS.get(layer.int_param(0, 0))
            if op is None:
                raise UnsupportedGraph(f"{graph.name}: BinaryOp type {layer.int_param(0)} is not supported")
            a = ins[0]
            b = const(np.float32(layer.float_param(2, 0.0)), "scalar") if layer.int_param(1, 0) else ins[1]
            if op in ("rsub", "rdiv"):
                a, b, op = b, a, op[1:]
            node(_BINARY[op], [a, b], out)
        elif t == "Eltwise":
            _eltwise(layer, ins, out, node, const)
        elif t == "Concat":
            node("Concat", ins, out, axis=(layer.int_param(0, 0) % 3) + 1)
        elif t == "PixelShuffle":
            if layer.int_param(1, 0) != 0:
                raise UnsupportedGraph(f"{graph.name}: {layer.name} uses PixelShuffle mode 1")
            node("DepthToSpace", ins, out, blocksize=layer.int_param(0, 1), mode="CRD")
        elif t == "Interp":
            _interp(layer, graph, ins[0], out, node, const_f32)
        else:  # pragma: no cover - graph.parse_param refuses unknown types first
            raise UnsupportedGraph(f"{graph.name}: no ONNX translation for {t}")

    dims = ["N", 3, "H", "W"]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            graph.name or "upscaler",
            [helper.make_tensor_value_info(graph.input, elem, dims)],
            [helper.make_tensor_value_info(name(graph.output), elem, ["N", 3, "OH", "OW"])],
            inits,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="media-upscaler",
    )
    model.ir_version = min(model.ir_version, 8)  # readable by every ONNX Runtime from 1.14 on
    onnx.checker.check_model(model)
    return model


def _conv(layer: Layer, graph: Graph, x: str, out: str, node, const) -> None:
    w = layer.weights["weight"]
    left, right, top, bottom = graph.convolution_padding(layer)
    inputs = [x, const(w, "weight")]
    if "bias" in layer.weights:
        inputs.append(const(layer.weights["bias"], "bias"))
    kind = layer.int_param(9, 0)
    params = layer.param(10, [])
    values = [float(v) for v in params] if isinstance(params, list) else []
    conv_out = out if kind == 0 else f"{out}_preact"
    node(
        "Conv",
        inputs,
        conv_out,
        kernel_shape=[w.shape[2], w.shape[3]],
        pads=[top, left, bottom, right],
        strides=[layer.int_param(13, layer.int_param(3, 1)), layer.int_param(3, 1)],
        dilations=[layer.int_param(12, layer.int_param(2, 1)), layer.int_param(2, 1)],
    )
    if kind == 1:
        node("Relu", [conv_out], out)
    elif kind == 2:
        node("LeakyRelu", [conv_out], out, alpha=values[0] if values else 0.0)
    elif kind == 3:
        node("Clip", [conv_out, const(np.float32(values[0]), "min"), const(np.float32(values[1]), "max")], out)
    elif kind == 4:
        node("Sigmoid", [conv_out], out)
    elif kind != 0:
        raise UnsupportedGraph(f"{graph.name}: {layer.name} has fused activation {kind}")


def _eltwise(layer: Layer, ins: list[str], out: str, node, const) -> None:
    op = layer.int_param(0, 1)
    if op in (0, 2):
        node("Mul" if op == 0 else "Max", ins, out)
        return
    coeffs = layer.param(1, [])
    weights = [float(c) for c in coeffs] if isinstance(coeffs, list) and coeffs else [1.0] * len(ins)
    terms = [
        x if c == 1.0 else node("Mul", [x, const(np.float32(c), "coeff")], f"{out}_term{i}")
        for i, (x, c) in enumerate(zip(ins, weights, strict=True))
    ]
    node("Sum", terms, out)


def _interp(layer: Layer, graph: Graph, x: str, out: str, node, const_f32) -> None:
    kind = layer.int_param(0, 0)
    if layer.int_param(3, 0) or layer.int_param(4, 0):
        raise UnsupportedGraph(f"{graph.name}: {layer.name} resizes to a fixed size")
    scales = const_f32([1.0, 1.0, layer.float_param(1, 1.0), layer.float_param(2, 1.0)], "scales")
    if kind == 1:
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    elif kind in (2, 3):
        align = "align_corners" if layer.int_param(6, 0) else "half_pixel"
        attrs = dict(mode="linear" if kind == 2 else "cubic", coordinate_transformation_mode=align)
        if kind == 3:
            attrs["cubic_coeff_a"] = -0.75
    else:
        raise UnsupportedGraph(f"{graph.name}: {layer.name} uses Interp type {kind}")
    node("Resize", [x, "", scales], out, **attrs)


def providers_available() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OnnxNetwork:
    """One model in an ONNX Runtime session (thread-safe: ``InferenceSession.run`` may be called concurrently)."""

    runtime = "onnx"

    def __init__(self, graph: Graph, scale: int, *, device: str = "auto", threads: int = 0) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device != "cpu" else ["CPUExecutionProvider"]
        providers = [p for p in wanted if p in available]
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            to_onnx(graph).SerializeToString(), sess_options=options, providers=providers
        )
        self.scale = scale
        self.on_gpu = self.session.get_providers()[0] != "CPUExecutionProvider"
        self.precision = "fp32"
        self.name = graph.name

    def run(self, hwc: np.ndarray) -> np.ndarray:
        return self.run_batch([hwc])[0]

    def run_batch(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        x = np.ascontiguousarray(np.stack([np.asarray(t, np.float32) for t in tiles]).transpose(0, 3, 1, 2))
        (y,) = self.session.run(None, {"data": x})
        return list(np.ascontiguousarray(y.transpose(0, 2, 3, 1)))


def main(argv: list[str] | None = None) -> int:
    """``python -m upscaler.engine.onnx_net MODEL OUT.onnx``: write a shipped model as ONNX (for TensorRT, ...)."""
    import argparse

    from upscaler.engine import graph as graph_io
    from upscaler.engine import registry

    parser = argparse.ArgumentParser(
        prog="python -m upscaler.engine.onnx_net",
        description="Write a shipped model, converted from its ncnn weights, as an ONNX file (input 'data' and "
        "output 'output', NCHW float in [0, 1], dynamic batch and size), for trtexec or any ONNX consumer.",
    )
    parser.add_argument("model", help=f"one of: {', '.join(n for n, s in registry.MODELS.items() if s.is_network)}")
    parser.add_argument("output", help="path of the .onnx file to write")
    parser.add_argument("--fp16", action="store_true", help="store weights and activations as float16")
    parser.add_argument("--model-dir", default=None, help="folder with <model>.param/.bin overriding the packages")
    args = parser.parse_args(argv)
    spec = registry.MODELS.get(args.model)
    if spec is None or not spec.is_network:
        parser.error(f"unknown model {args.model!r}")
    model = to_onnx(
        graph_io.read(*registry.weight_files(spec, args.model_dir)), dtype="float16" if args.fp16 else "float32"
    )
    with open(args.output, "wb") as f:
        f.write(model.SerializeToString())
    print(f"wrote {args.output}: {spec.name}, x{spec.scale}, {len(model.graph.node)} nodes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
