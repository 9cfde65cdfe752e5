"""The four Dockerfiles (three images, the model server also in a GPU variant),
checked without a Docker engine (none runs on our machines, so CI never builds the images):
what they copy is in the build context, they run as a non-root user in exec form with a health check on a pinned
slim base, their pinned requirements hold every third-party module their command can import, and the command each
image runs starts the service outside a container, answers its health check and stops cleanly on SIGTERM."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.images import IMAGES, ROOT, console_scripts, dockerfile, host_argv, in_context, replace_flag
from tests.servers import _process, free_port

FIRST_PARTY = {"upscaler", "api", "video_upscaler", "plugins", "client"}
BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")  # a patch release, never a floating tag


def _lock_module():
    spec = importlib.util.spec_from_file_location("lock_requirements", ROOT / "scripts" / "lock_requirements.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# --- static checks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_base_image_is_a_pinned_slim_python(image: str) -> None:
    df = dockerfile(image)
    stages: list[str] = []
    for inst in df.all("FROM"):
        ref, *alias = inst.args.split()
        if ref in stages:
            continue
        assert BASE.match(ref), f"{df.path}: FROM {ref} is not python:3.11.<patch>-slim-bookworm"
        if alias:
            stages.append(alias[-1])
    assert len({i.args.split()[0] for i in df.all("FROM")}) == 1, "build and runtime stages share one base"


@pytest.mark.parametrize("image", IMAGES)
def test_every_copy_source_is_in_the_build_context(image: str) -> None:
    df = dockerfile(image)
    copied = 0
    for sources, _, flags in df.copies():
        if "from" in flags:
            continue  # from another stage, not the context
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"{df.path}: COPY {source}: no such file or folder"
            assert in_context(source), f"{df.path}: COPY {source}: excluded by .dockerignore"
            if path.is_dir():
                files = [p for p in path.rglob("*") if p.is_file() and in_context(str(p.relative_to(ROOT)))]
                assert files, f"{df.path}: COPY {source}: .dockerignore leaves nothing in it"
            copied += 1
    assert copied >= 4


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in [".git/config", ".venv/bin/python", "data/api-keys.json", "data/tls/key.pem", "tests/test_lint.py"]:
        assert not in_context(path), path
    assert not in_context("upscaler/__pycache__/config.cpython-311.pyc")
    assert in_context("upscaler/config.py") and in_context("requirements/api.txt")


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_non_root_user(image: str) -> None:
    df = dockerfile(image)
    user = df.last("USER")
    assert user is not None, f"{df.path}: no USER in the final stage"
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) >= 10000, f"{df.path}: USER {user.args} (want a numeric uid >= 10000)"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Nothing after USER switches back or needs root.
    after = df.instructions[df.instructions.index(user) + 1 :]
    assert not [i for i in after if i.keyword in ("USER", "RUN")], f"{df.path}: instructions after USER"


@pytest.mark.parametrize("image", IMAGES)
def test_exec_form_entry_point_and_health_check(image: str) -> None:
    df = dockerfile(image)
    for keyword in ("ENTRYPOINT", "CMD"):
        inst = df.last(keyword)
        assert inst is not None and inst.exec_form() is not None, f"{df.path}: {keyword} must be a JSON array"
    assert df.command()[0] in console_scripts(), f"{df.path}: the entry point is a console script of the project"
    assert df.healthcheck(), f"{df.path}: HEALTHCHECK CMD must be present, in exec form"


@pytest.mark.parametrize("image", IMAGES)
def test_installs_its_pinned_requirements(image: str) -> None:
    df = dockerfile(image)
    lock = IMAGES[image][1]
    sources = {s for srcs, _, flags in df.copies() if "from" not in flags for s in srcs}
    assert lock in sources and "requirements/build.txt" in sources
    runs = " ".join(i.args for i in df.all("RUN"))
    assert "pip install --no-cache-dir -r /tmp/requirements.txt" in runs
    assert "--no-deps" in runs, "the project's wheel goes in without resolving anything more"
    for path in (ROOT / lock, ROOT / "requirements/build.txt"):
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[0-9][^\s;]*", line), f"{path.name}: {line!r} is not a pin"


@pytest.mark.parametrize("image", IMAGES)
def test_pins_satisfy_pyproject_and_hold_no_dev_tools(image: str) -> None:
    lock = _lock_module()
    pins = lock.read_pins(ROOT / IMAGES[image][1])
    extras, packages, _ = lock.IMAGES[image]
    for req in lock._project_requirements(extras) + [Requirement(p) for p in packages]:
        name = canonicalize_name(req.name)
        assert name in pins, f"{IMAGES[image][1]}: {req.name} is a dependency and is not pinned"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {req}"
    runtime = {canonicalize_name(r.name) for r in lock._project_requirements(("serve", "video", "aws", "client"))}
    dev = (lock.declared_in("dev") | lock.declared_in("deploy")) - runtime
    assert {"pytest", "ruff", "moto", "kubernetes-validate", "aws-cdk-lib"} <= dev
    assert not dev & set(pins), f"development tools in an image: {sorted(dev & set(pins))}"


def _module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def reachable(entry: str) -> tuple[set[str], set[str]]:
    """First-party modules ``entry`` can import (at module level or inside functions, conservatively), and the
    third-party top-level modules they import. Also followed: gunicorn app targets ("pkg.mod:factory()") and
    ``-m module`` in command lists."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        package = module if path.name == "__init__.py" else ".".join(parts[:-1])
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                target = re.fullmatch(r"([a-z_][\w.]*):\w+(\(\))?", node.value)
                names = [target.group(1)] if target else []
            elif isinstance(node, ast.List | ast.Tuple):
                values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
                names = [str(values[i + 1]) for i, v in enumerate(values[:-1]) if v == "-m" and values[i + 1]]
            for name in names:
                top = name.split(".")[0]
                if top in FIRST_PARTY:
                    todo.append(name)
                elif top and top not in sys.stdlib_module_names:
                    third.add(top)
    return seen, third


