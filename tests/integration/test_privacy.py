"""A deletion end to end under moto, through the real handlers: DELETE /customers/{id} (api) -> the privacy queue
-> the privacy function (tombstones, profiles, members index, ledger, quarantine) -> the table stream's REMOVE ->
the changes function's exits -> the verify pass -> done. Afterwards every table and every quarantine object
version is scanned for the customer's ids, address and their hashes; a redelivered old event brings nothing back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from cdp.aws.erasure import DynamoCustomerStores, SqsPrivacyJobs
from cdp.aws.identity_map import DynamoIdentityMap
from cdp.aws.requests import DynamoPrivacyRequests, bind_requests
from cdp.core.clock import FixedClock
from cdp.core.identity import customer_digest, identifier_digest
from cdp.pipeline.identity import Identity
from cdp.pipeline.privacy import Erasure
from cdp_dev.handlers import load_handler

from . import test_api as base
from .support import (
    MEMBER_SHARDS,
    MEMBERS_TABLE,
    PROFILES_TABLE,
    QUARANTINE_BUCKET,
    REGION,
    ROOT,
    create_ledger_table,
    failures,
    identify,
    kinesis_envelope,
    track,
)

privacy_handler = load_handler(ROOT, "privacy")
api = base.api
exchanges = base.exchanges
T = base.T
REQUESTS_TABLE, LEDGER_TABLE, QUEUE = "cdp-requests", "cdp-ledger", "cdp-privacy"
EMAIL = "Alice.Liddell@Example.com"


class Privacy:
    def __init__(self, api: base.Api) -> None:
        self.api, self.stack = api, api.stack
        ddb = self.stack.dynamodb
        ddb.update_table(  # the id map's canonical index, as cdk/storage.py makes it
            TableName=base.IDENTITY_TABLE,
            AttributeDefinitions=[{"AttributeName": "canonical", "AttributeType": "S"}],
            GlobalSecondaryIndexUpdates=[{"Create": {"IndexName": "canonical",
                                                     "KeySchema": [{"AttributeName": "canonical", "KeyType": "HASH"}],
                                                     "Projection": {"ProjectionType": "KEYS_ONLY"}}}])
        ddb.create_table(TableName=REQUESTS_TABLE, BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": "request_id", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "request_id", "AttributeType": "S"}])
        create_ledger_table(ddb, LEDGER_TABLE)
        self.stack.s3.put_bucket_versioning(Bucket=QUARANTINE_BUCKET, VersioningConfiguration={"Status": "Enabled"})
        self.queue_url = self.stack.sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
        identity_map = api.deps.identity_map
        assert isinstance(identity_map, DynamoIdentityMap)
        self.id_map = identity_map
        self.requests = DynamoPrivacyRequests(bind_requests(REQUESTS_TABLE, REGION))
        self.jobs = SqsPrivacyJobs(self.stack.sqs, self.queue_url)
        self.stores = DynamoCustomerStores(ddb, self.stack.s3, profiles_table=PROFILES_TABLE,
                                           members_table=MEMBERS_TABLE, ledger_table=LEDGER_TABLE,
                                           quarantine_bucket=QUARANTINE_BUCKET)
        api.use(requests=self.requests, jobs=self.jobs, stores=self.stores, request_days=1095)
        erasure = Erasure(self.requests, self.jobs, identity_map, self.stores, sorted(self.stack.catalogue.segments),
                          MEMBER_SHARDS, tombstone_days=400, verify_delay_seconds=0, verify_attempts=3)
        self.deps = privacy_handler.Dependencies(erasure=erasure, clock=FixedClock(T))

    def ingest(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return self.stack.ingest(kinesis_envelope(messages), clock=FixedClock(T), identity=Identity(self.id_map))

    def run_jobs(self) -> int:
        """Deliver the privacy queue's messages to the privacy function until it is empty; how many."""
        ran = 0
        while messages := self.stack.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                                         AttributeNames=["All"]).get("Messages", []):
            event = {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                                  "attributes": m.get("Attributes", {}), "messageAttributes": {},
                                  "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
                                  "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:cdp-privacy",
                                  "awsRegion": REGION} for m in messages]}
            assert privacy_handler.handle(event, None, self.deps) == {"batchItemFailures": []}
            for m in messages:
                self.stack.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
            ran += len(messages)
            assert failures(self.stack.changes(self.stack.stream_envelope())) == []  # the REMOVE's exits
            self.integrations_forget()
        return ran

    def integrations_forget(self) -> None:
        """What an integration does with an exit of clause ``deleted``: send the remove, delete its ledger row."""
        for item in self.stack.dynamodb.scan(TableName=LEDGER_TABLE)["Items"]:
            if item["kind"]["S"] == "entered" and self.stack.profile_item(item["customer"]["S"]) is None:
                self.stack.dynamodb.delete_item(TableName=LEDGER_TABLE, Key={"delivery": item["delivery"]})


