"""Write fine-tuned weights as an ncnn model: the stock ``.param`` (same graph) and a new ``.bin``.

    python -m training.export --checkpoint training/runs/span-x2-stored/best.pt --scale 2 \
        --out upscaler/engine/models/span-x2-stored

The ``.bin`` follows ncnn's layout, which :mod:`upscaler.engine.graph` reads: per layer in the param file's order,
a Convolution's weights behind a 4-byte tag (fp16, tag ``0x01306B47``, as the shipped SPAN files are, or fp32,
tag 0) then its bias as raw fp32; PReLU slopes and MemoryData raw fp32. So ncnn itself, the PyTorch runtime and
the ONNX runtime all load the fine-tuned model exactly as they load the stock one; no pnnx round trip is needed
because the graph does not change.
"""

from __future__ import annotations

import argparse
import shutil
import struct
from pathlib import Path

import numpy as np

from upscaler.engine import graph as graph_io
from upscaler.engine import registry

_FP16_TAG = 0x01306B47


def _module_key(layer: graph_io.Layer, taken: set[str]) -> str:
    key = "".join(c if c.isalnum() else "_" for c in layer.name).strip("_") or "layer"
    while key in taken:
        key += "_"
    taken.add(key)
    return key


def write_bin(graph: graph_io.Graph, state: dict[str, object], path: Path, fp16: bool = True) -> None:
    """The ncnn ``.bin`` of ``graph`` with the tensors of a ``GraphModule`` state dict in place of its weights."""
    chunks: list[bytes] = []
    taken: set[str] = set()
    for layer in graph.layers:
        key = _module_key(layer, taken)  # the same keys GraphModule gives its layers
        if layer.type == "Convolution":
            weight = np.asarray(state[f"layers_.{key}.weight"], dtype=np.float32)  # type: ignore[arg-type]
            if weight.shape != layer.weights["weight"].shape:
                raise ValueError(f"{layer.name}: weight {weight.shape} is not {layer.weights['weight'].shape}")
            if fp16:
                raw = weight.astype("<f2").tobytes()
                chunks += [struct.pack("<I", _FP16_TAG), raw, b"\0" * ((-len(raw)) % 4)]
            else:
                chunks += [struct.pack("<I", 0), weight.astype("<f4").tobytes()]
            if "bias" in layer.weights:
                chunks.append(np.asarray(state[f"layers_.{key}.bias"], dtype="<f4").tobytes())  # type: ignore[arg-type]
        elif layer.type == "PReLU":
            chunks.append(np.asarray(state[f"layers_.{key}.weight"], dtype="<f4").tobytes())  # type: ignore[arg-type]
        elif layer.type == "MemoryData":
            chunks.append(np.asarray(state[f"const_{key}"], dtype="<f4").tobytes())  # type: ignore[arg-type]
    path.write_bytes(b"".join(chunks))


def export(state: dict[str, object], scale: int, out: Path, fp16: bool = True) -> tuple[Path, Path]:
    """``out.param`` (the stock SPAN param of ``scale``) and ``out.bin`` (these weights); read back to check."""
    spec = registry.MODELS[f"span-x{scale}"]
    param, weights = registry.weight_files(spec)
    graph = graph_io.read(param, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    out_param, out_bin = out.with_name(out.name + ".param"), out.with_name(out.name + ".bin")
    shutil.copyfile(param, out_param)
    numpy_state = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else v for k, v in state.items()}
    write_bin(graph, numpy_state, out_bin, fp16=fp16)
    graph_io.read(out_param, out_bin)  # every byte accounted for, or this raises
    return out_param, out_bin


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt of a training run")
    p.add_argument("--scale", type=int, default=2, choices=(2, 4))
    p.add_argument("--out", type=Path, required=True, help="path without extension; .param and .bin are written")
    p.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16, as the stock files)")
    args = p.parse_args(argv)
    state = torch.load(args.checkpoint, weights_only=False)["model"]
    out_param, out_bin = export(state, args.scale, args.out, fp16=not args.fp32)
    print(f"wrote {out_param} and {out_bin} ({out_bin.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
