"""The whole product as one stack, composed of one construct per capability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from cdk.api import Api
from cdk.catalogue import Catalogue
from cdk.changes import Changes
from cdk.collector import Collector
from cdk.fanout import Fanout
from cdk.functions import CdpFunction, Layers
from cdk.history import History
from cdk.ingest import Ingest
from cdk.jobs import Jobs
from cdk.monitoring import Monitoring
from cdk.nag import acknowledge
from cdk.privacy import Privacy
from cdk.settings import Settings
from cdk.storage import Storage
from cdk.timers import Timers


class CdpStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        settings = Settings.from_context(self)
        self.key = kms.Key(self, "DataKey", enable_key_rotation=True,
                           description="Encrypts profiles, streams, queues and the quarantine at rest")
        self.storage = Storage(self, "Storage", key=self.key, quarantine_days=settings.retention.quarantine_days)
        layers = Layers(self, "Layers", architecture=settings.architecture)
        self.ingest = Ingest(self, "Ingest", settings=settings, storage=self.storage, layers=layers, key=self.key)
        self.collector = Collector(self, "Collector", settings=settings, storage=self.storage,
                                   stream=self.ingest.stream, layers=layers, key=self.key)
        self.changes = Changes(self, "Changes", settings=settings, storage=self.storage, layers=layers, key=self.key)
        self.api = Api(self, "Api", settings=settings, storage=self.storage, layers=layers, key=self.key)
        self.fanout = Fanout(self, "Fanout", settings=settings, storage=self.storage, bus=self.changes.bus,
                             layers=layers, key=self.key)
        self.timers = Timers(self, "Timers", settings=settings, storage=self.storage, layers=layers, key=self.key)
        self.privacy = Privacy(self, "Privacy", settings=settings, storage=self.storage, ledger=self.fanout.ledger,
                               layers=layers, key=self.key)
        self.privacy.allow_requests(self.api.function.function, self.api.function.role, settings)
        self.catalogue = Catalogue(self, "Catalogue", settings=settings, layers=layers, key=self.key)
        for function in (self.ingest.function, self.changes.function, self.timers.function, self.privacy.function):
            self.catalogue.allow_reads(function)
        self.catalogue.allow_writes(self.api.function)  # PUT/DELETE /segments/{id}
        self.history = History(self, "History", settings=settings, storage=self.storage, layers=layers, key=self.key)
        self.history.allow_writes(self.changes.function)
        self.history.allow_reads(self.api.function)
        self.catalogue.allow_reads(self.history.function)  # the snapshot sizes the segments made at runtime too
        self.jobs = Jobs(self, "Jobs", settings=settings, storage=self.storage, layers=layers, key=self.key,
                         definitions=self.catalogue.table)
        self.jobs.allow_start(self.api.function.function, self.api.function.role, self.storage)
        # EventBridge delivers to the encrypted queues (integration targets, their and the schedule's dead-letter
        # queues): only for this account's rules of this stack, so no one else's rule can make EventBridge use
        # the key (confused deputy). The ARNs are built from the rules' names, not referenced (that is a cycle).
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="EventBridgeDeliversToTheEncryptedQueues",
            principals=[iam.ServicePrincipal("events.amazonaws.com")],
            actions=["kms:GenerateDataKey", "kms:Decrypt"],  # what an SQS producer needs
            resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": self.account},
                        "ArnEquals": {"aws:SourceArn": [self.timers.rule_arn, self.history.rule_arn,
                                                        *(d.rule_arn for d in self.fanout.deliveries)]}}))
        if settings.pseudonymous_indexes:
            self._pseudonym_key([self.changes.function, self.api.function, self.privacy.function,
                                 *(d.function for d in self.fanout.deliveries)])
        self.monitoring = Monitoring(
            self, "Monitoring", stage=settings.stage, ingest=self.ingest, changes=self.changes, api=self.api,
            timers=self.timers, fanout=self.fanout, collector=self.collector, privacy=self.privacy,
            storage=self.storage, key=self.key, alarm_email=settings.alarm_email, history=self.history,
            segment_size_alarm_percent=settings.segment_size_alarm_percent, jobs=self.jobs,
            segment_ids=sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "segments").glob("*.yaml")))
        CfnOutput(self, "ApiUrl", value=self.api.rest_api.url)
        CfnOutput(self, "CollectorUrl", value=self.collector.url or "")
        CfnOutput(self, "WriteKeysTableName", value=self.storage.write_keys.table_name)
        CfnOutput(self, "UserPoolId", value=self.api.user_pool.user_pool_id)
        CfnOutput(self, "UserPoolClientId", value=self.api.user_pool_client.user_pool_client_id)
        CfnOutput(self, "EventsStreamName", value=self.ingest.stream.stream_name)
        CfnOutput(self, "ProfilesTableName", value=self.storage.profiles.table_name)
        CfnOutput(self, "MembersTableName", value=self.storage.members.table_name)
        CfnOutput(self, "IdentityTableName", value=self.storage.identity_map.table_name)
        CfnOutput(self, "QuarantineBucketName", value=self.storage.quarantine.bucket_name)
        CfnOutput(self, "RequestsTableName", value=self.privacy.requests.table_name)
        CfnOutput(self, "PrivacyDeadLettersUrl", value=self.privacy.dead_letters.queue_url)
        CfnOutput(self, "IngestFailuresQueueUrl", value=self.ingest.failures.queue_url)
        CfnOutput(self, "EventBusName", value=self.changes.bus.event_bus_name)
        CfnOutput(self, "DefinitionsTableName", value=self.catalogue.table.table_name)
        for delivery in self.fanout.deliveries:
            CfnOutput(self, f"{delivery.integration.name.title()}DeadLettersUrl", value=delivery.dead_letters.queue_url)

    def _pseudonym_key(self, functions: list[CdpFunction]) -> None:
        """The HMAC key of the members index's and ledger's customer ids (context ``pseudonymous_indexes``):
        64 random letters and digits (about 380 bits), encrypted with the data key, readable only by the
        functions that write or read those tables, each once at cold start."""
        secret = secretsmanager.Secret(
            self, "PseudonymKey", encryption_key=self.key,
            description="HMAC key of the customer ids stored in the members index and the delivery ledger",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template="{}", generate_string_key="key", password_length=64,
                exclude_punctuation=True, include_space=False))
        # Not rotated: a new key would change every stored id, orphaning the index's and the ledger's rows.
        acknowledge(secret, "SMG4", "The pseudonym key is not rotated: rotating it would change "
                    "every stored pseudonym and orphan the members index and ledger rows written under the old key")
        for function in functions:
            function.function.add_environment("PSEUDONYM_SECRET_ARN", secret.secret_arn)
            function.role.add_to_policy(iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"],
                                                            resources=[secret.secret_arn]))
