"""Pseudonymous indexes under moto: with the HMAC key on (PSEUDONYM_SECRET_ARN), the members index and the
ledger hold no customer id, and still serve the changes function, the listing, deliveries, the frequency cap,
the export and a deletion (through the real api and privacy handlers, as tests/integration/test_privacy.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from cdp.aws.ledger import DynamoDeliveryLedger
from cdp.aws.members import DynamoMembersIndex
from cdp.aws.pseudonyms import pseudonyms_from_env
from cdp.aws.ses import DynamoFrequencyCap
from cdp.config import ConfigError
from cdp.core.pseudonyms import HmacIds, Pseudonyms
from cdp.integrations.email import Send
from cdp.pipeline.fanout import LedgerEntry

from . import test_api as base
from . import test_privacy as privacy_test
from .support import MEMBER_SHARDS, MEMBERS_TABLE, REGION, Stack, failures, identify, track

LEDGER_TABLE, EMAIL, T = privacy_test.LEDGER_TABLE, privacy_test.EMAIL, privacy_test.T
RAW_IDS = ("alice", "anon-a", "bob")  # none is hex, so none can appear inside a pseudonym by chance
api, exchanges = base.api, base.exchanges


def client() -> Any:
    import boto3

    return boto3.client("secretsmanager", region_name=REGION)


def key_secret(value: dict[str, str]) -> str:
    """A secret in moto's Secrets Manager (the test's ``stack`` fixture has it mocked), as CDK generates it."""
    return str(client().create_secret(Name=f"pseudonyms-{len(value.get('key', ''))}",
                                      SecretString=json.dumps(value))["ARN"])


class Pseudonymous(privacy_test.Privacy):
    """The deletion fixture with every store of the members index and the ledger under one HMAC key."""

    def __init__(self, api: base.Api, ids: Pseudonyms) -> None:
        super().__init__(api)
        self.ids = ids
        self.stores.pseudonyms = ids  # the same object the api (export) and the erasure use
        members = api.deps.members
        assert isinstance(members, DynamoMembersIndex)
        members.pseudonyms = ids
        self.index = DynamoMembersIndex(self.stack.dynamodb, MEMBERS_TABLE, MEMBER_SHARDS, pseudonyms=ids)
        self.ledger = DynamoDeliveryLedger(self.stack.dynamodb, LEDGER_TABLE, pseudonyms=ids)
        self.cap = DynamoFrequencyCap(self.stack.dynamodb, LEDGER_TABLE, ids)
        self.owner = {ids.pseudonym(c): c for c in RAW_IDS}  # what an integration knows: the event's customer id

    def integrations_forget(self) -> None:
        """An integration's answer to a ``deleted`` exit: remove, then forget its row (by the customer id)."""
        for item in self.stack.dynamodb.scan(TableName=LEDGER_TABLE)["Items"]:
            destination, segment, stored = item["delivery"]["S"].split("\x1f")
            customer = self.owner[stored]
            if item["kind"]["S"] == "entered" and self.stack.profile_item(customer) is None:
                self.ledger.forget(destination, (segment, customer))


@pytest.fixture
def pseudonymous(api: base.Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pseudonymous]:
    arn = key_secret({"key": "k" * 31 + "0123456789abcdefghijklmnopqrstuv"})
    ids = pseudonyms_from_env({"PSEUDONYM_SECRET_ARN": arn}, client)
    assert isinstance(ids, HmacIds)
    p = Pseudonymous(api, ids)
    changes_deps = p.stack.changes_deps  # the changes function as built with the key: its index pseudonymises
    monkeypatch.setattr(p.stack, "changes_deps", lambda **o: changes_deps(**{"index": p.index, **o}))
    yield p


def stored_text(p: Pseudonymous) -> list[str]:
    return [json.dumps(item) for table in (MEMBERS_TABLE, LEDGER_TABLE)
            for item in p.stack.dynamodb.scan(TableName=table)["Items"]]


def alice_delivered(p: Pseudonymous) -> None:
    assert failures(p.ingest([{**identify("alice", T - 600, "i-1", email=EMAIL), "anonymousId": "anon-a"},
                              *base.alice_messages(), track("bob", "Product Viewed", T - 60, "b-1", product_id="p")]))\
        == []
    assert failures(p.stack.changes(p.stack.stream_envelope())) == []
    p.stack.drain_events()
    hashed = {"em": hashlib.sha256(EMAIL.lower().encode()).hexdigest()}
    assert p.ledger.record("meta", ("recent-buyers", "alice"), LedgerEntry(1, "entered", "e-1", hashed))
    assert p.ledger.record("webhook", ("vip", "alice"), LedgerEntry(4, "exited", "e-2", hashed))
    assert p.ledger.record("meta", ("vip", "bob"), LedgerEntry(1, "entered", "e-3", {}))
    assert p.cap.write("alice", [Send(int(T), "e-1")], 0, int(T) + 86400)


