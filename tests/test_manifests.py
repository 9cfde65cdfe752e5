"""manifests/ against real schemas and against the service they deploy.

* Every document is validated: the core kinds with kubernetes-validate --strict (its offline copy of the Kubernetes
  OpenAPI schemas) for the cluster version the CDK stack makes; cert-manager and KEDA kinds with jsonschema against
  their CRDs' openAPIV3Schema (tests/schemas/), closed to unknown fields. Where kustomize is on the PATH (kubectl
  kustomize), the rendered output is validated as well.
* The wiring: the Service targets the port the API listens on, the probes hit /ready and /health there over HTTPS,
  the KEDA trigger reads the queue the workers consume, the grace periods cover a stop, the settings are real
  Settings fields, the service accounts are the ones the IRSA roles trust, and the load balancer is never open.
* The API pod's command, args, environment and mounts start a healthy API (against moto), outside a container.
* checkov's policy scan (scripts/policy_scan.sh, from .venv-tools) finds nothing that is not skipped with a reason.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import os
import re
import shutil
import signal
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml

from tests.images import ROOT, dockerfile, host_argv, replace_flag
from tests.servers import AWS_TEST_ENV, _process, free_port, moto_server
from upscaler.config import Settings

MANIFESTS = ROOT / "manifests"
SCHEMAS = ROOT / "tests" / "schemas"
#: The cluster version cdk_infra/settings.py deploys by default (kubernetes_version).
KUBERNETES_VERSION = "1.35"
NAMESPACE = "media-upscaler"
API_SA, WORKER_SA = "upscaler-api", "upscaler-video-worker"
CRD_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): "cert-manager.io_certificate_v1.yaml",
    ("cert-manager.io/v1", "Issuer"): "cert-manager.io_issuer_v1.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobject_v1alpha1.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentication_v1alpha1.yaml",
}
#: Checks skipped in the manifests or Dockerfiles, each with its reason where it is skipped. Any other skip fails.
JUSTIFIED_SKIPS = {"CKV_K8S_43"}  # image digests: set at deploy time by kustomize `images:` (ECR tags are immutable)
#: Variables the commands read that are not Settings fields.
COMMAND_VARIABLES = {"UPSCALER_LOG_LEVEL", "UPSCALER_HOST", "UPSCALER_PORT"}


# --- loading ---------------------------------------------------------------------------------------------------------


@cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())


def read_env_file(name: str) -> dict[str, str]:
    """A kustomize env file: KEY=value lines, # comments."""
    out = {}
    for line in (MANIFESTS / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{name}: {line!r} is not KEY=value"
            out[key.strip()] = value
    return out


def generated_configmaps() -> list[dict[str, Any]]:
    """The ConfigMaps configMapGenerator makes (without the name hash)."""
    docs = []
    for gen in kustomization()["configMapGenerator"]:
        data: dict[str, str] = {}
        for env in gen.get("envs", []):
            data.update(read_env_file(env))
        meta = {"name": gen["name"], "namespace": NAMESPACE}
        if gen.get("options", {}).get("annotations"):
            meta["annotations"] = gen["options"]["annotations"]
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    return docs


@cache
def source_docs() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file, document) for every document of every resource file the kustomization lists."""
    out = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((MANIFESTS / name).read_text()):
            if doc:
                out.append((name, doc))
    return tuple(out)


def docs() -> list[dict[str, Any]]:
    return [d for _, d in source_docs()] + [d for d in generated_configmaps() if not _local_config(d)]


def _local_config(doc: dict[str, Any]) -> bool:
    return doc["metadata"].get("annotations", {}).get("config.kubernetes.io/local-config") == "true"


def one(kind: str, name: str, documents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found = [d for d in (documents or docs()) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} not in {args}"
    return args[args.index(name) + 1]


def settings_for(deployment: dict[str, Any]) -> Settings:
    """The Settings a pod of ``deployment`` reads: the ConfigMap, then the container's literal env."""
    env = dict(read_env_file("config.env"))
    env.update({e["name"]: e["value"] for e in container(deployment).get("env", []) if "value" in e})
    return Settings.from_env(env)


