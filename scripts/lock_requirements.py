"""Write the pinned runtime requirements the container images install (``requirements/*.txt``).

Each image needs only what its command imports at run time: the project's base dependencies plus the extras named
below, and everything those need, pinned to the versions installed in this environment (the versions the test
suite ran against). Development tools (pytest, ruff, moto, the CDK) never enter an image.

    .venv/bin/python scripts/lock_requirements.py           # rewrite requirements/*.txt from .venv
    .venv/bin/python scripts/lock_requirements.py --check   # exit 1 if a file differs from what it would write

An image whose extras are not installed here (model-server-gpu needs torch, the ``gpu`` extra) is skipped with a
note: write it from an environment that has them.

The markers are evaluated for the images' platform (CPython 3.11 on Linux), not for the machine running this.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "media-upscaler"

#: image -> (extras of the project it runs, extra top-level packages, why)
IMAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "api": (("serve",), (), "api/Dockerfile: `upscaler serve` (gunicorn, Flask, boto3, the video modules it imports)"),
    "worker": (("video", "aws"), (), "video_upscaler/Dockerfile: `upscaler-video-worker` (PyAV, boto3, metrics)"),
    "model-server": ((), ("flask", "gunicorn"), "plugins/esrgan_sagemaker/Dockerfile: `upscaler-model-server`"),
    "model-server-gpu": (
        ("gpu",),
        ("flask", "gunicorn"),
        "plugins/esrgan_sagemaker/Dockerfile.gpu: `upscaler-model-server` with the torch runtime on CUDA",
    ),
}

TARGET_ENV = {
    **default_environment(),
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "python_full_version": "3.11.14",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
}


def _project_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """The project's own requirements (its installed metadata, i.e. pyproject.toml) for ``extras``, the extras it
    names of itself ("media-upscaler[video]") followed."""
    declared = [Requirement(r) for r in metadata.distribution(PROJECT).requires or []]
    out: list[Requirement] = []
    todo, seen = ["", *extras], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in declared:
            if (req.marker is None) != (extra == ""):
                continue
            if req.marker is not None and not req.marker.evaluate({**TARGET_ENV, "extra": extra}):
                continue
            plain = Requirement(str(req).split(";")[0])
            if canonicalize_name(plain.name) == PROJECT:
                todo.extend(plain.extras)
            else:
                out.append(plain)
    return out


def declared_in(extra: str) -> set[str]:
    """Canonical names one extra lists itself, not following the extras of the project it names."""
    names = set()
    for raw in metadata.distribution(PROJECT).requires or []:
        req = Requirement(raw)
        if req.marker is not None and req.marker.evaluate({**TARGET_ENV, "extra": extra}):
            names.add(canonicalize_name(req.name))
    return names - {PROJECT}


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**TARGET_ENV, "extra": e}) for e in (extras or {""}))


def closure(top: list[Requirement]) -> dict[str, str]:
    """Canonical name -> installed version, for ``top`` and everything they need on the target platform."""
    pins: dict[str, str] = {}
    walked: set[tuple[str, frozenset[str]]] = set()
    todo = [r for r in top if _applies(r, set())]
    while todo:
        req = todo.pop()
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        dist = metadata.distribution(req.name)
        if not req.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"{req} is not satisfied by the installed {dist.version}")
        pins[name] = dist.version
        if (name, extras) in walked:
            continue
        walked.add((name, extras))
        todo.extend(sub for sub in map(Requirement, dist.requires or []) if _applies(sub, set(extras)))
    return pins


def render(image: str) -> str:
    extras, packages, why = IMAGES[image]
    top = _project_requirements(extras) + [Requirement(p) for p in packages]
    pins = closure(top)
    header = [
        f"# {why}",
        f"# Runtime dependencies of {PROJECT}{'[' + ','.join(extras) + ']' if extras else ''}"
        + (f" + {', '.join(packages)}" if packages else "")
        + ", pinned to the versions the test suite ran against.",
        "# Generated by scripts/lock_requirements.py; do not edit by hand.",
    ]
    return "\n".join([*header, *(f"{name}=={version}" for name, version in sorted(pins.items()))]) + "\n"


PIN = re.compile(r"^([a-z0-9][a-z0-9._-]*)==([^\s;#]+)$")


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            match = PIN.match(line)
            if not match:
                raise ValueError(f"{path}: not a pin: {line!r}")
            pins[match.group(1)] = match.group(2)
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for image in IMAGES:
        path = ROOT / "requirements" / f"{image}.txt"
        try:
            text = render(image)
        except metadata.PackageNotFoundError as exc:  # torch (the gpu extra) is not in every environment
            print(
                f"skipped {path.relative_to(ROOT)}: {exc.name} is not installed here; run this script from an "
                f"environment with media-upscaler{list(IMAGES[image][0])} installed",
                file=sys.stderr,
            )
            continue
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)} ({len(read_pins(path))} pins)")
    if stale:
        print("out of date with this environment: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
