"""IAM statements of the stack's roles, written out here so that nothing is fetched at synth and every grant is visible.

Each statement has a ``Sid`` the tests look for. A ``Resource: "*"`` appears only for actions that accept nothing else
(``WILDCARD_ONLY_ACTIONS``); everything with a known name or ARN is scoped to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam

#: Actions that only accept ``Resource: "*"`` (no resource-level permissions in IAM), and why we grant each.
WILDCARD_ONLY_ACTIONS: dict[str, str] = {
    "ecr:GetAuthorizationToken": "SageMaker pulls the model-server image with a registry token (account-wide)",
    "acm:ListCertificates": "the load balancer controller discovers TLS certificates by host name",
    "ec2:DescribeAccountAttributes": "load balancer controller: discovery",
    "ec2:DescribeAddresses": "load balancer controller: discovery",
    "ec2:DescribeAvailabilityZones": "load balancer controller: discovery",
    "ec2:DescribeInternetGateways": "load balancer controller: discovery",
    "ec2:DescribeVpcs": "load balancer controller: discovery",
    "ec2:DescribeVpcPeeringConnections": "load balancer controller: discovery",
    "ec2:DescribeSubnets": "load balancer controller: discovery",
    "ec2:DescribeSecurityGroups": "load balancer controller: discovery",
    "ec2:DescribeInstances": "load balancer controller: discovery",
    "ec2:DescribeNetworkInterfaces": "load balancer controller: discovery",
    "ec2:DescribeTags": "load balancer controller: discovery",
    "ec2:DescribeCoipPools": "load balancer controller: discovery",
    "ec2:GetCoipPoolUsage": "load balancer controller: discovery",
    "ec2:GetSecurityGroupsForVpc": "load balancer controller: discovery",
    "ec2:DescribeIpamPools": "load balancer controller: discovery",
    "ec2:DescribeRouteTables": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeLoadBalancers": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeLoadBalancerAttributes": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeListeners": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeListenerCertificates": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeSSLPolicies": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeRules": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeTargetGroups": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeTargetGroupAttributes": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeTargetHealth": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeTags": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeTrustStores": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeListenerAttributes": "load balancer controller: discovery",
    "elasticloadbalancing:DescribeCapacityReservation": "load balancer controller: discovery",
}

_CONTROLLER_NAMES = (
    "Load balancers, target groups, listeners, rules and security groups are created by the controller with "
    "generated names, so they cannot be listed here; the ARN is fixed to this account and region, and changes to "
    "existing ones are limited to those tagged elbv2.k8s.aws/cluster where IAM can check the tag."
)
#: Why a statement (by Sid) has a wildcard in a resource; cdk_infra.nag refuses a wildcard without one.
WILDCARD_RESOURCE_REASONS: dict[str, str] = {
    "S3Objects": "Any object key in this one bucket: keys are the service's data (images, videos, checkpoints).",
    "S3MigrationTagging": "Any object key in this one bucket: a migration tags the originals it verified.",
    "MigrationSourceObjects": "Any object key in the buckets named as migration sources: the archive's keys.",
    "MigrationSourceDelete": "Any object key in the buckets named as migration sources: verified originals only.",
    "EcrToken": WILDCARD_ONLY_ACTIONS["ecr:GetAuthorizationToken"] + "; the action has no resource-level form.",
    "EndpointLogs": "Log streams of the endpoint's own log group, named by SageMaker per instance.",
    "Discovery": "Describe/Get calls of EC2 and ELB have no resource-level permissions.",
    "CertificateDiscovery": "acm:ListCertificates has no resource-level permissions.",
    "DescribeCertificates": "Certificates of this account and region, found by host name at run time.",
    "CreateSecurityGroupInVpc": _CONTROLLER_NAMES,
    "TagNewSecurityGroup": _CONTROLLER_NAMES,
    "RetagOwnedSecurityGroup": _CONTROLLER_NAMES,
    "ManageOwnedSecurityGroup": _CONTROLLER_NAMES,
    "CreateLoadBalancer": _CONTROLLER_NAMES,
    "ManageListenersAndRules": _CONTROLLER_NAMES,
    "RetagOwnedLoadBalancer": _CONTROLLER_NAMES,
    "TagListenersAndRules": _CONTROLLER_NAMES,
    "ManageOwnedLoadBalancer": _CONTROLLER_NAMES,
    "TagOnCreate": _CONTROLLER_NAMES,
    "RegisterTargets": _CONTROLLER_NAMES,
    "ModifyListenersAndRules": _CONTROLLER_NAMES,
}

S3_OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
# What upscaler/store/s3.py's tag() and tags() call: a migration's --on-verified tag (the default).
S3_TAGGING_ACTIONS = ["s3:GetObjectTagging", "s3:PutObjectTagging"]
# What upscaler/jobs/store.py calls: get_item, put_item (conditional), describe_table (the readiness ping).
DYNAMODB_JOB_ACTIONS = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DescribeTable"]
# What upscaler/jobs/queue.py's worker side calls: receive, delete, change visibility (heartbeat and release).
SQS_CONSUME_ACTIONS = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
CLUSTER_TAG = "elbv2.k8s.aws/cluster"


def _statement(sid: str, actions: Sequence[str], resources: Sequence[str], **conditions: object) -> iam.PolicyStatement:
    return iam.PolicyStatement(
        sid=sid,
        actions=list(actions),
        resources=list(resources),
        conditions=dict(conditions) or None,
    )


def sagemaker_endpoint_arns(stack: Stack, names: Sequence[str]) -> list[str]:
    """Endpoint ARNs carry the name in lower case, whatever case the endpoint was created with."""
    return [stack.format_arn(service="sagemaker", resource="endpoint", resource_name=name.lower()) for name in names]


def shared_statements(
    stack: Stack, *, bucket_arn: str, table_arn: str, endpoint_names: Sequence[str], kms_key_arn: str = ""
) -> list[iam.PolicyStatement]:
    """What the API and the worker both do: objects (get/head, put incl. multipart, delete) and listing of the one
    bucket (upscaler/store/s3.py), job records (upscaler/jobs/store.py), and InvokeEndpoint on the named endpoints."""
    statements = [
        _statement("S3Objects", S3_OBJECT_ACTIONS, [f"{bucket_arn}/*"]),
        _statement("S3ListBucket", ["s3:ListBucket"], [bucket_arn]),
        _statement("DynamoDbJobs", DYNAMODB_JOB_ACTIONS, [table_arn]),
    ]
    if kms_key_arn:
        statements.append(_statement("BucketKey", ["kms:Decrypt", "kms:GenerateDataKey"], [kms_key_arn]))
    if endpoint_names:
        arns = sagemaker_endpoint_arns(stack, endpoint_names)
        statements.append(_statement("SageMakerInvoke", ["sagemaker:InvokeEndpoint"], arns))
    return statements


def api_statements(queue_arn: str) -> list[iam.PolicyStatement]:
    """The API's own: it enqueues video jobs. (Its /ready probe heads the allowed buckets: no ListAllMyBuckets.)"""
    return [_statement("SqsSendJobs", ["sqs:SendMessage"], [queue_arn])]