def gunicorn_default_threads() -> int:
    """The threads ``api/gunicorn_conf.py`` runs when ``GUNICORN_THREADS`` is not set."""
    found = re.search(r'"GUNICORN_THREADS", "(\d+)"', (ROOT / "api" / "gunicorn_conf.py").read_text())
    assert found, "api/gunicorn_conf.py reads GUNICORN_THREADS with a default"
    return int(found[1])


@cache
def rendered() -> tuple[dict[str, Any], ...] | None:
    """`kustomize build manifests/` when kustomize (or kubectl's built-in copy) is on the PATH."""
    if shutil.which("kustomize"):
        argv = ["kustomize", "build", str(MANIFESTS)]
    elif shutil.which("kubectl"):
        argv = ["kubectl", "kustomize", str(MANIFESTS)]
    else:
        return None
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def needs_kustomize() -> tuple[dict[str, Any], ...]:
    result = rendered()
    if result is None:
        pytest.skip("neither kustomize nor kubectl is on the PATH: the rendered output is not checked here")
    return result


# --- validation ------------------------------------------------------------------------------------------------------


def _closed(schema: Any) -> Any:
    """A structural CRD schema as strict validation sees it: objects with listed properties take no others."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        listed = "properties" in schema and "additionalProperties" not in schema
        if listed and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = _closed(yaml.safe_load((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text()))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate(doc: dict[str, Any]) -> None:
    """Raise if ``doc`` is not a valid object of its kind."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        crd_validator(*key).validate(doc)
        # metadata is open in a CRD schema; the API server checks it as ObjectMeta, and so does this.
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, KUBERNETES_VERSION, strict=True
        )
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    listed = kustomization()["resources"]
    assert sorted(listed) == sorted(files), "every manifest file is a kustomize resource, and only those"
    assert len(set(listed)) == len(listed)
    env_files = {e for g in kustomization()["configMapGenerator"] for e in g.get("envs", [])}
    assert env_files == {p.name for p in MANIFESTS.glob("*.env")}
    assert kustomization()["namespace"] == NAMESPACE


def test_every_document_names_the_namespace() -> None:
    for name, doc in source_docs():
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{name}: {doc['kind']}/{doc['metadata']['name']}"


DOC_IDS = [f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in source_docs()]


@pytest.mark.parametrize("index", range(len(DOC_IDS)), ids=DOC_IDS)
def test_document_is_valid(index: int) -> None:
    validate(source_docs()[index][1])


def test_generated_configmaps_are_valid() -> None:
    for doc in generated_configmaps():
        validate(doc)


def test_validation_rejects_unknown_fields() -> None:
    """The controls: a misspelt field fails, in a core kind and in each custom kind."""
    deployment = copy.deepcopy(one("Deployment", "upscaler-api"))
    container(deployment)["readinesProbe"] = container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = copy.deepcopy(one("ScaledObject", "upscaler-video-worker"))
    scaled["spec"]["triggers"][0]["metdata"] = scaled["spec"]["triggers"][0].pop("metadata")
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    auth = copy.deepcopy(one("TriggerAuthentication", "upscaler-sqs"))
    auth["spec"]["podIdentity"]["provider"] = "aws-irsa"  # not one of the provider enum's values
    with pytest.raises(jsonschema.ValidationError):
        validate(auth)
    cert = copy.deepcopy(one("Certificate", "upscaler-api-tls"))
    cert["spec"]["dnsName"] = cert["spec"].pop("dnsNames")
    with pytest.raises(jsonschema.ValidationError):
        validate(cert)
    issuer = copy.deepcopy(one("Issuer", "upscaler-ca"))
    issuer["spec"]["ca"] = {"secret": "upscaler-ca"}
    with pytest.raises(jsonschema.ValidationError):
        validate(issuer)
    bad_meta = copy.deepcopy(one("Issuer", "upscaler-selfsigned"))
    bad_meta["metadata"]["labels"] = {"a": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad_meta)


