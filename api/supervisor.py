"""``upscaler serve`` on one machine: gunicorn and the video workers as child processes of one command.

The API and the workers stay separate processes (a worker that runs out of memory on a huge video does not take
the API down). A worker that exits unexpectedly is started again, with a growing pause if it keeps failing.
SIGTERM or SIGINT is passed to every child; workers get ``stop_timeout`` seconds to checkpoint their segment
before they are killed. On Linux the children also die if this process is killed outright (``PR_SET_PDEATHSIG``),
so nothing is left running; a job a killed worker held is resumed from its checkpoint by the next worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import time


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self, api: list[str], workers: list[list[str]], *, stop_timeout: float = 60.0) -> None:
        self.api_argv, self.worker_argvs = api, workers
        self.stop_timeout = stop_timeout
        self.stopping = False

    @staticmethod
    def _start(argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(argv, preexec_fn=_die_with_parent)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        api = self._start(self.api_argv)
        workers = [self._start(argv) for argv in self.worker_argvs]
        failures = [0] * len(workers)
        restart_at = [0.0] * len(workers)
        code = 0
        while not self.stopping:
            if api.poll() is not None:
                code = api.returncode
                print(f"the API exited with {code}; stopping the video workers", file=sys.stderr)
                break
            now = time.monotonic()
            for i, proc in enumerate(workers):
                if proc.poll() is None:
                    continue
                if restart_at[i] == 0.0:
                    failures[i] += 1
                    restart_at[i] = now + min(60.0, 2.0 ** min(failures[i], 6))
                    print(f"video worker exited with {proc.returncode}; restarting", file=sys.stderr)
                elif now >= restart_at[i]:
                    workers[i], restart_at[i] = self._start(self.worker_argvs[i]), 0.0
            time.sleep(0.2)
        self._stop([api, *workers])
        return code

    def _stop(self, procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
