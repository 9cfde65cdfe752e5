"""What every command line of the project shares."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: Exit status of a command whose reader went away (128 + SIGPIPE), as a Unix tool killed by SIGPIPE reports.
BROKEN_PIPE_EXIT = 141


def run_quietly_piped(main: Callable[[], int]) -> int:
    """Run a command's ``main``; when its output's reader goes away (``upscaler-client ... | head``), end quietly
    with :data:`BROKEN_PIPE_EXIT` instead of a ``BrokenPipeError`` traceback (Python's own advice: point stdout at
    ``/dev/null`` so the interpreter's last flush cannot fail again)."""
    try:
        try:
            return main()
        finally:
            sys.stdout.flush()  # buffered output to a pipe fails here, not at the print
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_EXIT
