"""The runtimes that run a model, loaded once per process and shared by every thread.

Three runtimes run the same shipped ``.param``/``.bin`` weights behind one interface (:class:`Network`):

- ``ncnn`` (:class:`NcnnNetwork`): the CPU default, and a Vulkan GPU when ncnn finds one. An ``ncnn.Net`` is
  read-only once loaded; each call makes its own ``Extractor``, which is how ncnn supports concurrent inference.
- ``torch`` (:mod:`upscaler.engine.torch_net`): the graph converted to a ``torch.nn.Module``; CUDA in fp16/bf16
  with batched tiles and on-device uint8 conversion. Needs the ``gpu`` extra.
- ``onnx`` (:mod:`upscaler.engine.onnx_net`): the graph converted to ONNX and run by ONNX Runtime.

``UPSCALER_RUNTIME=auto`` takes torch when a CUDA GPU is there (most GPU containers, SageMaker's included, expose
CUDA and no Vulkan loader), else ncnn, which measures faster than the other two on the CPU
(``benchmarks/bench_runtime.py``). Loading is serialised by a lock so two threads never load a model twice.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from upscaler.engine.registry import ModelSpec, weight_files
from upscaler.errors import InvalidInput, Unavailable

RUNTIMES = ("auto", "ncnn", "torch", "onnx")

# ncnn's wheel runs its layers on libgomp, whose idle threads spin at every barrier by default. With another process
# busy on the same cores (the API's threads, a video encoder, a second worker) the spinning threads take the time
# the working ones need: span-x4 ran about 2x slower beside one busy process, and as fast as on a quiet machine
# with passive waiting, which costs nothing measurable when the machine is quiet (benchmarks/bench_engine.py,
# Table 3). libgomp reads this once, when ncnn first loads, which is after this module is imported (every entry
# point goes through the engine; ncnn is imported lazily below). An operator's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger(__name__)


@functools.cache
def gpu_count() -> int:
    """Vulkan GPUs ncnn can use (0 on machines without a GPU or a Vulkan loader). Probed once."""
    import ctypes.util

    if ctypes.util.find_library("vulkan") is None:
        return 0  # no loader: skip ncnn's probe and the warnings it prints to stderr
    try:
        import ncnn

        return int(ncnn.get_gpu_count())
    except Exception:  # a broken Vulkan loader must not stop the CPU path
        return 0


@functools.cache
def cuda_available() -> bool:
    """Whether PyTorch is installed and sees a CUDA GPU (probed once; False without torch)."""
    if importlib.util.find_spec("torch") is None:
        return False
    from upscaler.engine import torch_net

    return torch_net.cuda_available()


@functools.cache
def cpu_amx_bf16() -> bool:
    """Whether PyTorch is installed and this CPU has AMX bf16 units, where the torch runtime's ``bf16-mixed``
    precision runs the models faster than ncnn's fp32 at the same fidelity (``benchmarks/bench_engine.py``)."""
    if importlib.util.find_spec("torch") is None or not _cpu_flags_allow("amx_bf16"):
        return False
    from upscaler.engine import torch_net

    return torch_net.cpu_has_amx_bf16()


