"""Lambda functions: shared layers, and one least-privilege role and log group per function."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = lambda_.Runtime.PYTHON_3_14  # the newest Python this CDK version knows


class Layers(Construct):
    """The core package, the third-party packages (built with pip --platform, no Docker) and the catalogue;
    ``placements`` for the api function; and ``models``, numpy and scikit-learn for the jobs function alone. Each
    third-party layer is empty until ``make layers`` builds it."""

    def __init__(self, scope: Construct, construct_id: str, *, architecture: lambda_.Architecture) -> None:
        super().__init__(scope, construct_id)
        self.core = lambda_.LayerVersion(
            self, "Core",
            code=lambda_.Code.from_asset(str(ROOT / "layers" / "cdp"), exclude=["**/__pycache__", "**/*.egg-info"]),
            compatible_runtimes=[RUNTIME], compatible_architectures=[architecture],
            description="cdp core package")
        self.deps = lambda_.LayerVersion(
            self, "Deps", code=lambda_.Code.from_asset(str(ROOT / "layers" / "deps"), exclude=["requirements.txt"]),
            compatible_runtimes=[RUNTIME], compatible_architectures=[architecture],
            description="Powertools and PyYAML (make layers)")
        self.catalogue = lambda_.LayerVersion(
            self, "Catalogue", code=lambda_.Code.from_asset(str(ROOT / "segments"), exclude=["README.md", "stories"]),
            compatible_runtimes=[RUNTIME], compatible_architectures=[architecture],
            description="segment definitions, unpacked at /opt")
        # The placements at /opt/placements (their own folder: the catalogue's definitions are read from /opt).
        self.placements = lambda_.LayerVersion(
            self, "Placements",
            code=lambda_.Code.from_asset(str(ROOT), exclude=["*", ".*", "!placements", "!placements/*.yaml"]),
            compatible_runtimes=[RUNTIME], compatible_architectures=[architecture],
            description="placement definitions, unpacked at /opt/placements (the api function's)")
        self.models = lambda_.LayerVersion(
            self, "Models", code=lambda_.Code.from_asset(str(ROOT / "layers" / "models"), exclude=["requirements.txt"]),
            compatible_runtimes=[RUNTIME], compatible_architectures=[architecture],
            description="numpy and scikit-learn: the computed traits' training (make layers)")

    @property
    def all(self) -> list[lambda_.ILayerVersion]:
        return [self.core, self.deps, self.catalogue]


class CdpFunction(Construct):
    """A function with its own role (logs and tracing only, until granted more) and its own log group."""

    def __init__(self, scope: Construct, construct_id: str, *, folder: str, layers: Layers, key: kms.IKey,
                 architecture: lambda_.Architecture, memory_mb: int, timeout: Duration,
                 environment: dict[str, str], reserved_concurrency: int | None = None,
                 extra_layers: Sequence[lambda_.ILayerVersion] = ()) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_MONTH,
                                       removal_policy=RemovalPolicy.DESTROY)
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description=f"cdp {folder} function")
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[self.log_group.log_group_arn, f"{self.log_group.log_group_arn}:*"]))
        self.function = lambda_.Function(
            self, "Function",
            runtime=RUNTIME,
            architecture=architecture,
            handler="handler.handler",
            code=lambda_.Code.from_asset(str(ROOT / "functions" / folder), exclude=["**/__pycache__"]),
            layers=[*layers.all, *extra_layers],
            memory_size=memory_mb,
            timeout=timeout,
            reserved_concurrent_executions=reserved_concurrency,
            role=self.role,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
            environment_encryption=key,
            environment={
                "CATALOGUE_PATH": "/opt",
                "POWERTOOLS_METRICS_NAMESPACE": "cdp",
                "POWERTOOLS_SERVICE_NAME": f"cdp-{folder}",
                "POWERTOOLS_LOG_LEVEL": "INFO",
                **environment,
            },
        )
        key.grant_decrypt(self.role)


def region_of(scope: Construct) -> str:
    return Stack.of(scope).region
