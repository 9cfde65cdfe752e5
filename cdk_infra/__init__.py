"""The AWS CDK app that deploys media-upscaler on EKS.

- :mod:`cdk_infra.settings`: every account-specific value, read from CDK context (``cdk.json`` or ``-c key=value``)
  and the ``CDK_DEFAULT_*`` variables, validated before any construct is made.
- :mod:`cdk_infra.policies`: the IAM statements of the application roles and of the AWS Load Balancer Controller,
  written here (nothing is fetched at synth).
- :mod:`cdk_infra.nag`: the cdk-nag acknowledgments, one finding at a time, each with its reason.
- :mod:`cdk_infra.stack`: the stack (VPC, EKS, ECR, SQS, DynamoDB, S3, IRSA roles, Helm charts, optional SageMaker).
- :mod:`cdk_infra.app`: the entry point ``cdk`` runs (``cdk.json``), with the cdk-nag AwsSolutions checks.
"""
