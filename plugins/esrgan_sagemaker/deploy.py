"""Deploy the model server as a SageMaker endpoint with boto3: model, endpoint configuration, endpoint.

    python -m plugins.esrgan_sagemaker.deploy --name upscaler-span \\
        --image-uri 123456789012.dkr.ecr.us-east-1.amazonaws.com/upscaler-model:latest \\
        --role-arn arn:aws:iam::123456789012:role/upscaler-sagemaker \\
        [--instance-type ml.g4dn.xlarge] [--instance-count 1] [--variant AllTraffic] \\
        [--model-data s3://bucket/model.tar.gz] [--async-output s3://bucket/async/] [--wait]

Real-time by default. ``--async-output`` makes an Asynchronous Inference endpoint (inputs up to 1 GB from S3,
results written under that prefix) for images too large for the 6 MiB real-time payload. Settings for the
container go in as environment variables (``--env UPSCALER_DEFAULT_MODEL=span``). Re-running with the same name
creates a new endpoint configuration and updates the endpoint in place.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def deploy(
    client: Any,
    *,
    name: str,
    image_uri: str,
    role_arn: str,
    instance_type: str = "ml.g4dn.xlarge",
    instance_count: int = 1,
    variant: str = "AllTraffic",
    model_data: str | None = None,
    async_output: str | None = None,
    environment: dict[str, str] | None = None,
) -> dict[str, str]:
    """Create (or update) the model, a new endpoint configuration and the endpoint; returns their names."""
    stamp = time.strftime("%Y%m%d%H%M%S")
    model_name, config_name = f"{name}-{stamp}", f"{name}-{stamp}"
    container: dict[str, Any] = {
        "Image": image_uri,
        "Environment": {"SAGEMAKER_BIND_TO_PORT": "8080", **(environment or {})},
    }
    if model_data:
        container["ModelDataUrl"] = model_data
    client.create_model(ModelName=model_name, PrimaryContainer=container, ExecutionRoleArn=role_arn)
    config: dict[str, Any] = {
        "EndpointConfigName": config_name,
        "ProductionVariants": [
            {
                "VariantName": variant,
                "ModelName": model_name,
                "InitialInstanceCount": instance_count,
                "InstanceType": instance_type,
                "InitialVariantWeight": 1.0,
            }
        ],
    }
    if async_output:
        config["AsyncInferenceConfig"] = {
            "OutputConfig": {"S3OutputPath": async_output},
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
        }
    client.create_endpoint_config(**config)
    try:
        client.describe_endpoint(EndpointName=name)
        exists = True
    except client.exceptions.ClientError:
        exists = False
    if exists:
        client.update_endpoint(EndpointName=name, EndpointConfigName=config_name)
    else:
        client.create_endpoint(EndpointName=name, EndpointConfigName=config_name)
    return {
        "model": model_name,
        "endpoint_config": config_name,
        "endpoint": name,
        "action": "updated" if exists else "created",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="endpoint name (also the prefix of model and config names)")
    parser.add_argument("--image-uri", required=True, help="ECR image of plugins/esrgan_sagemaker/Dockerfile")
    parser.add_argument("--role-arn", required=True, help="execution role SageMaker assumes (ECR pull, S3 read)")
    parser.add_argument(
        "--instance-type",
        default="ml.g4dn.xlarge",
        help="ml.g4dn.xlarge (T4, default), ml.g5.xlarge (A10G) or ml.g6.xlarge (L4) for the GPU image "
        "(Dockerfile.gpu: torch on CUDA); ml.c5.2xlarge or ml.c7i.2xlarge for the CPU image (ncnn)",
    )
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--variant", default="AllTraffic", help="production variant name")
    parser.add_argument("--model-data", help="s3:// model.tar.gz with <model>.param/.bin files (optional)")
    parser.add_argument("--async-output", help="s3:// prefix: make an Asynchronous Inference endpoint")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="container environment")
    parser.add_argument("--region", help="AWS region (default: the AWS config chain)")
    parser.add_argument("--endpoint-url", help="SageMaker API URL override (tests)")
    parser.add_argument("--wait", action="store_true", help="wait until the endpoint is InService")
    args = parser.parse_args(argv)
    import boto3

    env = dict(item.split("=", 1) for item in args.env if "=" in item)
    client = boto3.client("sagemaker", region_name=args.region, endpoint_url=args.endpoint_url)
    result = deploy(
        client,
        name=args.name,
        image_uri=args.image_uri,
        role_arn=args.role_arn,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        variant=args.variant,
        model_data=args.model_data,
        async_output=args.async_output,
        environment=env,
    )
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    if args.wait:
        client.get_waiter("endpoint_in_service").wait(EndpointName=args.name)
        print(f"{args.name} InService")
    return 0


if __name__ == "__main__":
    sys.exit(main())
