"""Ingest: the events stream, the ingest function and its event source mapping."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.functions import CdpFunction, Layers
from cdk.nag import acknowledge, acknowledge_failure_queue, acknowledge_function
from cdk.settings import Settings
from cdk.storage import Storage, grant_items


def encrypted_queue(scope: Construct, construct_id: str, key: kms.IKey) -> sqs.Queue:
    return sqs.Queue(scope, construct_id, encryption=sqs.QueueEncryption.KMS, encryption_master_key=key,
                     enforce_ssl=True, retention_period=Duration.days(14))


class Ingest(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: Storage,
                 layers: Layers, key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.stream = kinesis.Stream(
            self, "Events",
            stream_mode=kinesis.StreamMode.ON_DEMAND if settings.stream_shards == 0 else kinesis.StreamMode.PROVISIONED,
            shard_count=settings.stream_shards or None,
            # KMS with the AWS-managed key: customer-managed keys add per-consumer KMS cost on every read.
            encryption=kinesis.StreamEncryption.MANAGED,
            retention_period=Duration.days(7),
        )
        # Batches that exhaust their retries: shard and sequence range, for `cdp redrive failures`.
        self.failures = encrypted_queue(self, "Failures", key)
        self.function = CdpFunction(
            self, "Ingest", folder="ingest", layers=layers, key=key, architecture=settings.architecture,
            memory_mb=settings.ingest_memory_mb, timeout=Duration.seconds(60),
            environment={"PROFILES_TABLE": storage.profiles.table_name,
                         "QUARANTINE_BUCKET": storage.quarantine.bucket_name,
                         "IDENTITY_TABLE": storage.identity_map.table_name,
                         "CDP_MERGE_KNOWN": "true" if settings.merge_known else "false",
                         # profiling consent: without it a customer is in no segment (cdp.core.engine)
                         "CONSENT_POLICY": settings.consent_policy,
                         "PROFILE_RETENTION_DAYS": str(settings.retention.profile_days),
                         "CDP_AFTER_DELETION": settings.after_deletion})
        role = self.function.role
        grant_items(role, storage.profiles, "dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:PutItem")
        # The batch's one read of its ids, and the conditional link and email index puts; never a delete.
        grant_items(role, storage.identity_map, "dynamodb:BatchGetItem", "dynamodb:PutItem")
        role.add_to_policy(iam.PolicyStatement(actions=["s3:PutObject"],
                                               resources=[storage.quarantine.arn_for_objects("quarantine/*")]))
        key.grant_encrypt_decrypt(role)
        self.function.function.add_event_source(sources.KinesisEventSource(
            self.stream,
            starting_position=lambda_.StartingPosition.TRIM_HORIZON,
            batch_size=settings.batch_size,
            max_batching_window=Duration.seconds(settings.batching_window_seconds),
            parallelization_factor=settings.parallelization_factor,
            bisect_batch_on_error=True,
            retry_attempts=settings.retry_attempts,
            max_record_age=Duration.hours(settings.max_record_age_hours),
            report_batch_item_failures=True,
            on_failure=sources.SqsDlq(self.failures),
        ))
        acknowledge_function(self.function)
        acknowledge(self.function.role, "IAM5[Resource::<StorageQuarantine381A7D7C.Arn>/quarantine/*]",
                    "Writes new quarantine objects only, under the quarantine/ prefix; keys are made per batch.")
        acknowledge_failure_queue(self.failures)