def _cpu_flags_allow(flag: str) -> bool:
    """False when /proc/cpuinfo lists the CPU's flags without ``flag`` (importing torch to ask is slow and big);
    True when it has it, or when there is no /proc/cpuinfo to read (then torch is asked)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return flag in line.split()
    except OSError:
        pass
    return True


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int = 0  # 0 = one per core
    gpu: str = "auto"  # "auto" | "off"
    model_dir: str | None = None
    runtime: str = "auto"  # one of RUNTIMES
    precision: str = "auto"  # torch only: auto | fp32 | fp16 | bf16 | bf16-mixed
    batch: int = 4  # equal-size tiles per call on a GPU

    def resolved_threads(self) -> int:
        return self.threads if self.threads > 0 else (os.cpu_count() or 1)

    def resolved_runtime(self) -> str:
        """The runtime ``auto`` stands for here: torch on a CUDA GPU or on a CPU with AMX (when PyTorch is installed),
        else ncnn."""
        if self.runtime not in RUNTIMES:
            raise InvalidInput(f"UPSCALER_RUNTIME must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime != "auto":
            return self.runtime
        if self.gpu != "off" and cuda_available():
            return "torch"
        return "torch" if self.precision in ("auto", "bf16-mixed") and cpu_amx_bf16() else "ncnn"

    def use_gpu(self) -> bool:
        """Whether models run on a GPU with these options (CUDA for torch/onnx, Vulkan for ncnn)."""
        if self.gpu == "off":
            return False
        if self.resolved_runtime() == "ncnn":
            return gpu_count() > 0
        return cuda_available()


class Network(Protocol):
    """One loaded model. ``run`` maps a float32 HxWx3 array in [0, 1] to its upscaled (unclipped) HxWx3 array;
    ``run_batch`` does the same for equal-size tiles in one call."""

    runtime: str
    on_gpu: bool
    spec: ModelSpec

    def run(self, hwc: np.ndarray) -> np.ndarray: ...

    def run_batch(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class NcnnNetwork:
    """A model on ncnn (CPU, or Vulkan)."""

    runtime = "ncnn"

    def __init__(self, spec: ModelSpec, options: RuntimeOptions) -> None:
        import ncnn

        self.spec = spec
        self.param_path, self.bin_path = weight_files(spec, options.model_dir)
        self.on_gpu = options.gpu != "off" and gpu_count() > 0
        net = ncnn.Net()
        net.opt.use_vulkan_compute = self.on_gpu
        net.opt.num_threads = options.resolved_threads()
        # ncnn's own pools (one per net when none is given) keep every buffer they ever handed out, so a process
        # stays at the peak of its concurrent inferences (4 slots x ~768 MB of SPAN x4 workspace) for ever: ours
        # behave the same (any cached block at least as large is reused) but are emptied by release_pools().
        self._pools = (ncnn.PoolAllocator(), ncnn.PoolAllocator())
        for pool in self._pools:
            pool.set_size_compare_ratio(0.0)
        net.opt.blob_allocator, net.opt.workspace_allocator = self._pools
        if net.load_param(str(self.param_path)) != 0 or net.load_model(str(self.bin_path)) != 0:
            raise Unavailable(f"ncnn could not load {spec.name} from {self.param_path.parent}")
        self._ncnn = ncnn
        self._net = net
        log.info(
            "model loaded",
            extra={
                "model": spec.name,
                "gpu": self.on_gpu,
                "threads": net.opt.num_threads,
                "weights": str(self.bin_path),
            },
        )

    def release_pools(self) -> None:
        """Free the buffers ncnn keeps for later inferences (those in use stay: only the cached ones go)."""
        for pool in self._pools:
            pool.clear()

    def run_chw(self, chw: np.ndarray) -> np.ndarray:
        """Raw call: float32 CxHxW in, float32 Cx(H*s)x(W*s) out (unclipped)."""
        chw = np.ascontiguousarray(chw, dtype=np.float32)  # the Mat wraps this memory: no second copy
        ex = self._net.create_extractor()
        ex.input("data", self._ncnn.Mat(chw))
        ret, out = ex.extract("output")
        if ret != 0:
            raise Unavailable(f"ncnn inference failed for {self.spec.name} (code {ret})")
        return np.asarray(out)  # a writable view of ncnn's output (the array keeps the Mat alive), not a copy

    def run(self, hwc: np.ndarray) -> np.ndarray:
        """HxWx3 in, a (H*s)x(W*s)x3 view of ncnn's planar output out: the tiler or the quantiser reads it once."""
        out = self.run_chw(hwc.transpose(2, 0, 1))
        return out.transpose(1, 2, 0)

    def run_batch(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.run(t) for t in tiles]


def _converted(spec: ModelSpec, options: RuntimeOptions, runtime: str) -> Network:
    """The torch or onnx network of ``spec``, converted from its ncnn files."""
    from upscaler.engine import graph as graph_io

    graph = graph_io.read(*weight_files(spec, options.model_dir))
    device = "cpu" if options.gpu == "off" else "auto"
    if runtime == "torch":
        if importlib.util.find_spec("torch") is None:
            raise Unavailable("UPSCALER_RUNTIME=torch needs PyTorch: pip install 'media-upscaler[gpu]'")
        from upscaler.engine.torch_net import TorchNetwork

        net: Network = TorchNetwork(
            graph, spec.scale, device=device, precision=options.precision, threads=options.threads
        )  # type: ignore[assignment]
    else:
        if importlib.util.find_spec("onnxruntime") is None:
            raise Unavailable("UPSCALER_RUNTIME=onnx needs ONNX Runtime: pip install onnx onnxruntime")
        from upscaler.engine.onnx_net import OnnxNetwork

        net = OnnxNetwork(graph, spec.scale, device=device, threads=options.threads)  # type: ignore[assignment]
    net.spec = spec
    log.info(
        "model loaded",
        extra={"model": spec.name, "runtime": runtime, "gpu": net.on_gpu, "precision": getattr(net, "precision", "")},
    )
    return net


def _build(spec: ModelSpec, options: RuntimeOptions) -> Network:
    from upscaler.backpressure import keep_freed_memory

    keep_freed_memory()  # tiles reuse the heap instead of fresh zeroed mappings (see there)
    runtime = options.resolved_runtime()
    if runtime == "ncnn":
        return NcnnNetwork(spec, options)
    return _converted(spec, options, runtime)


_cache: dict[tuple[str, RuntimeOptions], Network] = {}
_cache_lock = threading.Lock()


def load(spec: ModelSpec, options: RuntimeOptions) -> Network:
    """The process-wide network for ``spec`` (loaded on first use)."""
    key = (spec.name, options)
    net = _cache.get(key)
    if net is not None:
        return net
    with _cache_lock:
        net = _cache.get(key)
        if net is None:
            net = _cache[key] = _build(spec, options)
        return net


def release_pools() -> None:
    """Hand back the memory the loaded networks keep cached between inferences (ncnn's pools), for the process to
    return to the operating system: called when no heavy work runs (see upscaler.backpressure)."""
    for net in list(_cache.values()):
        release = getattr(net, "release_pools", None)
        if release is not None:
            release()


def loaded() -> list[str]:
    return sorted({name for name, _ in _cache})


def weights_path(spec: ModelSpec, options: RuntimeOptions) -> Path:
    return weight_files(spec, options.model_dir)[1]
