"""The media-upscaler stack: network, EKS, images, queue, job table, bucket, IRSA roles, cluster add-ons, SageMaker.

Everything account-specific comes from :class:`~cdk_infra.settings.DeploySettings`. Nothing is fetched at synth: the
kubectl/helm layer is a bundled asset (``aws-cdk.lambda-layer-kubectl-v35``), IAM policies are written in
:mod:`cdk_infra.policies`, and the two Helm charts are pulled by the cluster's kubectl handler at deploy time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_cdk import CfnJson, CfnOutput, Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_sqs as sqs
from aws_cdk.lambda_layer_kubectl_v35 import KubectlV35Layer
from constructs import Construct

from cdk_infra import policies
from cdk_infra.nag import acknowledge, acknowledge_cluster_internals, acknowledge_policy_wildcards
from cdk_infra.settings import (
    API_SERVICE_ACCOUNT,
    JOBS_TTL_ATTRIBUTE,
    KEDA_NAMESPACE,
    KEDA_SERVICE_ACCOUNT,
    LB_CONTROLLER_NAMESPACE,
    LB_CONTROLLER_SERVICE_ACCOUNT,
    NAMESPACE,
    WORKER_SERVICE_ACCOUNT,
    DeploySettings,
    SettingsError,
)

ALB_CONTROLLER_CHART_REPOSITORY = "https://aws.github.io/eks-charts"
CERT_MANAGER_CHART_REPOSITORY = "https://charts.jetstack.io"
KEDA_CHART_REPOSITORY = "https://kedacore.github.io/charts"
CLUSTER_LOG_TYPES = [
    eks.ClusterLoggingTypes.API,
    eks.ClusterLoggingTypes.AUDIT,
    eks.ClusterLoggingTypes.AUTHENTICATOR,
    eks.ClusterLoggingTypes.CONTROLLER_MANAGER,
    eks.ClusterLoggingTypes.SCHEDULER,
]
NODE_AMI = {
    "x86_64": (eks.NodegroupAmiType.AL2023_X86_64_STANDARD, ec2.InstanceArchitecture.X86_64),
    "arm64": (eks.NodegroupAmiType.AL2023_ARM_64_STANDARD, ec2.InstanceArchitecture.ARM_64),
}


class MediaUpscalerStack(Stack):
    """One stack; its outputs are what manifests/ and the image pushes need (see :meth:`_outputs`)."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploySettings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        # The cluster's IRSA provider is a native AWS::IAM::OIDCProvider whatever the app's cdk.json says.
        self.node.set_context("@aws-cdk/aws-eks:useNativeOidcProvider", True)
        self.settings = settings
        self.vpc = self._network()
        self.bucket = self._bucket()
        self.queue, self.dead_letter_queue = self._queues()
        self.table = self._table()
        self.api_repository = self._repository("ApiRepository", "api")
        self.worker_repository = self._repository("VideoWorkerRepository", "video-worker")
        self.model_repository = self._repository("ModelServerRepository", "model-server")
        self.cluster, self.nodegroup = self._cluster()
        self.api_role = self._irsa_role(
            "ApiRole", NAMESPACE, API_SERVICE_ACCOUNT, "media-upscaler API pods", self._api_statements()
        )
        self.worker_role = self._irsa_role(
            "WorkerRole",
            NAMESPACE,
            WORKER_SERVICE_ACCOUNT,
            "media-upscaler video worker pods",
            self._worker_statements(),
        )
        self.keda_role = self._irsa_role(
            "KedaOperatorRole",
            KEDA_NAMESPACE,
            KEDA_SERVICE_ACCOUNT,
            "KEDA operator: reads the job queue length to scale the video workers",
            policies.keda_statements(self.queue.queue_arn),
        )
        self.lb_controller_role = self._irsa_role(
            "LoadBalancerControllerRole",
            LB_CONTROLLER_NAMESPACE,
            LB_CONTROLLER_SERVICE_ACCOUNT,
            "AWS Load Balancer Controller",
            policies.load_balancer_controller_statements(
                self, vpc_id=self.vpc.vpc_id, cluster_security_group_id=self.cluster.cluster_security_group_id
            ),
        )
        self._cluster_addons()
        self.endpoint: sagemaker.CfnEndpoint | None = None
        if settings.create_sagemaker_endpoint:
            self.endpoint = self._sagemaker_endpoint()
        acknowledge_cluster_internals(self.cluster)
        self._outputs()

    # --- availability zones: two, resolved by CloudFormation (no context lookup, no AWS call at synth) ----------

    @property
    def availability_zones(self) -> list[str]:
        return [Fn.select(0, Fn.get_azs()), Fn.select(1, Fn.get_azs())]

    # --- network --------------------------------------------------------------------------------------------------

    def _network(self) -> ec2.Vpc:
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=self.settings.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24, map_public_ip_on_launch=False
                ),
                ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=19),
            ],
            # S3 and DynamoDB traffic (video in and out) stays off the NAT gateways; gateway endpoints are free.
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDb": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.DYNAMODB),
            },
        )
        flow_logs = logs.LogGroup(
            self, "VpcFlowLogs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=RemovalPolicy.DESTROY
        )
        vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs))
        return vpc

    # --- storage, queue, jobs table, images ---------------------------------------------------------------------

    def _bucket(self) -> s3.IBucket:
        if self.settings.existing_bucket_name:
            return s3.Bucket.from_bucket_name(self, "MediaBucket", self.settings.existing_bucket_name)
        # Both buckets: no public access, SSE-S3, TLS 1.2+ only, no ACLs, kept when the stack is deleted.
        secure: dict[str, Any] = {
            "block_public_access": s3.BlockPublicAccess.BLOCK_ALL,
            "encryption": s3.BucketEncryption.S3_MANAGED,
            "enforce_ssl": True,
            "minimum_tls_version": 1.2,
            "object_ownership": s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            "removal_policy": RemovalPolicy.RETAIN,
        }
        access_logs = s3.Bucket(
            self,
            "AccessLogBucket",
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(365))],
            **secure,
        )
        return s3.Bucket(
            self,
            "MediaBucket",
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="media-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=Duration.days(7)
                ),
                # Segment checkpoints of video jobs (UPSCALER_VIDEO_CHECKPOINT_PREFIX); a finished job removes its own.
                s3.LifecycleRule(id="expire-stale-checkpoints", prefix="_checkpoints/", expiration=Duration.days(14)),
            ],
            **secure,
        )

    def _queues(self) -> tuple[sqs.Queue, sqs.Queue]:
        dead_letters = sqs.Queue(
            self,
            "DeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        queue = sqs.Queue(
            self,
            "JobQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(self.settings.queue_visibility_seconds),
            receive_message_wait_time=Duration.seconds(20),
            # Shorter than the DLQ's: a moved message keeps its first enqueue time.
            retention_period=Duration.days(7),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=dead_letters, max_receive_count=self.settings.max_receive_count
            ),
        )
        return queue, dead_letters

    def _table(self) -> dynamodb.Table:
        return dynamodb.Table(
            self,
            "JobsTable",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=JOBS_TTL_ATTRIBUTE,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _repository(self, construct_id: str, name: str) -> ecr.Repository:
        return ecr.Repository(
            self,
            construct_id,
            repository_name=f"{self.settings.name_prefix}/{name}",
            image_scan_on_push=True,
            image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            encryption=ecr.RepositoryEncryption.AES_256,
            lifecycle_rules=[ecr.LifecycleRule(description="keep the last 50 images", max_image_count=50)],
            removal_policy=RemovalPolicy.DESTROY,
            empty_on_delete=True,
        )

    # --- EKS --------------------------------------------------------------------------------------------------

    def _cluster(self) -> tuple[eks.Cluster, eks.Nodegroup]:
        s = self.settings
        ami_type, architecture = NODE_AMI[s.node_arch]
        instance_types = [ec2.InstanceType(name) for name in s.resolved_instance_types]
        for instance_type in instance_types:
            if instance_type.architecture != architecture:
                raise SettingsError(
                    f"context 'instanceTypes': {instance_type} is not {s.node_arch} (nodeArch); the nodes must match "
                    "the architecture the images were built for"
                )
        if s.allowed_cidrs:
            endpoint_access = eks.EndpointAccess.PUBLIC_AND_PRIVATE.only_from(*s.allowed_cidrs)
        else:
            endpoint_access = eks.EndpointAccess.PRIVATE
        secrets_key = kms.Key(
            self,
            "ClusterSecretsKey",
            description="Envelope encryption of the EKS cluster's Kubernetes secrets",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
            pending_window=Duration.days(30),
        )
        cluster = eks.Cluster(
            self,
            "Cluster",
            version=eks.KubernetesVersion.of(s.kubernetes_version),
            vpc=self.vpc,
            vpc_subnets=[ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)],
            default_capacity_type=eks.DefaultCapacityType.NODEGROUP,
            default_capacity=0,
            endpoint_access=endpoint_access,
            cluster_logging=CLUSTER_LOG_TYPES,
            secrets_encryption_key=secrets_key,
            kubectl_provider_options=eks.KubectlProviderOptions(kubectl_layer=KubectlV35Layer(self, "KubectlLayer")),
        )
        nodegroup = cluster.add_nodegroup_capacity(
            "Nodes",
            ami_type=ami_type,
            instance_types=instance_types,
            capacity_type=eks.CapacityType.ON_DEMAND,
            min_size=s.node_min_size,
            desired_size=s.node_desired_size,
            max_size=s.node_max_size,
            disk_size=s.node_disk_size,
            subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        )
        admin = eks.AccessPolicy.from_access_policy_name(
            "AmazonEKSClusterAdminPolicy", access_scope_type=eks.AccessScopeType.CLUSTER
        )
        for index, principal in enumerate(s.admin_principal_arns):
            cluster.grant_access(f"ClusterAdmin{index}", principal, [admin])
        return cluster, nodegroup

    def _irsa_role(
        self,
        construct_id: str,
        namespace: str,
        service_account: str,
        description: str,
        statements: Sequence[iam.PolicyStatement],
    ) -> iam.Role:
        """A role only ``system:serviceaccount:<namespace>:<service_account>`` of this cluster can assume."""
        provider = self.cluster.open_id_connect_provider
        issuer = provider.open_id_connect_provider_issuer
        conditions = CfnJson(
            self,
            f"{construct_id}TrustConditions",
            value={
                f"{issuer}:aud": "sts.amazonaws.com",
                f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
            },
        )
        role = iam.Role(
            self,
            construct_id,
            description=f"IRSA: {description} ({namespace}/{service_account})",
            assumed_by=iam.OpenIdConnectPrincipal(provider, {"StringEquals": conditions}),
        )
        policy = iam.Policy(self, f"{construct_id}Policy", roles=[role], statements=list(statements))
        acknowledge_policy_wildcards(policy, policies.WILDCARD_RESOURCE_REASONS)
        return role

    def _shared_statements(self) -> list[iam.PolicyStatement]:
        return policies.shared_statements(
            self,
            bucket_arn=self.bucket.bucket_arn,
            table_arn=self.table.table_arn,
            endpoint_names=self.settings.invoked_endpoints,
            kms_key_arn=self.settings.existing_bucket_kms_key_arn if self.settings.existing_bucket_name else "",
        )

    def _source_bucket_arns(self) -> list[str]:
        """Further buckets archive migrations read (the media bucket is granted already)."""
        return [self.format_arn(service="s3", region="", account="", resource=name)
                for name in self.settings.migration_source_buckets]  # fmt: skip

    def _api_statements(self) -> list[iam.PolicyStatement]:
        sources = policies.migration_api_statements(self._source_bucket_arns())
        return [*self._shared_statements(), *policies.api_statements(self.queue.queue_arn), *sources]

    def _worker_statements(self) -> list[iam.PolicyStatement]:
        queues = policies.worker_statements(self.queue.queue_arn, self.dead_letter_queue.queue_arn)
        migration = policies.migration_worker_statements(
            bucket_arn=self.bucket.bucket_arn,
            source_bucket_arns=self._source_bucket_arns(),
            delete_originals=self.settings.migration_delete_originals,
        )
        return [*self._shared_statements(), *queues, *migration]

    def _cluster_addons(self) -> None:
        """cert-manager, then the AWS Load Balancer Controller (its webhook would otherwise intercept the Services
        cert-manager creates before it can answer), then KEDA, whose operator reads the job queue's depth with its
        own IRSA role to scale the video workers. The charts are pulled by the kubectl handler at deploy time."""
        s = self.settings
        cert_manager = self._chart(
            "CertManager",
            "cert-manager",
            CERT_MANAGER_CHART_REPOSITORY,
            s.cert_manager_chart_version,
            "cert-manager",
            {"crds": {"enabled": True}},
            after=self.nodegroup,
        )
        controller = self._chart(
            "AwsLoadBalancerController",
            "aws-load-balancer-controller",
            ALB_CONTROLLER_CHART_REPOSITORY,
            s.alb_controller_chart_version,
            LB_CONTROLLER_NAMESPACE,
            {
                "clusterName": self.cluster.cluster_name,
                # Given, so the controller never asks the instance metadata service.
                "region": self.region,
                "vpcId": self.vpc.vpc_id,
                "serviceAccount": {
                    "create": True,
                    "name": LB_CONTROLLER_SERVICE_ACCOUNT,
                    "annotations": {"eks.amazonaws.com/role-arn": self.lb_controller_role.role_arn},
                },
                # Features whose permissions the controller's role does not have.
                "enableShield": False,
                "enableWaf": False,
                "enableWafv2": False,
            },
            after=cert_manager,
        )
        self._chart(
            "Keda",
            "keda",
            KEDA_CHART_REPOSITORY,
            s.keda_chart_version,
            KEDA_NAMESPACE,
            {
                "serviceAccount": {"operator": {"name": KEDA_SERVICE_ACCOUNT}},
                "podIdentity": {"aws": {"irsa": {"enabled": True, "roleArn": self.keda_role.role_arn}}},
            },
            after=controller,  # its webhook Service too must wait for the controller's webhook
        )

    def _chart(
        self,
        construct_id: str,
        chart: str,
        repository: str,
        version: str,
        namespace: str,
        values: dict,
        *,
        after: Construct,
    ) -> Construct:
        """One Helm release named after its chart, installed (and waited for) once ``after`` is in place."""
        release = self.cluster.add_helm_chart(
            construct_id,
            chart=chart,
            repository=repository,
            version=version,
            release=chart,
            namespace=namespace,
            create_namespace=True,
            wait=True,
            timeout=Duration.minutes(15),
            values=values,
        )
        release.node.add_dependency(self.nodegroup, after)
        return release

    # --- SageMaker (optional) -----------------------------------------------------------------------------------

    def _sagemaker_endpoint(self) -> sagemaker.CfnEndpoint:
        s = self.settings
        role = iam.Role(
            self,
            "SageMakerExecutionRole",
            description="SageMaker runs the media-upscaler model server with this role",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
        )
        policy = iam.Policy(
            self,
            "SageMakerExecutionPolicy",
            roles=[role],
            statements=policies.sagemaker_execution_statements(
                self,
                repository_arn=self.model_repository.repository_arn,
                endpoint_name=s.sagemaker_endpoint_name,
                model_data_url=s.model_data_url,
            ),
        )
        acknowledge_policy_wildcards(policy, policies.WILDCARD_RESOURCE_REASONS)
        container = sagemaker.CfnModel.ContainerDefinitionProperty(
            image=self.model_repository.repository_uri_for_tag(s.model_image_tag),
            model_data_url=s.model_data_url or None,
        )
        model = sagemaker.CfnModel(
            self,
            "UpscalerModel",
            execution_role_arn=role.role_arn,
            primary_container=container,
            # The server needs no network: weights are in the image (or the model artifact SageMaker unpacks).
            enable_network_isolation=True,
        )
        model.node.add_dependency(policy)
        acknowledge(
            model,
            "SM1",
            "Network isolation is on: the container has no network access at all, so a VPC would add nothing.",
        )
        config = sagemaker.CfnEndpointConfig(
            self,
            "UpscalerEndpointConfig",
            production_variants=[
                sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name="AllTraffic",
                    model_name=model.attr_model_name,
                    initial_instance_count=s.sagemaker_instance_count,
                    instance_type=s.sagemaker_instance_type,
                    initial_variant_weight=1.0,
                )
            ],
        )
        acknowledge(
            config,
            "SM2",
            "SageMaker refuses a volume KMS key for instance types with local NVMe storage (ml.g4dn, ml.g5: the "
            "GPU types this model runs on); that storage is encrypted by the hardware, and the endpoint holds no "
            "data at rest beyond the public model weights.",
        )
        return sagemaker.CfnEndpoint(
            self,
            "UpscalerEndpoint",
            endpoint_name=s.sagemaker_endpoint_name,
            endpoint_config_name=config.attr_endpoint_config_name,
        )

    # --- outputs: what manifests/ and the README's deployment steps read -------------------------------------------

    def _outputs(self) -> None:
        s = self.settings
        outputs: dict[str, tuple[str, str]] = {
            "Region": (self.region, "AWS region of the stack (AWS_REGION of every pod)"),
            "ClusterName": (self.cluster.cluster_name, "EKS cluster name"),
            "KubeconfigCommand": (
                f"aws eks update-kubeconfig --name {self.cluster.cluster_name} --region {self.region}",
                "Command that points kubectl at the cluster",
            ),
            "KubernetesNamespace": (NAMESPACE, "Namespace the IRSA roles trust"),
            "ApiServiceAccountName": (API_SERVICE_ACCOUNT, "Service account of the API pods"),
            "WorkerServiceAccountName": (WORKER_SERVICE_ACCOUNT, "Service account of the video worker pods"),
            "ApiRoleArn": (self.api_role.role_arn, "eks.amazonaws.com/role-arn of the API service account"),
            "WorkerRoleArn": (self.worker_role.role_arn, "eks.amazonaws.com/role-arn of the worker service account"),
            "KedaOperatorRoleArn": (self.keda_role.role_arn, "eks.amazonaws.com/role-arn of keda/keda-operator"),
            "BucketName": (self.bucket.bucket_name, "Media bucket (UPSCALER_DEFAULT_BUCKET, UPSCALER_ALLOWED_BUCKETS)"),
            "JobQueueUrl": (self.queue.queue_url, "UPSCALER_JOB_QUEUE"),
            "DeadLetterQueueUrl": (self.dead_letter_queue.queue_url, "UPSCALER_JOB_DEAD_LETTER_QUEUE"),
            "JobsTableName": (self.table.table_name, "UPSCALER_JOB_STORE=dynamodb:<this>"),
            "JobsTableTtlAttribute": (JOBS_TTL_ATTRIBUTE, "Jobs table TTL attribute (epoch seconds)"),
            "MaxReceiveCount": (str(s.max_receive_count), "Queue redrive count (UPSCALER_VIDEO_MAX_RECEIVES)"),
            "ApiRepositoryUri": (self.api_repository.repository_uri, "ECR repository of the API image"),
            "VideoWorkerRepositoryUri": (self.worker_repository.repository_uri, "ECR repository of the worker image"),
            "ModelServerRepositoryUri": (self.model_repository.repository_uri, "ECR repository of the model server"),
            "NodeArchitecture": (s.node_arch, "Architecture of the nodes: build the images for it"),
            "AllowedCidrs": (",".join(s.allowed_cidrs), "loadBalancerSourceRanges of the API Service"),
            "SageMakerEndpointNames": (
                ",".join(s.invoked_endpoints),
                "Endpoints the roles may invoke (UPSCALER_UPSCALER=sagemaker:<one>, UPSCALER_ALLOWED_ENDPOINTS)",
            ),
        }
        for name, (value, description) in outputs.items():
            if value:  # CloudFormation refuses an empty output (no CIDRs, no endpoints)
                CfnOutput(self, name, value=value, description=description)
