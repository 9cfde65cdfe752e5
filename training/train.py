"""Fine-tune SPAN from the shipped weights on (stored, original) pairs made by :mod:`training.data`.

    python -m training.train --data training/data --scale 2 --steps 3000 --run training/runs/span-x2-stored
    python -m training.train ... --resume          # go on from the run's last checkpoint

The network is :class:`upscaler.engine.torch_net.GraphModule` built from the shipped ``.param``/``.bin`` (the same
module the PyTorch runtime serves), so the fine-tuned weights keep the stock architecture and layer names and
export back to an ncnn ``.bin`` (:mod:`training.export`). Loss: Charbonnier on RGB in [0, 1] (``--loss l1`` for
plain L1); Adam with a cosine-decayed learning rate; random LR patches (``--patch`` px, HR patch ``patch x scale``)
with flips and 90-degree turns, drawn uniformly over the training pairs of every codec and quality.

``--precision bf16`` (the default on a CPU with AMX and on a CUDA GPU that has bf16) runs the forward and backward
passes under ``torch.autocast`` in bfloat16, the weights, the optimiser and the loss staying fp32 (mixed
precision). On this project's 2-core Sapphire Rapids CPU a step (batch 8, LR patches of 48 px, x2) took 0.52 of
its fp32 time (0.16 s against 0.30 s, interleaved). ``--device cuda`` trains on a GPU (``auto`` picks one when
PyTorch sees it).

Every ``--val-every`` steps (and at step 0, which scores the stock weights) the held-out split of the dataset is
scored: PSNR-Y with BasicSR's conventions (BT.601 Y, ``scale`` pixels cropped; :func:`upscaler.metrics.psnr`) on a
fixed centre crop of each validation pair, next to bicubic on the same stored pixels. A checkpoint
(``last.pt``: weights, optimiser, step, random states, history) is written every ``--save-every`` steps and at the
end; ``best.pt`` keeps the weights of the best validation score.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data import Pair, load_manifest
from upscaler.engine import graph as graph_io
from upscaler.engine import registry
from upscaler.engine.torch_net import GraphModule
from upscaler.metrics import psnr
from upscaler.quality import LOSSLESS


def stock_graph(scale: int) -> graph_io.Graph:
    """The shipped SPAN graph for ``scale`` (2 or 4), with its weights; for 1, :func:`restorer_graph`."""
    if scale == 1:
        return restorer_graph()
    spec = registry.MODELS[f"span-x{scale}"]
    return graph_io.read(*registry.weight_files(spec))


def _last_upsampler(graph: graph_io.Graph) -> tuple[graph_io.Layer, graph_io.Layer]:
    """(the convolution feeding the pixel shuffle, the pixel shuffle) at the end of a SPAN graph."""
    shuffle = next(layer for layer in graph.layers if layer.type == "PixelShuffle")
    conv = next(layer for layer in graph.layers if shuffle.inputs[0] in layer.outputs)
    if conv.type != "Convolution" or shuffle.outputs[0] != graph.output:
        raise ValueError(f"{graph.name}: not a graph that ends in a convolution and a pixel shuffle")
    return conv, shuffle


#: Names of what the x1 restorer adds to SPAN x2's graph: the input split in two, and the skip that adds it back.
RESTORER_SPLIT, RESTORER_SKIP, RESTORER_RESIDUAL = "/restorer/input_split", "/restorer/skip", "/restorer/residual"
#: The largest correction the x1 restorer may add to a pixel, in [0, 1] units (8 grey levels): the codec's error at
#: the qualities it restores is a few levels; on the sharp edges of flat synthetic colours an unbounded correction
#: of small weights moved 1.3 % of the pixels by more than 20 levels and some by up to 2,113 (18-21 dB lost on a
#: generated image of shapes stored at 55-57 dB), so SPAN x2's features there must be very large. A clip fused into
#: the last convolution (ncnn's activation 3, which every runtime reads) bounds the harm; no gradient goes beyond it.
RESTORER_MAX_CORRECTION = 8 / 255


def restorer_param_text() -> str:
    """The ``.param`` of the x1 restorer: SPAN x2's graph (same blocks, same layer names) whose last convolution
    gives 3 channels, with no pixel shuffle after it, clipped to :data:`RESTORER_MAX_CORRECTION` and added to the
    input image (a global skip): an image in, the same size out, the network learning only the bounded correction."""
    param, weights = registry.weight_files(registry.MODELS["span-x2"])
    graph = graph_io.read(param, weights)
    conv, shuffle = _last_upsampler(graph)
    source = graph.input
    kept, skipped = f"{source}_restorer_a", f"{source}_restorer_b"
    lines = param.read_text().splitlines()
    rows: list[list[str]] = []  # each layer's tokens: type, name, #in, #out, inputs, outputs, params
    for line in lines[2:]:
        tokens = line.split()
        if not tokens or tokens[1] == shuffle.name:
            continue
        n_in = int(tokens[2])
        tokens[4 : 4 + n_in] = [kept if t == source else t for t in tokens[4 : 4 + n_in]]
        if tokens[1] == conv.name:
            fields = [t for t in tokens[6:] if not t.startswith(("0=", "6=", "9=", "-23310="))]
            size = 3 * conv.weights["weight"][0].size
            bound = f"-23310=2,{-RESTORER_MAX_CORRECTION:.6e},{RESTORER_MAX_CORRECTION:.6e}"
            tokens = [*tokens[:4], tokens[4], RESTORER_RESIDUAL, "0=3", *fields, f"6={size}", "9=3", bound]
        rows.append(tokens)
        if tokens[0] == "Input":
            rows.append(["Split", RESTORER_SPLIT, "1", "2", source, kept, skipped])
    rows.append(["BinaryOp", RESTORER_SKIP, "2", "1", RESTORER_RESIDUAL, skipped, graph.output, "0=0"])
    blobs = {b for t in rows for b in t[4 + int(t[2]) : 4 + int(t[2]) + int(t[3])]}
    return "\n".join([lines[0], f"{len(rows)} {len(blobs)}", *(" ".join(t) for t in rows)]) + "\n"


def restorer_graph() -> graph_io.Graph:
    """The x1 restorer with SPAN x2's weights for its blocks and a last convolution of zeros: before any training
    it gives back its input exactly, and training moves it from there."""
    x2 = stock_graph(2)
    conv, _ = _last_upsampler(x2)
    graph = graph_io.parse_param(restorer_param_text(), "span-x1-restorer")
    sources = {layer.name: layer for layer in x2.layers}
    for layer in graph.layers:
        layer.weights = dict(sources[layer.name].weights) if layer.name in sources else {}
        if layer.name == conv.name:
            w = conv.weights["weight"]
            layer.weights = {
                "weight": np.zeros((3, *w.shape[1:]), np.float32),
                "bias": np.zeros(3, np.float32),
            }
    return graph


def stock_module(scale: int) -> GraphModule:
    return GraphModule(stock_graph(scale))


def keep_ends_in_fp32(module: torch.nn.Module, first: int = 1, last: int = 2) -> None:
    """Run the first ``first`` and the last ``last`` convolutions outside autocast, in fp32: bf16 keeps 8 bits of
    mantissa, so a last layer in bf16 rounds the output image itself to about 0.4 % (a ceiling near 48 dB), below
    the differences the fine-tuning is after. The PyTorch runtime's ``bf16-mixed`` keeps the same layers in fp32."""
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in {*convs[:first], *convs[len(convs) - last :]}:

        def forward(x: torch.Tensor, conv: torch.nn.Conv2d = conv) -> torch.Tensor:
            with torch.autocast(x.device.type, enabled=False):
                return torch.nn.Conv2d.forward(conv, x.float())

        conv.forward = forward  # type: ignore[method-assign]


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


