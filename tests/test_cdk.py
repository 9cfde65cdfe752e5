"""The AWS CDK app (cdk_infra/): every resource and IAM grant of the deployment, cdk-nag's AwsSolutions checks and
cfn-lint on the synthesized templates. Offline: nothing is fetched at synth (Node.js runs the CDK through jsii).

Two synths per module: ``defaults`` (no context at all but cdk.json's: environment-agnostic, x86 nodes, a bucket
created, private cluster endpoint, no SageMaker) and ``variant`` (every option on: account and region, allowed CIDRs,
named endpoints, Arm nodes, an imported bucket with a KMS key, the SageMaker endpoint, an admin principal).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Before the first aws_cdk import starts the jsii runtime: no banner about the Node.js version in the output.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")

from aws_cdk.assertions import Match, Template
from cfnlint.api import ManualArgs, lint

from cdk_infra import policies
from cdk_infra.app import build_app, cdk_json_context
from cdk_infra.nag import flatten_cfn_reference
from cdk_infra.settings import DeploySettings, SettingsError
from upscaler.jobs.model import METHODS, Job
from upscaler.jobs.queue import Message, SqsQueue
from upscaler.jobs.store import DynamoJobStore

ROOT = Path(__file__).resolve().parents[1]
STACK = "MediaUpscaler"
ACCOUNT, REGION = "111111111111", "eu-west-1"
VARIANT_CONTEXT = {
    "account": ACCOUNT,
    "region": REGION,
    "allowedCidrs": "203.0.113.0/24,198.51.100.7/32",
    "endpointNames": "upscaler-span,stableDiffusionJT",
    "nodeArch": "arm64",
    "existingBucketName": "my-media",
    "existingBucketKmsKeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "createSagemakerEndpoint": "true",
    "sagemakerEndpointName": "upscaler-span-gpu",
    "modelImageTag": "v1.2.3",
    "adminPrincipalArns": f"arn:aws:iam::{ACCOUNT}:role/PlatformAdmin",
    "migrationSourceBuckets": "old-archive,raw-photos",
    "migrationDeleteOriginals": "true",
}
OUTPUTS = {
    "Region",
    "ClusterName",
    "KubeconfigCommand",
    "KubernetesNamespace",
    "ApiServiceAccountName",
    "WorkerServiceAccountName",
    "ApiRoleArn",
    "WorkerRoleArn",
    "KedaOperatorRoleArn",
    "BucketName",
    "JobQueueUrl",
    "DeadLetterQueueUrl",
    "JobsTableName",
    "JobsTableTtlAttribute",
    "MaxReceiveCount",
    "ApiRepositoryUri",
    "VideoWorkerRepositoryUri",
    "ModelServerRepositoryUri",
    "NodeArchitecture",
}

# Actions that accept nothing but Resource "*" (no resource-level permissions in IAM), each granted on purpose.
# Anything else with Resource "*" fails test_no_statement_grants_star_where_a_name_is_known.
WILDCARD_ONLY = {
    "ecr:GetAuthorizationToken",  # SageMaker's registry login for the model-server image
    "acm:ListCertificates",  # load balancer controller: certificate discovery by host name
    # load balancer controller: discovery (Describe*/Get* of EC2 and ELB)
    "ec2:DescribeAccountAttributes",
    "ec2:DescribeAddresses",
    "ec2:DescribeAvailabilityZones",
    "ec2:DescribeInternetGateways",
    "ec2:DescribeVpcs",
    "ec2:DescribeVpcPeeringConnections",
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeInstances",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeTags",
    "ec2:DescribeCoipPools",
    "ec2:GetCoipPoolUsage",
    "ec2:GetSecurityGroupsForVpc",
    "ec2:DescribeIpamPools",
    "ec2:DescribeRouteTables",
    "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:DescribeLoadBalancerAttributes",
    "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeListenerCertificates",
    "elasticloadbalancing:DescribeSSLPolicies",
    "elasticloadbalancing:DescribeRules",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetGroupAttributes",
    "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:DescribeTags",
    "elasticloadbalancing:DescribeTrustStores",
    "elasticloadbalancing:DescribeListenerAttributes",
    "elasticloadbalancing:DescribeCapacityReservation",
}
# cfn-lint findings that are not errors and cannot be fixed from here.
CFN_LINT_IGNORED = [
    "W3005",  # a DependsOn next to a Ref/GetAtt that already orders the two: aws-cdk-lib writes them (EKS cluster ->
    # subnets, kubectl handler and CfnJson provider -> their roles); redundant, harmless, not ours to change
]


@dataclass
class Synth:
    is_variant: bool
    template: Template
    json: dict[str, Any]
    metadata: dict[str, list[dict[str, Any]]]
    account: str
    region: str

    def resources(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.json["Resources"].items() if v["Type"] == cfn_type}

    def one(self, cfn_type: str) -> tuple[str, dict[str, Any]]:
        found = self.resources(cfn_type)
        assert len(found) == 1, f"{cfn_type}: {sorted(found)}"
        return next(iter(found.items()))

    def logical_id(self, prefix: str, cfn_type: str) -> str:
        ids = [k for k in self.resources(cfn_type) if k.startswith(prefix)]
        assert len(ids) == 1, f"{prefix} {cfn_type}: {ids}"
        return ids[0]

    def statements(self, role_prefix: str) -> dict[str, dict[str, Any]]:
        """The statements of the policies attached to one role, by Sid, resources flattened to strings."""
        role = self.logical_id(role_prefix, "AWS::IAM::Role")
        found: dict[str, dict[str, Any]] = {}
        for policy in self.resources("AWS::IAM::Policy").values():
            if {"Ref": role} in policy["Properties"]["Roles"]:
                for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                    assert statement["Sid"] not in found
                    found[statement["Sid"]] = {
                        "actions": sorted(_as_list(statement["Action"])),
                        "resources": sorted(flatten_cfn_reference(r) for r in _as_list(statement["Resource"])),
                        "condition": statement.get("Condition"),
                        "effect": statement["Effect"],
                    }
        return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _paths_of(node: Any, value: str, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where ``value`` occurs in a JSON document, as key paths."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _paths_of(v, value, (*path, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _paths_of(v, value, (*path, i))]
    return [path] if node == value else []


def _synth(tmp: Path, context: dict[str, Any]) -> Synth:
    is_variant = context == VARIANT_CONTEXT
    app, stack = build_app(context, outdir=str(tmp), environ={})
    try:
        app.synth()  # runs the AwsSolutions checks: an unacknowledged finding raises here
    except RuntimeError as exc:
        report = tmp / "validation-report.json"
        details = report.read_text() if report.exists() else ""
        pytest.fail(f"synth failed: {exc}\n{details[:20000]}")
    data = json.loads((tmp / f"{STACK}.template.json").read_text())
    metadata = json.loads((tmp / f"{STACK}.metadata.json").read_text())
    account, region = stack.resolve(stack.account), stack.resolve(stack.region)
    return Synth(is_variant, Template.from_json(data), data, metadata, account, region)


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return _synth(tmp_path_factory.mktemp("cdk-defaults"), {})


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return _synth(tmp_path_factory.mktemp("cdk-variant"), VARIANT_CONTEXT)


@pytest.fixture(scope="module", params=["defaults", "variant"])
def synth(request: pytest.FixtureRequest) -> Synth:
    return request.getfixturevalue(request.param)


def _scoped(synth: Synth) -> str:
    """How ``:<region>:<account>:`` reads in a flattened ARN of this synth."""
    region = synth.region if isinstance(synth.region, str) else flatten_cfn_reference(synth.region)
    account = synth.account if isinstance(synth.account, str) else flatten_cfn_reference(synth.account)
    return f":{region}:{account}:"


# --- cdk-nag and cfn-lint ---------------------------------------------------------------------------------------


def _acknowledgments(synth: Synth) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for path, entries in synth.metadata.items():
        for entry in entries:
            if entry["type"] == "aws:cdk:acknowledged-rules":
                found.setdefault(path, {}).update(entry["data"])
    return found


def test_aws_solutions_checks_pass_with_every_acknowledgment_reasoned(synth: Synth) -> None:
    # The synth in the fixture already failed on any unacknowledged AwsSolutions finding; nothing is left as an error
    # or warning annotation either.
    for path, entries in synth.metadata.items():
        for entry in entries:
            assert entry["type"] not in ("aws:cdk:error", "aws:cdk:warning"), (path, entry)
    acknowledged = _acknowledgments(synth)
    rules = set()
    for path, rules_here in acknowledged.items():
        for rule, reason in rules_here.items():
            if "AwsSolutions" not in rule:
                continue  # aws-cdk-lib's own (CloudFormation-Validate::F3002/F3003 on the flow log)
            assert len(reason) >= 40, (path, rule, reason)
            rules.add(rule.split("AwsSolutions-", 1)[1].split("[", 1)[0])
    expected = {"IAM4", "IAM5", "L1"}
    if synth.is_variant:
        expected |= {"SM1", "SM2"}
    assert rules == expected
    # IAM4 only on the roles aws-cdk-lib makes inside the cluster construct, never on ours.
    for path, rules_here in acknowledged.items():
        if any("IAM4" in rule for rule in rules_here):
            assert path.startswith(f"/{STACK}/Cluster/"), path


def test_cfn_lint_finds_no_error(synth: Synth) -> None:
    matches = lint(
        json.dumps(synth.json),
        config=ManualArgs(regions=[REGION], ignore_checks=CFN_LINT_IGNORED),
    )
    assert [f"{m.rule.id} {m.message} at {'/'.join(map(str, m.path))}" for m in matches] == []


# --- network and cluster -----------------------------------------------------------------------------------------


def test_vpc_spans_two_azs_with_private_nodes(synth: Synth) -> None:
    synth.template.resource_count_is("AWS::EC2::VPC", 1)
    subnets = synth.resources("AWS::EC2::Subnet")
    assert len(subnets) == 4
    azs = sorted(json.dumps(s["Properties"]["AvailabilityZone"]) for s in subnets.values())
    assert azs == sorted(json.dumps({"Fn::Select": [i, {"Fn::GetAZs": ""}]}) for i in (0, 0, 1, 1))
    synth.template.resource_count_is("AWS::EC2::NatGateway", 2)
    synth.template.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "ALL"})
    for service in ("s3", "dynamodb"):
        synth.template.has_resource_properties(
            "AWS::EC2::VPCEndpoint",
            {"ServiceName": Match.object_like({"Fn::Join": ["", Match.array_with([f".{service}"])]})},
        )


def test_eks_cluster_is_logged_encrypted_and_closed_by_default(defaults: Synth, variant: Synth) -> None:
    for synth in (defaults, variant):
        synth.template.has_resource_properties(
            "AWS::EKS::Cluster",
            {
                "Version": "1.35",
                "AccessConfig": {"AuthenticationMode": "API"},
                "EncryptionConfig": [Match.object_like({"Resources": ["secrets"]})],
                "Logging": {
                    "ClusterLogging": {
                        "EnabledTypes": [
                            {"Type": t} for t in ("api", "audit", "authenticator", "controllerManager", "scheduler")
                        ]
                    }
                },
            },
        )
        synth.template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    # No CIDRs given: the API server is reachable from inside the VPC only (no 0.0.0.0/0 default anywhere).
    _, cluster = defaults.one("AWS::EKS::Cluster")
    vpc_config = cluster["Properties"]["ResourcesVpcConfig"]
    assert vpc_config["EndpointPublicAccess"] is False and vpc_config["EndpointPrivateAccess"] is True
    for synth in (defaults, variant):  # 0.0.0.0/0 appears only as default routes and as egress
        open_paths = _paths_of(synth.json["Resources"], "0.0.0.0/0")
        assert open_paths and all(p[-1] == "DestinationCidrBlock" or "SecurityGroupEgress" in p for p in open_paths)
    assert "AllowedCidrs" not in defaults.json["Outputs"]
    # So the kubectl handler (Helm charts) runs inside the VPC, in the private subnets, in both shapes.
    for synth in (defaults, variant):
        handler = synth.json["Resources"][synth.logical_id("ClusterKubectlProviderHandler", "AWS::Lambda::Function")]
        subnets = handler["Properties"]["VpcConfig"]["SubnetIds"]
        assert subnets and all(s["Ref"].startswith("VpcprivateSubnet") for s in subnets)
    # CIDRs given: public access from those only, and the load balancer's source ranges are an output.
    variant.template.has_resource_properties(
        "AWS::EKS::Cluster",
        {
            "ResourcesVpcConfig": Match.object_like(
                {
                    "EndpointPublicAccess": True,
                    "EndpointPrivateAccess": True,
                    "PublicAccessCidrs": ["203.0.113.0/24", "198.51.100.7/32"],
                }
            )
        },
    )
    assert variant.json["Outputs"]["AllowedCidrs"]["Value"] == "203.0.113.0/24,198.51.100.7/32"
    # An admin principal gets cluster-admin through an access entry (the kubectl handler has its own).
    variant.template.has_resource_properties(
        "AWS::EKS::AccessEntry",
        {
            "PrincipalArn": VARIANT_CONTEXT["adminPrincipalArns"],
            "AccessPolicies": [Match.object_like({"AccessScope": {"Type": "cluster"}})],
        },
    )


def test_managed_node_group_matches_the_image_architecture(defaults: Synth, variant: Synth) -> None:
    expected = {
        "AmiType": "AL2023_x86_64_STANDARD",
        "InstanceTypes": ["m6i.xlarge"],
        "CapacityType": "ON_DEMAND",
        "ScalingConfig": {"MinSize": 2, "DesiredSize": 2, "MaxSize": 4},
        "DiskSize": 100,
    }
    defaults.template.has_resource_properties("AWS::EKS::Nodegroup", expected)
    variant.template.has_resource_properties(
        "AWS::EKS::Nodegroup", {**expected, "AmiType": "AL2023_ARM_64_STANDARD", "InstanceTypes": ["m7g.xlarge"]}
    )
    assert variant.json["Outputs"]["NodeArchitecture"]["Value"] == "arm64"


def test_cluster_addons_are_charts_installed_at_deploy_time(synth: Synth) -> None:
    charts = synth.resources("Custom::AWSCDK-EKS-HelmChart")
    by_chart = {c["Properties"]["Chart"]: (k, c["Properties"]) for k, c in charts.items()}
    assert set(by_chart) == {"cert-manager", "aws-load-balancer-controller", "keda"}
    cert_id, cert = by_chart["cert-manager"]
    assert cert["Repository"] == "https://charts.jetstack.io" and cert["Version"] == "v1.19.1"
    assert json.loads(cert["Values"]) == {"crds": {"enabled": True}}
    alb_id, alb = by_chart["aws-load-balancer-controller"]
    assert alb["Repository"] == "https://aws.github.io/eks-charts" and alb["Version"] == "3.2.2"
    assert alb["Namespace"] == "kube-system"
    values = flatten_cfn_reference(alb["Values"])
    role = synth.logical_id("LoadBalancerControllerRole", "AWS::IAM::Role")
    assert f'"eks.amazonaws.com/role-arn":"<{role}.Arn>"' in values
    assert '"name":"aws-load-balancer-controller"' in values
    assert '"enableShield":false,"enableWaf":false,"enableWafv2":false' in values
    # cert-manager first: the controller's Service webhook would otherwise reject cert-manager's Services.
    assert cert_id in synth.json["Resources"][alb_id]["DependsOn"]
    keda_id, keda = by_chart["keda"]
    assert keda["Repository"] == "https://kedacore.github.io/charts" and keda["Namespace"] == "keda"
    keda_values = flatten_cfn_reference(keda["Values"])
    keda_role = synth.logical_id("KedaOperatorRole", "AWS::IAM::Role")
    assert f'"irsa":{{"enabled":true,"roleArn":"<{keda_role}.Arn>"' in keda_values
    assert '"operator":{"name":"keda-operator"' in keda_values
    assert alb_id in synth.json["Resources"][keda_id]["DependsOn"]
    # Nothing in the stack points at a policy document or manifest on the internet.
    text = json.dumps(synth.json)
    assert "raw.githubusercontent.com" not in text and "iam_policy.json" not in text


# --- images, queue, table, bucket ---------------------------------------------------------------------------------


def test_ecr_repositories_for_the_three_images(synth: Synth) -> None:
    repositories = synth.resources("AWS::ECR::Repository")
    names = sorted(r["Properties"]["RepositoryName"] for r in repositories.values())
    assert names == ["media-upscaler/api", "media-upscaler/model-server", "media-upscaler/video-worker"]
    for repository in repositories.values():
        assert repository["Properties"]["ImageScanningConfiguration"] == {"ScanOnPush": True}
        assert repository["Properties"]["ImageTagMutability"] == "IMMUTABLE"
        assert repository["Properties"]["EmptyOnDelete"] is True
    for output in ("ApiRepositoryUri", "VideoWorkerRepositoryUri", "ModelServerRepositoryUri"):
        assert ".dkr.ecr." in flatten_cfn_reference(synth.json["Outputs"][output]["Value"])


def test_job_queue_has_an_encrypted_dead_letter_queue_and_tls_only_policies(synth: Synth) -> None:
    dlq = synth.logical_id("DeadLetterQueue", "AWS::SQS::Queue")
    synth.template.has_resource_properties(
        "AWS::SQS::Queue",
        {
            "SqsManagedSseEnabled": True,
            "VisibilityTimeout": 120,
            "ReceiveMessageWaitTimeSeconds": 20,
            "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": [dlq, "Arn"]}, "maxReceiveCount": 3},
        },
    )
    assert synth.json["Resources"][dlq]["Properties"]["SqsManagedSseEnabled"] is True
    policies = synth.resources("AWS::SQS::QueuePolicy")
    assert len(policies) == 2
    for policy in policies.values():
        (deny,) = policy["Properties"]["PolicyDocument"]["Statement"]
        assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert synth.json["Outputs"]["MaxReceiveCount"]["Value"] == "3"


def test_jobs_table_is_on_demand_with_pitr_and_ttl_keyed_as_the_store_writes(synth: Synth) -> None:
    _, table = synth.one("AWS::DynamoDB::Table")
    synth.template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            "SSESpecification": {"SSEEnabled": True},
        },
    )
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"
    # The key and the TTL attribute the table declares are the ones upscaler/jobs/store.py writes, typed alike.
    store = DynamoJobStore("jobs", client=object())
    item = store._item(Job(method=METHODS[0], video="s3://bucket/video.mp4", status="Completed"))
    assert set(item["id"]) == {"S"} and set(item[DynamoJobStore.TTL_ATTRIBUTE]) == {"N"}
    assert synth.json["Outputs"]["JobsTableTtlAttribute"]["Value"] == DynamoJobStore.TTL_ATTRIBUTE == "expires_at"


def test_created_bucket_blocks_public_access_encrypts_and_refuses_plain_http(defaults: Synth) -> None:
    bucket_id = defaults.logical_id("MediaBucket", "AWS::S3::Bucket")
    bucket = defaults.json["Resources"][bucket_id]
    assert bucket["DeletionPolicy"] == "Retain"
    properties = bucket["Properties"]
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert properties["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    ]
    assert properties["LoggingConfiguration"]["DestinationBucketName"] == {
        "Ref": defaults.logical_id("AccessLogBucket", "AWS::S3::Bucket")
    }
    rules = {r["Id"]: r for r in properties["LifecycleConfiguration"]["Rules"]}
    assert rules["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert rules["expire-stale-checkpoints"]["Prefix"] == "_checkpoints/"
    defaults.template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": bucket_id},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}),
                        Match.object_like({"Effect": "Deny", "Condition": {"NumericLessThan": {"s3:TlsVersion": 1.2}}}),
                    ]
                )
            },
        },
    )
    assert defaults.json["Outputs"]["BucketName"]["Value"] == {"Ref": bucket_id}


def test_an_existing_bucket_is_imported_not_created(variant: Synth) -> None:
    variant.template.resource_count_is("AWS::S3::Bucket", 0)
    assert variant.json["Outputs"]["BucketName"]["Value"] == "my-media"
    statements = variant.statements("ApiRole")
    assert statements["S3Objects"]["resources"] == ["arn:aws:s3:::my-media/*"]
    assert statements["BucketKey"] == {
        "actions": ["kms:Decrypt", "kms:GenerateDataKey"],
        "resources": [VARIANT_CONTEXT["existingBucketKmsKeyArn"]],
        "condition": None,
        "effect": "Allow",
    }


# --- IAM ----------------------------------------------------------------------------------------------------------


def _bucket(synth: Synth) -> str:
    if synth.is_variant:
        return "arn:aws:s3:::my-media"
    return f"<{synth.logical_id('MediaBucket', 'AWS::S3::Bucket')}.Arn>"


def _arn(synth: Synth, prefix: str, cfn_type: str) -> str:
    return f"<{synth.logical_id(prefix, cfn_type)}.Arn>"


def _endpoint_arns(synth: Synth, names: list[str]) -> list[str]:
    partition = "aws" if synth.is_variant else "<AWS::Partition>"
    return sorted(f"arn:{partition}:sagemaker{_scoped(synth)}endpoint/{name.lower()}" for name in names)


def _shared_grants(synth: Synth) -> dict[str, tuple[list[str], list[str]]]:
    """What the API and the worker roles both hold: the bucket, the jobs table, the named endpoints."""
    bucket = _bucket(synth)
    expected = {
        "S3Objects": (
            ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
            [f"{bucket}/*"],
        ),
        "S3ListBucket": (["s3:ListBucket"], [bucket]),
        "DynamoDbJobs": (
            ["dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:PutItem"],
            [_arn(synth, "JobsTable", "AWS::DynamoDB::Table")],
        ),
    }
    if synth.is_variant:  # every endpoint named, and the created one; ARNs carry names in lower case
        expected["SageMakerInvoke"] = (
            ["sagemaker:InvokeEndpoint"],
            _endpoint_arns(synth, ["upscaler-span", "stableDiffusionJT", "upscaler-span-gpu"]),
        )
        expected["BucketKey"] = (["kms:Decrypt", "kms:GenerateDataKey"], [VARIANT_CONTEXT["existingBucketKmsKeyArn"]])
    return expected


def _grants(synth: Synth, role: str) -> dict[str, tuple[list[str], list[str]]]:
    return {sid: (s["actions"], s["resources"]) for sid, s in synth.statements(role).items()}


#: The variant's further migration source buckets (migrationSourceBuckets), as ARNs.
SOURCES = ["arn:aws:s3:::old-archive", "arn:aws:s3:::raw-photos"]


def test_api_role_grants_exactly_what_the_api_calls(synth: Synth) -> None:
    sources = {}
    if synth.is_variant:  # POST /v1/migrations lists a source bucket and its dry run reads a sample
        sources = {
            "MigrationSourceObjects": (["s3:GetObject"], [f"{a}/*" for a in SOURCES]),
            "MigrationSourceList": (["s3:ListBucket"], SOURCES),
        }
    assert _grants(synth, "ApiRole") == {
        **_shared_grants(synth),
        "SqsSendJobs": (["sqs:SendMessage"], [_arn(synth, "JobQueue", "AWS::SQS::Queue")]),
        **sources,
    }


def test_worker_role_grants_exactly_what_the_worker_calls(synth: Synth) -> None:
    """Video jobs and migration chunks: tagging verified originals in the media bucket always (the default
    --on-verified tag); in the further source buckets list, read and tag, and delete only as asked."""
    queue = _arn(synth, "JobQueue", "AWS::SQS::Queue")
    tagging = ["s3:GetObjectTagging", "s3:PutObjectTagging"]
    sources = {}
    if synth.is_variant:  # migrationSourceBuckets, migrationDeleteOriginals=true
        sources = {
            "MigrationSourceObjects": (["s3:GetObject", *tagging], [f"{a}/*" for a in SOURCES]),
            "MigrationSourceList": (["s3:ListBucket"], SOURCES),
            "MigrationSourceDelete": (["s3:DeleteObject"], [f"{a}/*" for a in SOURCES]),
        }
    assert _grants(synth, "WorkerRole") == {
        **_shared_grants(synth),
        "SqsConsumeJobs": (["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage"], [queue]),
        "SqsDeadLetter": (["sqs:SendMessage"], [_arn(synth, "DeadLetterQueue", "AWS::SQS::Queue")]),
        "S3MigrationTagging": (tagging, [f"{_bucket(synth)}/*"]),
        **sources,
    }
    assert _grants(synth, "KedaOperatorRole") == {"SqsQueueLength": (["sqs:GetQueueAttributes"], [queue])}


def test_migration_sources_get_no_delete_unless_asked() -> None:
    """Without migrationDeleteOriginals a further source bucket is listed, read and tagged, never deleted from:
    only --on-verified delete needs DeleteObject there."""
    kept = policies.migration_worker_statements(bucket_arn="arn:aws:s3:::m", source_bucket_arns=SOURCES[:1],
                                                delete_originals=False)  # fmt: skip
    actions = {a for s in kept for a in _as_list(s.to_json()["Action"])}
    assert "s3:DeleteObject" not in actions and {"s3:ListBucket", "s3:PutObjectTagging"} <= actions
    deleting = policies.migration_worker_statements(bucket_arn="arn:aws:s3:::m", source_bucket_arns=SOURCES[:1],
                                                    delete_originals=True)  # fmt: skip
    assert [s.to_json()["Resource"] for s in deleting if s.sid == "MigrationSourceDelete"] == [f"{SOURCES[0]}/*"]
    assert policies.migration_api_statements([]) == []


class _RecordingClient:
    """A boto3 client stand-in that records the operations called and answers just enough."""

    def __init__(self, item: dict[str, Any] | None = None) -> None:
        self.calls: list[str] = []
        self.item = item

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> dict[str, Any]:
            self.calls.append(name)
            if name == "get_item":
                return {"Item": self.item}
            if name == "put_item":
                self.item = kwargs["Item"]
            if name == "send_message":
                return {"MessageId": "m"}
            if name == "receive_message":
                return {"Messages": [{"MessageId": "m", "Body": "{}", "ReceiptHandle": "r"}]}
            return {}

        return call


_IAM = {
    "send_message": "sqs:SendMessage",
    "receive_message": "sqs:ReceiveMessage",
    "delete_message": "sqs:DeleteMessage",
    "change_message_visibility": "sqs:ChangeMessageVisibility",
    "get_item": "dynamodb:GetItem",
    "put_item": "dynamodb:PutItem",
    "describe_table": "dynamodb:DescribeTable",
}


def test_granted_queue_and_table_actions_cover_what_the_code_calls(defaults: Synth) -> None:
    """The SQS and DynamoDB adapters, driven against a recording client: each call maps to a granted action."""
    table = _RecordingClient()
    store = DynamoJobStore("jobs", client=table)
    job = store.create(Job(method=METHODS[0], video="s3://bucket/video.mp4"))
    store.get(job.id)
    store.transition(job.id, "Processing")
    store.update(job.id, frames_done=1)
    store.ping()
    api_sqs, worker_sqs = _RecordingClient(), _RecordingClient()
    SqsQueue("https://sqs/q", client=api_sqs).send({"id": job.id})
    queue = SqsQueue("https://sqs/q", client=worker_sqs, dlq_url="https://sqs/dlq")
    message = queue.receive(wait_seconds=0)
    assert isinstance(message, Message)
    queue.extend(message, 60)
    queue.release(message)
    queue.delete(message)
    queue.bury(message)  # send to the DLQ, delete from the queue

    def granted(role: str) -> set[str]:
        return {a for s in defaults.statements(role).values() for a in s["actions"]}

    assert {_IAM[c] for c in table.calls} <= granted("ApiRole") & granted("WorkerRole")
    assert {_IAM[c] for c in api_sqs.calls} <= granted("ApiRole")
    assert {_IAM[c] for c in worker_sqs.calls} <= granted("WorkerRole")
    assert "sqs:ReceiveMessage" not in granted("ApiRole")


def test_irsa_roles_trust_one_service_account_each(synth: Synth) -> None:
    (provider, _), *rest = synth.resources("AWS::IAM::OIDCProvider").items()
    assert rest == []  # one provider for the cluster, native (no custom resource)
    expected = {
        "ApiRole": "media-upscaler:upscaler-api",
        "WorkerRole": "media-upscaler:upscaler-video-worker",
        "KedaOperatorRole": "keda:keda-operator",
        "LoadBalancerControllerRole": "kube-system:aws-load-balancer-controller",
    }
    for prefix, subject in expected.items():
        role_id = synth.logical_id(prefix, "AWS::IAM::Role")
        conditions_id = synth.logical_id(f"{prefix}TrustConditions", "Custom::AWSCDKCfnJson")
        (statement,) = synth.json["Resources"][role_id]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert statement == {
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Effect": "Allow",
            "Principal": {"Federated": {"Ref": provider}},
            "Condition": {"StringEquals": {"Fn::GetAtt": [conditions_id, "Value"]}},
        }
        value = flatten_cfn_reference(synth.json["Resources"][conditions_id]["Properties"]["Value"])
        assert f':sub":"system:serviceaccount:{subject}"' in value
        assert ':aud":"sts.amazonaws.com"' in value
    assert synth.json["Outputs"]["KubernetesNamespace"]["Value"] == "media-upscaler"
    assert synth.json["Outputs"]["ApiServiceAccountName"]["Value"] == "upscaler-api"
    assert synth.json["Outputs"]["WorkerServiceAccountName"]["Value"] == "upscaler-video-worker"


def test_load_balancer_controller_policy_is_ours_and_narrowed(synth: Synth) -> None:
    statements = synth.statements("LoadBalancerControllerRole")
    actions = {a for s in statements.values() for a in s["actions"]}
    assert not {a for a in actions if a.split(":")[0] in ("waf-regional", "wafv2", "shield", "cognito-idp")}
    assert "iam:GetServerCertificate" not in actions and "elasticloadbalancing:SetWebAcl" not in actions
    for needed in (
        "elasticloadbalancing:CreateLoadBalancer",
        "elasticloadbalancing:RegisterTargets",
        "ec2:CreateSecurityGroup",
        "ec2:AuthorizeSecurityGroupIngress",
        "iam:CreateServiceLinkedRole",
    ):
        assert needed in actions
    vpc = synth.logical_id("Vpc", "AWS::EC2::VPC")
    assert any(r.endswith(f":vpc/<{vpc}>") for r in statements["CreateSecurityGroupInVpc"]["resources"])
    cluster = synth.logical_id("Cluster", "AWS::EKS::Cluster")
    assert statements["NodeSecurityGroupIngress"]["resources"] == [
        f"arn:{'aws' if synth.is_variant else '<AWS::Partition>'}:ec2{_scoped(synth)}security-group/"
        f"<{cluster}.ClusterSecurityGroupId>"
    ]
    assert statements["ManageOwnedSecurityGroup"]["condition"] == {
        "Null": {"aws:ResourceTag/elbv2.k8s.aws/cluster": "false"}
    }
    assert statements["CreateLoadBalancer"]["condition"] == {"Null": {"aws:RequestTag/elbv2.k8s.aws/cluster": "false"}}


def test_no_statement_grants_star_where_a_name_is_known(synth: Synth) -> None:
    """Every Allow statement of every policy in the template: ``*`` alone only for WILDCARD_ONLY actions; any other
    wildcard is an object key in our bucket or a named migration source bucket, a version of a known function, or
    an ARN fixed to this account and region (names the load balancer controller or SageMaker generate)."""
    scoped = _scoped(synth)
    documents: list[tuple[str, dict[str, Any]]] = []
    for logical_id, resource in synth.json["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append((logical_id, properties["PolicyDocument"]))
        if resource["Type"] == "AWS::IAM::Role":
            documents += [(logical_id, p["PolicyDocument"]) for p in properties.get("Policies", [])]
    assert len(documents) >= 6
    bucket = _bucket(synth)
    for logical_id, document in documents:
        for statement in document["Statement"]:
            if statement["Effect"] != "Allow":
                continue
            actions = set(_as_list(statement["Action"]))
            assert not [a for a in actions if "*" in a], (logical_id, statement)
            for resource in map(flatten_cfn_reference, _as_list(statement["Resource"])):
                if resource == "*":
                    assert actions <= WILDCARD_ONLY, (logical_id, sorted(actions - WILDCARD_ONLY))
                elif "*" in resource:
                    sources = [f"{a}/*" for a in SOURCES] if synth.is_variant else []
                    assert (
                        resource == f"{bucket}/*"
                        or resource in sources
                        or (resource.startswith("<") and resource.endswith(".Arn>:*"))  # a function's versions
                        or scoped in resource
                    ), (logical_id, resource)


# --- SageMaker (optional) -----------------------------------------------------------------------------------------


def test_sagemaker_endpoint_runs_our_container_only_when_asked(defaults: Synth, variant: Synth) -> None:
    for cfn_type in ("AWS::SageMaker::Model", "AWS::SageMaker::EndpointConfig", "AWS::SageMaker::Endpoint"):
        defaults.template.resource_count_is(cfn_type, 0)
        variant.template.resource_count_is(cfn_type, 1)
    assert "SageMakerEndpointNames" not in defaults.json["Outputs"]
    model = variant.json["Resources"]["UpscalerModel"]["Properties"]
    assert model["EnableNetworkIsolation"] is True
    image = flatten_cfn_reference(model["PrimaryContainer"]["Image"])
    assert image.endswith(f"/<{variant.logical_id('ModelServerRepository', 'AWS::ECR::Repository')}>:v1.2.3")
    variant.template.has_resource_properties(
        "AWS::SageMaker::EndpointConfig",
        {
            "ProductionVariants": [
                Match.object_like(
                    {"InstanceType": "ml.g4dn.xlarge", "InitialInstanceCount": 1, "VariantName": "AllTraffic"}
                )
            ]
        },
    )
    variant.template.has_resource_properties("AWS::SageMaker::Endpoint", {"EndpointName": "upscaler-span-gpu"})
    assert (
        variant.json["Outputs"]["SageMakerEndpointNames"]["Value"]
        == "upscaler-span,stableDiffusionJT,upscaler-span-gpu"
    )
    statements = variant.statements("SageMakerExecutionRole")
    repository = _arn(variant, "ModelServerRepository", "AWS::ECR::Repository")
    assert statements["EcrPull"]["resources"] == [repository]
    assert statements["EcrToken"]["resources"] == ["*"]
    log_group = f"arn:aws:logs{_scoped(variant)}log-group:/aws/sagemaker/Endpoints/upscaler-span-gpu"
    assert statements["EndpointLogs"]["resources"] == sorted([log_group, f"{log_group}:log-stream:*"])
    role = variant.logical_id("SageMakerExecutionRole", "AWS::IAM::Role")
    (trust,) = variant.json["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "sagemaker.amazonaws.com"}


# --- outputs and parameters ---------------------------------------------------------------------------------------


def test_outputs_name_everything_manifests_need(defaults: Synth, variant: Synth) -> None:
    assert set(defaults.json["Outputs"]) == OUTPUTS
    assert set(variant.json["Outputs"]) == OUTPUTS | {"AllowedCidrs", "SageMakerEndpointNames"}
    outputs = defaults.json["Outputs"]
    assert outputs["Region"]["Value"] == {"Ref": "AWS::Region"}
    assert outputs["JobQueueUrl"]["Value"] == {"Ref": defaults.logical_id("JobQueue", "AWS::SQS::Queue")}
    assert outputs["DeadLetterQueueUrl"]["Value"] == {"Ref": defaults.logical_id("DeadLetterQueue", "AWS::SQS::Queue")}
    assert outputs["JobsTableName"]["Value"] == {"Ref": defaults.logical_id("JobsTable", "AWS::DynamoDB::Table")}
    assert outputs["ClusterName"]["Value"] == {"Ref": defaults.logical_id("Cluster", "AWS::EKS::Cluster")}
    for role in ("ApiRole", "WorkerRole", "KedaOperatorRole"):
        assert outputs[f"{role}Arn"]["Value"] == {"Fn::GetAtt": [defaults.logical_id(role, "AWS::IAM::Role"), "Arn"]}
    assert variant.json["Outputs"]["Region"]["Value"] == REGION


def test_nothing_account_specific_is_written_in_the_code() -> None:
    text = "\n".join(p.read_text() for p in (ROOT / "cdk_infra").glob("*.py"))
    text += (ROOT / "cdk_infra" / "cdk.json").read_text()
    assert not re.search(r"\b\d{12}\b", text), "an account id in cdk_infra/"
    assert not re.search(r"\b[a-z]{2}-(east|west|north|south|central|northeast|southeast)-\d\b", text), "a region"
    assert "0.0.0.0/0" not in text
    context = cdk_json_context()
    assert context["allowedCidrs"] == [] and context["endpointNames"] == []


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"allowedCidrs": "10.0.0.1/8"}, "allowedCidrs"),  # host bits set: not a network
        ({"allowedCidrs": "everyone"}, "allowedCidrs"),
        ({"nodeArch": "riscv"}, "nodeArch"),
        ({"endpointNames": "bad_name!"}, "endpointNames"),
        ({"createSagemakerEndpoint": "true"}, "modelImageTag"),
        ({"nodeMinSize": "3", "nodeDesiredSize": "2"}, "nodeMinSize"),
        ({"account": "12345"}, "account"),
        ({"kubernetesVersion": "1.20"}, "kubernetesVersion"),
    ],
)
def test_bad_context_is_refused_with_the_key_named(context: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        DeploySettings.from_context(context.get, environ={})


def test_context_lists_and_environment_defaults() -> None:
    settings = DeploySettings.from_context(
        {"allowedCidrs": '["203.0.113.0/24"]', "endpointNames": "a, b", "createSagemakerEndpoint": False}.get,
        environ={"CDK_DEFAULT_ACCOUNT": ACCOUNT, "CDK_DEFAULT_REGION": REGION},
    )
    assert settings.allowed_cidrs == ("203.0.113.0/24",) and settings.endpoint_names == ("a", "b")
    assert (settings.account, settings.region) == (ACCOUNT, REGION)
    assert DeploySettings.from_context({"region": "us-west-2"}.get, environ={"CDK_DEFAULT_REGION": REGION}).region == (
        "us-west-2"
    )


def test_instance_types_must_match_the_node_architecture(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="instanceTypes"):
        build_app({"nodeArch": "arm64", "instanceTypes": "m6i.xlarge"}, outdir=str(tmp_path), environ={})


def test_the_cdk_json_entry_point_synthesizes(tmp_path: Path) -> None:
    """What ``cdk synth`` runs (cdk.json's "app"), as the CLI runs it: context in CDK_CONTEXT_JSON, CDK_OUTDIR."""
    app = json.loads((ROOT / "cdk_infra" / "cdk.json").read_text())["app"]
    assert app == "PYTHONPATH=.. python3 -m cdk_infra.app"
    result = subprocess.run(
        [sys.executable, "-m", "cdk_infra.app"],
        cwd=ROOT / "cdk_infra",
        env={
            **os.environ,
            "CDK_CONTEXT_JSON": json.dumps({**cdk_json_context(), "allowedCidrs": "203.0.113.0/24"}),
            "CDK_OUTDIR": str(tmp_path),
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    template = json.loads((tmp_path / f"{STACK}.template.json").read_text())
    assert template["Outputs"]["AllowedCidrs"]["Value"] == "203.0.113.0/24"
