"""Storage: the profiles table, the members index, the id map and the quarantine bucket, all encrypted with the
stack's key."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct


def encrypted_table(scope: Construct, construct_id: str, key: kms.IKey, removal_policy: RemovalPolicy,
           **properties: object) -> dynamodb.Table:
    return dynamodb.Table(
        scope, construct_id,
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
        encryption_key=key,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True),
        removal_policy=removal_policy,
        **properties,  # type: ignore[arg-type]
    )


def grant_items(role: iam.IRole, table: dynamodb.ITable, *actions: str) -> None:
    """Item actions on the table itself, never on its indexes (``Table.grant`` adds ``index/*``)."""
    role.add_to_principal_policy(iam.PolicyStatement(actions=list(actions), resources=[table.table_arn]))


class Storage(Construct):
    """Profiles: profile, memberships, version and deadline in one item per customer. Its stream
    (new and old images) is the outbox the changes function reads; its due index is what the
    timers sweep queries.

    Members index: ``segment#NN`` -> customer, with NN a hash shard of the customer id, so no
    segment is one hot partition; exits leave a tombstone that expires (TTL ``expires_at``).

    Quarantine: records that can never be applied, one JSON Lines object per batch.

    Write keys: the collector's sources, one item per key, keyed by the key's SHA-256 digest.

    Id map: identifier digest (a merged customer id, a hashed email address) -> its canonical customer,
    one small item each (see cdp.aws.identity_map), keyed by the digest so no address is a key. A deleted
    customer's ids hold tombstones there, which expire (TTL ``expires_at``) after the tombstone retention; the
    ``canonical`` index (keys only) finds every entry of a customer for a deletion.

    Quarantine objects (raw messages) expire after ``quarantine_days``; a deletion scrubs them before that.
    """

    def __init__(self, scope: Construct, construct_id: str, *, key: kms.IKey,
                 removal_policy: RemovalPolicy = RemovalPolicy.RETAIN, quarantine_days: int = 30) -> None:
        super().__init__(scope, construct_id)
        self.profiles = encrypted_table(
            self, "Profiles", key, removal_policy,
            partition_key=dynamodb.Attribute(name="customer_id", type=dynamodb.AttributeType.STRING),
            stream=dynamodb.StreamViewType.NEW_AND_OLD_IMAGES,
            # retention.profile_days: a day after the timers made an untouched profile's exits (cdp.core.engine)
            time_to_live_attribute="xp",
        )
        # The due index: sparse (only profiles with a deadline carry ds and nd), sharded 32 ways by
        # customer so a million deadlines in one minute are never one hot key (see cdp.pipeline.timers).
        self.due_index_name = "due"
        self.profiles.add_global_secondary_index(
            index_name=self.due_index_name,
            partition_key=dynamodb.Attribute(name="ds", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="nd", type=dynamodb.AttributeType.NUMBER),
            projection_type=dynamodb.ProjectionType.KEYS_ONLY,
        )
        self.members = encrypted_table(
            self, "Members", key, removal_policy,
            partition_key=dynamodb.Attribute(name="segment_shard", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="customer_id", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expires_at",
        )
        self.write_keys = encrypted_table(
            self, "WriteKeys", key, removal_policy,
            partition_key=dynamodb.Attribute(name="digest", type=dynamodb.AttributeType.STRING),
        )
        self.identity_map = encrypted_table(
            self, "IdentityMap", key, removal_policy,
            partition_key=dynamodb.Attribute(name="digest", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expires_at",  # tombstones only: links and email entries carry none
        )
        self.identity_canonical_index = "canonical"
        self.identity_map.add_global_secondary_index(
            index_name=self.identity_canonical_index,
            partition_key=dynamodb.Attribute(name="canonical", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.KEYS_ONLY,
        )
        self.access_logs = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # S3 server access logging cannot write to KMS buckets
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90))],
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            removal_policy=removal_policy,
        )
        self.quarantine = s3.Bucket(
            self, "Quarantine",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="quarantine/",
            # Older versions go a day after they are replaced: a deletion deletes them itself at once.
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(quarantine_days),
                                              noncurrent_version_expiration=Duration.days(1))],
            removal_policy=removal_policy,
        )
