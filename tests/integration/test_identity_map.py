"""The id map under moto: conditional links, a redelivered merge, and batched reads past 100 keys."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from cdp.aws.identity_map import DynamoIdentityMap, bind_identity_map
from cdp.core.identity import customer_digest, identifier_digest, resolve_all
from cdp.ports import ConflictError

TABLE = "identity-map"
REGION = "eu-west-1"


@pytest.fixture
def identity_map() -> Iterator[DynamoIdentityMap]:
    with mock_aws():
        boto3.client("dynamodb", region_name=REGION).create_table(
            TableName=TABLE, KeySchema=[{"AttributeName": "digest", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "digest", "AttributeType": "S"},
                                  {"AttributeName": "canonical", "AttributeType": "S"}],
            GlobalSecondaryIndexes=[{"IndexName": "canonical",
                                     "KeySchema": [{"AttributeName": "canonical", "KeyType": "HASH"}],
                                     "Projection": {"ProjectionType": "KEYS_ONLY"}}],
            BillingMode="PAY_PER_REQUEST")
        yield DynamoIdentityMap(bind_identity_map(TABLE, REGION))


def test_a_link_is_kept_with_its_audit_and_the_raw_id_is_never_stored(identity_map: DynamoIdentityMap) -> None:
    identity_map.link(customer_digest("anon-9"), "customer", "u-1", 1_790_000_000.0, "m-1")
    assert identity_map.links([customer_digest("anon-9"), customer_digest("nobody")]) == {
        customer_digest("anon-9"): "u-1"}
    items = boto3.client("dynamodb", region_name=REGION).scan(TableName=TABLE)["Items"]
    assert len(items) == 1 and items[0]["message_id"] == {"S": "m-1"}
    assert "anon-9" not in str(items)


def test_a_redelivered_merge_changes_nothing_and_a_second_customer_is_refused(identity_map: DynamoIdentityMap) -> None:
    digest = customer_digest("anon-9")
    identity_map.link(digest, "customer", "u-1", 1.0, "m-1")
    identity_map.link(digest, "customer", "u-1", 2.0, "m-1")  # the same merge again
    with pytest.raises(ConflictError):
        identity_map.link(digest, "customer", "u-2", 3.0, "m-2")
    assert identity_map.links([digest]) == {digest: "u-1"}


def test_email_lookups_use_the_same_hashed_index(identity_map: DynamoIdentityMap) -> None:
    identity_map.link(identifier_digest("email", "Alice@Example.com"), "email", "u-1", 1.0, None)
    assert identity_map.links([identifier_digest("email", "alice@example.com ")]) == {
        identifier_digest("email", "alice@example.com"): "u-1"}


def test_a_batch_of_ids_resolves_in_batched_reads_past_100_keys(identity_map: DynamoIdentityMap) -> None:
    for n in range(150):
        identity_map.link(customer_digest(f"anon-{n}"), "customer", f"u-{n % 7}", 1.0, f"m-{n}")
    identity_map.link(customer_digest("u-3"), "customer", "u-final", 2.0, "m-chain")  # a chain: u-3 -> u-final
    ids = {f"anon-{n}" for n in range(150)} | {"stranger"}
    resolved = resolve_all(ids, identity_map.links)
    assert resolved["stranger"] == "stranger"
    assert resolved["anon-3"] == "u-final" and resolved["anon-10"] == "u-final"  # 10 % 7 == 3
    assert resolved["anon-1"] == "u-1"


def test_a_tombstone_replaces_a_link_keeps_no_id_and_no_link_or_index_write_replaces_it(
        identity_map: DynamoIdentityMap) -> None:
    merged, email = customer_digest("anon-9"), identifier_digest("email", "alice@example.com")
    identity_map.link(merged, "customer", "u-1", 1.0, "m-1")
    identity_map.index(email, "email", "u-1", 1.0)
    assert sorted(identity_map.digests_of("u-1")) == sorted([merged, email])
    assert identity_map.bury(merged, 5.0, "req-1", 2_000_000_000) is True
    assert identity_map.bury(email, 5.0, "req-1", 2_000_000_000) is True
    assert identity_map.bury(merged, 5.0, "req-1", 2_000_000_000) is False  # the same deletion again: nothing
    assert identity_map.bury(merged, 4.0, "req-0", 2_000_000_000) is False  # an older one never moves it back
    assert identity_map.bury(merged, 9.0, "req-2", 2_000_000_000) is True  # deleted again: the later time holds
    read = identity_map.read([merged, email, customer_digest("u-1")])
    assert read.links == {} and read.tombstones == {merged: 9.0, email: 5.0}
    assert identity_map.digests_of("u-1") == []
    with pytest.raises(ConflictError):
        identity_map.link(merged, "customer", "u-1", 6.0, "m-again")
    identity_map.index(email, "email", "u-2", 7.0)  # refused quietly: the address finds no one
    items = boto3.client("dynamodb", region_name=REGION).scan(TableName=TABLE)["Items"]
    assert all(item["kind"] == {"S": "tombstone"} and "canonical" not in item for item in items)
    assert all(int(item["expires_at"]["N"]) == 2_000_000_000 for item in items)


def test_an_address_that_changed_hands_is_not_buried_with_its_former_holder(identity_map: DynamoIdentityMap) -> None:
    email = identifier_digest("email", "shared@example.com")
    identity_map.index(email, "email", "u-new", 1.0)  # the address is u-new's now
    assert identity_map.bury(email, 5.0, "req-1", 2_000_000_000, owner="u-old") is False
    assert identity_map.links([email]) == {email: "u-new"}
    assert identity_map.bury(email, 5.0, "req-2", 2_000_000_000, owner="u-new") is True
    assert identity_map.read([email]).tombstones == {email: 5.0}