@pytest.mark.parametrize("image", IMAGES)
def test_image_holds_everything_its_command_imports(image: str) -> None:
    """Every first-party package the command can reach is copied into the image, and every third-party module it
    can import comes from a distribution pinned in the image's requirements."""
    from importlib.metadata import packages_distributions

    lock = _lock_module()
    df = dockerfile(image)
    entry_module = console_scripts()[df.command()[0]].split(":")[0]
    modules, third = reachable(entry_module)
    copied = {Path(s).parts[0] for srcs, _, flags in df.copies() if "from" not in flags for s in srcs}
    needed = {m.split(".")[0] for m in modules}
    assert needed <= copied, f"{df.path}: the command imports {sorted(needed - copied)}, which is not copied"
    pins = lock.read_pins(ROOT / IMAGES[image][1])
    providers = packages_distributions()
    image_extras = {canonicalize_name(r.name) for r in lock._project_requirements(lock.IMAGES[image][0])}
    missing = {}
    for top in sorted(third):
        if top in OPTIONAL_RUNTIME_MODULES:
            # imported only when UPSCALER_RUNTIME asks for it (runtime.py checks find_spec and names the extra)
            dist = OPTIONAL_RUNTIME_MODULES[top]
            if dist in image_extras:
                assert dist in pins, f"{IMAGES[image][1]}: {dist} is in the image's extras and is not pinned"
            continue
        dists = {canonicalize_name(d) for d in providers.get(top, [])}
        assert dists, f"{top} is imported by the {image} command but installed by nothing here"
        if not dists & set(pins):
            missing[top] = sorted(dists)
    assert not missing, f"{IMAGES[image][1]} lacks the distributions of {missing}"


# --- the commands, run outside a container ---------------------------------------------------------------------------

