"""Adversarial run on loopback: a real `upscaler serve`, attacked the way issue #15 found it could be taken down.

    .venv/bin/python stress/adversarial.py [--short] [--idle 500] [--slow 50] [--side 1400] [--settle 60]
    .venv/bin/python stress/adversarial.py --only cancel,media    # some classes only

Classes (each prints a row: class, cases, outcome, figures):

* idle       ``--idle`` TLS connections opened and left silent (handshake done, nothing sent), plus as many TCP-only;
             while they are held, time ``/health`` and a small retrieval.
* slow-head  ``--slow`` clients sending their headers a byte every 0.5 s: all cut off by the total header deadline,
             ``/health`` timed meanwhile.
* handshake  ``--slow`` clients that start a TLS handshake and stall: cut off by the handshake deadline.
* slow-body  a body that stops arriving: 408 as JSON.
* framing    negative and duplicate Content-Length, Content-Length with chunked, NUL in a header: JSON 4xx.
* inputs     JSON nested 1000 deep, an integer of 400 digits, ``//`` and invalid UTF-8 in keys, a key needing
             percent-encoding in ``Location``: JSON 400s and the right Location.
* burst      4 x the work slots concurrent retrievals of a ``--side``-pixel image (SPAN x4 from a quarter-size
             stored image): how many 200 and 429, p50/p99, the worker's RSS before, at peak and ``--settle``
             seconds after.
* hung-s3    a second server whose S3 endpoint accepts and never answers: ``/ready`` and a retrieval, timed
             against their deadlines.
* cancel     an 800x600 x4 upscale whose client gives up after ``--cancel-after`` seconds: the worker's CPU seconds
             from the disconnect until it is idle, against the same request run to the end (``--short``: not run
             to the end), and the next request's time.
* source     a URL source that sends one byte every 0.2 s: answered 503 at the total source deadline, not per read.
* media      a two-page TIFF (415, not cut to its first page), a PNG uploaded as a video (415), and an MP4 cut short
             whose index still lists every frame (201, then its job ``Failed`` with the frame counts).
* jobs       the same job posted twice with one ``Idempotency-Key`` (the same job back), then another job with that
             key (409).
* auth       ``serve --host 0.0.0.0`` with an empty key document (``{"keys": []}``, blank, ``[]``): refused.

Everything runs on 127.0.0.1 and stops by itself; ``--short`` (used by the test suite) shrinks every count.
Exit status 0 when every class behaved as designed.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import http.server
import io
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
import urllib3
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import UPSCALER, api_server, free_port, hung_s3_api, ready_once_loaded
from tests.test_deadlines import TrickleHandler
from tests.test_e2e_video import upload, wait_v1
from tests.test_video_pipeline import make_clip, truncated_copy

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

#: Shorter deadlines for the run, so cut-offs show within seconds (the defaults are 10, 10 and 30 s); a longer idle
#: time (default 5 s), so the idle class's connections are all still held while it times ``/health``.
FRONT_ENV = {
    "UPSCALER_HEADER_TIMEOUT": "5",
    "UPSCALER_HANDSHAKE_TIMEOUT": "10",
    "UPSCALER_BODY_TIMEOUT": "5",
    "UPSCALER_IDLE_TIMEOUT": "120",
}
#: URL sources from this machine are allowed for the ``source`` class only (the service refuses them by default).
SOURCE_ENV = {
    "UPSCALER_ALLOWED_SOURCE_HOSTS": "127.0.0.1",
    "UPSCALER_ALLOW_PRIVATE_SOURCES": "1",
    "UPSCALER_SOURCE_TIMEOUT": "3",
}


@dataclass
class Row:
    name: str
    cases: int
    ok: bool
    figures: dict[str, object] = field(default_factory=dict)


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def _connect(port: int, tls: bool = True) -> socket.socket | None:
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        return _tls().wrap_socket(raw) if tls else raw
    except OSError:
        return None


def _timed(call: Callable[[], requests.Response]) -> tuple[int, float]:
    start = time.monotonic()
    try:
        status = call().status_code
    except requests.RequestException:
        status = 0
    return status, time.monotonic() - start


def _server_processes(port: int) -> list[psutil.Process]:
    """The gunicorn processes serving ``port`` (master and workers)."""
    out: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline"]):
        if f"127.0.0.1:{port}" in " ".join(proc.info.get("cmdline") or []):
            with contextlib.suppress(psutil.Error):
                out += [proc, *proc.children(recursive=True)]
    return out


def _worker_rss(port: int) -> float:
    """MB resident in the gunicorn processes serving ``port``."""
    total = 0.0
    for p in _server_processes(port):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss / 2**20
    return round(total, 1)


def _worker_cpu(port: int) -> float:
    """CPU seconds (user + system) the gunicorn processes serving ``port`` have used so far."""
    total = 0.0
    for p in _server_processes(port):
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def _photo(side: int) -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((side, side)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _open(sock: socket.socket) -> bool:
    """Whether the server still holds ``sock`` open (nothing to read, no end of stream)."""
    raw = socket.socket(fileno=sock.fileno())  # a view on the same descriptor: peek below TLS
    try:
        raw.setblocking(False)
        return raw.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        raw.detach()
        sock.setblocking(True)


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    out = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            out += chunk
    return out


def idle(url: str, port: int, count: int) -> Row:
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        start = time.monotonic()
        held = [s for s in pool.map(lambda i: _connect(port, tls=i % 2 == 0), range(2 * count)) if s is not None]
        opened = time.monotonic() - start
    health = [_timed(lambda: requests.get(url + "/health", verify=False, timeout=30)) for _ in range(3)]
    small = _timed(lambda: requests.get(url + "/v1/images/small.jpg", verify=False, timeout=60))
    still_open = sum(_open(s) for s in held)
    for s in held:
        s.close()
    ok = all(status == 200 for status, _ in [*health, small])
    return Row(
        "idle",
        len(held),
        ok,
        {
            "opened_s": round(opened, 2),
            "open_while_timed": still_open,
            "health_s": "/".join(f"{t:.3f}" for _, t in health),
            "small_retrieval_s": round(small[1], 3),
        },
    )


def slow_headers(url: str, port: int, count: int, deadline: float) -> Row:
    socks = [s for s in (_connect(port) for _ in range(count)) if s is not None]
    for s in socks:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    start, cut, health = time.monotonic(), {}, []
    while time.monotonic() - start < deadline + 5 and len(cut) < len(socks):
        for i, s in enumerate(socks):
            if i not in cut:
                try:
                    s.sendall(b"X")
                except OSError:
                    cut[i] = time.monotonic() - start
        if time.monotonic() - start < deadline:
            health.append(_timed(lambda: requests.get(url + "/health", verify=False, timeout=30)))
        time.sleep(0.5)
    for s in socks:
        s.close()
    ok = len(cut) == len(socks) and all(status == 200 for status, _ in health)
    return Row(
        "slow-head",
        len(socks),
        ok,
        {
            "cut_off": len(cut),
            "cut_after_max_s": round(max(cut.values(), default=float("nan")), 2),
            "health_max_s": round(max((t for _, t in health), default=float("nan")), 3),
        },
    )


def stalled_handshakes(port: int, count: int, deadline: float) -> Row:
    socks = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        socks.append(raw)
    start = time.monotonic()
    for s in socks:
        _read_all(s, deadline + 5)
    took = time.monotonic() - start
    for s in socks:
        s.close()
    return Row("handshake", count, took < deadline + 5, {"all_cut_after_s": round(took, 2)})


def slow_body(port: int) -> Row:
    sock = _connect(port)
    assert sock is not None
    sock.sendall(b"PUT /v1/images/slow.png HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n\x89PNG")
    answer = _read_all(sock, 15)
    sock.close()
    ok = answer.startswith(b"HTTP/1.1 408") and b"application/json" in answer
    return Row("slow-body", 1, ok, {"status": answer[9:12].decode(errors="replace")})


FRAMING = [
    b"POST /store HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /store HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST /store HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
]


def framing(port: int) -> Row:
    statuses = []
    for head in FRAMING:
        sock = _connect(port)
        assert sock is not None
        sock.sendall(head)
        answer = _read_all(sock, 10)
        sock.close()
        json_4xx = answer[9:10] == b"4" and b"Content-Type: application/json" in answer
        statuses.append(answer[9:12].decode(errors="replace") + ("/json" if json_4xx else "/other"))
    return Row("framing", len(FRAMING), all(s.endswith("/json") for s in statuses), {"answers": " ".join(statuses)})


def inputs(url: str, small: bytes) -> Row:
    json_headers = {"Content-Type": "application/json"}
    checks: list[tuple[str, requests.Response, int]] = [
        (
            "deep-json",
            requests.post(url + "/store", data="[" * 1000 + "]" * 1000, headers=json_headers, verify=False),
            400,
        ),
        ("huge-int", requests.post(url + "/v1/upscale", json={"img": "aGk=", "scale": 10**400}, verify=False), 400),
        ("double-slash", requests.put(url + "/v1/images//etc/passwd", data=small, verify=False), 400),
        ("bad-utf8", requests.get(url + "/v1/images/%ff", verify=False), 400),
    ]
    put = requests.put(url + "/v1/images/loc/a%3Fb.jpg?bucket=media", data=small, verify=False)
    location_ok = put.headers.get("Location") == "/v1/images/loc/a%3Fb.jpg?bucket=media"
    ok = all(r.status_code == want and "json" in r.headers.get("Content-Type", "") for _, r, want in checks)
    figures: dict[str, object] = {name: r.status_code for name, r, _ in checks}
    figures["location_encoded"] = location_ok
    return Row("inputs", len(checks) + 1, ok and location_ok, figures)


def burst(url: str, port: int, side: int, slots: int, settle: float) -> Row:
    stored = requests.put(url + "/v1/images/burst.jpg", params={"scale": 4}, data=_photo(side), verify=False)
    assert stored.status_code == 201, stored.text
    requests.get(url + "/v1/images/small.jpg", verify=False)  # warm: models loaded, allocator primed
    before = _worker_rss(port)
    peak, stop = [before], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(_worker_rss(port))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    n = 4 * slots
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        answers = list(
            pool.map(
                lambda _: _timed(lambda: requests.get(url + "/v1/images/burst.jpg", verify=False, timeout=600)),
                range(n),
            )
        )
    stop.set()
    sampler.join()
    time.sleep(settle)
    after = _worker_rss(port)
    times = sorted(t for _, t in answers)
    codes = [status for status, _ in answers]
    ok = set(codes) <= {200, 429} and codes.count(200) >= slots
    return Row(
        "burst",
        n,
        ok,
        {
            "200": codes.count(200),
            "429": codes.count(429),
            "p50_s": round(statistics.median(times), 2),
            "p99_s": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
            "rss_before_mb": before,
            "rss_peak_mb": max(peak),
            f"rss_after_{settle:g}s_mb": after,
        },
    )


def hung_s3(workdir: Path, s3_timeout: float, ready_timeout: float) -> Row:
    env = {"UPSCALER_S3_TIMEOUT": str(s3_timeout), "UPSCALER_READY_TIMEOUT": str(ready_timeout)}
    with hung_s3_api(workdir, env) as url:
        ready_once_loaded(url)
        ready_status, ready_s = _timed(lambda: requests.get(url + "/ready", verify=False, timeout=60))
        get_status, get_s = _timed(lambda: requests.get(url + "/v1/images/a.jpg", verify=False, timeout=600))
    ok = ready_status == get_status == 503 and ready_s < ready_timeout + 1 and get_s < s3_timeout + 6
    return Row(
        "hung-s3",
        2,
        ok,
        {
            f"ready_s (deadline {ready_timeout:g})": round(ready_s, 2),
            f"retrieval_503_s (deadline {s3_timeout:g})": round(get_s, 2),
        },
    )


def _cpu_until_idle(port: int, limit: float, idle_rate: float = 0.1) -> tuple[float, float]:
    """CPU seconds the server uses from now until a second in which it used less than ``idle_rate`` of a core (or
    ``limit`` seconds have passed), and how long that took."""
    start, first = time.monotonic(), _worker_cpu(port)
    last = first
    while time.monotonic() - start < limit:
        time.sleep(1.0)
        now = _worker_cpu(port)
        if now - last < idle_rate:
            break
        last = now
    return _worker_cpu(port) - first, time.monotonic() - start


def cancel(url: str, port: int, leave_after: float, full_run: bool) -> Row:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((800, 600)).save(buf, "PNG")
    body = {"img": base64.b64encode(buf.getvalue()).decode(), "scale": 4}
    figures: dict[str, object] = {}
    full_cpu = None
    if full_run:  # the reference: the same request, waited for
        before = _worker_cpu(port)
        status, took = _timed(lambda: requests.post(url + "/v1/upscale", json=body, verify=False, timeout=600))
        full_cpu = _worker_cpu(port) - before
        figures.update({"full_run_status": status, "full_run_s": round(took, 2), "full_run_cpu_s": round(full_cpu, 2)})
    left, _ = _timed(lambda: requests.post(url + "/v1/upscale", json=body, verify=False, timeout=leave_after))
    cpu_after, settled = _cpu_until_idle(port, limit=30.0)
    status, next_s = _timed(lambda: requests.get(url + "/v1/images/small.jpg", verify=False, timeout=60))
    figures.update(
        {
            "left_after_s": leave_after,
            "cpu_after_disconnect_s": round(cpu_after, 2),
            "idle_after_s": round(settled, 1),
            "next_request_s": round(next_s, 3),
        }
    )
    # cut off by our own timeout (status 0), the run then stops at a tile: far less than a whole run's CPU, and
    # at most what two cores do in the longest tile (a few seconds) when no reference was run
    bound = 0.5 * full_cpu if full_cpu else 8.0
    ok = left == 0 and status == 200 and cpu_after < bound
    return Row("cancel", 1, ok, figures)


def source(url: str) -> Row:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buf, "PNG")
    handler = type("Trickle", (TrickleHandler,), {"body": buf.getvalue()})  # ~70 bytes: ~14 s to send in all
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    deadline = float(SOURCE_ENV["UPSCALER_SOURCE_TIMEOUT"])
    try:
        src = f"http://127.0.0.1:{server.server_address[1]}/slow.png"
        start = time.monotonic()
        resp = requests.post(url + "/v1/upscale", json={"url": src, "scale": 2}, verify=False, timeout=60)
        took = time.monotonic() - start
    finally:
        server.shutdown()
        server.server_close()
    ok = resp.status_code == 503 and "json" in resp.headers.get("Content-Type", "") and took < deadline + 2
    return Row("source", 1, ok, {"status": resp.status_code, f"answered_s (deadline {deadline:g})": round(took, 2)})


def media(url: str, work: Path) -> Row:
    pages = [Image.new("RGB", (16, 12), colour) for colour in ((200, 0, 0), (0, 0, 200))]
    tiff = io.BytesIO()
    pages[0].save(tiff, "TIFF", save_all=True, append_images=pages[1:])
    multi = requests.put(url + "/v1/images/adv/pages.tiff", data=tiff.getvalue(), verify=False, timeout=60)
    still = work / "still.png"
    Image.new("RGB", (64, 48)).save(still, "PNG")
    as_video = upload(url, "adv/still.mp4", still)
    clip, cut = work / "clip.mp4", work / "cut.mp4"
    make_clip(clip, frames=40)
    truncated_copy(clip, cut)  # the index still lists 40 frames; the data of the last ones is gone
    accepted = upload(url, "adv/cut.mp4", cut)
    job = requests.post(url + "/v1/jobs", json={"method": "downscale", "key": "adv/cut.mp4"}, verify=False).json()
    done = wait_v1(url, job["id"], timeout=120)
    ok = (
        multi.status_code == 415
        and as_video.status_code == 415
        and accepted.status_code == 201
        and done["status"] == "Failed"
        and "frames its container lists" in (done.get("error") or "")
    )
    return Row(
        "media",
        3,
        ok,
        {
            "two_page_tiff": multi.status_code,
            "png_as_video": as_video.status_code,
            "truncated_mp4": f"{accepted.status_code}, job {done['status']}: {(done.get('error') or '')[:70]}",
        },
    )


def jobs(url: str, work: Path) -> Row:
    clip = work / "jobs.mp4"
    make_clip(clip, frames=12)
    assert upload(url, "adv/jobs.mp4", clip).status_code == 201

    def post(output: str) -> requests.Response:
        body = {"method": "downscale", "key": "adv/jobs.mp4", "output_key": output}
        return requests.post(url + "/v1/jobs", json=body, headers={"Idempotency-Key": "adv-1"}, verify=False)

    first, again, clash = post("adv/out.mp4"), post("adv/out.mp4"), post("adv/other.mp4")
    ok = (
        first.status_code == again.status_code == 202
        and first.json()["id"] == again.json()["id"]
        and clash.status_code == 409
    )
    return Row("jobs", 3, ok, {"first": first.status_code, "same_key_same_job": again.status_code, "clash": 409})


def auth(work: Path) -> Row:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALER_")}
    outcomes = []
    for document in ('{"keys": []}', " ", "[]"):
        argv = [str(UPSCALER), "serve", "--host", "0.0.0.0", "--port", str(free_port())]
        env = {**clean, "UPSCALER_VIDEO_WORKERS": "0", "UPSCALER_API_KEYS": document}
        proc = subprocess.Popen(
            argv,
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=30)
            refused = proc.returncode == 2 and "without API keys" in err
        except subprocess.TimeoutExpired:  # it served
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            refused = False
        outcomes.append("refused" if refused else "SERVED")
    return Row("auth", 3, all(o == "refused" for o in outcomes), {"empty_key_documents": "/".join(outcomes)})


def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []

    def attempt(name: str, cases: int, check: Callable[[], Row]) -> None:
        """One class's row (unless --only leaves it out); an exception on the client's side is that class failing."""
        if args.only and name not in args.only:
            return
        try:
            rows.append(check())
        except Exception as exc:  # reported in the table, the run goes on
            rows.append(Row(name, cases, False, {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}))

    slots = 4
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**FRONT_ENV, **SOURCE_ENV, "UPSCALER_VIDEO_WORKERS": "1", "UPSCALER_MAX_INFLIGHT": str(slots)}
        (work / "main").mkdir()
        with api_server(work / "main", env) as url:
            port = int(url.rsplit(":", 1)[1])
            small = _photo(64)
            assert requests.put(url + "/v1/images/small.jpg", data=small, verify=False).status_code == 201
            head = float(FRONT_ENV["UPSCALER_HEADER_TIMEOUT"])
            handshake = float(FRONT_ENV["UPSCALER_HANDSHAKE_TIMEOUT"])
            attempt("idle", 2 * args.idle, lambda: idle(url, port, args.idle))
            attempt("slow-head", args.slow, lambda: slow_headers(url, port, args.slow, head))
            attempt("handshake", args.slow, lambda: stalled_handshakes(port, args.slow, handshake))
            attempt("slow-body", 1, lambda: slow_body(port))
            attempt("framing", len(FRAMING), lambda: framing(port))
            attempt("inputs", 5, lambda: inputs(url, small))
            attempt("burst", 4 * slots, lambda: burst(url, port, args.side, slots, args.settle))
            attempt("cancel", 1, lambda: cancel(url, port, args.cancel_after, full_run=not args.short))
            attempt("source", 1, lambda: source(url))
            attempt("media", 3, lambda: media(url, work))
            attempt("jobs", 3, lambda: jobs(url, work))
        attempt("auth", 3, lambda: auth(work))
        (work / "hung").mkdir()
        attempt("hung-s3", 2, lambda: hung_s3(work / "hung", args.s3_timeout, 1.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="small counts, for the test suite")
    parser.add_argument("--idle", type=int, default=500, help="idle TLS connections (and as many TCP-only)")
    parser.add_argument("--slow", type=int, default=50, help="slow-header and stalled-handshake clients")
    parser.add_argument("--side", type=int, default=1400, help="side of the burst's image (1400: ~2 MP)")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds after the burst before RSS is read")
    parser.add_argument(
        "--cancel-after", type=float, default=1.5, help="seconds before the cancel class's client leaves"
    )
    parser.add_argument("--s3-timeout", type=float, default=6.0, help="UPSCALER_S3_TIMEOUT of the hung-S3 server")
    parser.add_argument(
        "--only", type=lambda v: set(v.split(",")), default=set(), help="classes to run, e.g. idle,burst,cancel"
    )
    args = parser.parse_args(argv)
    if args.short:
        args.idle, args.slow, args.side, args.settle, args.s3_timeout = 24, 12, 256, 1.0, 3.0
    rows = run(args)
    print(f"{'class':10} {'cases':>5}  outcome  figures")
    for row in rows:
        figures = ", ".join(f"{k}={v}" for k, v in row.figures.items())
        print(f"{row.name:10} {row.cases:>5}  {'ok' if row.ok else 'FAILED':7}  {figures}")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
