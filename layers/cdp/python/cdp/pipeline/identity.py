"""Identity in the ingest: merged ids resolved for a whole batch, and merges made exact under concurrency.

A customer is canonically their ``userId``. An ``identify`` with both a ``userId`` and an ``anonymousId``, or an
``alias``, merges the other id into it (:func:`cdp.core.identity.merge_of`). The protocol, per merge of id ``a``
into customer ``b`` (each after resolving both through the id map, so a chain ends at one customer):

1. **Link.** The id map gets ``a -> b``, written on condition that ``a`` points nowhere else. Two merges of ``a``
   into different customers cannot both succeed; the loser's record is retried and sees the winner's link.
2. **Freeze.** ``a``'s profile is marked merged into ``b`` (``mt``) by the conditional profile write, which also
   makes it leave all its segments (clause ``merged``). A profile that did not exist is created as a marker. From
   then on nothing changes ``a``'s profile: a writer that read ``a`` before the mark finds its put refused (the
   version moved), reloads, sees the mark and *forwards* its events to ``b`` instead.
3. **Absorb.** ``b``'s next write merges ``a``'s frozen profile in (:func:`cdp.core.merge.merge_profiles`) and
   records ``a`` among its merged ids (``mg``) in the same conditional put, so a snapshot is absorbed exactly once
   whatever is retried. Every segment is then evaluated on the merged profile (clause ``merged``).

Each step can be retried and repeats nothing: a link to the same customer is no change, a marked profile is not
marked again, an absorbed id is not absorbed again. A batch that stops between steps is retried (its merge message
fails with the reason), and any later message for ``a`` also completes the merge: it resolves to ``b``, loads
``a``'s profile with the batch, marks it if it is not marked, and ``b``'s write absorbs it.

Events for a merged id go to its canonical customer. The stream's partition key stays the id the producer sent, so
events for ``a`` and for ``b`` can be on different shards: their order relative to each other is not kept, and
those for ``a`` are deduplicated by message id instead of the shard watermark (the fold is order-insensitive in
what it counts; see :mod:`cdp.pipeline.ingest`).

Reads: the id map once per batch for all its ids (a further round only for a chain), the profiles in the batch's one
load. Writes per merge: one id-map put and one profile put for the absorbed side; the canonical side's put is the
one its events make anyway.
"""

from __future__ import annotations

import copy
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cdp.core.engine import Transition
from cdp.core.events import Event
from cdp.core.identity import Merge, customer_digest, identifier_digest, merge_of, resolve_all
from cdp.core.merge import freeze_merged
from cdp.core.profile import MAX_MERGES, Profile
from cdp.pipeline.write import write_profile
from cdp.ports import ConflictError, IdentityMap, ProfileStore, TransientError


@dataclass(frozen=True)
class Identity:
    """The id map and the merge rules, as the ingest uses them."""

    id_map: IdentityMap
    merge_known: bool = False  # merge a customer known by user id into another (Segment refuses by default)
    max_merges: int = MAX_MERGES  # ids merged into one customer at most
    # What an event of a deleted customer (a tombstoned id) does: "block" drops it; "fresh" starts a new profile
    # with it when it happened after the deletion (older ones, redelivered or replayed, are dropped either way).
    after_deletion: str = "block"


@dataclass
class IdentityResult:
    """What identity did in one batch."""

    merges: int = 0  # ids merged into a customer (linked and frozen)
    refused: Tally[str] = field(default_factory=Tally)  # merges refused, by reason: known, limit, deleted
    forwarded: int = 0  # events applied to the customer their id was merged into
    absorbed: int = 0  # frozen profiles merged into their customer
    emails_indexed: int = 0
    map_reads: int = 0  # batched id-map reads
    transitions: list[Transition] = field(default_factory=list)  # the merged profiles' exits


@dataclass
class Resolution:
    """Every id of a batch and its canonical customer, and the merges this batch made."""

    roots: dict[str, str]
    messages: dict[str, str] = field(default_factory=dict)  # merged id -> the message that merged it
    deleted: dict[str, float] = field(default_factory=dict)  # id of a deleted customer -> when it was deleted

    def root(self, customer_id: str) -> str:
        return self.roots.get(customer_id, customer_id)

    def relink(self, absorbed: str, canonical: str) -> None:
        for customer_id, root in self.roots.items():
            if root == absorbed:
                self.roots[customer_id] = canonical
        self.roots[absorbed] = canonical


def ids_of(events: Iterable[Event]) -> set[str]:
    """Every id the events name as a customer, a merged id included."""
    ids: set[str] = set()
    for event in events:
        ids.add(event.customer_id)
        merge = merge_of(event)
        if merge is not None:
            ids.update((merge.canonical, merge.absorbed))
    return ids


def resolve_batch(identity: Identity, ids: set[str], result: IdentityResult) -> Resolution:
    """The canonical customer of every id, and which ids are a deleted customer's, in batched reads of the id map
    (raises TransientError). The tombstones come with the same reads: deletion costs the ingest no extra read."""
    tombstones: dict[str, float] = {}

    def fetch(digests: list[str]) -> Mapping[str, str]:
        result.map_reads += 1
        read = identity.id_map.read(digests)
        tombstones.update(read.tombstones)
        return read.links

    roots = resolve_all(ids, fetch, identity.max_merges)
    deleted: dict[str, float] = {}
    for customer_id, root in roots.items():
        for either in (customer_id, root):
            at = tombstones.get(customer_digest(either))
            if at is not None:
                deleted[customer_id] = max(at, deleted.get(customer_id, at))
    return Resolution(roots, deleted=deleted)


