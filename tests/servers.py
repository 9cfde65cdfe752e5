"""Real servers on loopback for tests: gunicorn with TLS (through the `upscaler serve` command) and moto."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests
import urllib3

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

ROOT = Path(__file__).resolve().parents[1]
UPSCALER = Path(sys.executable).with_name("upscaler")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            resp = requests.get(url, verify=False, timeout=2)
            if resp.status_code == 200:
                return
            last = f"{resp.status_code} {resp.text[:200]}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


@contextlib.contextmanager
def _process(
    argv: list[str], workdir: Path, env: dict[str, str], ready_url: str, log_name: str
) -> Iterator[subprocess.Popen]:
    """Run ``argv`` in its own session until the block ends (SIGTERM, then SIGKILL); wait for ``ready_url``.
    Yields the process, for a test that stops it itself and looks at how it exited."""
    log = open(workdir / log_name, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        argv, cwd=workdir, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_ready(ready_url, proc=proc)
        yield proc
    except BaseException:
        log.flush()
        sys.stderr.write((workdir / log_name).read_text(errors="replace")[-4000:])
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextlib.contextmanager
def api_server(workdir: Path, env: dict[str, str] | None = None, extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """Start `upscaler serve` (gunicorn, HTTPS with a self-signed certificate) in ``workdir``; yield its URL."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    full_env = {"UPSCALER_NCNN_THREADS": "2", **(env or {})}
    with _process(
        [str(UPSCALER), "serve", "--port", str(port), *extra_args], workdir, full_env, url + "/ready", "server.log"
    ):
        yield url


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's real server on loopback; yields its endpoint URL. It starts empty: moto keeps its backends in the
    process, so a table or queue another test's server made would otherwise still be there (one at a time)."""
    import requests
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        requests.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=30).raise_for_status()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


MODEL_SERVER = Path(sys.executable).with_name("upscaler-model-server")


@contextlib.contextmanager
def model_server(workdir: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start the SageMaker model server (`upscaler-model-server`, gunicorn) on loopback; yield its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(MODEL_SERVER), "serve", "--bind", f"127.0.0.1:{port}"]
    with _process(argv, workdir, {"UPSCALER_NCNN_THREADS": "2", **(env or {})}, url + "/ping", "model-server.log"):
        yield url


@contextlib.contextmanager
def hung_endpoint() -> Iterator[str]:
    """A TCP server on loopback that accepts connections and never answers (a hung S3); yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        listener.close()


@contextlib.contextmanager
def hung_s3_api(workdir: Path, env: dict[str, str]) -> Iterator[str]:
    """`upscaler serve` whose S3 endpoint accepts connections and never answers; yields its URL once /health
    answers (/ready cannot: the store never does)."""
    with hung_endpoint() as endpoint:
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        full_env = {
            **AWS_TEST_ENV,
            "UPSCALER_STORAGE": "s3://",
            "UPSCALER_S3_ENDPOINT_URL": endpoint,
            "UPSCALER_VIDEO_WORKERS": "0",
            "UPSCALER_NCNN_THREADS": "2",
            **env,
        }
        with _process([str(UPSCALER), "serve", "--port", str(port)], workdir, full_env, url + "/health", "hung.log"):
            yield url


def ready_once_loaded(url: str, timeout: float = 60.0) -> requests.Response:
    """The first ``/ready`` answer given once the model has loaded (whatever the dependencies say)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = requests.get(url + "/ready", verify=False, timeout=timeout)
        if "model still loading" not in resp.text or time.monotonic() > deadline:
            return resp
        time.sleep(0.3)
