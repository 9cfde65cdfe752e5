"""The adversarial suite's short mode (stress/adversarial.py --short): every class it attacks with behaves as
designed against a real `upscaler serve` on loopback."""

from __future__ import annotations

import pytest

from stress.adversarial import main

pytestmark = pytest.mark.slow


def test_adversarial_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--short"])
    out = capsys.readouterr().out
    assert code == 0, out
    classes = ("idle", "slow-head", "handshake", "slow-body", "framing", "inputs", "burst", "cancel", "source")
    for name in (*classes, "media", "jobs", "auth", "hung-s3"):
        assert f"\n{name} " in out, out
