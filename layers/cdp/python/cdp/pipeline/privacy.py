"""Data subject requests: a customer's deletion and export, over the ports (no AWS here).

**Deletion** (:func:`start_deletion`, then :func:`run_job` in the privacy function). Starting one resolves the
id to its canonical customer, writes the request (``pending``; the audit record, holding only the request id and
the customer's digest) and queues a job naming the ids to erase (the queue holds them for a day at most). The job:

1. **Tombstones first**, at the digest of every id of the customer (canonical id, merged ids, email addresses,
   and whatever else the id map points at the customer), so nothing re-creates the customer meanwhile: the
   ingest drops their events, redelivered and replayed ones included (see :mod:`cdp.pipeline.ingest`).
2. **Profiles** of every id deleted. The table stream's REMOVE makes the changes function publish exits (clause
   ``deleted``): the integrations send the removes and forget their ledger rows; the due index is the profiles
   table's own index, so it goes with the item.
3. **Members index** rows of every (segment, id) that are exits are deleted; current memberships are left for
   the changes function's exits (deleting them here would put the segment's size counters off), and the next pass
   deletes the exit rows those leave. **Ledger** rows likewise: rows of memberships still entered are left for the
   integrations, which send the remove first.
4. **Quarantine**: every record mentioning an id or address is removed from every object version.
5. A **verify pass** (the same job, delayed) repeats 1-4, so whatever raced the first pass (an ingest batch that
   read the id map before the tombstone) is erased too; it finishes the request, ``done`` with per-store counts,
   or, after :data:`VERIFY_ATTEMPTS` passes with memberships or deliveries still not removed, ``failed`` with the
   reason. Every step is idempotent: a redelivered job repeats deletes of what is gone and counts nothing again.

**Export** (:func:`export_customer`): everything held about the customer, assembled on request and answered
directly: nothing is stored server-side, so there are no export files to delete. It is recorded as a request
too (kind ``export``, ``done``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cdp.core.identity import customer_digest, identifier_digest, resolve_all
from cdp.core.profile import Profile
from cdp.pipeline.changes import members_partition
from cdp.pipeline.fanout import ENTERED
from cdp.ports import (
    CustomerStores,
    IdentityMap,
    PrivacyJobs,
    PrivacyRequest,
    PrivacyRequests,
    ProfileLookup,
    Tombstones,
)

DAY = 86_400
DELETE, EXPORT = "delete", "export"
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
ERASE, VERIFY = "erase", "verify"
STORES = ("id_map", "profiles", "members", "ledger", "quarantine")
VERIFY_ATTEMPTS = 10  # verify passes before a request that cannot finish is failed (10 min at the default delay)
FOLLOW_LIMIT = 4


class UnknownCustomer(LookupError):
    """No live profile has this id (never repeated back)."""


def new_request_id() -> str:
    return f"req-{secrets.token_hex(12)}"


def live_customer(id_map: IdentityMap | None, profiles: ProfileLookup, customer_id: str) -> Profile:
    """The live profile an id belongs to (through the id map, following frozen profiles' ``merged_into``)."""
    current, seen = customer_id, set()
    for _ in range(FOLLOW_LIMIT):
        if id_map is not None:
            current = resolve_all({current}, id_map.links)[current]
        profile = profiles.get(current)
        if profile is None or current in seen:
            break
        if profile.merged_into is None:
            return profile
        seen.add(current)
        current = profile.merged_into
    raise UnknownCustomer("customerId: no profile has this customer id")


def customer_ids(profile: Profile) -> list[str]:
    """The canonical id and every id merged into it."""
    return list(dict.fromkeys([profile.customer_id, *(str(merged) for merged, _, _ in profile.merges)]))


def customer_emails(profile: Profile) -> list[str]:
    email = profile.traits.get("email")
    return [email] if isinstance(email, str) and email.strip() else []


def _request(kind: str, status: str, profile: Profile, now: float, request_days: int) -> PrivacyRequest:
    return PrivacyRequest(new_request_id(), kind, status, customer_digest(profile.customer_id), now, now,
                          dict.fromkeys(STORES, 0) if kind == DELETE else {}, "", int(now) + request_days * DAY)


def start_deletion(id_map: IdentityMap | None, profiles: ProfileLookup, requests: PrivacyRequests,
                   jobs: PrivacyJobs, customer_id: str, now: float, request_days: int) -> PrivacyRequest:
    """Record a deletion request (pending) and queue its job; raises :class:`UnknownCustomer`."""
    profile = live_customer(id_map, profiles, customer_id)
    request = _request(DELETE, PENDING, profile, now, request_days)
    requests.create(request)
    jobs.send(job_message(request.request_id, customer_ids(profile), customer_emails(profile), now))
    return request


def job_message(request_id: str, ids: Sequence[str], emails: Sequence[str], deleted_at: float,
                phase: str = ERASE, attempt: int = 0) -> dict[str, Any]:
    return {"request_id": request_id, "ids": list(ids), "emails": list(emails), "deleted_at": deleted_at,
            "phase": phase, "attempt": attempt}


@dataclass(frozen=True)
class Erasure:
    """What a deletion job erases with, and its settings."""

    requests: PrivacyRequests
    jobs: PrivacyJobs
    tombstones: Tombstones
    stores: CustomerStores
    segment_ids: Sequence[str]  # the catalogue's: the members index is keyed by segment
    member_shards: int
    tombstone_days: int
    verify_delay_seconds: int = 60
    verify_attempts: int = VERIFY_ATTEMPTS


@dataclass
class Pass:
    """One pass over the stores: what it erased, and what it must leave to the pipeline for now."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STORES, 0))
    memberships_left: int = 0  # current members-index rows (the changes function exits them)
    deliveries_left: int = 0  # ledger rows of entered memberships (the integrations remove them)


class InvalidJob(ValueError):
    """A job message without the fields a job has (never retried)."""


def run_job(erasure: Erasure, message: dict[str, Any], now: float) -> str:
    """One pass of a deletion job; returns the request's status after it."""
    try:
        request_id, phase, attempt = str(message["request_id"]), str(message["phase"]), int(message["attempt"])
        ids, emails = [str(i) for i in message["ids"]], [str(e) for e in message["emails"]]
        deleted_at = float(message["deleted_at"])
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidJob(f"the job message lacks {error}") from None
    stored = erasure.requests.get(request_id)
    if stored is not None and stored.status in (DONE, FAILED):
        return stored.status  # a redelivered message of a finished request
    done = sweep(erasure, request_id, ids, emails, deleted_at)
    left = done.memberships_left + done.deliveries_left
    # Done only after a pass that found nothing to erase: what a pass erased (a profile a racing batch made,
    # say) may still have its exits on the way through the table stream.
    erased = sum(n for store, n in done.counts.items() if store != "id_map")
    if phase == ERASE or ((left or erased) and attempt < erasure.verify_attempts):
        erasure.requests.update(request_id, RUNNING, done.counts, "", now)
        erasure.jobs.send(job_message(request_id, ids, emails, deleted_at, VERIFY, attempt + int(phase == VERIFY)),
                          erasure.verify_delay_seconds)
        return RUNNING
    if left:
        reason = (f"after {attempt} verify passes, {done.memberships_left} memberships are still in the members "
                  f"index and {done.deliveries_left} deliveries are not removed from their destinations "
                  "(see the changes and integration functions' dead letters)")
        erasure.requests.update(request_id, FAILED, done.counts, reason, now)
        return FAILED
    erasure.requests.update(request_id, DONE, done.counts, "", now)
    return DONE


def sweep(erasure: Erasure, request_id: str, ids: Sequence[str], emails: Sequence[str], deleted_at: float) -> Pass:
    """Tombstones, profiles, members index, ledger, quarantine: in that order (the tombstones stop re-creation)."""
    done = Pass()
    digests = {customer_digest(i) for i in ids}
    for customer_id in ids:
        digests.update(erasure.tombstones.digests_of(customer_id))
    # The profile's addresses, unless the id map gives one to someone else now (an address changes hands).
    addresses = {identifier_digest("email", e) for e in emails} - digests
    expires = int(deleted_at) + erasure.tombstone_days * DAY
    done.counts["id_map"] = sum(erasure.tombstones.bury(d, deleted_at, request_id, expires) for d in sorted(digests))
    done.counts["id_map"] += sum(erasure.tombstones.bury(d, deleted_at, request_id, expires, owner=ids[0])
                                 for d in sorted(addresses))
    stores = erasure.stores
    done.counts["profiles"] = sum(stores.delete_profile(customer_id) for customer_id in ids)
    keys = [(members_partition(segment_id, customer_id, erasure.member_shards), customer_id)
            for segment_id in erasure.segment_ids for customer_id in ids]
    for key, current in stores.member_rows(keys).items():
        if current:
            done.memberships_left += 1
        else:
            done.counts["members"] += int(stores.delete_member_row(key))
    for customer_id in ids:
        for row in stores.ledger_rows(customer_id):
            if row.kind == ENTERED:
                done.deliveries_left += 1
            else:
                done.counts["ledger"] += int(stores.delete_ledger_row(row.delivery))
    needles = list(dict.fromkeys([*ids, *emails, *(e.strip().lower() for e in emails)]))
    done.counts["quarantine"] = stores.scrub_quarantine(needles)
    return done


# ---- export -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """A membership delivered to a destination, as its ledger row records it."""

    destination: str
    segment_id: str
    kind: str
    version: int


@dataclass
class CustomerExport:
    profile: Profile
    deliveries: list[Delivery]
    request: PrivacyRequest


def deliveries_of(stores: CustomerStores, ids: Sequence[str]) -> list[Delivery]:
    """The ledger's membership rows of the customer's ids (rows that are not memberships are left out)."""
    found: list[Delivery] = []
    for customer_id in ids:
        for row in stores.ledger_rows(customer_id):
            parts = row.delivery.split("\x1f")
            if len(parts) == 3 and row.kind:
                found.append(Delivery(parts[0], parts[1], row.kind, row.version))
    return sorted(found, key=lambda d: (d.destination, d.segment_id))


def export_customer(id_map: IdentityMap | None, profiles: ProfileLookup, stores: CustomerStores,
                    requests: PrivacyRequests, customer_id: str, now: float, request_days: int) -> CustomerExport:
    """Everything held about the customer (raises :class:`UnknownCustomer`), recorded as a done export request."""
    profile = live_customer(id_map, profiles, customer_id)
    deliveries = deliveries_of(stores, customer_ids(profile))
    request = _request(EXPORT, DONE, profile, now, request_days)
    requests.create(request)
    return CustomerExport(profile, deliveries, request)
