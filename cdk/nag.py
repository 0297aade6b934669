"""cdk-nag acknowledgements: each on the narrowest construct, each with the reason it is safe here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_sqs as sqs
from constructs import IConstruct

if TYPE_CHECKING:
    from cdk.functions import CdpFunction


def acknowledge(scope: IConstruct, finding: str, reason: str) -> None:
    """``finding`` as cdk-nag names it after ``AwsSolutions-``, e.g. ``SQS3`` or ``IAM5[Resource::*]``."""
    Validations.of(scope).acknowledge(Acknowledgment(id=f"AwsSolutions::AwsSolutions-{finding}", reason=reason))


def acknowledge_function(function: CdpFunction) -> None:
    role = function.role
    logs_id = Stack.of(function).get_logical_id(function.log_group.node.default_child)  # type: ignore[arg-type]
    acknowledge(role, f"IAM5[Resource::<{logs_id}.Arn>:*]",
                "Log streams inside this function's own log group; stream names are chosen by Lambda.")
    acknowledge(role, "IAM5[Resource::*]",
                "X-Ray PutTraceSegments/PutTelemetryRecords and the stream-listing read actions of event "
                "source mappings do not support resource-level permissions.")
    for action in ("kms:ReEncrypt*", "kms:GenerateDataKey*"):
        acknowledge(role, f"IAM5[Action::{action}]",
                    "Added by CDK's grant on the stack's own data key (the resource is that key's ARN): "
                    "needed to write to KMS-encrypted queues, buckets and tables.")


def acknowledge_failure_queue(queue: sqs.IQueue) -> None:
    acknowledge(queue, "SQS3", "This queue is itself the on-failure destination (dead-letter store) of an "
                               "event source mapping; `cdp redrive failures` drains it.")
