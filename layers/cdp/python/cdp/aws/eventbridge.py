"""EventBridge publisher: PutEvents in chunks of at most 10 entries and 256 KB, resending failed entries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cdp.aws.errors import domain_error
from cdp.ports import TransientError

MAX_ENTRIES = 10
MAX_BYTES = 256 * 1024
ATTEMPTS = 4


def entry_size(entry: dict[str, Any]) -> int:
    """EventBridge's size rule: detail-type, source, detail and resources, plus 14 bytes for a time."""
    size = len(entry.get("DetailType", "").encode()) + len(entry.get("Source", "").encode())
    size += len(entry.get("Detail", "").encode()) + sum(len(r.encode()) for r in entry.get("Resources", []))
    return size + (14 if "Time" in entry else 0)


def chunks(entries: Sequence[tuple[int, dict[str, Any]]]) -> list[list[tuple[int, dict[str, Any]]]]:
    batches: list[list[tuple[int, dict[str, Any]]]] = []
    current: list[tuple[int, dict[str, Any]]] = []
    size = 0
    for position, entry in entries:
        cost = entry_size(entry)
        if current and (len(current) == MAX_ENTRIES or size + cost > MAX_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append((position, entry))
        size += cost
    if current:
        batches.append(current)
    return batches


class EventBridgePublisher:
    def __init__(self, client: Any, sleep: Any = time.sleep) -> None:
        self.client = client
        self.sleep = sleep

    def publish(self, entries: Sequence[dict[str, Any]]) -> list[int]:
        pending = list(enumerate(entries))
        for attempt in range(ATTEMPTS):
            failed: list[tuple[int, dict[str, Any]]] = []
            for batch in chunks(pending):
                try:
                    response = self.client.put_events(Entries=[entry for _, entry in batch])
                except Exception as error:
                    mapped = domain_error(error)
                    if not isinstance(mapped, TransientError):
                        raise mapped from error
                    failed += batch
                    continue
                if response.get("FailedEntryCount", 0):
                    for (position, entry), result in zip(batch, response["Entries"], strict=True):
                        if result.get("ErrorCode"):
                            failed.append((position, entry))
            if not failed:
                return []
            pending = failed
            if attempt + 1 < ATTEMPTS:
                self.sleep(min(0.1 * 2 ** attempt, 2.0))
        return [position for position, _ in pending]

