"""boto3 clients made on first use and shared by every thread (boto3 clients are thread-safe).

The core imports boto3 only here and in its AWS adapters, and only when an AWS-backed object is first used.
"""

from __future__ import annotations

import threading
from typing import Any

from upscaler.errors import Unavailable


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