def worker_statements(queue_arn: str, dead_letter_queue_arn: str) -> list[iam.PolicyStatement]:
    """The video worker's own: it consumes the queue (receive, delete, heartbeat and release by changing the
    visibility) and moves a job that can never succeed to the DLQ at once (``bury``)."""
    return [
        _statement("SqsConsumeJobs", SQS_CONSUME_ACTIONS, [queue_arn]),
        _statement("SqsDeadLetter", ["sqs:SendMessage"], [dead_letter_queue_arn]),
    ]


def migration_worker_statements(
    *, bucket_arn: str, source_bucket_arns: Sequence[str], delete_originals: bool
) -> list[iam.PolicyStatement]:
    """What a worker running archive-migration chunks needs beyond the shared grants (upscaler/migrate.py): tag
    the verified originals and kept copies in the media bucket (``--on-verified tag``, the default: get, then put
    the object's tags); in each further source bucket list, read and tag, and delete only when
    ``delete_originals`` (``--on-verified delete``; the media bucket's DeleteObject is shared: the service deletes
    its own objects). In place writes its source: that is the media bucket (a further bucket gets no PutObject)."""
    statements = [_statement("S3MigrationTagging", S3_TAGGING_ACTIONS, [f"{bucket_arn}/*"])]
    if source_bucket_arns:
        objects = [f"{arn}/*" for arn in source_bucket_arns]
        statements.append(_statement("MigrationSourceObjects", ["s3:GetObject", *S3_TAGGING_ACTIONS], objects))
        statements.append(_statement("MigrationSourceList", ["s3:ListBucket"], list(source_bucket_arns)))
        if delete_originals:
            statements.append(_statement("MigrationSourceDelete", ["s3:DeleteObject"], objects))
    return statements


