"""Tombstones in the ingest: a deleted customer's events are dropped (redelivered and replayed ones too), a fresh
profile starts only when configured and only from events after the deletion, merges with them are refused, and
none of it costs the batch a read of the id map beyond its one."""

from __future__ import annotations

from cdp.core.identity import customer_digest, identifier_digest
from cdp.pipeline.identity import Identity
from tests.unit.test_ingest_identity import NOW, B, World, identify, track


def deleted(world: World, customer_id: str, at: float) -> None:
    world.id_map.bury(customer_digest(customer_id), at, "req-1", int(at) + 86_400)
    world.store._encoded.pop(customer_id, None)
    world.store._keys.pop(customer_id, None)


def test_a_redelivered_old_event_of_a_deleted_customer_is_dropped_and_counted() -> None:
    world = World()
    world.ingest([track("alice", "Product Viewed", B, "m-1", product_id="p1")])
    deleted(world, "alice", B + 100)
    reads = world.id_map.reads
    result = world.ingest([track("alice", "Product Viewed", B, "m-1", product_id="p1"),
                           track("alice", "Product Viewed", B + 50, "m-2", product_id="p2")])
    assert result.deleted_customers == 2
    assert result.failed == [] and result.applied == 0
    assert world.store.load(["alice"]) == {}
    assert world.id_map.reads == reads + 1  # the tombstones came with the batch's one read


def test_a_new_event_after_the_deletion_is_dropped_unless_a_fresh_profile_is_configured() -> None:
    blocked = World()
    deleted(blocked, "alice", B + 100)
    assert blocked.ingest([track("alice", "Product Viewed", B + 200, "m-3", product_id="p3")]).deleted_customers == 1
    assert blocked.store.load(["alice"]) == {}

    fresh = World()
    fresh.identity = Identity(fresh.id_map, after_deletion="fresh")
    deleted(fresh, "alice", B + 100)
    result = fresh.ingest([track("alice", "Product Viewed", B + 50, "m-old", product_id="p1"),
                           track("alice", "Product Viewed", B + 200, "m-new", product_id="p3")])
    assert result.deleted_customers == 1  # the one from before the deletion
    assert result.applied == 1
    profile = fresh.profile("alice")
    assert profile.counter("Product Viewed").count == 1  # type: ignore[union-attr]


def test_merges_into_or_from_a_deleted_customer_are_refused() -> None:
    world = World()
    deleted(world, "anon-1", B + 100)
    result = world.ingest([identify("bob", "anon-1", B + 200, "m-merge")])
    assert result.identity.refused["deleted"] == 1
    assert result.identity.merges == 0
    assert world.id_map.links([customer_digest("anon-1")]) == {}  # the tombstone is still there
    assert world.id_map.read([customer_digest("anon-1")]).tombstones

    other = World()
    deleted(other, "carol", B + 100)
    other.identity = Identity(other.id_map, after_deletion="fresh")
    result = other.ingest([identify("carol", "anon-2", B + 200, "m-into")])
    assert result.identity.refused["deleted"] == 1
    assert other.id_map.links([customer_digest("anon-2")]) == {}


def test_an_email_index_write_never_replaces_a_tombstone() -> None:
    world = World()
    world.identity = Identity(world.id_map, after_deletion="fresh")
    email = identifier_digest("email", "dana@example.com")
    world.id_map.bury(email, B, "req-2", int(NOW) + 86_400)
    world.ingest([identify("dana", None, B + 200, "m-id", email="Dana@example.com")])
    assert world.id_map.items[email]["kind"] == "tombstone"
    assert world.profile("dana").traits["email"] == "Dana@example.com"
