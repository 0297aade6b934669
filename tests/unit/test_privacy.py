"""Data subject requests over the in-memory stores: a deletion erases every store in two passes and finishes,
waits for the pipeline's exits where it must, fails with a reason when they never come, repeats nothing on a
redelivered job; an export returns everything held and is recorded."""

from __future__ import annotations

import base64
import json

import pytest

from cdp.api.views import export_document
from cdp.core.identity import customer_digest, identifier_digest
from cdp.core.profile import Profile
from cdp.pipeline.changes import MembershipChange, members_partition
from cdp.pipeline.privacy import (
    DONE,
    FAILED,
    RUNNING,
    VERIFY,
    Erasure,
    InvalidJob,
    UnknownCustomer,
    export_customer,
    run_job,
    start_deletion,
)
from cdp_dev.memory import MemoryCustomerStores, MemoryMembersIndex, MemoryPrivacyJobs, MemoryPrivacyRequests
from tests.unit.test_ingest_identity import ENGINE, NOW, B, World, identify, track

SEGMENTS = sorted(ENGINE.catalogue.segments)


class Deployment:
    def __init__(self) -> None:
        self.world = World()
        self.members = MemoryMembersIndex()
        self.stores = MemoryCustomerStores(self.world.store, self.members)
        self.requests = MemoryPrivacyRequests()
        self.jobs = MemoryPrivacyJobs()
        self.erasure = Erasure(self.requests, self.jobs, self.world.id_map, self.stores, SEGMENTS,
                               self.members.shards, tombstone_days=400, verify_delay_seconds=60, verify_attempts=3)

    def alice(self) -> None:
        """Alice: browsed as anon-a, identified with her email, in one segment, delivered to Meta, quarantined."""
        self.world.ingest([track("anon-a", "Product Viewed", B, "m-1", product_id="p1"),
                           identify("alice", "anon-a", B + 60, "m-2", email="Alice@Example.com")])
        self.members.record(MembershipChange("alice", "browsers", "entered", int(B), 1, "", ""))
        self.members.record(MembershipChange("anon-a", "browsers", "exited", int(B + 60), 2, "merged", ""))
        self.stores.ledger["meta\x1fbrowsers\x1falice"] = {"customer": "alice", "kind": "entered", "v": 1}
        self.stores.ledger["meta\x1fvip\x1falice"] = {"customer": "alice", "kind": "exited", "v": 3}
        self.stores.ledger["meta\x1fvip\x1fbob"] = {"customer": "bob", "kind": "entered", "v": 1}
        lines = [quarantined("alice", {"userId": "alice", "type": "track"}),
                 quarantined("x", {"anonymousId": "zed", "traits": {"email": "alice@example.com"}}),
                 quarantined("bob", {"userId": "bob"})]
        self.stores.quarantine["quarantine/2026/01/01/s-1.jsonl"] = ["\n".join(lines[:1]) + "\n",
                                                                      "\n".join(lines) + "\n"]

    def pipeline_exits(self) -> None:
        """What the changes function and the integrations do with the profile's REMOVE."""
        self.members.record(MembershipChange("alice", "browsers", "exited", int(NOW), 9, "deleted", ""))
        self.stores.ledger.pop("meta\x1fbrowsers\x1falice", None)


def started() -> Deployment:
    """Alice everywhere, and her deletion asked for (its erase job queued)."""
    d = Deployment()
    d.alice()
    start_deletion(d.world.id_map, d.world.store, d.requests, d.jobs, "alice", NOW, 1095)
    return d


def quarantined(key: str, message: dict[str, object]) -> str:
    return json.dumps({"partition_key": key, "data": base64.b64encode(json.dumps(message).encode()).decode()})


def test_a_deletion_erases_every_store_and_finishes_after_the_pipeline_exits() -> None:
    d = Deployment()
    d.alice()
    request = start_deletion(d.world.id_map, d.world.store, d.requests, d.jobs, "anon-a", NOW, 1095)
    assert request.status == "pending" and request.customer_digest == customer_digest("alice")
    job = d.jobs.take()
    assert job is not None and sorted(job["ids"]) == ["alice", "anon-a"]

    assert run_job(d.erasure, job, NOW) == RUNNING
    assert d.world.store.load(["alice", "anon-a"]) == {}
    email = identifier_digest("email", "alice@example.com")
    for digest in (customer_digest("alice"), customer_digest("anon-a"), email):
        assert d.world.id_map.items[digest]["kind"] == "tombstone"
        assert "canonical" not in d.world.id_map.items[digest]
    # The exited row goes now; the current membership and the entered delivery wait for the pipeline's exits.
    assert (members_partition("browsers", "anon-a"), "anon-a") not in d.members.items
    assert (members_partition("browsers", "alice"), "alice") in d.members.items
    assert set(d.stores.ledger) == {"meta\x1fbrowsers\x1falice", "meta\x1fvip\x1fbob"}
    assert d.stores.quarantine["quarantine/2026/01/01/s-1.jsonl"] == [quarantined("bob", {"userId": "bob"}) + "\n"]

    verify, delay = d.jobs.messages[0]
    assert verify["phase"] == VERIFY and delay == 60
    d.pipeline_exits()
    assert run_job(d.erasure, d.jobs.take() or {}, NOW + 60) == RUNNING  # it erased the exits' rows: once more
    assert run_job(d.erasure, d.jobs.take() or {}, NOW + 120) == DONE  # a pass that found nothing
    stored = d.requests.get(request.request_id)
    assert stored is not None and stored.status == DONE
    assert stored.counts == {"id_map": 3, "profiles": 2, "members": 2, "ledger": 1, "quarantine": 2}
    assert not any(c == "alice" or c == "anon-a" for _, c in d.members.items)
    assert set(d.stores.ledger) == {"meta\x1fvip\x1fbob"}
    assert d.jobs.messages == []