def deletion_drops(identity: Identity, resolution: Resolution, event: Event) -> bool:
    """Whether the event is a deleted customer's and must be dropped: always when it happened before the deletion
    (a redelivered or replayed one), and after it too unless a fresh profile is configured."""
    at = resolution.deleted.get(event.customer_id)
    if at is None:
        return False
    return identity.after_deletion != "fresh" or event.timestamp <= at


def profiles_to_load(resolution: Resolution) -> list[str]:
    """The canonical customers and every merged id among the batch's (a merged id's profile is needed when its
    merge is to be completed, and then it comes with the same load)."""
    return sorted({*resolution.roots.values(), *resolution.roots})


def merge(identity: Identity, merge: Merge, resolution: Resolution, profiles: dict[str, Profile],
          store: ProfileStore, now: float, result: IdentityResult) -> str | None:
    """Link and freeze one merge (steps 1 and 2); the canonical side absorbs at its write. Returns why the merge
    message must be retried, or None (merged, refused, or nothing to do)."""
    source, target = resolution.root(merge.absorbed), resolution.root(merge.canonical)
    if any(i in resolution.deleted for i in (merge.absorbed, merge.canonical, source, target)):
        result.refused["deleted"] += 1  # a deleted customer is never merged, into or from
        return None
    if source == target:
        return None  # one customer already (a redelivered merge, or an earlier message's)
    absorbed = profiles.get(source)
    if absorbed is not None and absorbed.merged_into is not None:
        return "the id map changed while the batch was read"  # marked, but its link was not read: retried
    # An id that already belongs to another customer brings that customer along: a merge of two known ones.
    refusal = _refusal(identity, absorbed, profiles.get(target), source != merge.absorbed, resolution, target)
    if refusal:
        result.refused[refusal] += 1
        return None
    try:
        identity.id_map.link(customer_digest(source), "customer", target, merge.at, merge.message_id)
    except (ConflictError, TransientError) as error:
        return str(error)
    resolution.relink(source, target)
    resolution.messages[source] = merge.message_id
    reason = freeze(store, source, absorbed, target, now, profiles, result)
    if reason is None:
        result.merges += 1
    return reason


def _refusal(identity: Identity, absorbed: Profile | None, canonical: Profile | None, owned: bool,
             resolution: Resolution, target: str) -> str | None:
    if (owned or (absorbed is not None and absorbed.known)) and not identity.merge_known:
        return "known"  # two customers known by user id
    pending = sum(1 for merged, root in resolution.roots.items() if root == target and merged in resolution.messages)
    held = len(canonical.merges) if canonical is not None else 0
    brought = len(absorbed.merges) if absorbed is not None else 0
    if held + pending + brought + 1 > identity.max_merges:
        return "limit"
    return None


def freeze(store: ProfileStore, source: str, absorbed: Profile | None, target: str, now: float,
           profiles: dict[str, Profile], result: IdentityResult) -> str | None:
    """Step 2 for ``source`` (also to complete a merge a stopped batch left linked but not frozen)."""
    exits: list[Transition] = []

    def mark(profile: Profile) -> bool:
        marked = freeze_merged(profile, target, now)
        exits[:] = marked or []
        return marked is not None

    # A copy: a put that fails must leave the batch's loaded profile unmarked (it is not frozen then).
    write = write_profile(store, source, copy.deepcopy(absorbed), mark)
    if write.failed:
        return write.reason
    profiles[source] = write.profile
    if write.written:
        result.transitions += exits
    return None


def complete(resolution: Resolution, profiles: dict[str, Profile], store: ProfileStore, now: float,
             result: IdentityResult) -> dict[str, str]:
    """Freeze every loaded merged id whose link exists but whose profile is not marked yet (a merge a stopped
    batch left half done). Returns, per id that could not be frozen, why (its customer's records retry)."""
    failures: dict[str, str] = {}
    for customer_id, root in resolution.roots.items():
        profile = profiles.get(customer_id)
        if root == customer_id or profile is None or profile.merged_into is not None:
            continue
        reason = freeze(store, customer_id, profile, root, now, profiles, result)
        if reason is not None:
            failures[root] = reason
    return failures


def snapshots(resolution: Resolution, profiles: Mapping[str, Profile]) -> dict[str, list[Profile]]:
    """Per canonical customer, the frozen profiles among those loaded that belong to it (absorbed at its write
    unless it holds them already)."""
    frozen: dict[str, list[Profile]] = {}
    for customer_id, profile in profiles.items():
        root = resolution.root(customer_id)
        if root != customer_id and profile.merged_into is not None:
            frozen.setdefault(root, []).append(profile)
    return frozen


def index_email(identity: Identity, profile: Profile, before: str | None, absorbed: bool, now: float) -> bool:
    """Point the profile's email address at it in the id map when it is new to the profile (or came with a merge),
    so ``?email=`` finds the customer; whether it wrote. Raises TransientError.

    Written before the profile's put: if that put fails, the entry points at a customer whose profile does not
    hold the address yet, and a lookup checks the profile's address, so it finds nothing rather than the wrong one.
    """
    email = profile.traits.get("email")
    if not isinstance(email, str) or not email.strip() or (email == before and not absorbed):
        return False
    identity.id_map.index(identifier_digest("email", email), "email", profile.customer_id, now)
    return True