@dataclass
class Loaded:
    pair: Pair
    hr: np.ndarray  # HxWx3 uint8
    lr: np.ndarray


def load_pairs(
    folder: Path, scale: int, split: str, max_quality: int = 100, identity_pairs: bool = False
) -> list[Loaded]:
    """The pairs of ``scale`` and ``split`` stored at ``max_quality`` or below (a model for a quality band); at scale
    1 not the lossless ones (the image itself: the search never restores a lossless full-size form, and its PSNR is
    infinite) unless ``identity_pairs``: then they teach the restorer to leave clean pixels as they are."""
    hrs: dict[str, np.ndarray] = {}
    out = []
    for pair in load_manifest(folder):
        if pair.scale != scale or pair.split != split or (scale == 1 and pair.codec in LOSSLESS and not identity_pairs):
            continue
        if pair.codec not in LOSSLESS and pair.quality > max_quality:
            continue
        if pair.hr not in hrs:
            hrs[pair.hr] = np.asarray(Image.open(folder / pair.hr).convert("RGB"))
        lr = np.asarray(Image.open(folder / pair.lr).convert("RGB"))
        hr = hrs[pair.hr]
        if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
            raise ValueError(f"{pair.lr}: {lr.shape} is not {hr.shape} / {scale}")
        out.append(Loaded(pair, hr, lr))
    return out


