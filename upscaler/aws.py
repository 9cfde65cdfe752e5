"""boto3 clients made on first use and shared by every thread (boto3 clients are thread-safe).

The core imports boto3 only here and in its AWS adapters, and only when an AWS-backed object is first used.
"""

from __future__ import annotations

import threading
from typing import Any

from upscaler.errors import Unavailable


def deadline_config(total: float, attempts: int, *, wait: float = 0.0, **extra: Any) -> dict[str, Any]:
    """``botocore.config.Config`` keyword arguments for calls that take ``total`` seconds at most, their
    ``attempts`` attempts (botocore's "standard" retries: throttling, 5xx, connection errors, timeouts) included.

    Each attempt gets an equal share of ``total``: a connect timeout (a third of the share, at most 3 s) and a read
    timeout (the rest; botocore's timeouts are per attempt and per read, so a hung endpoint fails the call in about
    ``total`` seconds plus botocore's jittered backoff between attempts). ``wait``: seconds the service itself may
    hold an answer on purpose (SQS long polling), added to the read timeout so a quiet queue is not a failure."""
    share = total / max(1, attempts)
    connect = min(3.0, share / 3)
    return {
        "connect_timeout": connect,
        "read_timeout": share - connect + wait,
        "retries": {"total_max_attempts": max(1, attempts), "mode": "standard"},
        **extra,
    }


class LazyClient:
    """``get()`` returns the one ``boto3.client(service, ...)`` of its owner, creating it once.

    ``config`` is a ``botocore.config.Config`` or the keyword arguments for one; ``client`` injects a ready client.
    """

    def __init__(self, service: str, *, endpoint_url: str | None = None, config: Any = None, client: Any = None):
        self.service = service
        self.endpoint_url = endpoint_url
        self._config = config
        self._client = client
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config
                    from botocore.exceptions import BotoCoreError

                    config = Config(**self._config) if isinstance(self._config, dict) else self._config
                    try:
                        self._client = boto3.client(self.service, endpoint_url=self.endpoint_url, config=config)
                    except (BotoCoreError, ValueError) as exc:
                        raise Unavailable(f"cannot create the {self.service} client: {exc}") from None
        return self._client
