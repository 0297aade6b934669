"""Data subject requests: the requests table (the audit), the privacy queue and the function that runs deletions.

``DELETE /customers/{id}`` (the api function) records a request and queues a job; the privacy function erases the
customer's data (see cdp.pipeline.privacy) and queues its own verify pass on the same queue, delayed. The queue
holds raw customer ids, so it keeps a message one day at most, encrypted with the stack's key; a job that keeps
failing goes to its dead-letter queue (same retention) and the request stays unfinished, which the alarm shows.
"""

from __future__ import annotations

from typing import cast

from aws_cdk import CfnElement, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.functions import CdpFunction, Layers
from cdk.nag import acknowledge, acknowledge_function
from cdk.settings import Settings
from cdk.storage import Storage, encrypted_table, grant_items

FUNCTION_TIMEOUT = Duration.minutes(5)  # a pass reads the whole quarantine
VERIFY_DELAY_SECONDS = 60  # the pipeline's exits (changes, then integrations) land well within this
LEDGER_CUSTOMER_INDEX = "customer"  # the ledger's index by customer (cdk.fanout)


def _queue(scope: Construct, construct_id: str, key: kms.IKey, **properties: object) -> sqs.Queue:
    return sqs.Queue(scope, construct_id, encryption=sqs.QueueEncryption.KMS, encryption_master_key=key,
                     enforce_ssl=True, retention_period=Duration.days(1), **properties)  # type: ignore[arg-type]


def index_arn(table: dynamodb.ITable, index: str) -> str:
    return f"{table.table_arn}/index/{index}"


class Privacy(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: Storage,
                 ledger: dynamodb.ITable | None, layers: Layers, key: kms.IKey,
                 removal_policy: RemovalPolicy = RemovalPolicy.RETAIN) -> None:
        super().__init__(scope, construct_id)
        self.ledger = ledger
        self.requests = encrypted_table(
            self, "Requests", key, removal_policy,
            partition_key=dynamodb.Attribute(name="request_id", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expires_at")
        self.dead_letters = _queue(self, "DeadLetters", key)
        self.queue = _queue(self, "Jobs", key, visibility_timeout=Duration.seconds(FUNCTION_TIMEOUT.to_seconds() * 6),
                            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=5, queue=self.dead_letters))
        environment = {"PROFILES_TABLE": storage.profiles.table_name,
                       "MEMBERS_TABLE": storage.members.table_name,
                       "IDENTITY_TABLE": storage.identity_map.table_name,
                       "REQUESTS_TABLE": self.requests.table_name,
                       "QUARANTINE_BUCKET": storage.quarantine.bucket_name,
                       "PRIVACY_QUEUE_URL": self.queue.queue_url,
                       "MEMBER_SHARDS": str(settings.member_shards),
                       "VERIFY_DELAY_SECONDS": str(VERIFY_DELAY_SECONDS),
                       "TOMBSTONE_RETENTION_DAYS": str(settings.retention.tombstone_days)}
        if ledger is not None:
            environment["LEDGER_TABLE"] = ledger.table_name
        self.function = CdpFunction(
            self, "Function", folder="privacy", layers=layers, key=key, architecture=settings.architecture,
            memory_mb=settings.memory_mb, timeout=FUNCTION_TIMEOUT, environment=environment)
        role = self.function.role
        grant_items(role, storage.profiles, "dynamodb:DeleteItem")
        grant_items(role, storage.members, "dynamodb:BatchGetItem", "dynamodb:DeleteItem")
        grant_items(role, storage.identity_map, "dynamodb:PutItem")  # tombstones
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["dynamodb:Query"],
            resources=[index_arn(storage.identity_map, storage.identity_canonical_index)]))
        grant_items(role, self.requests, "dynamodb:GetItem", "dynamodb:PutItem")
        if ledger is not None:
            self._read_ledger(role, ledger)
            grant_items(role, ledger, "dynamodb:DeleteItem")
        role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:ListBucketVersions"],
                                                         resources=[storage.quarantine.bucket_arn]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObject",
                     "s3:DeleteObjectVersion"],
            resources=[storage.quarantine.arn_for_objects("quarantine/*")]))
        role.add_to_principal_policy(iam.PolicyStatement(actions=["sqs:SendMessage"],
                                                         resources=[self.queue.queue_arn]))  # the verify pass
        key.grant_encrypt_decrypt(role)
        self.function.function.add_event_source(sources.SqsEventSource(
            self.queue, batch_size=1, report_batch_item_failures=True))
        acknowledge_function(self.function)
        bucket = Stack.of(self).get_logical_id(cast(CfnElement, storage.quarantine.node.default_child))
        acknowledge(role, f"IAM5[Resource::<{bucket}.Arn>/quarantine/*]",
                    "A deletion rewrites or deletes the quarantine objects (and their versions) holding the "
                    "customer's records; keys are made per batch, so only the prefix can be named.")
        acknowledge(self.dead_letters, "SQS3", "This queue is itself the dead-letter queue of the privacy jobs.")

    @staticmethod
    def _read_ledger(role: iam.IRole, ledger: dynamodb.ITable) -> None:
        role.add_to_principal_policy(iam.PolicyStatement(actions=["dynamodb:Query"],
                                                         resources=[index_arn(ledger, LEDGER_CUSTOMER_INDEX)]))
        grant_items(role, ledger, "dynamodb:BatchGetItem")

    def allow_requests(self, function: lambda_.Function, role: iam.IRole, settings: Settings) -> None:
        """The api function starts deletions, reads requests, and reads the ledger for exports."""
        function.add_environment("REQUESTS_TABLE", self.requests.table_name)
        function.add_environment("PRIVACY_QUEUE_URL", self.queue.queue_url)
        function.add_environment("REQUEST_RETENTION_DAYS", str(settings.retention.request_days))
        grant_items(role, self.requests, "dynamodb:GetItem", "dynamodb:PutItem")
        role.add_to_principal_policy(iam.PolicyStatement(actions=["sqs:SendMessage"],
                                                         resources=[self.queue.queue_arn]))
        if self.ledger is not None:
            function.add_environment("LEDGER_TABLE", self.ledger.table_name)
            self._read_ledger(role, self.ledger)
