"""Meta Custom Audiences: add on enter, remove on exit, through the audience's ``/users`` edge.

Requests follow Meta's documented format: ``POST`` (add) or ``DELETE`` (remove)
``/{version}/{audience_id}/users`` with form fields ``payload`` (JSON: ``schema`` and ``data``),
``session`` (so a change split over several requests is one upload) and ``access_token``.
The schema is multi-key, ``["EMAIL_SHA256", "PHONE_SHA256"]``, with an empty string where a
customer has no such identifier. Identifiers are already normalised to Meta's rules (trimmed,
lower-cased email; phone digits with country code) and SHA-256 hashed before they reach the bus.
At most 10,000 rows go in one request, Meta's documented limit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from cdp.integrations.http import HttpResponse, Transport, send
from cdp.pipeline.fanout import ENTERED, Row, SendOutcome
from cdp.ports import TransientError

MAX_ROWS = 10_000
SCHEMA = ("EMAIL_SHA256", "PHONE_SHA256")
IDENTIFIERS = ("email_sha256", "phone_sha256")  # in SCHEMA's order
THROTTLE_CODES = frozenset({4, 17, 32, 613, 80003})  # Meta's rate-limit error codes


def throttled(response: HttpResponse) -> bool:
    error = response.json().get("error") if isinstance(response.json(), dict) else None
    return isinstance(error, dict) and error.get("code") in THROTTLE_CODES


def session_id(rows: Sequence[Row]) -> int:
    """A positive 63-bit session id, the same for the same rows, so a resent upload is the same session."""
    digest = hashlib.sha256("\x1f".join(row.event_id for row in rows).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1 or 1


@dataclass
class MetaAudiences:
    """The Destination for Meta: segment -> custom audience id."""

    audiences: Mapping[str, str]
    access_token: str
    transport: Transport
    api_version: str = "v25.0"
    base_url: str = "https://graph.facebook.com"
    name: str = "meta"
    identifier_names: tuple[str, ...] = IDENTIFIERS
    consent_in_adds: bool = False

    def target(self, segment_id: str) -> str | None:
        return self.audiences.get(segment_id)

    def send(self, target: str, kind: str, rows: Sequence[Row]) -> SendOutcome:
        outcome = SendOutcome()
        session = session_id(rows)
        chunks = [rows[start:start + MAX_ROWS] for start in range(0, len(rows), MAX_ROWS)]
        for number, chunk in enumerate(chunks, start=1):
            payload = {"schema": list(SCHEMA),
                       "data": [[row.identifiers.get(name, "") for name in IDENTIFIERS] for row in chunk]}
            form = {"payload": json.dumps(payload, separators=(",", ":")),
                    "session": json.dumps({"session_id": session, "batch_seq": number,
                                           "last_batch_flag": number == len(chunks),
                                           "estimated_num_total": len(rows)}, separators=(",", ":")),
                    "access_token": self.access_token}
            url = f"{self.base_url}/{self.api_version}/{target}/users"
            try:
                response = send(self.transport, "POST" if kind == ENTERED else "DELETE", url,
                                {"Content-Type": "application/x-www-form-urlencoded"}, urlencode(form).encode(),
                                service="Meta", throttled=throttled)
            except TransientError as error:
                outcome.retry.update({row.event_id: str(error) for row in chunk})
                continue
            self._read(response, chunk, outcome)
        return outcome

    @staticmethod
    def _read(response: HttpResponse, chunk: Sequence[Row], outcome: SendOutcome) -> None:
        body = response.json() if isinstance(response.json(), dict) else {}
        if response.status != 200:
            found = body.get("error")
            error: dict[str, object] = found if isinstance(found, dict) else {}
            reason = f"Meta refused the request: HTTP {response.status}, code {error.get('code')}"
            if error.get("error_subcode"):
                reason += f"/{error.get('error_subcode')}"
            outcome.retry.update({row.event_id: reason for row in chunk})  # configuration; resend once fixed
            return
        # Meta accepts the batch and reports the rows it could not use; those rows alone are refused.
        invalid = body.get("invalid_entry_samples") or {}
        samples = set(invalid) if isinstance(invalid, dict) else set(map(str, invalid))
        for row in chunk:
            if samples & set(row.identifiers.values()):
                outcome.refused[row.event_id] = "Meta reported this row's identifiers as invalid"
