"""Which messages merge customers, and how ids resolve through the id map, chains included."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp.core.events import Event, normalise
from cdp.core.identity import (
    Merge,
    customer_digest,
    identifier_digest,
    merge_of,
    resolve,
    resolve_all,
)
from cdp.core.profile import MAX_MERGES

AT = "2026-10-01T10:00:00Z"


def event(**fields: object) -> Event:
    return normalise({"messageId": "m-1", "timestamp": AT, **fields})


def test_an_identify_with_both_ids_merges_the_anonymous_one_into_the_user() -> None:
    merge = merge_of(event(type="identify", userId="u-1", anonymousId="anon-9"))
    assert merge == Merge("u-1", "anon-9", "m-1", merge.at if merge else 0)
    assert merge is not None and merge.at > 0


def test_an_alias_merges_the_previous_id_into_the_user() -> None:
    merge = merge_of(event(type="alias", userId="u-1", previousId="old-7"))
    assert merge is not None and (merge.canonical, merge.absorbed) == ("u-1", "old-7")


@pytest.mark.parametrize("fields", [
    {"type": "identify", "userId": "u-1"},
    {"type": "identify", "anonymousId": "anon-9"},
    {"type": "identify", "userId": "u-1", "anonymousId": "u-1"},
    {"type": "track", "event": "E", "userId": "u-1", "anonymousId": "anon-9"},
    {"type": "alias", "userId": "u-1", "previousId": "u-1"},
])
def test_other_messages_merge_nothing(fields: dict[str, object]) -> None:
    assert merge_of(event(**fields)) is None


def test_digests_are_by_kind_and_never_the_raw_value() -> None:
    assert customer_digest("alice") != identifier_digest("email", "alice")
    assert "alice" not in customer_digest("alice") and len(customer_digest("alice")) == 64
    assert identifier_digest("email", " Alice@Example.com ") == identifier_digest("email", "alice@example.com")
    with pytest.raises(ValueError, match="kind"):
        identifier_digest("phone", "1")


def links_of(pairs: dict[str, str]) -> dict[str, str]:
    return {customer_digest(source): target for source, target in pairs.items()}


def test_a_chain_resolves_to_one_canonical_id() -> None:
    links = links_of({"a": "b", "b": "c"})
    assert resolve("a", links) == resolve("b", links) == resolve("c", links) == "c"
    assert resolve("z", links) == "z"


def test_a_cycle_stops_instead_of_looping() -> None:
    links = links_of({"a": "b", "b": "a"})
    assert resolve("a", links) in {"a", "b"}


def test_resolving_a_batch_without_merges_reads_the_map_once() -> None:
    reads: list[list[str]] = []

    def fetch(digests: list[str]) -> dict[str, str]:
        reads.append(digests)
        return {}

    assert resolve_all({"a", "b", "c"}, fetch) == {"a": "a", "b": "b", "c": "c"}
    assert len(reads) == 1 and len(reads[0]) == 3


def test_a_chain_costs_one_more_read_per_step_only() -> None:
    table = links_of({"a": "b", "b": "c"})
    reads: list[list[str]] = []

    def fetch(digests: list[str]) -> dict[str, str]:
        reads.append(digests)
        return {d: table[d] for d in digests if d in table}

    assert resolve_all({"a", "x"}, fetch) == {"a": "c", "x": "x"}
    assert [len(r) for r in reads] == [2, 1, 1]  # the ids; then b (a's target); then c (b's target)


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=30))
def test_resolution_agrees_with_following_links_one_by_one(merges: list[tuple[int, int]]) -> None:
    """Links written as merges are (absorbed -> canonical, never re-pointed): resolving by rounds of batched
    reads gives what following each link by itself gives."""
    pairs: dict[str, str] = {}
    for absorbed, canonical in merges:
        source, target = f"c{absorbed}", f"c{canonical}"
        if source != target and source not in pairs and resolve(target, links_of(pairs)) != source:
            pairs[source] = target  # no cycle: the target does not already resolve to the source
    table = links_of(pairs)
    ids = {f"c{n}" for n in range(10)}
    resolved = resolve_all(ids, lambda digests: {d: table[d] for d in digests if d in table})
    for customer_id in ids:
        current = customer_id
        for _ in range(MAX_MERGES):
            current = pairs.get(current, current)
        assert resolved[customer_id] == current
