"""Meta Custom Audiences' rules that need no Graph API (cdp.integrations.meta): the identifiers' normalisation and
hashing, the row limit and the upload session's id.

Uploads to a fake Graph API, and the function on the AWS emulator, are integration tests
(tests/integration/test_meta.py).
"""

from __future__ import annotations

import hashlib

import pytest

import cdp.integrations.meta as meta
from cdp.core.identifiers import hashed_identifiers, normalise_email, normalise_phone
from cdp.pipeline.fanout import Row

DOCUMENTED_MAX_ROWS = 10_000


def sha(text: str) -> str:
    """An independent oracle for the hashes: SHA-256 hex of the UTF-8 text."""
    return hashlib.sha256(text.encode()).hexdigest()


def ids_of(email: str | None = None, phone: str | None = None) -> dict[str, str]:
    traits = {name: value for name, value in (("email", email), ("phone", phone)) if value is not None}
    return hashed_identifiers(traits)


# ---- normalisation (Meta's rules, applied before the bus) --------------------------------------


def test_an_email_is_trimmed_and_lower_cased_before_hashing() -> None:
    assert normalise_email(" Alice@Example.COM ") == "alice@example.com"
    expected = "ff8d9819fc0e12bf0d24892e45987e249a28dce836a85cad60e28eaaa8c6d976"
    assert sha("alice@example.com") == expected
    assert ids_of(" Alice@Example.COM ")["email_sha256"] == expected


@pytest.mark.parametrize("phone", ["+44 20 7946 0958", "0044 20 7946 0958", "+44-20-7946-0958", "+44 (20) 7946 0958"])
def test_a_phone_is_hashed_as_digits_with_its_country_code(phone: str) -> None:
    expected = "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823"
    assert sha("442079460958") == expected
    assert normalise_phone(phone) == "442079460958"
    assert ids_of(phone=phone) == {"phone_sha256": expected, "google_phone_sha256": sha("+442079460958")}


@pytest.mark.parametrize("phone", ["020 7946 0958", "2079460958", "(020) 7946-0958"])
def test_a_national_number_without_a_country_code_is_not_hashed(phone: str) -> None:
    assert normalise_phone(phone) is None
    assert ids_of("alice@example.com", phone).keys() == {"email_sha256", "google_email_sha256"}


@pytest.mark.parametrize("email", ["alice@", "@example.com", "alice example@example.com", "alice@localhost", ""])
def test_something_that_is_not_one_address_is_not_hashed(email: str) -> None:
    assert normalise_email(email) is None
    assert "email_sha256" not in ids_of(email)


# ---- batching at Meta's 10,000-row limit ---------------------------------------------------------


def test_the_row_limit_is_metas_documented_ten_thousand() -> None:
    assert meta.MAX_ROWS == DOCUMENTED_MAX_ROWS


def test_the_session_id_is_the_same_for_the_same_rows_only() -> None:
    rows = [Row("e1", {"email_sha256": sha("a")}), Row("e2", {"email_sha256": sha("b")})]
    assert meta.session_id(rows) == meta.session_id(list(rows))
    assert meta.session_id(rows) != meta.session_id(rows[:1])
    assert 0 < meta.session_id(rows) < 2 ** 63