def test_the_members_index_and_ledger_name_nobody_yet_serve_every_reader(pseudonymous: Pseudonymous) -> None:
    p = pseudonymous
    alice_delivered(p)
    text = stored_text(p)
    assert text and not [t for t in text for raw in RAW_IDS if raw in t]
    assert any(p.ids.pseudonym("alice") in t for t in text)

    # the listing: members carry their pseudonym, named as such, and no customer id
    members, _ = p.api.deps.members.page("recent-buyers", 100, None)
    assert members and all(set(m) == {"member", "since"} for m in members)
    assert p.ids.pseudonym("alice") in {m["member"] for m in members}
    assert p.api.deps.members.size("recent-buyers") == len(members)
    listed = p.api.send(base.raw_event("GET", "/segments/recent-buyers/members", content_type=None))
    assert listed.status == 200, listed.text
    assert listed.json["members"] and all(set(m) == {"member", "since"} for m in listed.json["members"])

    # deliveries and the cap find their rows by customer id
    assert p.ledger.entries("meta", [("recent-buyers", "alice"), ("vip", "bob")]) == {
        ("recent-buyers", "alice"): LedgerEntry(1, "entered", "e-1",
                                                {"em": hashlib.sha256(EMAIL.lower().encode()).hexdigest()}),
        ("vip", "bob"): LedgerEntry(1, "entered", "e-3", {})}
    assert [s.event_id for s in p.cap.read("alice").sends] == ["e-1"]
    plain = DynamoDeliveryLedger(p.stack.dynamodb, LEDGER_TABLE)
    assert plain.entries("meta", [("recent-buyers", "alice")]) == {}  # without the key the id finds nothing

    # the export finds the customer's deliveries through the ledger's customer index
    reply = p.api.send(base.raw_event("GET", "/customers/anon-a/export", content_type=None))
    assert reply.status == 200, reply.text
    assert reply.json["deliveries"] == [
        {"destination": "meta", "segment_id": "recent-buyers", "kind": "entered", "version": 1},
        {"destination": "webhook", "segment_id": "vip", "kind": "exited", "version": 4}]


def test_a_deletion_erases_the_pseudonymous_rows_and_leaves_others(pseudonymous: Pseudonymous) -> None:
    p = pseudonymous
    alice_delivered(p)
    reply = p.api.send(base.raw_event("DELETE", "/customers/anon-a", content_type=None))
    assert reply.status == 202, reply.text
    assert p.run_jobs() >= 2  # the erase pass and the verify passes (as many as test_privacy's deletion)
    status = p.api.send(base.raw_event("GET", reply.json["status_url"], content_type=None)).json
    assert status["status"] == "done", status
    assert status["counts"]["members"] >= 1 and status["counts"]["ledger"] >= 2  # found by pseudonym: exit, cap

    alice = (p.ids.pseudonym("alice"), p.ids.pseudonym("anon-a"))
    text = stored_text(p)
    assert not [t for t in text for gone in alice if gone in t]
    assert not [t for t in text for raw in RAW_IDS if raw in t]
    assert p.ledger.entries("meta", [("vip", "bob")])  # another customer's row stays


def test_the_key_is_read_once_from_the_secret_and_must_be_long_enough(stack: Stack) -> None:
    calls: list[str] = []

    def counted() -> Any:
        calls.append("secretsmanager")
        return client()

    long_key = key_secret({"key": "x" * 64})
    ids = pseudonyms_from_env({"PSEUDONYM_SECRET_ARN": long_key}, counted)
    assert calls == ["secretsmanager"] and ids.pseudonym("ada") == ids.pseudonym("ada")
    assert pseudonyms_from_env({}, counted).pseudonym("ada") == "ada" and len(calls) == 1  # off: no read
    short = key_secret({"key": "x" * 8})
    with pytest.raises(ConfigError, match="PSEUDONYM_SECRET_ARN"):
        pseudonyms_from_env({"PSEUDONYM_SECRET_ARN": short}, client)
    with pytest.raises(ConfigError, match="PSEUDONYM_SECRET_ARN"):
        pseudonyms_from_env({"PSEUDONYM_SECRET_ARN": "pseudonyms"}, client)