def ledger_row(customer: str, email: str, destination: str, segment: str, kind: str, version: int) -> dict[str, Any]:
    """A ledger row as an integration writes it (with the ``customer`` attribute its index is keyed by)."""
    return {"delivery": {"S": f"{destination}\x1f{segment}\x1f{customer}"}, "customer": {"S": customer},
            "kind": {"S": kind}, "v": {"N": str(version)}, "event_id": {"S": "e"},
            "ids": {"S": json.dumps({"em": hashlib.sha256(email.lower().encode()).hexdigest()})}}


@pytest.fixture
def privacy(api: base.Api) -> Iterator[Privacy]:
    yield Privacy(api)


def alice_everywhere(p: Privacy) -> None:
    """Alice browsed as anon-a, identified with her address, is in segments, was delivered, and quarantined."""
    assert failures(p.ingest([{**track("unused", "Product Viewed", T - 3600, "v-1", product_id="p-1"),
                               "userId": None, "anonymousId": "anon-a"}])) == []
    assert failures(p.ingest([{**identify("alice", T - 600, "i-1", email=EMAIL), "anonymousId": "anon-a"},
                              *base.alice_messages(),
                              track("alice", "Product Viewed", 32_503_680_000, "future-1", product_id="p")])) == []
    assert failures(p.stack.changes(p.stack.stream_envelope())) == []
    p.stack.drain_events()
    for item in (ledger_row("alice", EMAIL, "meta", "recent-buyers", "entered", 1),
                 ledger_row("alice", EMAIL, "webhook", "vip", "exited", 4),
                 ledger_row("bob", "bob@example.com", "meta", "vip", "entered", 1)):
        p.stack.dynamodb.put_item(TableName=LEDGER_TABLE, Item=item)


def needles() -> list[str]:
    email = EMAIL.strip().lower()
    return ["alice", "anon-a", EMAIL, email, customer_digest("alice"), customer_digest("anon-a"),
            identifier_digest("email", EMAIL), hashlib.sha256(email.encode()).hexdigest()]


def everything_held(p: Privacy) -> dict[str, list[str]]:
    """Each store's items (text) and every quarantine object version's body."""
    ddb, s3 = p.stack.dynamodb, p.stack.s3
    held: dict[str, list[str]] = {}
    for table in ddb.list_tables()["TableNames"]:
        held[table] = [json.dumps(item) for item in ddb.scan(TableName=table)["Items"]]
    versions = s3.list_object_versions(Bucket=QUARANTINE_BUCKET).get("Versions", [])
    held["quarantine"] = [s3.get_object(Bucket=QUARANTINE_BUCKET, Key=v["Key"], VersionId=v["VersionId"])["Body"]
                          .read().decode() for v in versions]
    return held


