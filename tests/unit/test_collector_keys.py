"""Write keys (cdp.collector.keys): sources, digests, rotation with an overlap, revocation, the collector's cache."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from cdp.collector.keys import (
    DEFAULT_OVERLAP_SECONDS,
    KEY_ID_LENGTH,
    KEY_PREFIX,
    KeyCache,
    SourceError,
    WriteKey,
    create_source,
    key_digest,
    list_sources,
    revoke_source,
    rotate_source,
)
from cdp_dev.memory import MemoryKeyStore

T0 = 1_792_497_600.0
HOUR = 3600.0


def valid(store: MemoryKeyStore, key: str, now: float) -> bool:
    found = store.find(key_digest(key))
    return found is not None and found.valid_at(now)


def expiry(store: MemoryKeyStore, key: str) -> float | None:
    found = store.find(key_digest(key))
    assert found is not None
    return found.expires_at


class CountingStore(MemoryKeyStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def find(self, digest: str) -> WriteKey | None:
        self.reads[digest] += 1
        return super().find(digest)


# ---- create ---------------------------------------------------------------------------------------


def test_create_makes_a_key_stored_only_as_its_digest() -> None:
    store = MemoryKeyStore()
    key = create_source(store, "web-shop", T0)
    assert key.startswith(KEY_PREFIX)
    assert len(key) >= 32
    [stored] = store.all_keys()
    assert stored.digest == hashlib.sha256(key.encode()).hexdigest() == key_digest(key)
    assert stored == WriteKey(key_digest(key), "web-shop", key[:KEY_ID_LENGTH], T0)
    assert key not in repr(stored)  # the key itself is nowhere in what is stored
    assert stored.key_id != key and key.startswith(stored.key_id)
    assert stored.state(T0) == "active" and stored.valid_at(T0 + 10 * 365 * 86_400)


def test_every_key_is_new() -> None:
    store = MemoryKeyStore()
    keys = {create_source(store, f"source-{n}", T0) for n in range(20)}
    assert len(keys) == 20
    assert len({k.digest for k in store.all_keys()}) == 20


def test_create_once_per_name() -> None:
    store = MemoryKeyStore()
    create_source(store, "ios", T0)
    with pytest.raises(SourceError, match="exists"):
        create_source(store, "ios", T0 + 1)
    assert len(store.keys_of("ios")) == 1


@pytest.mark.parametrize("name", ["", "Web", "web shop", "-web", "web_shop", "wéb", "a" * 64, "web/1", "web."])
def test_bad_names_are_refused(name: str) -> None:
    store = MemoryKeyStore()
    with pytest.raises(SourceError, match="source name"):
        create_source(store, name, T0)
    assert store.all_keys() == []


@pytest.mark.parametrize("name", ["a", "0", "web-shop-2", "a" * 63, "9-lives"])
def test_good_names_are_accepted(name: str) -> None:
    store = MemoryKeyStore()
    create_source(store, name, T0)
    assert [k.source for k in store.all_keys()] == [name]


# ---- rotate ---------------------------------------------------------------------------------------


def test_rotate_keeps_the_old_key_valid_until_the_overlap_ends() -> None:
    store = MemoryKeyStore()
    old = create_source(store, "web", T0)
    new = rotate_source(store, "web", T0 + HOUR, overlap=2 * HOUR)
    assert new != old
    end = T0 + 3 * HOUR
    assert valid(store, old, T0 + HOUR) and valid(store, old, end - 0.001)
    assert not valid(store, old, end) and not valid(store, old, end + 86_400)
    assert valid(store, new, T0 + HOUR) and valid(store, new, end + 86_400)
    old_record = store.find(key_digest(old))
    assert old_record is not None
    assert old_record.expires_at == end
    assert (old_record.state(end - 1), old_record.state(end)) == ("expiring", "expired")


def test_rotate_default_overlap_is_a_day() -> None:
    store = MemoryKeyStore()
    old = create_source(store, "web", T0)
    rotate_source(store, "web", T0)
    assert valid(store, old, T0 + DEFAULT_OVERLAP_SECONDS - 1)
    assert not valid(store, old, T0 + DEFAULT_OVERLAP_SECONDS)


def test_rotate_with_no_overlap_retires_the_old_key_at_once() -> None:
    store = MemoryKeyStore()
    old = create_source(store, "web", T0)
    new = rotate_source(store, "web", T0 + 5, overlap=0)
    assert not valid(store, old, T0 + 5)
    assert valid(store, new, T0 + 5)


def test_rotating_twice_never_extends_an_expiry() -> None:
    store = MemoryKeyStore()
    first = create_source(store, "web", T0)
    second = rotate_source(store, "web", T0, overlap=10 * HOUR)
    third = rotate_source(store, "web", T0 + HOUR, overlap=24 * HOUR)
    assert expiry(store, first) == T0 + 10 * HOUR  # not T0 + 25 h
    assert expiry(store, second) == T0 + 25 * HOUR
    assert expiry(store, third) is None
    # A short overlap after a long one shortens it.
    rotate_source(store, "web", T0 + 2 * HOUR, overlap=HOUR)
    assert not valid(store, first, T0 + 3 * HOUR)
    assert not valid(store, second, T0 + 3 * HOUR)
    assert not valid(store, third, T0 + 3 * HOUR)


def test_rotate_leaves_expired_and_revoked_keys_alone() -> None:
    store = MemoryKeyStore()
    old = create_source(store, "web", T0)
    rotate_source(store, "web", T0, overlap=HOUR)
    before = store.find(key_digest(old))
    rotate_source(store, "web", T0 + 2 * HOUR, overlap=HOUR)
    assert store.find(key_digest(old)) == before


def test_rotate_refuses_an_unknown_source_and_a_negative_overlap() -> None:
    store = MemoryKeyStore()
    with pytest.raises(SourceError, match="no source"):
        rotate_source(store, "web", T0)
    create_source(store, "web", T0)
    with pytest.raises(SourceError, match="negative"):
        rotate_source(store, "web", T0, overlap=-1)
    assert len(store.all_keys()) == 1


# ---- revoke ---------------------------------------------------------------------------------------


def test_revoke_all_keys_of_a_source_at_once() -> None:
    store = MemoryKeyStore()
    old = create_source(store, "web", T0)
    new = rotate_source(store, "web", T0 + 1, overlap=HOUR)
    other = create_source(store, "ios", T0)
    assert revoke_source(store, "web", T0 + 2) == 2
    assert not valid(store, old, T0 + 2) and not valid(store, new, T0 + 2)
    assert valid(store, other, T0 + 2)
    record = store.find(key_digest(new))
    assert record is not None and record.state(T0 + 2) == "revoked" and record.revoked_at == T0 + 2
    assert revoke_source(store, "web", T0 + 3) == 0  # nothing left to revoke


def test_revoke_one_key_by_its_id() -> None:
    store = MemoryKeyStore()
    old = create_source(store, "web", T0)
    new = rotate_source(store, "web", T0 + 1, overlap=HOUR)
    assert revoke_source(store, "web", T0 + 2, key_id=old[:KEY_ID_LENGTH]) == 1
    assert not valid(store, old, T0 + 2)
    assert valid(store, new, T0 + 2)


def test_revoke_refuses_an_unknown_source_or_key_id() -> None:
    store = MemoryKeyStore()
    with pytest.raises(SourceError, match="no source"):
        revoke_source(store, "web", T0)
    key = create_source(store, "web", T0)
    with pytest.raises(SourceError, match="no key"):
        revoke_source(store, "web", T0, key_id="wk_nothing")
    assert valid(store, key, T0 + 1)


def test_a_revoked_key_stays_revoked_after_a_rotation() -> None:
    store = MemoryKeyStore()
    old = create_source(store, "web", T0)
    revoke_source(store, "web", T0 + 1)
    new = rotate_source(store, "web", T0 + 2)
    assert not valid(store, old, T0 + 2)
    assert valid(store, new, T0 + 2)


# ---- list -----------------------------------------------------------------------------------------


def test_list_sources_by_name_with_keys_newest_first() -> None:
    store = MemoryKeyStore()
    web1 = create_source(store, "web", T0)
    create_source(store, "android", T0 + 5)
    web2 = rotate_source(store, "web", T0 + 10, overlap=HOUR)
    revoke_source(store, "android", T0 + 20)
    listing = list_sources(store)
    assert [s.name for s in listing] == ["android", "web"]
    android, web = listing
    assert [k.key_id for k in web.keys] == [web2[:KEY_ID_LENGTH], web1[:KEY_ID_LENGTH]]
    assert [k.state(T0 + 30) for k in web.keys] == ["active", "expiring"]
    assert web.valid_keys(T0 + 30) == 2 and web.valid_keys(T0 + 10 + HOUR) == 1
    assert android.valid_keys(T0 + 30) == 0
    assert list_sources(MemoryKeyStore()) == []


# ---- the cache ------------------------------------------------------------------------------------


def test_key_cache_reads_each_digest_once_per_ttl() -> None:
    store = CountingStore()
    key = create_source(store, "web", T0)
    cache = KeyCache(store, ttl=30.0)
    digest = key_digest(key)
    for offset in (0.0, 1.0, 29.9):
        found = cache.find(digest, T0 + offset)
        assert found is not None and found.source == "web"
    assert store.reads[digest] == 1
    cache.find(digest, T0 + 30.0)
    assert store.reads[digest] == 2
    cache.find(digest, T0 + 59.9)
    assert store.reads[digest] == 2


def test_key_cache_remembers_unknown_digests_too() -> None:
    store = CountingStore()
    cache = KeyCache(store, ttl=30.0)
    for n in range(100):
        assert cache.find("unknown-digest", T0 + n * 0.1) is None
    assert store.reads["unknown-digest"] == 1
    # Another digest is its own entry: read on its first use.
    key = create_source(store, "web", T0)
    assert cache.find(key_digest(key), T0 + 1) is not None


def test_key_cache_sees_a_revocation_within_the_ttl() -> None:
    store = CountingStore()
    key = create_source(store, "web", T0)
    cache = KeyCache(store, ttl=30.0)
    first = cache.find(key_digest(key), T0)
    assert first is not None and first.valid_at(T0)
    revoke_source(store, "web", T0 + 1)
    later = cache.find(key_digest(key), T0 + 31)
    assert later is not None and not later.valid_at(T0 + 31)


def test_key_cache_keeps_at_most_size_digests_dropping_the_oldest() -> None:
    store = CountingStore()
    cache = KeyCache(store, ttl=300.0, size=3)
    for digest in ("a", "b", "c", "d"):  # "a" is dropped to make room for "d"
        cache.find(digest, T0)
    for digest in ("b", "c", "d"):
        cache.find(digest, T0 + 1)
    assert store.reads == Counter({"a": 1, "b": 1, "c": 1, "d": 1})
    cache.find("a", T0 + 2)  # read again; "b" makes room for it
    assert store.reads["a"] == 2
    cache.find("b", T0 + 3)
    assert store.reads["b"] == 2
    for digest in ("a", "b", "d"):
        cache.find(digest, T0 + 4)
    assert store.reads == Counter({"a": 2, "b": 2, "c": 1, "d": 1})


def test_key_cache_bound_holds_over_many_digests() -> None:
    store = CountingStore()
    cache = KeyCache(store, ttl=300.0, size=50)
    for n in range(1_000):
        cache.find(f"digest-{n}", T0 + n * 0.001)
    # The last 50 are cached; the first 950 are read again.
    for n in range(950, 1_000):
        cache.find(f"digest-{n}", T0 + 2)
    assert all(store.reads[f"digest-{n}"] == 1 for n in range(950, 1_000))
    cache.find("digest-0", T0 + 2)
    assert store.reads["digest-0"] == 2
