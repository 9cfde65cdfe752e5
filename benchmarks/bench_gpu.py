"""GPU benchmark of the torch runtime: the shipped SPAN models on CUDA, the whole image retrieval, a video job.

    python benchmarks/bench_gpu.py                  # on a CUDA machine: every table (about three minutes)
    python benchmarks/bench_gpu.py --quick --device cpu   # a smoke run of the same code on the CPU

Needs the ``gpu`` extra (torch). Weights are the shipped ncnn files, converted at load (``--model-dir`` names a
folder of ``<model>.param``/``<model>.bin`` pairs when the weight packages are not installed). Tables:

1. Model alone: span x2 and x4 on a 1920x1080 photo (input), batch 1/4/8, fp32/fp16/bf16. Output megapixels per
   second between CUDA events, median of ``--repeats`` runs after warm-up, the input already on the device; peak
   device memory; and the fidelity of each precision on the same photo downscaled x2/x4 and restored (PSNR-Y,
   BasicSR conventions), fp32 being the reference measured in the same run.
2. Host to host: the same through ``TorchNetwork.run_uint8`` (uint8 frames from pinned host memory, conversion on
   the device, uploads on a side stream overlapping compute), which is what a video job and a retrieval pay.
3. Whole retrieval: ``upscaler serve`` (gunicorn, TLS) started here with the torch runtime; a 4000x3000 JPEG is
   stored with ``scale=4`` (1000x750 kept) and ``GET /v1/images/<key>`` returns the 12 MP original-size JPEG;
   median of 3 timed requests after one warm-up, next to the model alone on the same stored image.
4. Video: a 10 s 1920x1080 clip at 30 fps (generated from a photo, H.264) upscaled x2 to 3840x2160 by the worker's
   pipeline (``video_upscaler.pipeline.transcode``, the local provider's engine per frame), next to decode+encode
   alone (nearest-neighbour x2, no model) and the model alone over the decoded frames, in the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _photos import table  # noqa: E402

from upscaler import metrics  # noqa: E402
from upscaler.engine import graph, registry  # noqa: E402

OUT = Path(os.environ.get("OUT", ROOT / "benchmarks" / "results"))


def photo(size: tuple[int, int]) -> Image.Image:
    """A real photograph (scikit-image's ``coffee``) resized to ``size`` with Lanczos."""
    from skimage import data

    return Image.fromarray(data.coffee()).convert("RGB").resize(size, Image.Resampling.LANCZOS)


def load_net(name: str, precision: str, device: str, model_dir: str | None):
    from upscaler.engine.torch_net import TorchNetwork

    spec = registry.MODELS[name]
    return TorchNetwork(
        graph.read(*registry.weight_files(spec, model_dir)), spec.scale, device=device, precision=precision
    )


def cuda_time(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn`` between CUDA events (host clock around a synchronize on the CPU)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_tables(args: argparse.Namespace) -> tuple[list[list[object]], list[list[object]]]:
    import torch

    size = (480, 272) if args.quick else (1920, 1080)
    src = np.asarray(photo(size))
    alone: list[list[object]] = []
    host: list[list[object]] = []
    precisions = ["fp32"] if args.device == "cpu" else ["fp32", "fp16", "bf16"]
    batches = [1, 2] if args.quick else [1, 4, 8]
    for name in ("span-x2", "span-x4"):
        scale = registry.MODELS[name].scale
        # fidelity: the same photo downscaled by the model's factor and restored, PSNR-Y against the photo
        small = np.asarray(Image.fromarray(src).resize((size[0] // scale, size[1] // scale), Image.Resampling.BICUBIC))
        ref_psnr = None
        for precision in precisions:
            net = load_net(name, precision, args.device, args.model_dir)
            restored = net.run_uint8(small[None])[0]
            psnr = metrics.psnr(src, restored, crop_border=scale)
            ref_psnr = psnr if ref_psnr is None else ref_psnr
            for batch in batches:
                x = torch.from_numpy(np.repeat(src[None], batch, axis=0)).to(net.device)
                x = x.permute(0, 3, 1, 2).to(net.dtype).div(255.0).contiguous(memory_format=net.memory_format)
                if net.on_gpu:
                    torch.cuda.reset_peak_memory_stats(net.device)

                def forward(x=x, net=net) -> None:
                    with torch.inference_mode():
                        net.module(x)

                seconds = cuda_time(forward, args.repeats)
                out_mp = batch * size[0] * size[1] * scale * scale / 1e6
                peak = torch.cuda.max_memory_allocated(net.device) / 2**30 if net.on_gpu else float("nan")
                alone.append(
                    [
                        name,
                        precision,
                        batch,
                        f"{size[0]}x{size[1]}",
                        seconds * 1000,
                        out_mp / seconds,
                        peak,
                        psnr,
                        psnr - ref_psnr,
                    ]
                )
                frames = np.repeat(src[None], batch, axis=0)

                def roundtrip(frames=frames, net=net, batch=batch) -> None:
                    net.run_uint8(frames, batch=batch)

                seconds = cuda_time(roundtrip, max(2, args.repeats // 2), warmup=1)
                host.append([name, precision, batch, seconds * 1000, out_mp / seconds])
                del x
                print(f"  {name} {precision} batch {batch}: done", flush=True)
            del net
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return alone, host


def retrieval_table(args: argparse.Namespace, work: Path) -> list[list[object]]:
    import requests

    from tests.servers import free_port, wait_ready

    big = (1000, 750) if args.quick else (4000, 3000)
    original = photo(big)
    buf = io.BytesIO()
    original.save(buf, "JPEG", quality=90)
    body = buf.getvalue()
    from PIL import features

    port = free_port()
    env = {
        **os.environ,
        "UPSCALER_RUNTIME": "torch",
        "UPSCALER_GPU": "off" if args.device == "cpu" else "auto",
        "UPSCALER_VIDEO_WORKERS": "0",
        "UPSCALER_MAX_OUTPUT_MEGAPIXELS": "60",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if not features.check("avif"):  # an older Pillow without AVIF: store the small image as WebP instead
        env["UPSCALER_STORED_CODEC"] = "webp"
    import subprocess

    argv = [
        sys.executable,
        "-c",
        "import sys; from api.cli import main; sys.exit(main())",
        "serve",
        "--port",
        str(port),
    ]
    log = open(work / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"https://127.0.0.1:{port}"
    rows: list[list[object]] = []
    try:
        wait_ready(url + "/ready", timeout=180, proc=proc)
        put = requests.put(
            f"{url}/v1/images/bench/big.jpg?scale=4",
            data=body,
            headers={"Content-Type": "image/jpeg"},
            verify=False,
            timeout=300,
        )
        put.raise_for_status()
        stored = put.json()
        times = []
        for i in range(4):
            t0 = time.perf_counter()
            resp = requests.get(f"{url}/v1/images/bench/big.jpg", verify=False, timeout=300)
            resp.raise_for_status()
            if i:
                times.append(time.perf_counter() - t0)
        back = Image.open(io.BytesIO(resp.content))
        assert back.size == big, back.size
        psnr = metrics.psnr(np.asarray(original), np.asarray(back.convert("RGB")), crop_border=4)
        seconds = statistics.median(times)
        rows.append(
            [
                "GET /v1/images (whole retrieval, JPEG out)",
                f"{big[0]}x{big[1]}",
                seconds,
                big[0] * big[1] / 1e6 / seconds,
                psnr,
            ]
        )
        # the model alone on the same stored-size image, in this process
        net = load_net("span-x4", "auto", args.device, args.model_dir)
        small = np.asarray(original.resize((big[0] // 4, big[1] // 4), Image.Resampling.BICUBIC))
        model_s = cuda_time(lambda: net.run_uint8(small[None]), 3, warmup=1)
        rows.append(
            [
                f"model alone, host to host (span-x4, {net.precision})",
                f"{big[0]}x{big[1]}",
                model_s,
                big[0] * big[1] / 1e6 / model_s,
                float("nan"),
            ]
        )
        (work / "stored.json").write_text(json.dumps(stored, indent=1))
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    return rows


def video_table(args: argparse.Namespace, work: Path) -> list[list[object]]:
    import av

    from upscaler.config import Settings
    from upscaler.engine import Engine
    from video_upscaler.pipeline import transcode

    size = (480, 272) if args.quick else (1920, 1080)
    seconds_of_video = 2 if args.quick else 10
    rate = 30
    n = rate * seconds_of_video
    base = np.asarray(photo((size[0] + 2 * n, size[1])))
    src = work / "clip.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i in range(n):  # a pan across the photo, 2 px per frame
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, 2 * i : 2 * i + size[0]]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    target = (size[0] * 2, size[1] * 2)
    settings = Settings.from_env({}, runtime="torch", gpu="off" if args.device == "cpu" else "auto")
    engine = Engine(settings, model_dir=args.model_dir)
    engine.warmup("span-x2")

    def span(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(engine.upscale(rgb, size=target, model="span"))

    def nearest(rgb: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)

    with av.open(str(src)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    results: dict[str, float] = {}
    for _ in range(args.video_runs):  # interleaved: passthrough, model, whole
        for key, fn in (
            ("a", lambda: transcode(src, work / "a.mp4", nearest, size=target, max_workers=4)),
            ("b", lambda: [span(f) for f in frames]),
            ("c", lambda: transcode(src, work / "c.mp4", span, size=target, max_workers=4)),
        ):
            t0 = time.perf_counter()
            fn()
            results.setdefault(key, float("inf"))
            results[key] = min(results[key], time.perf_counter() - t0)
    with av.open(str(work / "c.mp4")) as container:
        stream = container.streams.video[0]
        out_frames = sum(1 for _ in container.decode(video=0))
        out_size = (stream.width, stream.height)
    assert out_frames == len(frames) and out_size == target, (out_frames, out_size)
    io_ = f"{size[0]}x{size[1]} -> {target[0]}x{target[1]}"
    return [
        ["(a) decode + encode only (nearest x2, no model)", io_, len(frames), results["a"], len(frames) / results["a"]],
        ["(b) model only (span-x2, frames in memory)", io_, len(frames), results["b"], len(frames) / results["b"]],
        ["(c) whole job (worker pipeline + span-x2)", io_, len(frames), results["c"], len(frames) / results["c"]],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the code, not a measurement")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case (median)")
    parser.add_argument("--model-dir", default=None, help="folder with <model>.param/.bin (else the weight packages)")
    parser.add_argument("--video-runs", type=int, default=1, help="interleaved runs of the video steps (best kept)")
    parser.add_argument("--only", default="model,retrieval,video", help="comma-separated tables to run")
    args = parser.parse_args()
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(
            f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"fp32 convolutions in TF32: {torch.backends.cudnn.allow_tf32}"
        )
    else:
        print(f"CPU only ({os.cpu_count()} cores), torch {torch.__version__}")
    try:
        import onnxruntime

        print(f"ONNX Runtime {onnxruntime.__version__}, providers: {', '.join(onnxruntime.get_available_providers())}")
    except ImportError:
        print("ONNX Runtime: not installed")
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    report: list[str] = []

    def add(title: str, headers: list[str], rows: list[list[object]]) -> None:
        report.append(f"{title}\n{table(headers, rows)}")
        print(report[-1], end="\n\n", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "model" in only:
            alone, host = model_tables(args)
            add(
                "Table 1: model alone (input on the device), output MP/s, median between CUDA events",
                ["model", "precision", "batch", "input", "ms", "out MP/s", "peak GiB", "PSNR-Y", "vs fp32 dB"],
                alone,
            )
            add(
                "Table 2: host to host, uint8 frames in and out (run_uint8)",
                ["model", "precision", "batch", "ms", "out MP/s"],
                host,
            )
        if "retrieval" in only:
            add(
                "Table 3: whole retrieval through the service (TLS, gunicorn, torch runtime)",
                ["case", "output", "s", "out MP/s", "PSNR-Y"],
                retrieval_table(args, work),
            )
        if "video" in only:
            add(
                "Table 4: video job, best of runs (interleaved)",
                ["step", "size", "frames", "s", "frames/s"],
                video_table(args, work),
            )
    (OUT / "bench_gpu.txt").write_text("\n\n".join(report) + "\n")
    print("\n\n".join(report))


if __name__ == "__main__":
    main()
