"""Changes: the bus (with its archive), and the function that turns the profile table's stream into events."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from constructs import Construct

from cdk.functions import CdpFunction, Layers
from cdk.ingest import encrypted_queue
from cdk.nag import acknowledge_failure_queue, acknowledge_function
from cdk.settings import Settings
from cdk.storage import Storage


def bus_name(stage: str) -> str:
    return f"cdp-{stage}"


class Changes(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: Storage,
                 layers: Layers, key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.bus = events.EventBus(self, "Bus", event_bus_name=bus_name(settings.stage))
        self.archive = self.bus.archive("Archive", archive_name=f"cdp-{settings.stage}-segments",
                                        description="Every segment change (entered, exited, consent), for replay",
                                        event_pattern=events.EventPattern(source=["cdp.segments"]),
                                        # The events carry hashed identifiers and cannot be deleted one by one:
                                        # the archive keeps them only as long as retention.archive_days says.
                                        retention=Duration.days(settings.retention.archive_days))
        self.failures = encrypted_queue(self, "Failures", key)
        self.function = CdpFunction(
            self, "Changes", folder="changes", layers=layers, key=key, architecture=settings.architecture,
            memory_mb=settings.memory_mb, timeout=Duration.seconds(60),
            environment={"MEMBERS_TABLE": storage.members.table_name, "EVENT_BUS_NAME": self.bus.event_bus_name,
                         "MEMBER_SHARDS": str(settings.member_shards),
                         "CDP_PUBLISHED_SEGMENTS": settings.published_segments})
        role = self.function.role
        # Conditional membership puts and the size counters' ADD; the function never reads the index.
        storage.members.grant(role, "dynamodb:PutItem", "dynamodb:UpdateItem")
        role.add_to_policy(iam.PolicyStatement(actions=["events:PutEvents"], resources=[self.bus.event_bus_arn]))
        self.function.function.add_event_source(sources.DynamoEventSource(
            storage.profiles,
            starting_position=lambda_.StartingPosition.TRIM_HORIZON,
            batch_size=100,
            bisect_batch_on_error=True,
            retry_attempts=settings.retry_attempts,
            max_record_age=Duration.hours(settings.max_record_age_hours),
            report_batch_item_failures=True,
            parallelization_factor=settings.parallelization_factor,
            on_failure=sources.SqsDlq(self.failures),
        ))
        acknowledge_function(self.function)
        acknowledge_failure_queue(self.failures)