def test_rendered_output_is_valid_and_filled_from_the_env_files() -> None:
    out = list(needs_kustomize())
    for doc in out:
        validate(doc)
    assert not [d for d in out if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("upscaler-deploy")]
    config, values = read_env_file("config.env"), read_env_file("deploy.env")
    sa = {d["metadata"]["name"]: d for d in out if d["kind"] == "ServiceAccount"}
    assert sa[API_SA]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == values["API_ROLE_ARN"]
    assert sa[WORKER_SA]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == values["WORKER_ROLE_ARN"]
    assert one("Service", "upscaler-api", out)["spec"]["loadBalancerSourceRanges"][0] == values["ALLOWED_CIDR"]
    assert one("Certificate", "upscaler-api-tls", out)["spec"]["dnsNames"][0] == values["API_HOSTNAME"]
    trigger = one("ScaledObject", "upscaler-video-worker", out)["spec"]["triggers"][0]["metadata"]
    assert trigger["queueURL"] == config["UPSCALER_JOB_QUEUE"] and trigger["awsRegion"] == config["AWS_REGION"]
    configmap = [d for d in out if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("upscaler-config-")]
    assert len(configmap) == 1 and configmap[0]["data"] == config
    for deployment in (d for d in out if d["kind"] == "Deployment"):
        spec = container(deployment)
        assert spec["envFrom"][0]["configMapRef"]["name"] == configmap[0]["metadata"]["name"]
        assert re.match(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/.+:.+$", spec["image"]), spec["image"]
        assert deployment["metadata"]["labels"]["app.kubernetes.io/part-of"] == NAMESPACE


# --- wiring ----------------------------------------------------------------------------------------------------------


def test_service_targets_the_port_the_api_listens_on() -> None:
    service, deployment = one("Service", "upscaler-api"), one("Deployment", "upscaler-api")
    api = container(deployment)
    listens = int(flag(api["args"], "--port"))
    assert flag(api["args"], "--host") == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    (port,) = service["spec"]["ports"]
    assert port["port"] == 443 and port["protocol"] == "TCP"
    target = port["targetPort"]
    assert (ports[target] if isinstance(target, str) else target) == listens
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The entry point the args are for: the API image runs `upscaler`, and these are `upscaler serve` flags.
    assert dockerfile("api").command()[0] == "upscaler" and api["args"][0] == "serve"


def test_nlb_annotations() -> None:
    annotations = one("Service", "upscaler-api")["metadata"]["annotations"]
    prefix = "service.beta.kubernetes.io/aws-load-balancer-"
    assert annotations[prefix + "type"] == "external"
    assert annotations[prefix + "nlb-target-type"] == "ip"
    assert annotations[prefix + "scheme"] == "internet-facing"
    assert annotations[prefix + "healthcheck-protocol"] == "HTTPS"
    assert annotations[prefix + "healthcheck-path"] in ("/ready", "/health")
    assert one("Service", "upscaler-api")["spec"]["type"] == "LoadBalancer"


def _ranges_are_closed(ranges: list[str], where: str) -> None:
    assert ranges, f"{where}: loadBalancerSourceRanges must be set (no open default)"
    for text in ranges:
        network = ipaddress.ip_network(text, strict=True)
        assert network.prefixlen > 0, f"{where}: {text} opens the load balancer to the whole Internet"


def test_load_balancer_is_never_open() -> None:
    _ranges_are_closed(one("Service", "upscaler-api")["spec"]["loadBalancerSourceRanges"], "service.yaml")
    _ranges_are_closed([read_env_file("deploy.env")["ALLOWED_CIDR"]], "deploy.env ALLOWED_CIDR")
    if rendered() is not None:
        _ranges_are_closed(
            one("Service", "upscaler-api", list(rendered()))["spec"]["loadBalancerSourceRanges"], "build"
        )
    # The shipped placeholder is a documentation range (RFC 5737) that lets nobody in.
    assert read_env_file("deploy.env")["ALLOWED_CIDR"] == "203.0.113.0/24"
    with pytest.raises(AssertionError):
        _ranges_are_closed(["0.0.0.0/0"], "control")
    with pytest.raises(AssertionError):
        _ranges_are_closed(["::/0"], "control")


def test_api_probes_hit_ready_and_health_over_https_on_the_api_port() -> None:
    api = container(one("Deployment", "upscaler-api"))
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    listens = int(flag(api["args"], "--port"))
    expected = {"readinessProbe": "/ready", "livenessProbe": "/health", "startupProbe": "/health"}
    for probe, path in expected.items():
        get = api[probe]["httpGet"]
        assert get["path"] == path and get["scheme"] == "HTTPS", probe
        assert (ports[get["port"]] if isinstance(get["port"], str) else get["port"]) == listens, probe
    # A probe must never wait behind image operations: gunicorn has more threads than the operations admitted,
    # running and waiting for a slot, and no fewer than its own default.
    env = {e["name"]: e.get("value") for e in api["env"]}
    settings = settings_for(one("Deployment", "upscaler-api"))
    assert int(env["GUNICORN_THREADS"]) > settings.max_inflight + settings.max_queued
    assert int(env["GUNICORN_THREADS"]) >= gunicorn_default_threads()
    assert env["UPSCALER_VIDEO_WORKERS"] == "0", "the API pods run no video workers: the worker Deployment does"


def test_worker_probes_hit_its_metrics_port() -> None:
    worker = container(one("Deployment", "upscaler-video-worker"))
    metrics_port = int(flag(worker["args"], "--metrics-port"))
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = worker[probe]["httpGet"]
        assert ports[get["port"]] == metrics_port and get["path"] == "/metrics"
    from video_upscaler.__main__ import build_parser

    args = build_parser().parse_args(worker["args"])  # the image's entry point takes these flags
    assert args.metrics_port == metrics_port and not args.once
    assert dockerfile("worker").command()[0] == "upscaler-video-worker"


def test_api_grace_period_covers_a_graceful_stop() -> None:
    deployment = one("Deployment", "upscaler-api")
    api = container(deployment)
    env = {e["name"]: e.get("value") for e in api["env"]}
    pre_stop = api["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + int(env["GUNICORN_GRACEFUL_TIMEOUT"]) + 10


def test_worker_grace_period_covers_saving_a_checkpoint() -> None:
    """On SIGTERM the worker lets the frames in flight finish (at most 2 x max_workers + 1, max_workers at a time,
    each bounded by the SageMaker deadline), saves the cut segment and gives the job back (video_upscaler/pipeline.py,
    worker.py). The kubelet must not SIGKILL it before that, nor before an idle worker's long poll ends."""
    deployment = one("Deployment", "upscaler-video-worker")
    settings = settings_for(deployment)
    workers = settings.video_max_workers
    rounds = math.ceil((2 * workers + 1) / workers)
    upload_and_give_back = 120
    needed = rounds * settings.sagemaker_deadline + upload_and_give_back
    wait = float(flag(container(deployment)["args"], "--wait-seconds"))
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= max(needed, wait + 10), f"grace {grace} s < {needed} s"


@pytest.mark.parametrize("name", ["upscaler-api", "upscaler-video-worker"])
def test_video_scratch_is_bounded_and_used(name: str) -> None:
    """The worker keeps a job's files in UPSCALER_VIDEO_SCRATCH; the API passes video uploads and downloads through
    it. Each pod mounts it on a size-limited emptyDir that holds at least the largest source twice over."""
    deployment = one("Deployment", name)
    spec = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    scratch = next(volume for volume, path in mounts.items() if path == env["UPSCALER_VIDEO_SCRATCH"])
    limit = _bytes(volumes[scratch]["emptyDir"]["sizeLimit"])
    assert limit >= 2 * settings_for(deployment).video_max_bytes
    assert _bytes(c["resources"]["limits"]["ephemeral-storage"]) >= sum(
        _bytes(v["emptyDir"]["sizeLimit"]) for v in volumes.values() if "emptyDir" in v
    )
    if name == "upscaler-video-worker":
        assert env["UPSCALER_VIDEO_SCRATCH"] == dockerfile("worker").env()["UPSCALER_VIDEO_SCRATCH"]


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(quantity))
    assert match, quantity
    return int(match.group(1)) * units.get(match.group(2), 1)


def test_keda_scales_the_workers_on_the_queue_they_consume() -> None:
    scaled = one("ScaledObject", "upscaler-video-worker")
    config = read_env_file("config.env")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", "upscaler-video-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    meta = trigger["metadata"]
    assert meta["queueURL"] == config["UPSCALER_JOB_QUEUE"]
    assert meta["awsRegion"] == config["AWS_REGION"] == config["AWS_DEFAULT_REGION"]
    host = re.match(r"^https://sqs\.([a-z0-9-]+)\.amazonaws\.com/\d{12}/[\w-]+$", meta["queueURL"])
    assert host and host.group(1) == meta["awsRegion"]
    assert meta["queueLength"] == "1", "a worker runs one video at a time"
    assert meta.get("scaleOnInFlight", "true") == "true", "running jobs keep their workers"
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["podIdentity"]["provider"] == "aws"
    assert scaled["spec"]["minReplicaCount"] == 0 < scaled["spec"]["maxReplicaCount"]
    assert "replicas" not in one("Deployment", "upscaler-video-worker")["spec"], "KEDA owns the count"


def test_hpa_and_pdb_cover_the_api() -> None:
    hpa, pdb = one("HorizontalPodAutoscaler", "upscaler-api"), one("PodDisruptionBudget", "upscaler-api")
    deployment = one("Deployment", "upscaler-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "upscaler-api"}
    assert "replicas" not in deployment["spec"], "the HPA owns the count"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert all(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    assert "cpu" in container(deployment)["resources"]["requests"], "CPU utilisation needs a CPU request"


def test_service_accounts_are_the_ones_the_irsa_roles_trust() -> None:
    accounts = {d["metadata"]["name"]: d for d in docs() if d["kind"] == "ServiceAccount"}
    assert set(accounts) == {API_SA, WORKER_SA}
    for account in accounts.values():
        arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$", arn)
    values = read_env_file("deploy.env")
    assert accounts[API_SA]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == values["API_ROLE_ARN"]
    assert accounts[WORKER_SA]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == values["WORKER_ROLE_ARN"]
    assert one("Deployment", "upscaler-api")["spec"]["template"]["spec"]["serviceAccountName"] == API_SA
    assert one("Deployment", "upscaler-video-worker")["spec"]["template"]["spec"]["serviceAccountName"] == WORKER_SA
    try:  # the CDK stack's side of the contract, where cdk_infra/ is present
        from cdk_infra import settings as cdk
    except ImportError:
        return
    assert (cdk.NAMESPACE, cdk.API_SERVICE_ACCOUNT, cdk.WORKER_SERVICE_ACCOUNT) == (NAMESPACE, API_SA, WORKER_SA)


def test_every_pod_is_non_root_read_only_and_bounded() -> None:
    uids = {int(dockerfile(i).last("USER").args.split(":")[0]) for i in ("api", "worker")}  # type: ignore[union-attr]
    deployments = [d for d in docs() if d["kind"] == "Deployment"]
    assert len(deployments) == 2
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] in uids, f"{name}: the image's USER"
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for v in pod["volumes"]:
            if "emptyDir" in v:
                assert v["emptyDir"].get("sizeLimit"), f"{name}: emptyDir {v['name']} has no sizeLimit"
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged"), c["name"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{c['name']}: {kind}"
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert "/tmp" in mounts and mounts["/tmp"]["name"] in writable, f"{c['name']}: a writable /tmp"
            for m in c["volumeMounts"]:
                assert m["name"] in writable or m.get("readOnly"), f"{c['name']}: {m['mountPath']} is writable"


def test_settings_in_the_manifests_are_real_settings() -> None:
    """Every UPSCALER_* variable the pods get is a Settings field (or read by the command itself), and its value
    parses: a misspelt name would otherwise be ignored without a word."""
    fields = {f"UPSCALER_{name.upper()}" for name in Settings.__dataclass_fields__}
    names = set(read_env_file("config.env"))
    for deployment in (d for d in docs() if d["kind"] == "Deployment"):
        names |= {e["name"] for e in container(deployment).get("env", [])}
        settings_for(deployment)  # raises on a value of the wrong type
    unknown = {n for n in names if n.startswith("UPSCALER_")} - fields - COMMAND_VARIABLES
    assert not unknown, f"not Settings fields: {sorted(unknown)}"
    config = read_env_file("config.env")
    assert config["UPSCALER_STORAGE"] == "s3://"
    assert config["UPSCALER_JOB_STORE"].startswith("dynamodb:")
    assert config["UPSCALER_JOB_QUEUE"].startswith("https://sqs.")


# --- the API pod's command, outside a container ----------------------------------------------------------------------


def _pod_filesystem(c: dict[str, Any], root: Path) -> dict[str, Path]:
    """Each mountPath of the container -> the same path under ``root``, which stands in for the pod's filesystem."""
    paths = {}
    for m in c["volumeMounts"]:
        path = root / m["mountPath"].lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        paths[m["mountPath"]] = path
    return paths


def _moved(value: str, paths: dict[str, Path]) -> str:
    for mount, path in paths.items():
        if value == mount or value.startswith(mount + "/"):
            return str(path) + value[len(mount) :]
    return value


@pytest.mark.slow
def test_api_pod_command_serves_https_with_the_mounted_certificate_and_keys(tmp_path: Path) -> None:
    """The Deployment's args and env, on the API image's entry point: TLS from the cert-manager Secret's file names,
    API keys from the key Secret, settings from the ConfigMap (S3, DynamoDB, SQS: moto here), healthy on the probe
    paths, closed to requests without a key, and out with status 0 on SIGTERM."""
    import boto3

    from api.tls import make_self_signed
    from upscaler.auth import add_key

    deployment = one("Deployment", "upscaler-api")
    api = container(deployment)
    root = tmp_path / "pod"
    paths = _pod_filesystem(api, root)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    tls_secret = one("Certificate", "upscaler-api-tls")["spec"]["secretName"]
    (tls_mount,) = [
        m for m in api["volumeMounts"] if volumes[m["name"]].get("secret", {}).get("secretName") == tls_secret
    ]
    tls_dir = paths[tls_mount["mountPath"]]
    make_self_signed(tls_dir / "tls.crt", tls_dir / "tls.key", ("localhost", "127.0.0.1"))  # as cert-manager names them
    config = read_env_file("config.env")
    env: dict[str, str] = {**dockerfile("api").env(), **config}  # the image's ENV, then the pod's
    for item in api["env"]:
        if "value" in item:
            env[item["name"]] = _moved(item["value"], paths)
        else:  # resourceFieldRef: limits.cpu in whole cores
            env[item["name"]] = str(math.ceil(float(api["resources"]["limits"]["cpu"])))
    token = add_key(
        Path(env["UPSCALER_API_KEYS_FILE"]), "probe-test", [{"bucket": "*", "prefix": "", "access": ["read"]}]
    )
    port = free_port()
    args = replace_flag(replace_flag(api["args"], "--host", "127.0.0.1"), "--port", str(port))
    # Only the pod's own args name pod paths: the host's executable may itself live under /tmp (a CI clone).
    argv = host_argv([dockerfile("api").command()[0], *(_moved(a, paths) for a in args)])
    with moto_server() as endpoint:
        creds = {k.lower(): v for k, v in AWS_TEST_ENV.items() if k != "AWS_DEFAULT_REGION"}
        region = config["AWS_REGION"]
        boto3.client("s3", endpoint_url=endpoint, region_name=region, **creds).create_bucket(
            Bucket=config["UPSCALER_DEFAULT_BUCKET"]
        )
        boto3.client("dynamodb", endpoint_url=endpoint, region_name=region, **creds).create_table(
            TableName=config["UPSCALER_JOB_STORE"].removeprefix("dynamodb:"),
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        env.update(AWS_TEST_ENV)
        env.update({f"UPSCALER_{s}_ENDPOINT_URL": endpoint for s in ("S3", "SQS", "DYNAMODB")})
        workdir = root / dockerfile("api").last("WORKDIR").args.lstrip("/")  # type: ignore[union-attr]
        workdir.mkdir(parents=True, exist_ok=True)
        base = f"https://localhost:{port}"
        with _process(argv, workdir, env, f"https://127.0.0.1:{port}/ready", "api.log") as proc:
            ca = str(tls_dir / "tls.crt")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert requests.get(base + api[probe]["httpGet"]["path"], verify=ca, timeout=10).status_code == 200
            ready = requests.get(base + "/ready", verify=ca, timeout=10).json()
            assert ready["storage"] == "s3://"
            assert requests.get(base + "/v1/images/a.png/metadata", verify=ca, timeout=10).status_code == 401
            keyed = requests.get(
                base + "/v1/images/a.png/metadata", headers={"Authorization": f"Bearer {token}"}, verify=ca, timeout=10
            )
            assert keyed.status_code == 404, keyed.text
            proc.send_signal(signal.SIGTERM)
            grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert proc.wait(timeout=min(grace, 60)) == 0


# --- policy scan -----------------------------------------------------------------------------------------------------


CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"


@pytest.mark.skipif(
    not CHECKOV.exists(),
    reason="checkov is not installed in .venv-tools (python3 -m venv .venv-tools && "
    ".venv-tools/bin/pip install checkov==3.3.30); it cannot share .venv (it pins another boto3)",
)
def test_policy_scan_finds_nothing_unjustified() -> None:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "policy_scan.sh"), "-o", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOG_LEVEL": "ERROR"},
    )
    reports = json.loads(out.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}, out.stderr[-2000:]
    scanned = {c["file_path"].lstrip("/") for r in reports for c in r["results"]["passed_checks"]}
    assert {"api/Dockerfile", "video_upscaler/Dockerfile", "plugins/esrgan_sagemaker/Dockerfile"} <= scanned
    assert {"manifests/deployment.yaml", "manifests/videoupscaler.yaml"} <= scanned
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['file_path']} {c['resource']})"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, "checkov failures:\n" + "\n".join(failed)
    for r in reports:
        assert r["summary"]["parsing_errors"] == 0, r["check_type"]
        for c in r["results"]["skipped_checks"]:
            reason = c["check_result"].get("suppress_comment", "")
            assert c["check_id"] in JUSTIFIED_SKIPS, f"{c['check_id']} skipped in {c['file_path']}: add it here"
            assert len(reason) >= 40, f"{c['check_id']} in {c['file_path']}: the skip needs its reason"
    assert out.returncode == 0


