"""Fan-out: one bus rule, queue, dead-letter queue and function per enabled integration, plus the delivery ledger.

Each rule routes ``Segment Entered`` / ``Segment Exited`` / ``Segment Consent Changed`` of the integration's
segments to its queue (retry policy and dead-letter queue on the target). The queue buffers into batches for the
function, redrives to the same dead-letter queue after repeated failures, and the function puts
messages that can never be delivered there itself, with the reason.
"""

from __future__ import annotations

import json

import jsii
from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from aws_cdk.interfaces.aws_events import IRuleRef
from constructs import Construct

from cdk.changes import bus_name
from cdk.functions import CdpFunction, Layers
from cdk.ingest import encrypted_queue
from cdk.nag import acknowledge, acknowledge_function
from cdk.settings import Integration, Settings
from cdk.storage import Storage, encrypted_table, grant_items

FUNCTION_TIMEOUT = Duration.seconds(60)
MAX_RECEIVES = 5  # deliveries a message gets before the queue moves it to the dead-letter queue
EVENTS = iam.ServicePrincipal("events.amazonaws.com")


def rule_name(stage: str, integration: str) -> str:
    """Named, not generated, so the stack's key policy can name the rule's ARN without referencing it (a
    reference would be a cycle: key -> rule -> queue -> key)."""
    return f"cdp-{stage}-{integration}"


@jsii.implements(events.IRuleTarget)
class EncryptedQueueTarget:
    """``targets.SqsQueue`` without its grants. For a queue with a customer managed key, SqsQueue (under this
    app's feature flags) lets *any* EventBridge rule send (no ``aws:SourceArn`` on the queue policy) and adds an
    unconditioned grant on the key; here the queue and its dead-letter queue take messages from this rule only,
    and the stack grants the key (see CdpStack)."""

    def __init__(self, queue: sqs.Queue, dead_letters: sqs.Queue, retry_attempts: int, max_event_age: Duration):
        self.queue, self.dead_letters = queue, dead_letters
        self.retry_attempts, self.max_event_age = retry_attempts, max_event_age

    def bind(self, rule: IRuleRef, id: str | None = None) -> events.RuleTargetConfig:
        for queue in (self.queue, self.dead_letters):
            queue.add_to_resource_policy(iam.PolicyStatement(
                principals=[EVENTS], actions=["sqs:SendMessage"], resources=[queue.queue_arn],
                conditions={"ArnEquals": {"aws:SourceArn": events.CfnRule.arn_for_rule(rule)}}))
        return events.RuleTargetConfig(
            arn=self.queue.queue_arn, target_resource=self.queue,
            retry_policy=events.CfnRule.RetryPolicyProperty(
                maximum_retry_attempts=self.retry_attempts,
                maximum_event_age_in_seconds=int(self.max_event_age.to_seconds())),
            dead_letter_config=events.CfnRule.DeadLetterConfigProperty(arn=self.dead_letters.queue_arn))


