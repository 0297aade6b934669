"""Identity: which messages merge two customers, and how any identifier resolves to its canonical customer.

Pure: no I/O. A customer is known by a ``userId`` and may first have been seen as an ``anonymousId``. An
``identify`` that carries both, or an ``alias`` (``previousId`` -> ``userId``), merges the other id into the
user id, which is canonical. The id map keeps, per identifier, the customer it now belongs to; identifiers are
kept as digests (kind and value, SHA-256), never raw, so the map is also the hashed index that finds a customer
by an email address or an anonymous id. A chain (a -> b, then b -> c) resolves to one canonical id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cdp.core.events import Event
from cdp.core.profile import MAX_MERGES

KINDS = ("customer", "email")


def identifier_digest(kind: str, value: str) -> str:
    """The map's key for an identifier: SHA-256 of kind and value (an email address normalised first)."""
    if kind not in KINDS:
        raise ValueError(f"identifier kind must be one of {', '.join(KINDS)}, not {kind!r}")
    text = value.strip().lower() if kind == "email" else value
    return hashlib.sha256(f"{kind}:{text}".encode()).hexdigest()


def customer_digest(customer_id: str) -> str:
    return identifier_digest("customer", customer_id)


@dataclass(frozen=True)
class Merge:
    """One message's merge: ``absorbed`` becomes part of ``canonical``."""

    canonical: str
    absorbed: str
    message_id: str
    at: float


def merge_of(event: Event) -> Merge | None:
    """The merge a message asks for, if any: an identify with a user id and another anonymous id, or an alias."""
    if event.user_id is None:
        return None
    if event.type == "identify" and event.anonymous_id and event.anonymous_id != event.user_id:
        return Merge(event.user_id, event.anonymous_id, event.message_id, event.timestamp)
    if event.type == "alias" and event.previous_id and event.previous_id != event.user_id:
        return Merge(event.user_id, event.previous_id, event.message_id, event.timestamp)
    return None


def resolve(customer_id: str, links: Mapping[str, str], limit: int = MAX_MERGES) -> str:
    """The canonical customer of ``customer_id``, following the map's links (digest -> customer id) through
    chains of at most ``limit`` steps; a cycle, which the map's conditional writes never make, stops where it
    would repeat."""
    current, seen = customer_id, {customer_id}
    for _ in range(limit):
        target = links.get(customer_digest(current))
        if target is None or target == current or target in seen:
            return current
        seen.add(target)
        current = target
    return current


def resolve_all(customer_ids: set[str], fetch: Callable[[list[str]], Mapping[str, str]],
                limit: int = MAX_MERGES) -> dict[str, str]:
    """Every id's canonical customer, reading the map in rounds (one batched read per round): the first round
    reads the ids themselves; a further round is needed only for the targets of links just read (a chain),
    so a batch without merges behind it costs one read."""
    links: dict[str, str] = {}
    pending = sorted({customer_digest(c) for c in customer_ids})
    for _ in range(limit):
        if not pending:
            break
        found = fetch(pending)
        links.update(found)
        pending = sorted({customer_digest(t) for t in found.values()} - set(links) - set(pending))
    return {customer_id: resolve(customer_id, links, limit) for customer_id in customer_ids}
