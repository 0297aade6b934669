"""What the email tests of both tiers share: the test data, and bus events as the email queue delivers them.

Times are Unix seconds; T is 2026-10-09 09:01 UTC, a minute after the sample event in events/sqs/email-batch.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cdp.integrations.email import EmailOptions
from cdp.pipeline.fanout import ENTERED

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "events" / "sqs" / "email-batch.json"
T = 1791536460
HOUR = 3600
DAY = 24 * HOUR
CART, OFFER, LOYAL, BROWSERS = "cart-abandoners", "high-intent-abandoners", "loyal-customers", "browsers"
TEMPLATES = {CART: "cart-reminder", OFFER: "cart-reminder-offer", LOYAL: "loyal-thanks"}
OPTIONS = EmailOptions(source="Shop <shop@example.com>")
ADDRESS = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


def bus_event(customer_id: str, segment_id: str, kind: str = ENTERED, version: int = 1,
              primary: str | None = "same", name: str | None = None, event_id: str | None = None) -> str:
    """The body of a Segment Entered / Exited event for one customer (no identifiers: email reads the profile)."""
    detail = {"schema_version": "1", "event_id": event_id or f"{customer_id}-{segment_id}-{kind}-{version}",
              "customer_id": customer_id, "segment": {"id": segment_id, "name": name or segment_id.title()},
              "change": kind, "at": "2026-10-09T09:00:00Z", "membership_version": version,
              "clause": {"path": "condition", "reason": "test"},
              "primary_segment": segment_id if primary == "same" else primary, "segments": [segment_id],
              "identifiers": {}}
    return json.dumps({"version": "0", "id": "x", "source": "cdp.segments",
                       "detail-type": "Segment Entered" if kind == ENTERED else "Segment Exited", "detail": detail})


def message(message_id: str, customer_id: str, segment_id: str, **kwargs: Any) -> tuple[str, str]:
    """(message id, body), as the queue delivers it."""
    return (message_id, bus_event(customer_id, segment_id, **kwargs))
