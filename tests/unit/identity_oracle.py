"""A brute-force oracle for identity merges: the union of a history's messages, folded under the final id map.

The oracle knows nothing of links, freezes or absorbs. It decides each anonymous id's customer from the merge
messages in the order they were first applied (the first merge of an anonymous id wins; a later one into another
user changes nothing), then folds every distinct message, each sent to its canonical customer, into one fresh
profile per customer with ``Engine.apply``. The scenario side builds the Segment messages and the stream records
the ingest sees: partition key = the id the message carries, a shard per partition key, sequence numbers that
grow within a shard in delivery order (a redelivered record keeps its shard and sequence number).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cdp.core.engine import Engine
from cdp.core.events import Event, parse_record
from cdp.core.identity import merge_of
from cdp.core.profile import Profile
from cdp.pipeline.ingest import StreamRecord

B = 1_767_225_600  # 2026-01-01T00:00:00Z
STEP = 60  # seconds between two consecutive slots of the history: every message has its own timestamp
SHARDS = ("shardId-000000000000", "shardId-000000000001", "shardId-000000000002")
FIRST_SEQUENCE = 49_630_000_000_000_000_000_000
LIBRARIES = ("analytics.js", "analytics-ios", None)  # web, mobile, and a back end (no library: server)
USERS = ("u1", "u2")


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Step:
    """One message of an id's history before it has a time: what it is, and for a merge, whom it merges."""

    kind: str  # view, add, order, page, identify (traits only), merge-identify, merge-alias
    pk: str  # the id the message carries: the partition key
    number: int  # distinguishes the id's messages (message id, order id, product)
    absorbed: str = ""  # for a merge: the anonymous id merged into ``pk``
    variant: int = 0  # picks the product, price, library and trait values

    @property
    def message_id(self) -> str:
        return f"{self.pk}-m{self.number}"


def message(step: Step, at: int) -> dict[str, Any]:
    """The Segment message of ``step`` stamped ``at``."""
    body: dict[str, Any] = {"messageId": step.message_id, "timestamp": iso(at)}
    library = LIBRARIES[step.variant % len(LIBRARIES)]
    if library is not None:
        body["context"] = {"library": {"name": library}}
    if step.pk in USERS:
        body["userId"] = step.pk
    else:
        body["anonymousId"] = step.pk
    product = f"sku-{step.variant % 3}"
    if step.kind == "view":
        body.update(type="track", event="Product Viewed", properties={"product_id": product, "price": 20})
    elif step.kind == "add":
        body.update(type="track", event="Product Added",
                    properties={"product_id": product, "price": 10 + step.variant, "quantity": 1 + step.variant % 2})
    elif step.kind == "order":
        body.update(type="track", event="Order Completed",
                    properties={"order_id": f"{step.pk}-o{step.number}", "revenue": 30 + 7 * step.variant})
    elif step.kind == "page":
        body.update(type="page", name="Home", properties={"path": "/"})
    elif step.kind == "identify":
        body.update(type="identify", traits={"email": f"{step.pk}@example.com", "plan": f"p{step.variant}"})
    elif step.kind == "merge-identify":
        body.update(type="identify", anonymousId=step.absorbed, traits={"email": f"{step.pk}@example.com"})
    elif step.kind == "merge-alias":
        body.update(type="alias", previousId=step.absorbed)
    else:
        raise ValueError(step.kind)
    return body


@dataclass(frozen=True)
class Scenario:
    """A history in first-delivery order (each message with its own time), and the batches that deliver it.

    ``batches`` holds indexes into ``messages``; an index seen in an earlier batch is a redelivery of the same
    record. ``messages[i]`` is record ``FIRST_SEQUENCE + i`` on its partition key's shard.
    """

    messages: tuple[dict[str, Any], ...]
    partition_keys: tuple[str, ...]
    shards: dict[str, str]  # partition key -> shard
    batches: tuple[tuple[int, ...], ...]

    def record(self, index: int) -> StreamRecord:
        pk = self.partition_keys[index]
        return StreamRecord(str(FIRST_SEQUENCE + index), pk, json.dumps(self.messages[index]).encode(),
                            shard=self.shards[pk])

    def events(self) -> list[Event]:
        """Every distinct message as the ingest parses it, in first-delivery order."""
        return [parse_record(json.dumps(body).encode()) for body in self.messages]


def final_map(events: Iterable[Event]) -> dict[str, str]:
    """Anonymous id -> user, from the merges in application order: the first merge of an id wins."""
    canonical: dict[str, str] = {}
    for event in events:
        merge = merge_of(event)
        if merge is not None:
            canonical.setdefault(merge.absorbed, merge.canonical)
    return canonical


def fold_union(events: Sequence[Event], canonical: dict[str, str], engine: Engine,
               now: float) -> dict[str, tuple[Profile, set[str]]]:
    """Per canonical customer: a fresh profile with every one of its messages folded in (each once, in time
    order), and those messages' ids."""
    shares: dict[str, list[Event]] = {}
    for event in events:
        root = canonical.get(event.customer_id, event.customer_id)
        shares.setdefault(root, []).append(event)
    folded: dict[str, tuple[Profile, set[str]]] = {}
    for root, share in shares.items():
        profile = Profile(root)
        ordered = sorted({e.message_id: e for e in share}.values(), key=lambda e: e.timestamp)
        outcome = engine.apply(profile, [_as(root, e) for e in ordered], now)
        assert not outcome.rejected, outcome.rejected
        folded[root] = (profile, {e.message_id for e in ordered})
    return folded


def _as(root: str, event: Event) -> Event:
    return event if event.customer_id == root else replace(event, customer_id=root)


def cart_is_exact(events: Iterable[Event]) -> bool:
    """Whether no order clears a cart item of the same customer (every add is after every order): then the
    cart does not depend on the order the adds and the orders were folded or merged in."""
    orders = [e.timestamp for e in events if e.name == "Order Completed"]
    adds = [e.timestamp for e in events if e.name == "Product Added"]
    return not orders or not adds or min(adds) > max(orders)
