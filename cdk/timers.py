"""Timers: a schedule that wakes the timers function every minute to re-evaluate the customers now due."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from cdk.functions import CdpFunction, Layers
from cdk.ingest import encrypted_queue
from cdk.nag import acknowledge, acknowledge_function
from cdk.settings import Settings
from cdk.storage import Storage, grant_items
from cdp.pipeline.timers import shard_groups

SWEEP_TIMEOUT = Duration.seconds(60)  # one schedule period: runs rarely overlap, and locking keeps overlaps safe


class Timers(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: Storage,
                 layers: Layers, key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.function = CdpFunction(
            self, "Timers", folder="timers", layers=layers, key=key, architecture=settings.architecture,
            memory_mb=settings.memory_mb, timeout=SWEEP_TIMEOUT,
            environment={"PROFILES_TABLE": storage.profiles.table_name,
                         "DUE_INDEX_NAME": storage.due_index_name,
                         "SWEEP_PAGE_SIZE": "100", "SWEEP_RESERVE_MS": "10000",
                         "CONSENT_POLICY": settings.consent_policy,
                         "PROFILE_RETENTION_DAYS": str(settings.retention.profile_days)})
        role = self.function.role
        role.add_to_policy(iam.PolicyStatement(
            actions=["dynamodb:Query"],
            resources=[f"{storage.profiles.table_arn}/index/{storage.due_index_name}"]))
        grant_items(role, storage.profiles, "dynamodb:BatchGetItem", "dynamodb:PutItem")
        key.grant_encrypt_decrypt(role)
        # Schedule deliveries the function could not take (throttled, failing) land here with the reason.
        self.failures = encrypted_queue(self, "ScheduleFailures", key)
        # Named (on the default bus) so the stack's key policy can name its ARN without referencing the rule.
        self.rule_name = f"cdp-{settings.stage}-timers"
        self.rule_arn = Stack.of(self).format_arn(service="events", resource="rule", resource_name=self.rule_name)
        self.schedule = events.Rule(
            self, "EveryMinute", rule_name=self.rule_name, schedule=events.Schedule.rate(Duration.minutes(1)),
            description="Re-evaluate the customers whose next deadline has passed",
            # One target per shard group: the groups sweep concurrently, each its own invocation.
            targets=[targets.LambdaFunction(self.function.function, event=events.RuleTargetInput.from_object(
                         {"shards": group}), retry_attempts=2, max_event_age=Duration.minutes(2),
                         dead_letter_queue=self.failures)
                     for group in shard_groups(settings.sweep_workers)])
        acknowledge_function(self.function)
        acknowledge(self.failures, "SQS3", "This queue is itself the dead-letter queue of the schedule's target; "
                                           "a missed tick needs no redrive, the next run sweeps the same customers.")