def test_a_redelivered_job_repeats_nothing_and_a_finished_request_stays_finished() -> None:
    d = started()
    job = d.jobs.take() or {}
    run_job(d.erasure, job, NOW)
    run_job(d.erasure, job, NOW)  # redelivered
    d.pipeline_exits()
    assert run_job(d.erasure, d.jobs.take() or {}, NOW + 60) == RUNNING
    assert run_job(d.erasure, d.jobs.take() or {}, NOW + 120) == DONE
    stored = d.requests.get(job["request_id"])
    assert stored is not None and stored.counts["id_map"] == 3 and stored.counts["profiles"] == 2
    assert run_job(d.erasure, d.jobs.take() or {}, NOW + 61) == DONE  # the redelivery's own verify
    assert run_job(d.erasure, job, NOW + 62) == DONE
    assert d.jobs.messages == []


def test_a_deletion_whose_exits_never_come_fails_with_the_reason() -> None:
    d = started()
    statuses = []
    while (job := d.jobs.take()) is not None:
        statuses.append(run_job(d.erasure, job, NOW))
    assert statuses == [RUNNING, RUNNING, RUNNING, RUNNING, FAILED]
    [stored] = d.requests.requests.values()
    assert stored.status == FAILED
    assert "1 memberships are still in the members index" in stored.reason
    assert "alice" not in stored.reason


def test_a_profile_recreated_by_a_racing_batch_is_erased_by_the_verify_pass() -> None:
    d = started()
    run_job(d.erasure, d.jobs.take() or {}, NOW)
    d.world.store.save(Profile("alice"), 0)  # a batch that read the id map before the tombstone
    d.pipeline_exits()
    run_job(d.erasure, d.jobs.take() or {}, NOW + 60)
    assert d.world.store.load(["alice"]) == {}


def test_a_pass_that_erased_something_is_followed_by_another_before_the_request_is_done() -> None:
    d = started()
    assert run_job(d.erasure, d.jobs.take() or {}, NOW) == RUNNING
    d.pipeline_exits()
    d.world.store.save(Profile("alice"), 0)  # re-created meanwhile: its own exits may still be on their way
    assert run_job(d.erasure, d.jobs.take() or {}, NOW + 60) == RUNNING
    assert run_job(d.erasure, d.jobs.take() or {}, NOW + 120) == DONE  # a pass that found nothing


def test_a_customer_deleted_again_is_tombstoned_from_the_later_deletion() -> None:
    d = started()
    first = d.jobs.take() or {}
    run_job(d.erasure, first, NOW)
    again = {**first, "request_id": "req-again", "deleted_at": NOW + 3600}
    run_job(d.erasure, again, NOW + 3600)
    assert d.world.id_map.read([customer_digest("alice")]).tombstones == {customer_digest("alice"): NOW + 3600}


def test_an_address_now_held_by_another_customer_is_left_to_them() -> None:
    d = Deployment()
    d.alice()
    address = identifier_digest("email", "alice@example.com")
    d.world.id_map.index(address, "email", "carol", NOW - 10)  # carol took the address over
    start_deletion(d.world.id_map, d.world.store, d.requests, d.jobs, "alice", NOW, 1095)
    run_job(d.erasure, d.jobs.take() or {}, NOW)
    assert d.world.id_map.links([address]) == {address: "carol"}


def test_unknown_and_deleted_customers_are_not_found_and_bad_jobs_are_refused() -> None:
    d = Deployment()
    with pytest.raises(UnknownCustomer) as raised:
        start_deletion(d.world.id_map, d.world.store, d.requests, d.jobs, "nobody", NOW, 1095)
    assert "nobody" not in str(raised.value)
    assert d.requests.requests == {} and d.jobs.messages == []
    with pytest.raises(InvalidJob):
        run_job(d.erasure, {"request_id": "r"}, NOW)


def test_an_export_holds_everything_and_is_recorded() -> None:
    d = Deployment()
    d.alice()
    export = export_customer(d.world.id_map, d.world.store, d.stores, d.requests, "anon-a", NOW, 1095)
    document = export_document(export, ENGINE.catalogue, NOW)
    assert document["profile"]["customer_id"] == "alice"
    assert document["ids"] == {"canonical_id": "alice", "emails": ["Alice@Example.com"],
                               "merged_ids": [{"id": "anon-a", "at": document["ids"]["merged_ids"][0]["at"],
                                               "message_id": "m-2"}]}
    assert document["deliveries"] == [
        {"destination": "meta", "segment_id": "browsers", "kind": "entered", "version": 1},
        {"destination": "meta", "segment_id": "vip", "kind": "exited", "version": 3}]
    assert set(document["consent"]) >= {"categories", "history", "unsubscribed_at"}
    recorded = d.requests.get(document["request_id"])
    assert recorded is not None and (recorded.kind, recorded.status) == ("export", "done")
    assert recorded.customer_digest == customer_digest("alice")