def migration_api_statements(source_bucket_arns: Sequence[str]) -> list[iam.PolicyStatement]:
    """``POST /v1/migrations`` lists a source and its dry run reads a sample of it, in the API."""
    if not source_bucket_arns:
        return []
    objects = [f"{arn}/*" for arn in source_bucket_arns]
    return [
        _statement("MigrationSourceObjects", ["s3:GetObject"], objects),
        _statement("MigrationSourceList", ["s3:ListBucket"], list(source_bucket_arns)),
    ]


def keda_statements(queue_arn: str) -> list[iam.PolicyStatement]:
    """KEDA's aws-sqs-queue scaler reads the queue length and nothing else."""
    return [_statement("SqsQueueLength", ["sqs:GetQueueAttributes"], [queue_arn])]


def sagemaker_execution_statements(
    stack: Stack, *, repository_arn: str, endpoint_name: str, model_data_url: str = ""
) -> list[iam.PolicyStatement]:
    """What SageMaker needs to run our container: pull its image, write its logs, read the model artifact."""
    log_group = stack.format_arn(
        service="logs",
        resource="log-group",
        resource_name=f"/aws/sagemaker/Endpoints/{endpoint_name}",
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )
    statements = [
        _statement(
            "EcrPull",
            ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            [repository_arn],
        ),
        _statement("EcrToken", ["ecr:GetAuthorizationToken"], ["*"]),
        _statement(
            "EndpointLogs",
            ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            [log_group, f"{log_group}:log-stream:*"],
        ),
    ]
    if model_data_url:
        bucket_and_key = model_data_url.removeprefix("s3://")
        statements.append(
            _statement("ModelArtifact", ["s3:GetObject"], [f"arn:{stack.partition}:s3:::{bucket_and_key}"])
        )
    return statements


