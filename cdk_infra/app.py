"""Entry point of the CDK app (``cdk.json``: ``python3 -m cdk_infra.app``), with cdk-nag's AwsSolutions checks.

    cd cdk_infra && cdk synth -c allowedCidrs=203.0.113.0/24 -c endpointNames=upscaler-span

Tests build the same app through :func:`build_app` with the context of ``cdk.json`` and their own values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from cdk_infra.settings import DeploySettings
from cdk_infra.stack import MediaUpscalerStack

CDK_JSON = Path(__file__).with_name("cdk.json")


def cdk_json_context() -> dict[str, Any]:
    """The ``context`` block of ``cdk.json`` (what the CDK CLI passes to the app)."""
    return dict(json.loads(CDK_JSON.read_text())["context"])


def add_stack(app: cdk.App, environ: Mapping[str, str] | None = None) -> MediaUpscalerStack:
    """The stack, from the app's context, with the AwsSolutions checks run at synth (a finding fails synth)."""
    settings = DeploySettings.from_context(app.node.try_get_context, environ)
    env = cdk.Environment(account=settings.account or None, region=settings.region or None)
    stack = MediaUpscalerStack(
        app,
        settings.stack_name,
        settings=settings,
        env=env if settings.account or settings.region else None,
        description="media-upscaler: EKS cluster, images, job queue and table, media bucket, IRSA roles",
    )
    cdk.Tags.of(stack).add("project", "media-upscaler")
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stack


def build_app(
    context: Mapping[str, Any] | None = None, *, outdir: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[cdk.App, MediaUpscalerStack]:
    """An app as ``cdk`` would run it: ``cdk.json``'s context, then ``context`` on top (like ``-c key=value``)."""
    app = cdk.App(context={**cdk_json_context(), **(context or {})}, outdir=outdir)
    return app, add_stack(app, environ)


def main() -> None:
    app = cdk.App()  # the CLI hands over cdk.json's context and -c values
    add_stack(app)
    app.synth()


if __name__ == "__main__":
    main()
