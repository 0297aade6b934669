"""The segment history table: one item per (segment, UTC day), kept 400 days.

Keyed ``segment_id`` / ``day`` (``YYYY-MM-DD``). An item holds ``entered`` and ``exited`` (added to by the
changes function with one ``ADD`` per segment and day a batch touched), ``size`` (set by the daily snapshot:
the members index's count at the day's close) and ``expires_at`` (the table's TTL, :data:`HISTORY_DAYS` after
the day). No personal data: segment ids, days and counts only.

A plain table on the changes function's hot path, so the adapter speaks to the DynamoDB client directly, as the
members index does, rather than through a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cdp.aws.dynamo import batch_get
from cdp.aws.errors import domain_error
from cdp.pipeline.history import expires_at
from cdp.ports import TransientError

ADD_ATTEMPTS = 3  # in-process attempts of one day's count update; the history is best effort beyond that


def _count(item: Mapping[str, Any], name: str) -> int:
    return int(item[name]["N"]) if name in item else 0


class DynamoSegmentHistory:
    """Reads and writes of the history table; thread-safe over a thread-safe client (boto3 clients are)."""

    def __init__(self, client: Any, table_name: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.table_name = table_name
        self.sleep = sleep

    def _key(self, segment_id: str, day: str) -> dict[str, Any]:
        return {"segment_id": {"S": segment_id}, "day": {"S": day}}

    # ---- the changes function ------------------------------------------------------------------------------

    def add_changes(self, segment_id: str, day: str, entered: int, exited: int) -> None:
        """One ``ADD`` of a batch's entries and exits to the day's row, resent briefly while DynamoDB throttles."""
        values = {":entered": {"N": str(entered)}, ":exited": {"N": str(exited)},
                  ":expires": {"N": str(expires_at(day))}}
        for attempt in range(ADD_ATTEMPTS):
            try:
                self.client.update_item(TableName=self.table_name, Key=self._key(segment_id, day),
                                        UpdateExpression="ADD entered :entered, exited :exited "
                                                         "SET expires_at = :expires",
                                        ExpressionAttributeValues=values)
                return
            except Exception as error:
                mapped = domain_error(error)
                if not isinstance(mapped, TransientError) or attempt + 1 == ADD_ATTEMPTS:
                    raise mapped from error
            self.sleep(min(0.05 * 2 ** attempt, 0.4))

    # ---- the daily snapshot --------------------------------------------------------------------------------

    def record_size(self, segment_id: str, day: str, size: int) -> None:
        try:
            self.client.update_item(TableName=self.table_name, Key=self._key(segment_id, day),
                                    UpdateExpression="SET #size = :size, expires_at = :expires",
                                    ExpressionAttributeNames={"#size": "size"},
                                    ExpressionAttributeValues={":size": {"N": str(size)},
                                                               ":expires": {"N": str(expires_at(day))}})
        except Exception as error:
            raise domain_error(error) from error

    def sizes(self, segment_ids: Sequence[str], day: str) -> dict[str, int]:
        """The sizes recorded on ``day`` (BatchGetItem, 100 keys a call)."""
        items = batch_get(self.client, self.table_name, [self._key(segment_id, day) for segment_id in segment_ids])
        return {item["segment_id"]["S"]: int(item["size"]["N"]) for item in items if "size" in item}

    # ---- the API ---------------------------------------------------------------------------------------------

    def days(self, segment_id: str, since: str) -> list[dict[str, Any]]:
        """The rows from ``since`` (``YYYY-MM-DD``) on, oldest first: ``day``, ``size`` (None before the day's
        snapshot), ``entered`` and ``exited`` (at most 400 rows: one or two Query pages)."""
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "segment_id = :segment AND #day >= :since",
            "ExpressionAttributeNames": {"#day": "day"},
            "ExpressionAttributeValues": {":segment": {"S": segment_id}, ":since": {"S": since}},
        }
        rows: list[dict[str, Any]] = []
        while True:
            try:
                response = self.client.query(**request)
            except Exception as error:
                raise domain_error(error) from error
            rows += [{"day": item["day"]["S"], "size": int(item["size"]["N"]) if "size" in item else None,
                      "entered": _count(item, "entered"), "exited": _count(item, "exited")}
                     for item in response.get("Items", [])]
            if not response.get("LastEvaluatedKey"):
                return rows
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def segment_history(env: Mapping[str, str]) -> DynamoSegmentHistory | None:
    """The history ``HISTORY_TABLE`` names; None when it is unset (no history kept)."""
    table = env.get("HISTORY_TABLE", "").strip()
    if not table:
        return None
    import boto3

    return DynamoSegmentHistory(boto3.client("dynamodb"), table)