def test_a_deleted_customer_is_gone_from_every_store_and_stays_gone(privacy: Privacy) -> None:
    p = privacy
    alice_everywhere(p)
    assert p.stack.s3.list_object_versions(Bucket=QUARANTINE_BUCKET).get("Versions")
    reply = p.api.send(base.raw_event("DELETE", "/customers/anon-a", content_type=None))
    assert reply.status == 202, reply.text
    accepted = reply.json
    assert accepted["status"] == "pending" and accepted["status_url"] == f"/requests/{accepted['request_id']}"
    assert "alice" not in reply.text

    assert p.run_jobs() == 3  # the erase pass, a verify pass (it erases the exits' rows), one that finds nothing
    status = p.api.send(base.raw_event("GET", accepted["status_url"], content_type=None))
    assert status.status == 200
    request = status.json
    assert request["status"] == "done", request
    assert request["customer_digest"] == customer_digest("alice")
    assert request["counts"]["profiles"] == 2 and request["counts"]["id_map"] == 3
    assert request["counts"]["ledger"] == 1 and request["counts"]["quarantine"] == 1
    assert request["counts"]["members"] >= 1

    held = everything_held(p)
    tombstones = {customer_digest("alice"), customer_digest("anon-a"), identifier_digest("email", EMAIL)}
    for store, items in held.items():
        for text in items:
            found = [n for n in needles() if n in text]
            if store == base.IDENTITY_TABLE:  # a tombstone: keyed by the digest, nothing else of the customer
                assert json.loads(text)["kind"] == {"S": "tombstone"} and set(found) <= tombstones, text
            elif store == REQUESTS_TABLE:  # the audit: the customer's digest only
                assert found == [customer_digest("alice")] or found == [], text
            else:
                assert found == [], (store, text)

    # A redelivered old event, and an old identify, bring nobody back.
    assert failures(p.ingest([track("alice", "Product Viewed", T - 7200, "v-old", product_id="p-1"),
                              {**identify("alice", T - 600, "i-1", email=EMAIL), "anonymousId": "anon-a"}])) == []
    assert p.stack.profile_item("alice") is None and p.stack.profile_item("anon-a") is None
    assert p.api.send(base.raw_event("GET", "/customers/alice", content_type=None)).status == 404
    again = p.api.send(base.raw_event("DELETE", "/customers/alice", content_type=None))
    base.problem(again, 404, "not_found")
    assert "alice" not in again.text
    # Nor does an operator's static-segment edit: the tombstoned id is reported unchanged and stays absent.
    edit = p.api.send(base.raw_event("POST", "/segments/vip/members", body=json.dumps({"add": ["alice", "newbie"]})))
    assert edit.status == 200, edit.text
    assert edit.json["added"] == ["newbie"] and edit.json["unchanged"] == ["alice"]
    assert p.stack.profile_item("alice") is None


def test_an_export_returns_everything_held_as_documented(privacy: Privacy) -> None:
    p = privacy
    alice_everywhere(p)
    reply = p.api.send(base.raw_event("GET", "/customers/anon-a/export", content_type=None))
    assert reply.status == 200, reply.text
    export = reply.json
    assert export["profile"]["customer_id"] == "alice"
    assert export["ids"]["canonical_id"] == "alice" and [m["id"] for m in export["ids"]["merged_ids"]] == ["anon-a"]
    assert export["ids"]["emails"] == [EMAIL]
    assert {m["id"] for m in export["memberships"]} == {s["id"] for s in export["profile"]["segments"]}
    assert all(m["since"] for m in export["memberships"])
    assert export["deliveries"] == [
        {"destination": "meta", "segment_id": "recent-buyers", "kind": "entered", "version": 1},
        {"destination": "webhook", "segment_id": "vip", "kind": "exited", "version": 4}]
    assert "history" in export["consent"]
    audit = p.api.send(base.raw_event("GET", f"/requests/{export['request_id']}", content_type=None)).json
    assert (audit["kind"], audit["status"]) == ("export", "done")
    schemas = base.document()["components"]["schemas"]
    assert {"CustomerExport", "ConsentRecord", "DeliveryRecord", "CustomerIds"} <= set(schemas)
    assert "/customers/{customerId}/export" in base.document()["paths"]


def test_unknown_requests_and_customers_are_404_without_echoing_them(privacy: Privacy) -> None:
    reply = privacy.api.send(base.raw_event("GET", "/requests/req-nothing", content_type=None))
    base.problem(reply, 404, "not_found")
    for method, path in (("DELETE", "/customers/zed-unknown"), ("GET", "/customers/zed-unknown/export")):
        reply = privacy.api.send(base.raw_event(method, path, content_type=None))
        base.problem(reply, 404, "not_found")
        assert "zed-unknown" not in reply.text


def test_the_sample_job_envelope_runs_and_a_message_that_is_no_job_is_dropped_not_retried(privacy: Privacy) -> None:
    envelope = json.loads((ROOT / "events" / "sqs" / "privacy-job.json").read_text())
    assert privacy_handler.handle(envelope, None, privacy.deps) == {"batchItemFailures": []}
    verify = privacy.stack.sqs.receive_message(QueueUrl=privacy.queue_url).get("Messages", [])
    assert [json.loads(m["Body"])["phase"] for m in verify] == ["verify"]
    envelope["Records"][0]["body"] = "not a job"
    assert privacy_handler.handle(envelope, None, privacy.deps) == {"batchItemFailures": []}
