"""The four container images as the tests see them: their Dockerfiles parsed (no Docker engine runs here, so the
images are never built in CI), the build context that .dockerignore leaves, and the commands they run."""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: image -> (Dockerfile, pinned requirements it installs)
IMAGES = {
    "api": ("api/Dockerfile", "requirements/api.txt"),
    "worker": ("video_upscaler/Dockerfile", "requirements/worker.txt"),
    "model-server": ("plugins/esrgan_sagemaker/Dockerfile", "requirements/model-server.txt"),
    "model-server-gpu": ("plugins/esrgan_sagemaker/Dockerfile.gpu", "requirements/model-server-gpu.txt"),
}


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, COPY, RUN, ...
    args: str  # the rest of the (joined) line
    stage: int  # index of the FROM it belongs to

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str, stage: int | None = None) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword and (stage is None or i.stage == stage)]

    @property
    def final_stage(self) -> int:
        return len(self.all("FROM")) - 1

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword, self.final_stage)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV of the final stage (``KEY=value`` pairs)."""
        out: dict[str, str] = {}
        for inst in self.all("ENV", self.final_stage):
            for token in shlex.split(inst.args):
                key, sep, value = token.partition("=")
                if not sep:
                    raise ValueError(f"{self.path}: ENV must use KEY=value: {inst.args!r}")
                out[key] = value
        return out

    def command(self) -> list[str]:
        """ENTRYPOINT + CMD of the final stage, as the container runs them."""
        entry, cmd = self.last("ENTRYPOINT"), self.last("CMD")
        return [*(entry.exec_form() or [] if entry else []), *(cmd.exec_form() or [] if cmd else [])]

    def healthcheck(self) -> list[str] | None:
        inst = self.last("HEALTHCHECK")
        if inst is None:
            return None
        _, sep, rest = inst.args.partition("CMD ")
        return Instruction("CMD", rest, inst.stage).exec_form() if sep else None

    def copies(self) -> list[tuple[list[str], str, dict[str, str]]]:
        """(sources, destination, flags) of every COPY."""
        out = []
        for inst in self.all("COPY"):
            parts = inst.exec_form() or shlex.split(inst.args)
            flags = {}
            while parts and parts[0].startswith("--"):
                key, _, value = parts.pop(0)[2:].partition("=")
                flags[key] = value
            out.append((parts[:-1], parts[-1], flags))
        return out


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped (enough for the Dockerfiles here)."""
    result = Dockerfile(path)
    logical, stage = "", -1
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.instructions.append(Instruction(keyword, args.strip(), stage))
        logical = ""
    return result


@cache
def dockerfile(image: str) -> Dockerfile:
    return parse_dockerfile(ROOT / IMAGES[image][0])


def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml (from the installed project): command -> ``module:function``."""
    entry_points = metadata.distribution("media-upscaler").entry_points
    return {ep.name: ep.value for ep in entry_points if ep.group == "console_scripts"}


def host_argv(command: list[str]) -> list[str]:
    """The image's command with its first word (a console script of this project, installed in the image's
    site-packages) resolved to the same script in the virtual environment running the tests."""
    name, *rest = command
    if name not in console_scripts():
        raise ValueError(f"{name!r} is not one of the project's console scripts")
    return [str(BIN / name), *rest]


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with the value after ``flag`` replaced; the flag must be there."""
    if flag not in argv:
        raise ValueError(f"{flag} is not in {argv}")
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


# --- .dockerignore ---------------------------------------------------------------------------------------------------


def _pattern(text: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out)


@cache
def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) rules in order; the last rule matching a path or one of its parents decides."""
    rules = []
    path = ROOT / ".dockerignore"
    for raw in path.read_text().splitlines() if path.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        text = line[1:] if negate else line
        rules.append((not negate, _pattern(text.strip("/"))))
    return rules


def in_context(relpath: str) -> bool:
    """Whether the build context (the repository root less .dockerignore) holds ``relpath``."""
    parts = Path(relpath).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for excludes, pattern in dockerignore():
        if any(pattern.fullmatch(c) for c in candidates):
            included = not excludes
    return included