def sample_batch(
    pairs: list[Loaded], batch: int, patch: int, scale: int, rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random aligned (LR, HR) patches, flipped and turned at random, as float NCHW in [0, 1]."""
    lrs, hrs = [], []
    for _ in range(batch):
        item = rng.choice(pairs)
        h, w = item.lr.shape[:2]
        p = min(patch, h, w)
        y, x = rng.randrange(0, h - p + 1), rng.randrange(0, w - p + 1)
        lr = item.lr[y : y + p, x : x + p]
        hr = item.hr[y * scale : (y + p) * scale, x * scale : (x + p) * scale]
        if rng.random() < 0.5:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        turns = rng.randrange(4)
        lr, hr = np.rot90(lr, turns), np.rot90(hr, turns)
        lrs.append(np.ascontiguousarray(lr))
        hrs.append(np.ascontiguousarray(hr))
    size = min(a.shape[0] for a in lrs)  # images smaller than the patch: crop the batch to the smallest
    lr_t = torch.from_numpy(np.stack([a[:size, :size] for a in lrs])).permute(0, 3, 1, 2).float().div_(255.0)
    hr_t = torch.from_numpy(np.stack([a[: size * scale, : size * scale] for a in hrs])).permute(0, 3, 1, 2)
    return lr_t, hr_t.float().div_(255.0)


def _centre(arr: np.ndarray, side: int, scale: int = 1) -> np.ndarray:
    h, w = arr.shape[:2]
    s = side * scale
    y, x = max(0, (h - s) // 2 // scale * scale), max(0, (w - s) // 2 // scale * scale)
    return arr[y : y + s, x : x + s]


@torch.no_grad()
def validate(module: torch.nn.Module, pairs: list[Loaded], scale: int, side: int = 128) -> dict[str, float]:
    """PSNR-Y (crop = scale) of the model and of bicubic on a centre crop of each validation pair: the mean of the
    pairs' PSNRs, and ``*_pooled``, the PSNR of their mean squared error, which weighs each pair by the error there
    is to remove rather than letting a pair stored near exactly (50+ dB) decide by a fraction of a grey level."""
    module.eval()
    model_scores, bicubic_scores = [], []
    for item in pairs:
        lr = _centre(item.lr, side)
        hr = _centre(item.hr, side, scale)[: lr.shape[0] * scale, : lr.shape[1] * scale]
        x = torch.from_numpy(np.array(lr)).permute(2, 0, 1)[None].float().div_(255.0)
        x = x.to(next(module.parameters()).device)
        y = module(x)[0].clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).cpu().numpy()
        up = np.asarray(Image.fromarray(lr).resize((hr.shape[1], hr.shape[0]), Image.Resampling.BICUBIC))
        model_scores.append(psnr(hr, y, crop_border=scale))
        bicubic_scores.append(psnr(hr, up, crop_border=scale))
    module.train()
    return {
        "psnr_y": float(np.mean(model_scores)),
        "bicubic_psnr_y": float(np.mean(bicubic_scores)),
        "psnr_y_pooled": _pooled(model_scores),
        "bicubic_psnr_y_pooled": _pooled(bicubic_scores),
    }


def _pooled(scores: list[float]) -> float:
    mse = np.mean([255.0**2 / 10 ** (s / 10) for s in scores])  # inf dB -> 0
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else math.inf


def _state(module, opt, step, rng, history, args, seconds: float) -> dict:
    return {
        "model": module.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "python_rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seconds": seconds,
    }


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a run killed mid-write keeps its previous checkpoint


def _lr_at(step: int, args: argparse.Namespace, time_done: float = 0.0) -> float:
    """Linear warm-up, then cosine decay over the steps, or over the wall-clock budget (``time_done``, the share of
    ``--max-minutes`` spent) when that runs out first, so a run stopped by its budget ends at a low rate."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = max((step - args.warmup) / max(1, args.steps - args.warmup), time_done)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def _device_and_precision(args: argparse.Namespace) -> tuple[torch.device, str]:
    """The device and training precision ``--device``/``--precision`` stand for here."""
    from upscaler.engine.torch_net import cpu_has_amx_bf16

    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA GPU here; pass --device cpu")
    device = torch.device(name)
    precision = args.precision
    if precision == "auto":
        bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_amx_bf16()
        precision = "bf16" if bf16 else "fp32"
    return device, precision


def train(args: argparse.Namespace) -> dict:
    """Run (or resume) a fine-tuning run; returns its summary (also written to ``<run>/summary.json``)."""
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    device, precision = _device_and_precision(args)
    args.run.mkdir(parents=True, exist_ok=True)
    train_pairs = load_pairs(args.data, args.scale, "train", args.max_quality, args.identity_pairs)
    val_pairs = load_pairs(args.data, args.scale, "val", args.max_quality)
    if args.val_limit and len(val_pairs) > args.val_limit:  # evenly spread over images, codecs and qualities
        val_pairs = val_pairs[:: math.ceil(len(val_pairs) / args.val_limit)]
    if not train_pairs:
        raise SystemExit(f"no x{args.scale} training pairs in {args.data} (python -m training.data)")
    module = stock_module(args.scale).to(device).train()
    if precision == "bf16":
        keep_ends_in_fp32(module)
    if args.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(module.parameters(), lr=args.lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(module.parameters(), lr=args.lr, betas=(0.9, 0.99))
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    history: list[dict] = []
    step, before = 0, 0.0  # before: seconds trained by the runs this one resumes
    last = args.run / "last.pt"
    if args.resume and last.is_file():
        state = torch.load(last, weights_only=False, map_location=device)
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        before = state.get("seconds", 0.0)
        print(f"resumed {last} at step {step}", file=sys.stderr)
    key = "psnr_y_pooled" if args.select == "pooled" else "psnr_y"
    best = max((h["val"][key] for h in history if "val" in h), default=-math.inf)
    if step == 0 and val_pairs:
        history.append({"step": 0, "val": validate(module, val_pairs, args.scale)})
        best = history[-1]["val"][key]
        print(f"step 0 (stock weights): val {history[-1]['val']}", file=sys.stderr)

    def scored(at: int) -> dict[str, float]:
        """Validate the weights of step ``at``; keep them in best.pt when they score the best so far."""
        nonlocal best
        val = validate(module, val_pairs, args.scale)
        if val[key] > best:
            best = val[key]
            _save(args.run / "best.pt", {"model": module.state_dict(), "step": at, "val": val})
        return val

    loss_fn = charbonnier if args.loss == "charbonnier" else torch.nn.functional.l1_loss
    running, started = [], time.perf_counter()
    bar = tqdm(total=args.steps, initial=step, desc=f"span-x{args.scale}", unit="step", disable=args.quiet)
    deadline = started + 60 * args.max_minutes if args.max_minutes else math.inf
    while step < args.steps:
        if time.perf_counter() > deadline:  # a wall-clock budget: stop cleanly, checkpoint and validate
            bar.write(f"--max-minutes {args.max_minutes:g} reached at step {step}")
            if val_pairs:
                history.append({"step": step, "val": scored(step)})
            _save(last, _state(module, opt, step, rng, history, args, before + time.perf_counter() - started))
            break
        time_done = (time.perf_counter() - started) / (60 * args.max_minutes) if args.max_minutes else 0.0
        rate = _lr_at(step, args, time_done)
        for group in opt.param_groups:
            group["lr"] = rate
        lr_t, hr_t = sample_batch(train_pairs, args.batch, args.patch, args.scale, rng)
        lr_t, hr_t = lr_t.to(device), hr_t.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = module(lr_t)
        loss = loss_fn(pred.float(), hr_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad:
            torch.nn.utils.clip_grad_norm_(module.parameters(), args.clip_grad)
        opt.step()
        step += 1
        running.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(running[-50:]):.4f}", lr=f"{rate:.1e}")
        entry: dict = {}
        if step % args.log_every == 0 or step == args.steps:
            seconds = before + time.perf_counter() - started
            entry = {"step": step, "loss": float(np.mean(running)), "lr": rate, "seconds": seconds}
            running = []
        if val_pairs and (step % args.val_every == 0 or step == args.steps):
            entry = entry or {"step": step}
            entry["val"] = scored(step)
            bar.write(f"step {step}: val {entry['val']}")
        if entry:
            history.append(entry)
        if step % args.save_every == 0 or step == args.steps:
            _save(last, _state(module, opt, step, rng, history, args, before + time.perf_counter() - started))
    bar.close()
    if not (args.run / "best.pt").is_file():  # no validation split: the last weights are the result
        _save(args.run / "best.pt", {"model": module.state_dict(), "step": step, "val": None})
    summary = {
        "scale": args.scale,
        "steps": step,
        "batch": args.batch,
        "patch": args.patch,
        "loss": args.loss,
        "lr": args.lr,
        "clip_grad": args.clip_grad,
        "optimizer": args.optimizer,
        "max_quality": args.max_quality,
        "identity_pairs": args.identity_pairs,
        "select": args.select,
        "device": device.type,
        "precision": precision,
        "train_pairs": len(train_pairs),
        "val_pairs": len(val_pairs),
        "train_images": len({p.pair.image for p in train_pairs}),
        "val_images": len({p.pair.image for p in val_pairs}),
        "stopped_at_deadline": step < args.steps,
        "seconds": before + time.perf_counter() - started,  # every run of it, resumed ones included
        "history": history,
    }
    (args.run / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("training/data"), help="dataset folder (training.data)")
    p.add_argument("--run", type=Path, default=Path("training/runs/span-x2-stored"), help="checkpoints go here")
    p.add_argument(
        "--scale", type=int, default=2, choices=(1, 2, 4), help="2, 4: fine-tune SPAN; 1: train the x1 restorer"
    )
    p.add_argument("--steps", type=int, default=3000, help="total optimiser steps (a resumed run counts on)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=48, help="LR patch side in pixels")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (Adam)")
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--loss", choices=("charbonnier", "l1"), default="charbonnier")
    p.add_argument(
        "--max-quality", type=int, default=100, help="train on the lossy forms of this quality or lower (a band)"
    )
    p.add_argument(
        "--optimizer", choices=("adam", "sgd"), default="adam", help="sgd: momentum 0.9 (steps sized by the gradient)"
    )
    p.add_argument(
        "--select",
        choices=("mean", "pooled"),
        default="mean",
        help="the validation score best.pt keeps the best of: the mean of the pairs' PSNR-Y, or pooled (the PSNR-Y "
        "of their mean squared error; for the x1 restorer, whose pairs range from 28 to 57 dB as stored)",
    )
    p.add_argument(
        "--identity-pairs",
        action="store_true",
        help="x1: train on the lossless forms too, as pairs the restorer must give back unchanged",
    )
    p.add_argument("--clip-grad", type=float, default=0.0, help="clip the gradients' norm to this; 0 = no clipping")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: a CUDA GPU if one is seen")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="bf16: mixed precision (autocast; fp32 weights and loss); auto: bf16 on an AMX CPU or a bf16 GPU",
    )
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--val-limit", type=int, default=0, help="score at most this many validation pairs; 0 = all")
    p.add_argument("--max-minutes", type=float, default=0, help="stop (checkpointed) after this wall time; 0 = none")
    p.add_argument("--resume", action="store_true", help="continue from <run>/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    summary = train(parser().parse_args(argv))
    vals = [h for h in summary["history"] if "val" in h]
    if vals:
        first, end = vals[0], vals[-1]
        print(f"val PSNR-Y: stock {first['val']['psnr_y']:.3f} -> step {end['step']} {end['val']['psnr_y']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
