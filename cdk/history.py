"""History: the segment history table (size, entries and exits per segment and day, 400 days) and its daily
snapshot, a scheduled function that records every enabled segment's size at 00:05 UTC."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from cdk.functions import CdpFunction, Layers
from cdk.ingest import encrypted_queue
from cdk.nag import acknowledge, acknowledge_function
from cdk.settings import Settings
from cdk.storage import Storage, encrypted_table, grant_items

SNAPSHOT_TIMEOUT = Duration.minutes(5)  # two reads and a write per segment: seconds for hundreds of segments


class History(Construct):
    """Table: ``segment_id`` / ``day`` (YYYY-MM-DD), with ``entered``, ``exited`` (the changes function's ADDs),
    ``size`` (the snapshot's) and the TTL ``expires_at``, 400 days after the day (see cdp.aws.history).
    Segment ids and counts only: no personal data."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: Storage,
                 layers: Layers, key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.table = encrypted_table(
            self, "Table", key, RemovalPolicy.RETAIN,
            partition_key=dynamodb.Attribute(name="segment_id", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="day", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expires_at",
        )
        environment = {"HISTORY_TABLE": self.table.table_name, "MEMBERS_TABLE": storage.members.table_name,
                       "MEMBER_SHARDS": str(settings.member_shards)}
        if settings.segment_size_alarm_percent:
            environment["SEGMENT_SWING_PERCENT"] = str(settings.segment_size_alarm_percent)
        self.function = CdpFunction(
            self, "Snapshot", folder="history", layers=layers, key=key, architecture=settings.architecture,
            memory_mb=settings.memory_mb, timeout=SNAPSHOT_TIMEOUT, environment=environment)
        role = self.function.role
        grant_items(role, storage.members, "dynamodb:BatchGetItem")  # the size counters, as GET /segments/{id}
        grant_items(role, self.table, "dynamodb:BatchGetItem", "dynamodb:UpdateItem")
        key.grant_encrypt_decrypt(role)
        # Schedule deliveries the function could not take land here; the next night's run records sizes anew.
        self.failures = encrypted_queue(self, "ScheduleFailures", key)
        # Named (on the default bus) so the stack's key policy can name its ARN without referencing the rule.
        self.rule_name = f"cdp-{settings.stage}-history"
        self.rule_arn = Stack.of(self).format_arn(service="events", resource="rule", resource_name=self.rule_name)
        self.schedule = events.Rule(
            self, "Daily", rule_name=self.rule_name,
            schedule=events.Schedule.cron(minute="5", hour="0"),
            description="Record each segment's size at the close of the UTC day, and publish its metrics",
            targets=[targets.LambdaFunction(self.function.function, retry_attempts=2,
                                            max_event_age=Duration.hours(2), dead_letter_queue=self.failures)])
        acknowledge_function(self.function)
        acknowledge(self.failures, "SQS3", "This queue is itself the dead-letter queue of the schedule's target; "
                                           "a missed night leaves one day without a size, the next run goes on.")

    def allow_writes(self, function: CdpFunction) -> None:
        """The changes function: one ADD of entries and exits per segment and day a batch touched."""
        function.function.add_environment("HISTORY_TABLE", self.table.table_name)
        grant_items(function.role, self.table, "dynamodb:UpdateItem")

    def allow_reads(self, function: CdpFunction) -> None:
        """The api function: GET /segments/{id}/history queries one segment's days."""
        function.function.add_environment("HISTORY_TABLE", self.table.table_name)
        function.role.add_to_principal_policy(iam.PolicyStatement(actions=["dynamodb:Query"],
                                                                  resources=[self.table.table_arn]))