#: What the test changes in each image's command to run it here: addresses and ports (loopback, free ports instead of
#: 0.0.0.0 and fixed ones) and, for the worker, the long-poll wait (SQS's 20 s maximum) so that stopping an idle
#: worker does not sit out a whole poll. Everything else is the command as the image has it.
#: Runtimes the engine loads only when asked (module -> distribution): an image holds them only where its extras do.
OPTIONAL_RUNTIME_MODULES = {"torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime"}

PORT_FLAGS = {
    "api": {"--host": "127.0.0.1", "--port": "{port}"},
    "worker": {"--metrics-port": "{port}", "--wait-seconds": "1"},
    "model-server": {"--bind": "127.0.0.1:{port}"},
}
PORT_FLAGS["model-server-gpu"] = PORT_FLAGS["model-server"]
READY = {"api": "https://127.0.0.1:{port}/ready", "worker": "http://127.0.0.1:{port}/metrics"}
READY["model-server"] = READY["model-server-gpu"] = "http://127.0.0.1:{port}/ping"
IMAGE_PORTS = {"api": "8443", "worker": "9102", "model-server": "8080", "model-server-gpu": "8080"}


def _container_env(image: str, root: Path) -> dict[str, str]:
    """The image's ENV, with absolute paths moved under ``root`` (the container's filesystem, here a temp dir)."""
    env = {}
    for key, value in dockerfile(image).env().items():
        if value.startswith("/"):
            moved = root / value.lstrip("/")
            moved.mkdir(parents=True, exist_ok=True)
            value = str(moved)
        env[key] = value
    return env


@pytest.mark.slow
@pytest.mark.parametrize("image", IMAGES)
def test_command_starts_the_service_outside_a_container(image: str, tmp_path: Path) -> None:
    df = dockerfile(image)
    port = free_port()
    argv = host_argv(df.command())
    for flag, value in PORT_FLAGS[image].items():
        value = value.format(port=port)
        argv = replace_flag(argv, flag, value) if flag in argv else [*argv, flag, value]
    workdir = tmp_path / "app"  # WORKDIR /app
    workdir.mkdir()
    # HOME is the image user's home (/app, read-only in the pods): nothing may be written there.
    env = {**_container_env(image, tmp_path / "root"), "UPSCALER_NCNN_THREADS": "2", "HOME": str(workdir)}
    url = READY[image].format(port=port)
    with _process(argv, workdir, env, url, f"{image}.log") as proc:
        health = df.healthcheck()
        assert health is not None
        check = [sys.executable if health[0] == "python" else health[0]] + [
            part.replace(f":{IMAGE_PORTS[image]}/", f":{port}/") for part in health[1:]
        ]
        result = subprocess.run(check, env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"HEALTHCHECK failed: {result.stderr[-2000:]}"
        proc.send_signal(signal.SIGTERM)  # what `docker stop` and the kubelet send to PID 1
        assert proc.wait(timeout=40) == 0, f"{image}: exit status {proc.returncode} after SIGTERM"
    assert not (workdir / ".gunicorn").exists(), "gunicorn's control socket is off in the images"


def test_api_image_refuses_a_public_address_without_api_keys(tmp_path: Path) -> None:
    """`docker run upscaler-api` with no key file: the command says why and exits, instead of serving anyone."""
    argv = replace_flag(host_argv(dockerfile("api").command()), "--port", str(free_port()))
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_")}
    env.update(_container_env("api", tmp_path / "root"))
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in result.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_health_check_port_is_the_port_the_command_listens_on(image: str) -> None:
    """EXPOSE, the HEALTHCHECK URL and the command's own port agree (the model server takes its port from
    SAGEMAKER_BIND_TO_PORT, as SageMaker expects)."""
    df = dockerfile(image)
    port = IMAGE_PORTS[image]
    expose = df.last("EXPOSE")
    assert expose is not None and expose.args == port
    assert f"127.0.0.1:{port}/" in " ".join(df.healthcheck() or [])
    command = df.command()
    listens = df.env().get("SAGEMAKER_BIND_TO_PORT") if image.startswith("model-server") else None
    listens = listens or command[command.index(next(f for f in PORT_FLAGS[image] if "port" in f)) + 1]
    assert listens == port
