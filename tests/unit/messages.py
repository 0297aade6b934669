"""Segment-spec messages for unit tests: one valid message of each type, with fields overridden or removed."""

from __future__ import annotations

from typing import Any

import pytest

from cdp.core.events import InvalidEvent, normalise

B_ISO = "2024-01-10T00:00:00Z"


def msg(kind: str = "track", **fields: Any) -> dict[str, Any]:
    """A minimal valid message of this type; keyword arguments override or add fields (None removes)."""
    body: dict[str, Any] = {"type": kind, "messageId": "m-1", "userId": "u-1", "timestamp": B_ISO}
    if kind == "track":
        body["event"] = "Signed Up"
    elif kind == "alias":
        body["previousId"] = "anon-1"
    elif kind == "group":
        body["groupId"] = "acme"
    for key, value in fields.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def track(name: str, properties: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return msg("track", event=name, properties=properties, **fields)


def rejected(message: object) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        normalise(message)
    return caught.value