def load_balancer_controller_statements(
    stack: Stack, *, vpc_id: str, cluster_security_group_id: str
) -> list[iam.PolicyStatement]:
    """The AWS Load Balancer Controller's permissions, after its published ``iam_policy.json`` (v3.2.x), narrowed:

    - every ARN is in this account and region (the published policy uses ``*:*``);
    - security groups are created in our VPC only; ingress rules are changed on security groups the controller
      created and tagged, or on the cluster security group (where the managed node group's nodes are);
    - listeners, rules and target registration on load balancer resources of this account only;
    - no WAF, WAFv2, Shield, Cognito or IAM server certificate actions: the chart runs with those features off.
    """

    def arn(service: str, resource: str, name: str) -> str:
        return stack.format_arn(
            service=service, resource=resource, resource_name=name, arn_format=ArnFormat.SLASH_RESOURCE_NAME
        )

    def elb(resource: str, name: str) -> str:
        return arn("elasticloadbalancing", resource, name)

    security_groups = arn("ec2", "security-group", "*")
    load_balancers = [elb("loadbalancer", "net/*/*"), elb("loadbalancer", "app/*/*")]
    target_groups = [elb("targetgroup", "*/*")]
    listeners = [elb("listener", "net/*/*/*"), elb("listener", "app/*/*/*")]
    rules = [elb("listener-rule", "net/*/*/*"), elb("listener-rule", "app/*/*/*")]
    discovery = [a for a in WILDCARD_ONLY_ACTIONS if a.startswith(("ec2:", "elasticloadbalancing:"))]
    owned = {"Null": {f"aws:ResourceTag/{CLUSTER_TAG}": "false"}}
    tagged_request = {"Null": {f"aws:RequestTag/{CLUSTER_TAG}": "false"}}
    retag = {"Null": {f"aws:RequestTag/{CLUSTER_TAG}": "true", f"aws:ResourceTag/{CLUSTER_TAG}": "false"}}
    return [
        _statement(
            "CreateElbServiceLinkedRole",
            ["iam:CreateServiceLinkedRole"],
            [
                stack.format_arn(
                    service="iam",
                    region="",
                    resource="role",
                    resource_name="aws-service-role/elasticloadbalancing.amazonaws.com/"
                    "AWSServiceRoleForElasticLoadBalancing",
                    arn_format=ArnFormat.SLASH_RESOURCE_NAME,
                )
            ],
            StringEquals={"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"},
        ),
        _statement("Discovery", discovery, ["*"]),
        _statement("CertificateDiscovery", ["acm:ListCertificates"], ["*"]),
        _statement(
            "DescribeCertificates",
            ["acm:DescribeCertificate"],
            [arn("acm", "certificate", "*")],
        ),
        _statement(
            "CreateSecurityGroupInVpc",
            ["ec2:CreateSecurityGroup"],
            [arn("ec2", "vpc", vpc_id), security_groups],
        ),
        _statement(
            "TagNewSecurityGroup",
            ["ec2:CreateTags"],
            [security_groups],
            StringEquals={"ec2:CreateAction": "CreateSecurityGroup"},
            **tagged_request,
        ),
        _statement("RetagOwnedSecurityGroup", ["ec2:CreateTags", "ec2:DeleteTags"], [security_groups], **retag),
        _statement(
            "ManageOwnedSecurityGroup",
            ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress", "ec2:DeleteSecurityGroup"],
            [security_groups],
            **owned,
        ),
        _statement(
            "NodeSecurityGroupIngress",
            ["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"],
            [arn("ec2", "security-group", cluster_security_group_id)],
        ),
        _statement(
            "CreateLoadBalancer",
            ["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"],
            [*load_balancers, *target_groups],
            **tagged_request,
        ),
        _statement(
            "ManageListenersAndRules",
            [
                "elasticloadbalancing:CreateListener",
                "elasticloadbalancing:DeleteListener",
                "elasticloadbalancing:CreateRule",
                "elasticloadbalancing:DeleteRule",
            ],
            [*load_balancers, *listeners, *rules],
        ),
        _statement(
            "RetagOwnedLoadBalancer",
            ["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
            [*target_groups, *load_balancers],
            **retag,
        ),
        _statement(
            "TagListenersAndRules",
            ["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
            [*listeners, *rules],
        ),
        _statement(
            "ManageOwnedLoadBalancer",
            [
                "elasticloadbalancing:ModifyLoadBalancerAttributes",
                "elasticloadbalancing:SetIpAddressType",
                "elasticloadbalancing:SetSecurityGroups",
                "elasticloadbalancing:SetSubnets",
                "elasticloadbalancing:DeleteLoadBalancer",
                "elasticloadbalancing:ModifyTargetGroup",
                "elasticloadbalancing:ModifyTargetGroupAttributes",
                "elasticloadbalancing:DeleteTargetGroup",
                "elasticloadbalancing:ModifyListenerAttributes",
                "elasticloadbalancing:ModifyCapacityReservation",
                "elasticloadbalancing:ModifyIpPools",
            ],
            [*load_balancers, *target_groups, *listeners],
            **owned,
        ),
        _statement(
            "TagOnCreate",
            ["elasticloadbalancing:AddTags"],
            [*target_groups, *load_balancers],
            StringEquals={"elasticloadbalancing:CreateAction": ["CreateTargetGroup", "CreateLoadBalancer"]},
            **tagged_request,
        ),
        _statement(
            "RegisterTargets",
            ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"],
            target_groups,
        ),
        _statement(
            "ModifyListenersAndRules",
            [
                "elasticloadbalancing:ModifyListener",
                "elasticloadbalancing:AddListenerCertificates",
                "elasticloadbalancing:RemoveListenerCertificates",
                "elasticloadbalancing:ModifyRule",
                "elasticloadbalancing:SetRulePriorities",
            ],
            [*listeners, *rules],
        ),
    ]