class Delivery(Construct):
    """One integration: rule -> queue -> function, and the dead-letter queue for all three."""

    def __init__(self, scope: Construct, construct_id: str, *, integration: Integration, settings: Settings,
                 storage: Storage, ledger: dynamodb.ITable, bus: events.IEventBus, layers: Layers,
                 key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        name = integration.name
        self.integration = integration
        self.dead_letters = encrypted_queue(self, "DeadLetters", key)
        self.queue = sqs.Queue(self, "Queue", encryption=sqs.QueueEncryption.KMS, encryption_master_key=key,
                               enforce_ssl=True, retention_period=Duration.days(4),
                               visibility_timeout=Duration.seconds(FUNCTION_TIMEOUT.to_seconds() * 6),
                               dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=MAX_RECEIVES,
                                                                     queue=self.dead_letters))
        # Every integration reads each customer's consent from the profiles table at delivery.
        environment = {"TARGETS": json.dumps(integration.segments, sort_keys=True),
                       "LEDGER_TABLE": ledger.table_name,
                       "DEAD_LETTER_QUEUE_URL": self.dead_letters.queue_url,
                       "OPTIONS": json.dumps(integration.options, sort_keys=True),
                       "PROFILES_TABLE": storage.profiles.table_name,
                       "CONSENT_POLICY": settings.consent_policy,
                       "LEDGER_EXIT_DAYS": str(settings.retention.ledger_exit_days),
                       "LEDGER_EMAIL_DAYS": str(settings.retention.ledger_email_days)}
        if integration.base_url:
            environment["BASE_URL"] = integration.base_url
        if integration.api_version:
            environment["API_VERSION"] = integration.api_version
        secret = None
        if integration.secret_name:
            secret = secretsmanager.Secret.from_secret_name_v2(self, "Secret", integration.secret_name)
            environment["SECRET_ARN"] = secret.secret_arn
        self.function = CdpFunction(
            self, "Function", folder=name, layers=layers, key=key, architecture=settings.architecture,
            memory_mb=settings.memory_mb, timeout=FUNCTION_TIMEOUT, environment=environment)
        role = self.function.role
        # DeleteItem: a deleted customer's exit forgets its ledger row.
        ledger_actions = ["dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"]
        if name == "email":
            ledger_actions += ["dynamodb:GetItem", "dynamodb:UpdateItem"]  # the frequency cap
        grant_items(role, ledger, *ledger_actions)
        grant_items(role, storage.profiles, "dynamodb:BatchGetItem")  # consent (and email traits) per customer
        if secret is not None:
            role.add_to_policy(iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"],
                                                   resources=[f"{secret.secret_arn}-??????"]))
        if name == "email":
            self._allow_email(role, integration)
        role.add_to_policy(iam.PolicyStatement(actions=["sqs:SendMessage"],
                                               resources=[self.dead_letters.queue_arn]))
        key.grant_encrypt_decrypt(role)
        self.function.function.add_event_source(sources.SqsEventSource(
            self.queue, batch_size=integration.batch_size, report_batch_item_failures=True,
            max_batching_window=(Duration.seconds(integration.batching_window_seconds)
                                 if integration.batching_window_seconds else None)))
        self.rule_name = rule_name(settings.stage, name)
        self.rule = events.Rule(
            self, "Rule", event_bus=bus, rule_name=self.rule_name,
            description=f"Segment changes for the {name} integration",
            event_pattern=events.EventPattern(
                source=["cdp.segments"], detail_type=["Segment Entered", "Segment Exited", "Segment Consent Changed"],
                detail={"segment": {"id": sorted(integration.segments)}}),
            targets=[EncryptedQueueTarget(self.queue, self.dead_letters, 185, Duration.hours(24))])
        # The rule's ARN as a string (no reference to the rule): what the key policy allows EventBridge for.
        self.rule_arn = Stack.of(self).format_arn(service="events", resource="rule",
                                                  resource_name=f"{bus_name(settings.stage)}/{self.rule_name}")
        acknowledge_function(self.function)
        acknowledge(self.dead_letters, "SQS3", "This queue is itself the dead-letter queue of the integration's "
                                               "rule target, queue and function; replay is in the README.")

    def _allow_email(self, role: iam.IRole, integration: Integration) -> None:
        stack = Stack.of(self)
        source = str(integration.options["source"])
        identities = [source.split("@")[-1].strip(">").strip(), source.split("<")[-1].strip(">").strip()]
        resources = [stack.format_arn(service="ses", resource="identity", resource_name=identity)
                     for identity in dict.fromkeys(identities)]
        resources += [stack.format_arn(service="ses", resource="template", resource_name=template)
                      for template in sorted(set(integration.segments.values()))]
        configuration_set = integration.options.get("configuration_set")
        if configuration_set:
            resources.append(stack.format_arn(service="ses", resource="configuration-set",
                                              resource_name=str(configuration_set)))
        role.add_to_principal_policy(iam.PolicyStatement(actions=["ses:SendTemplatedEmail"], resources=resources))


class Fanout(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: Storage,
                 bus: events.IEventBus, layers: Layers, key: kms.IKey,
                 removal_policy: RemovalPolicy = RemovalPolicy.RETAIN) -> None:
        super().__init__(scope, construct_id)
        self.deliveries: list[Delivery] = []
        self.ledger: dynamodb.Table | None = None
        if not settings.integrations:
            return
        # (destination, segment, customer) -> the membership version last applied; see cdp.pipeline.fanout.
        self.ledger = encrypted_table(
            self, "Ledger", key, removal_policy,
            partition_key=dynamodb.Attribute(name="delivery", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expires_at")
        # Every row carries its customer: a deletion finds all of a customer's rows through this index.
        self.ledger.add_global_secondary_index(
            index_name="customer",
            partition_key=dynamodb.Attribute(name="customer", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.KEYS_ONLY)
        for integration in settings.integrations:
            self.deliveries.append(Delivery(
                self, integration.name.title(), integration=integration, settings=settings, storage=storage,
                ledger=self.ledger, bus=bus, layers=layers, key=key))
