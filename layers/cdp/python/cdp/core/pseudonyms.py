"""Pseudonyms of customer ids for the indexes that only need to tell customers apart (members index, ledger).

With :class:`HmacIds` a leaked copy of those tables names nobody: each stored id is an HMAC-SHA256 of the
customer id under a key kept in Secrets Manager, so it cannot be reversed or recomputed from a guessed id
without the key. :class:`PlainIds` (the default) stores the id itself, as before. The ``h:`` prefix keeps the
two forms apart: rows written with plain ids before the setting was switched on are told from pseudonymous ones
(only a customer id that is itself ``h:`` and 64 hex digits could look like one).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

PREFIX = "h:"
MIN_KEY_BYTES = 32


class Pseudonyms(Protocol):
    @property
    def pseudonymous(self) -> bool:
        """Whether stored ids are pseudonyms (and so must not be shown as customer ids)."""
        ...

    def pseudonym(self, customer_id: str) -> str:
        """The id to store for this customer: always the same for the same customer and key."""
        ...


class PlainIds:
    """The customer id itself: today's behaviour."""

    pseudonymous = False

    def pseudonym(self, customer_id: str) -> str:
        return customer_id


class HmacIds:
    """``h:`` + hex HMAC-SHA256 of the customer id under ``key`` (at least 32 bytes)."""

    pseudonymous = True

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the pseudonym key must be at least {MIN_KEY_BYTES} bytes")
        # keyed once: each pseudonym copies the state after the key's block (a third faster than hmac.new)
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def pseudonym(self, customer_id: str) -> str:
        mac = self._keyed.copy()  # never updates the shared state, so safe from the changes function's pool
        mac.update(customer_id.encode())
        return PREFIX + mac.hexdigest()

    def __repr__(self) -> str:
        return "HmacIds(<key>)"  # never the key, in a log or a traceback
