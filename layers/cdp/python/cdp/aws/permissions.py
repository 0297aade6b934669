"""Customers' consent, read from the profiles table for the integrations: one BatchGetItem per 100 customers.

Only ``customer_id`` and ``cs`` (the consent map, see :meth:`cdp.core.consent.ConsentState.as_item`) are read,
never the rest of the profile. A customer with no item (deleted, or expired by TTL) is absent from the answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cdp.aws.dynamo import BATCH_GET_LIMIT, UNPROCESSED_ATTEMPTS, deserialise_item
from cdp.aws.errors import domain_error
from cdp.core.consent import ConsentState
from cdp.ports import TransientError

PROJECTION = "customer_id, cs"


class DynamoCustomerPermissions:
    """The :class:`~cdp.pipeline.fanout.CustomerPermissions` port on the profiles table."""

    def __init__(self, client: Any, table_name: str, sleep: Any = time.sleep) -> None:
        self.client = client
        self.table_name = table_name
        self.sleep = sleep

    def load(self, customer_ids: Sequence[str]) -> dict[str, ConsentState]:
        keys = [{"customer_id": {"S": cid}} for cid in dict.fromkeys(customer_ids)]
        found: dict[str, ConsentState] = {}
        for start in range(0, len(keys), BATCH_GET_LIMIT):
            for item in self._batch(keys[start:start + BATCH_GET_LIMIT]):
                plain = deserialise_item(item)
                found[str(plain["customer_id"])] = ConsentState.from_item(plain.get("cs"))
        return found

    def _batch(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One BatchGetItem of at most 100 keys (strongly consistent), resending unprocessed keys with back-off."""
        request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": True,
                                                     "ProjectionExpression": PROJECTION}}
        items: list[dict[str, Any]] = []
        for attempt in range(UNPROCESSED_ATTEMPTS):
            try:
                response = self.client.batch_get_item(RequestItems=request)
            except Exception as error:
                raise domain_error(error) from error
            items += response.get("Responses", {}).get(self.table_name, [])
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return items
            self.sleep(min(0.05 * 2 ** attempt, 1.0))
        raise TransientError(f"{len(request[self.table_name]['Keys'])} keys stayed unprocessed")
