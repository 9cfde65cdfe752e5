"""Adversarial run on loopback: a real `upscaler serve`, attacked the way issue #15 found it could be taken down.

    .venv/bin/python stress/adversarial.py [--short] [--idle 500] [--slow 50] [--side 1400] [--settle 60]

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

Everything runs on 127.0.0.1 and stops by itself; ``--short`` (used by the test suite) shrinks every count.
Exit status 0 when every class behaved as designed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import socket
import ssl
import statistics
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

from tests.servers import api_server, hung_s3_api, ready_once_loaded

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

#: Shorter deadlines for the run, so cut-offs show within seconds (the defaults are 10, 10 and 30 s).
FRONT_ENV = {"UPSCALER_HEADER_TIMEOUT": "5", "UPSCALER_HANDSHAKE_TIMEOUT": "10", "UPSCALER_BODY_TIMEOUT": "5"}


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


def _worker_rss(port: int) -> float:
    """MB resident in the gunicorn processes serving ``port`` (master and workers)."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        if f"127.0.0.1:{port}" in " ".join(proc.info.get("cmdline") or []):
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss / 2**20
    return round(total, 1)


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
        env = {**FRONT_ENV, "UPSCALER_VIDEO_WORKERS": "0", "UPSCALER_MAX_INFLIGHT": str(slots)}
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
    parser.add_argument("--s3-timeout", type=float, default=6.0, help="UPSCALER_S3_TIMEOUT of the hung-S3 server")
    parser.add_argument("--only", type=lambda v: set(v.split(",")), default=set(), help="classes to run: idle,burst")
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
