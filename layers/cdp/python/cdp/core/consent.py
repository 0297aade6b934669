"""Consent: a customer's latest preferences, and the policy that says which uses they permit.

Pure: no I/O. Segment's Consent Management spec puts the preferences on every message, as
``context.consent.categoryPreferences`` (category name -> true/false), and sends a
``Segment Consent Preference Updated`` track event when they change. The profile keeps the latest
preferences with when and where they were given (:class:`ConsentState`), and a bounded history.
The Email spec's ``Unsubscribed`` and ``Email Marked as Spam`` events unsubscribe the customer.

The policy (deployment setting ``consent``, environment variable ``CONSENT_POLICY``) maps each *use* to the
categories it needs, all of them granted:

* ``profiling``: segments are evaluated at all (without it the customer is in no segment);
* ``email``, ``webhook``, ``meta``, ``google``: each integration, checked per customer at delivery.

A category the customer never stated counts as ``default`` (``denied``: opt-in, as GDPR asks; ``granted``:
opt-out, as CCPA allows). A use that names no categories is always permitted. Categories are compared
case-insensitively (``Advertising`` and ``advertising`` are one), as consent managers differ in case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

USES = ("profiling", "email", "webhook", "meta", "google")
CONSENT_EVENT = "Segment Consent Preference Updated"
UNSUBSCRIBE_EVENTS = {"Unsubscribed": "unsubscribed", "Email Marked as Spam": "spam"}
MAX_CONSENT_HISTORY = 10  # preference changes kept per customer (the export's consent history)
MAX_CATEGORIES = 16  # categories kept from one message; a consent manager has a handful
MAX_CATEGORY_CHARS = 64
GRANTED, DENIED = "granted", "denied"


class ConsentPolicyError(ValueError):
    """A consent policy that cannot be used, naming the field and the rule."""


def category_preferences(context: object) -> dict[str, bool] | None:
    """``context.consent.categoryPreferences`` of a raw message's context, as lower-cased category -> bool;
    None when the message states none. Non-boolean values and over-long names are left out."""
    if not isinstance(context, Mapping):
        return None
    consent = context.get("consent")
    if not isinstance(consent, Mapping):
        return None
    preferences = consent.get("categoryPreferences")
    if not isinstance(preferences, Mapping):
        return None
    kept: dict[str, bool] = {}
    for name, value in preferences.items():
        if isinstance(name, str) and isinstance(value, bool) and 0 < len(name) <= MAX_CATEGORY_CHARS:
            kept[name.strip().lower()] = value
        if len(kept) >= MAX_CATEGORIES:
            break
    return kept


@dataclass
class ConsentState:
    """What a profile holds about consent: the latest preferences, and any unsubscribe."""

    categories: dict[str, bool] = field(default_factory=dict)
    at: float | None = None  # when the latest preferences were given (the message's time)
    source: str = ""  # where: the message's channel (browser, server, mobile ...)
    message_id: str = ""
    unsubscribed_at: float | None = None
    unsubscribed_reason: str = ""  # unsubscribed | spam
    history: list[list[Any]] = field(default_factory=list)  # [[at, source, message id, categories], ...], oldest first

    def record(self, categories: Mapping[str, bool], at: float, source: str, message_id: str) -> bool:
        """Take preferences given at ``at``; False (nothing changes) when newer ones are held already.

        A message that restates the held preferences moves nothing but the time; a change also goes in the
        history (at most :data:`MAX_CONSENT_HISTORY`, the oldest dropped first)."""
        if self.at is not None and at < self.at:
            return False
        changed = dict(categories) != self.categories
        self.categories, self.at, self.source, self.message_id = dict(categories), at, source, message_id
        if changed or not self.history:
            self.history.append([at, source, message_id, dict(sorted(categories.items()))])
            del self.history[:-MAX_CONSENT_HISTORY]
        return changed

    def unsubscribe(self, at: float, reason: str) -> bool:
        """Mark the customer unsubscribed (the earliest time is kept); False when they were already."""
        if self.unsubscribed_at is not None and self.unsubscribed_at <= at:
            return False
        self.unsubscribed_at, self.unsubscribed_reason = at, reason
        return True

    @property
    def empty(self) -> bool:
        return self.at is None and self.unsubscribed_at is None

    def as_item(self) -> dict[str, Any]:
        """The compact form kept in the profile item (attribute ``cs``)."""
        item: dict[str, Any] = {}
        if self.at is not None:
            item.update(c=dict(self.categories), a=self.at, s=self.source, m=self.message_id)
        if self.unsubscribed_at is not None:
            item.update(u=self.unsubscribed_at, r=self.unsubscribed_reason)
        if self.history:
            item["h"] = [list(entry) for entry in self.history]
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any] | None) -> ConsentState:
        if not item:
            return cls()
        return cls({str(k): bool(v) for k, v in (item.get("c") or {}).items()},
                   float(item["a"]) if item.get("a") is not None else None, str(item.get("s", "")),
                   str(item.get("m", "")), float(item["u"]) if item.get("u") is not None else None,
                   str(item.get("r", "")), [list(entry) for entry in item.get("h") or []])

    def as_json(self) -> dict[str, Any]:
        """The API's and the export's form (times as given, Unix seconds)."""
        return {"categories": dict(sorted(self.categories.items())), "at": self.at, "source": self.source,
                "message_id": self.message_id or None, "unsubscribed_at": self.unsubscribed_at,
                "unsubscribed_reason": self.unsubscribed_reason or None,
                "history": [{"at": at, "source": source, "message_id": message_id, "categories": categories}
                            for at, source, message_id, categories in self.history]}


def merged_consent(kept: ConsentState, absorbed: ConsentState) -> ConsentState:
    """The consent of a merged customer: the latest preferences of either, both histories (bounded, in time
    order), and unsubscribed if either side was (the earliest time)."""
    latest = absorbed if kept.at is None or (absorbed.at is not None and absorbed.at > kept.at) else kept
    history = sorted({(e[0], e[2]): e for e in kept.history + absorbed.history}.values(), key=lambda e: (e[0], e[2]))
    unsubscribed = [s for s in (kept, absorbed) if s.unsubscribed_at is not None]
    first = min(unsubscribed, key=lambda s: s.unsubscribed_at or 0.0) if unsubscribed else None
    return ConsentState(dict(latest.categories), latest.at, latest.source, latest.message_id,
                        first.unsubscribed_at if first else None, first.unsubscribed_reason if first else "",
                        [list(e) for e in history[-MAX_CONSENT_HISTORY:]])


@dataclass(frozen=True)
class ConsentPolicy:
    """Which consent categories each use needs, and what a category never stated counts as."""

    uses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # use -> categories, all needed
    default: str = GRANTED

    def refusal(self, use: str, state: ConsentState | None) -> str | None:
        """Why ``use`` is not permitted for a customer with this consent (None: permitted). The reason names
        the use and the category, never the customer."""
        needed = self.uses.get(use, ())
        categories = state.categories if state is not None else {}
        for category in needed:
            granted = categories.get(category)
            if granted is None:
                granted = self.default == GRANTED
            if not granted:
                return f"consent: {use} needs category {category}, which is not granted"
        return None

    def permits(self, use: str, state: ConsentState | None) -> bool:
        return self.refusal(use, state) is None

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(c for needed in self.uses.values() for c in needed)

    @classmethod
    def parse(cls, raw: object) -> ConsentPolicy:
        """The policy from its JSON form: ``{"default": "granted"|"denied", "uses": {"meta": ["advertising"],
        ...}}``; None or {} is the empty policy (every use permitted)."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConsentPolicyError("consent: must be an object with uses and default")
        unknown = set(raw) - {"uses", "default"}
        if unknown:
            raise ConsentPolicyError(f"consent.{sorted(unknown)[0]}: unknown; known: default, uses")
        default = raw.get("default", GRANTED)
        if default not in (GRANTED, DENIED):
            raise ConsentPolicyError("consent.default: must be granted or denied")
        uses = raw.get("uses") or {}
        if not isinstance(uses, Mapping):
            raise ConsentPolicyError("consent.uses: must map each use to a list of categories")
        parsed: dict[str, tuple[str, ...]] = {}
        for use, categories in uses.items():
            if use not in USES:
                raise ConsentPolicyError(f"consent.uses.{use}: unknown use; known: {', '.join(USES)}")
            if not isinstance(categories, list) or not all(
                    isinstance(c, str) and 0 < len(c.strip()) <= MAX_CATEGORY_CHARS for c in categories):
                raise ConsentPolicyError(f"consent.uses.{use}: must be a list of category names")
            parsed[use] = tuple(c.strip().lower() for c in categories)
        return cls(parsed, str(default))

    def as_json(self) -> dict[str, Any]:
        return {"default": self.default, "uses": {use: list(c) for use, c in self.uses.items()}}
