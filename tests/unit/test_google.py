"""Google Ads Customer Match's rules that need no Google (cdp.integrations.google): the identifiers' normalisation
and hashing, the documented limits, and the sample envelope.

The job flow against a fake of Google's REST API, the configuration, and the function on the AWS emulator are
integration tests (tests/integration/test_google.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest

from cdp.core.identifiers import hashed_identifiers, normalise_email_for_google, normalise_phone_for_google
from cdp.integrations.google import API_VERSION, MAX_IDENTIFIERS_PER_REQUEST, MAX_IDENTIFIERS_PER_USER, TOKEN_URL
from cdp.pipeline.fanout import parse_message

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "events" / "sqs" / "google-batch.json"
SCHEMA = ROOT / "events" / "schemas" / "segment-membership.v1.json"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---- normalisation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "normalised"), [
    (" John.Doe@GMail.com ", "johndoe@gmail.com"),
    ("Jane.M.Roe@googlemail.com", "janemroe@googlemail.com"),
    ("first.last@example.com", "first.last@example.com"),  # dots kept outside Gmail
    ("First.Last@Sub.Example.COM", "first.last@sub.example.com"),
])
def test_google_email_normalisation_and_hash(raw: str, normalised: str) -> None:
    assert normalise_email_for_google(raw) == normalised
    hashed = hashed_identifiers({"email": raw})
    assert hashed["google_email_sha256"] == sha(normalised)
    assert hashed["email_sha256"] == sha(raw.strip().lower())  # the others' rule keeps Gmail dots


@pytest.mark.parametrize(("raw", "normalised"), [
    ("+1 (555) 010-0000", "+15550100000"),
    ("0049 30 1234567", "+49301234567"),
    ("030 1234567", None),  # no country code: not guessed
])
def test_google_phone_normalisation_and_hash(raw: str, normalised: str | None) -> None:
    assert normalise_phone_for_google(raw) == normalised
    hashed = hashed_identifiers({"phone": raw})
    if normalised is None:
        assert "google_phone_sha256" not in hashed
    else:
        assert hashed["google_phone_sha256"] == sha(normalised)
        assert hashed["phone_sha256"] == sha(normalised[1:])


def test_documented_limits_and_defaults() -> None:
    assert MAX_IDENTIFIERS_PER_REQUEST == 100_000  # per addOperations request, Google's Customer Match guide
    assert MAX_IDENTIFIERS_PER_USER == 20
    assert API_VERSION == "v26"
    assert TOKEN_URL == "https://oauth2.googleapis.com/token"


# ---- the sample envelope ------------------------------------------------------------------------------


def test_the_sample_envelope_holds_an_entered_and_an_exited_bus_event() -> None:
    envelope = json.loads(SAMPLE.read_text())
    records = envelope["Records"]
    assert [r["eventSource"] for r in records] == ["aws:sqs", "aws:sqs"]
    assert all(hashlib.md5(r["body"].encode()).hexdigest() == r["md5OfBody"] for r in records)
    events = [parse_message(r["messageId"], r["body"]) for r in records]
    assert [(e.kind, e.customer_id) for e in events] == [("entered", "frank"), ("exited", "grace")]
    schema = json.loads(SCHEMA.read_text())
    for record in records:
        bus_event = json.loads(record["body"])
        assert bus_event["source"] == "cdp.segments"
        jsonschema.validate(bus_event["detail"], schema)
    assert events[0].identifiers["google_email_sha256"] == sha("frankexample@gmail.com")
    assert events[0].identifiers["google_phone_sha256"] == sha("+49301234567")
