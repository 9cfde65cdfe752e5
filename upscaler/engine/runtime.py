"""ncnn networks, loaded once per process and shared by every thread.

An ``ncnn.Net`` is read-only once loaded; each call makes its own ``Extractor``, which is how ncnn supports
concurrent inference on one net. Loading is serialised by a lock so two threads never load the same model twice.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from upscaler.engine.registry import ModelSpec, weight_files
from upscaler.errors import Unavailable

log = logging.getLogger(__name__)

_gpu_lock = threading.Lock()
_gpu_count: int | None = None


def gpu_count() -> int:
    """Vulkan GPUs ncnn can use (0 on machines without a GPU or a Vulkan loader). Probed once."""
    global _gpu_count
    with _gpu_lock:
        if _gpu_count is None:
            import ctypes.util

            if ctypes.util.find_library("vulkan") is None:
                _gpu_count = 0  # no loader: skip ncnn's probe and the warnings it prints to stderr
                return _gpu_count
            try:
                import ncnn

                _gpu_count = int(ncnn.get_gpu_count())
            except Exception:  # a broken Vulkan loader must not stop the CPU path
                _gpu_count = 0
        return _gpu_count


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int = 0  # 0 = one per core
    gpu: str = "auto"  # "auto" | "off"
    model_dir: str | None = None

    def resolved_threads(self) -> int:
        return self.threads if self.threads > 0 else (os.cpu_count() or 1)

    def use_gpu(self) -> bool:
        return self.gpu != "off" and gpu_count() > 0


class Network:
    """One loaded model: ``run`` maps a float32 HxWx3 array in [0, 1] to its upscaled HxWx3 array."""

    def __init__(self, spec: ModelSpec, options: RuntimeOptions) -> None:
        import ncnn

        self.spec = spec
        self.param_path, self.bin_path = weight_files(spec, options.model_dir)
        self.on_gpu = options.use_gpu()
        net = ncnn.Net()
        net.opt.use_vulkan_compute = self.on_gpu
        net.opt.num_threads = options.resolved_threads()
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

    def run_chw(self, chw: np.ndarray) -> np.ndarray:
        """Raw call: float32 CxHxW in, float32 Cx(H*s)x(W*s) out (unclipped)."""
        chw = np.ascontiguousarray(chw, dtype=np.float32)
        ex = self._net.create_extractor()
        ex.input("data", self._ncnn.Mat(chw))
        ret, out = ex.extract("output")
        if ret != 0:
            raise Unavailable(f"ncnn inference failed for {self.spec.name} (code {ret})")
        return np.array(out, dtype=np.float32, copy=True)

    def run(self, hwc: np.ndarray) -> np.ndarray:
        out = self.run_chw(hwc.transpose(2, 0, 1))
        return out.transpose(1, 2, 0)


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
            net = _cache[key] = Network(spec, options)
        return net


def loaded() -> list[str]:
    return sorted({name for name, _ in _cache})


def weights_path(spec: ModelSpec, options: RuntimeOptions) -> Path:
    return weight_files(spec, options.model_dir)[1]