# --- the architecture diagram ----------------------------------------------------------------------------------------


def test_architecture_diagram_is_rendered_from_its_source_and_names_the_manifests() -> None:
    source = (ROOT / "resources" / "architecture.dot").read_text()
    svg = (ROOT / "resources" / "architecture.svg").read_text()
    assert "dot -Tsvg resources/architecture.dot -o resources/architecture.svg" in source
    nodes = re.findall(r"^\s*(\w+)\s*\[label=", source, flags=re.M)
    assert len(nodes) >= 15
    missing = [n for n in nodes if f"<title>{n}</title>" not in svg]
    assert not missing, f"resources/architecture.svg is older than its .dot (no {missing}): regenerate it"
    edges = re.findall(r"^\s*(\w+) -> (\w+)", source, flags=re.M)
    assert all(f"<title>{a}&#45;&gt;{b}</title>" in svg for a, b in edges), "edges changed: regenerate the SVG"
    for kind, name in [("Deployment", "upscaler-api"), ("Deployment", "upscaler-video-worker"),
                       ("ScaledObject", "upscaler-video-worker"), ("ConfigMap", "upscaler-config")]:  # fmt: skip
        assert f"{kind} {name}" in source, f"the diagram does not show {kind} {name}"
    for secret in ("upscaler-api-tls", "upscaler-api-keys"):
        assert f"Secret {secret}" in source
