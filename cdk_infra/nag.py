"""cdk-nag (v3) acknowledgments, each with its reason, and no blanket ones.

cdk-nag v3 reports through CDK's policy validation: an unacknowledged AwsSolutions finding fails ``synth``. A rule that
reports several findings per resource (IAM4: one per managed policy, IAM5: one per wildcard) is acknowledged finding
by finding, under ids rendered the way cdk-nag renders them (:func:`flatten_cfn_reference`). Our own wildcards must
each have a reason keyed by statement ``Sid`` (a new one without a reason fails synth here, before cdk-nag does);
the constructs aws-cdk-lib makes for EKS are acknowledged per managed policy and per kind of wildcard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from aws_cdk import Acknowledgment, CfnResource, Stack, Validations
from aws_cdk import aws_iam as iam
from constructs import IConstruct

#: AWS managed policies on the roles aws-cdk-lib creates for the cluster, and why each is acceptable.
MANAGED_POLICY_REASONS: dict[str, str] = {
    "AmazonEKSClusterPolicy": "The EKS control plane's service role policy, maintained by AWS with the service.",
    "AmazonEKSWorkerNodePolicy": "Required by EKS managed node groups: nodes register with and describe the cluster.",
    "AmazonEKS_CNI_Policy": "The VPC CNI on the nodes assigns pod IPs from the VPC (ENIs); AWS keeps it current.",
    "AmazonEC2ContainerRegistryReadOnly": "Nodes (and the kubectl handler, for OCI charts) pull images from ECR: "
    "read-only.",
    "AmazonElasticContainerRegistryPublicReadOnly": "Only attached when a chart comes from ECR Public (a "
    "CloudFormation condition): read-only.",
    "AWSLambdaBasicExecutionRole": "aws-cdk-lib's kubectl handler and provider framework write their CloudWatch logs.",
    "AWSLambdaVPCAccessExecutionRole": "The kubectl handler runs in the VPC's private subnets to reach the private "
    "cluster endpoint (ENI management).",
}
_MANAGED_POLICY_NAME = re.compile(r":iam::aws:policy/(?:[\w-]+/)*([\w-]+)")


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge one AwsSolutions finding (``rule`` as ``IAM5[Resource::*]`` or ``L1``) on ``scope`` and below."""
    Validations.of(scope).acknowledge(Acknowledgment(id=f"AwsSolutions-{rule}", reason=reason))


def flatten_cfn_reference(node: Any) -> str:
    """The string cdk-nag makes of a resolved CloudFormation value (its ``flattenCfnReference``)."""
    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, dict):
        if node.get("Fn::Join"):
            delimiter, items = node["Fn::Join"]
            return delimiter.join(flatten_cfn_reference(item) for item in items)
        if node.get("Fn::Sub"):
            return flatten_cfn_reference(node["Fn::Sub"])
        if node.get("Fn::GetAtt"):
            resource, attribute = node["Fn::GetAtt"]
            return f"<{flatten_cfn_reference(resource)}.{flatten_cfn_reference(attribute)}>"
        if node.get("Fn::ImportValue"):
            return flatten_cfn_reference(node["Fn::ImportValue"])
        if node.get("Ref"):
            return f"<{flatten_cfn_reference(node['Ref'])}>"
    return json.dumps(node, separators=(",", ":"), ensure_ascii=False)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def wildcard_resources(stack: Stack, statement: Mapping[str, Any]) -> list[str]:
    """The resources of an Allow statement (resolved) that cdk-nag's IAM5 reports: any containing ``*``."""
    if statement.get("Effect", "Allow") != "Allow":
        return []
    flat = [flatten_cfn_reference(stack.resolve(r)) for r in _as_list(statement.get("Resource", []))]
    return [r for r in flat if "*" in r]


def acknowledge_policy_wildcards(policy: iam.Policy, reasons_by_sid: Mapping[str, str]) -> None:
    """Acknowledge each IAM5 wildcard finding of one of our policies with the reason of the statement it is in."""
    stack = Stack.of(policy)
    document = stack.resolve(policy.document)
    reasons: dict[str, list[str]] = {}
    for statement in document.get("Statement", []):
        wildcards = wildcard_resources(stack, statement)
        if not wildcards:
            continue
        sid = statement.get("Sid", "")
        if sid not in reasons_by_sid:
            raise ValueError(f"{policy.node.path}: statement {sid!r} grants {wildcards} with no stated reason")
        for resource in wildcards:
            reasons.setdefault(resource, [])
            if reasons_by_sid[sid] not in reasons[resource]:
                reasons[resource].append(reasons_by_sid[sid])
    for resource, why in reasons.items():
        acknowledge(policy, f"IAM5[Resource::{resource}]", " ".join(why))


def _cfn_resources(scope: IConstruct, cfn_type: str) -> Iterable[CfnResource]:
    for construct in scope.node.find_all():
        if CfnResource.is_cfn_resource(construct) and construct.cfn_resource_type == cfn_type:
            yield construct


def acknowledge_cluster_internals(cluster: IConstruct) -> None:
    """The roles, policies and functions aws-cdk-lib creates inside the EKS cluster construct (cluster role, node
    role, kubectl handler and its provider): each managed policy by name, the one kind of wildcard they use."""
    stack = Stack.of(cluster)
    for role in _cfn_resources(cluster, "AWS::IAM::Role"):
        arns = stack.resolve(role.managed_policy_arns) or []  # type: ignore[attr-defined]
        for arn in arns:
            flat = flatten_cfn_reference(stack.resolve(arn))
            match = _MANAGED_POLICY_NAME.search(flat)
            if match is None:
                continue
            name = match.group(1)
            if name not in MANAGED_POLICY_REASONS:
                raise ValueError(f"{role.node.path}: AWS managed policy {name} has no stated reason")
            acknowledge(role, f"IAM4[Policy::{flat}]", MANAGED_POLICY_REASONS[name])
    for policy in _cfn_resources(cluster, "AWS::IAM::Policy"):
        document = stack.resolve(policy.policy_document)  # type: ignore[attr-defined]
        for statement in document.get("Statement", []):
            wildcards = wildcard_resources(stack, statement)
            if not wildcards:
                continue
            actions = set(_as_list(statement.get("Action", [])))
            if actions != {"lambda:InvokeFunction"}:
                raise ValueError(f"{policy.node.path}: unexpected wildcard {wildcards} for {sorted(actions)}")
            for resource in wildcards:
                acknowledge(
                    policy,
                    f"IAM5[Resource::{resource}]",
                    "The custom resource provider framework invokes its own kubectl handler function, any version "
                    "(<function arn>:*).",
                )
    for function in _cfn_resources(cluster, "AWS::Lambda::Function"):
        if not str(stack.resolve(function.runtime)).startswith("python"):  # type: ignore[attr-defined]
            continue  # the provider framework's Node.js runtime is current: nothing to acknowledge
        acknowledge(
            function,
            "L1",
            "aws-cdk-lib's kubectl handler: its runtime is pinned by the library to match the kubectl/helm layer "
            "and cannot be chosen here.",
        )
