"""Identifiers for integrations: normalised, then SHA-256 hashed. Raw values never leave the profile."""

from __future__ import annotations

import hashlib
import re
from typing import Any

_NOT_DIGITS = re.compile(r"\D")


def normalise_email(value: object) -> str | None:
    """Trimmed and lower-cased; None unless it looks like one address (local@domain.tld)."""
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or " " in email or "@" in domain:
        return None
    return email


def normalise_phone(value: object) -> str | None:
    """E.164 digits without the plus: '+49 (30) 123-4567' -> '49301234567'. Needs a country code."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+"):
        return None  # a national number cannot be normalised without guessing the country
    digits = _NOT_DIGITS.sub("", text)
    return digits if 8 <= len(digits) <= 15 else None


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hashed_identifiers(traits: dict[str, Any]) -> dict[str, str]:
    """The hashed identifiers the integrations match on, from a profile's traits."""
    hashed: dict[str, str] = {}
    email = normalise_email(traits.get("email"))
    if email:
        hashed["email_sha256"] = sha256(email)
    phone = normalise_phone(traits.get("phone"))
    if phone:
        hashed["phone_sha256"] = sha256(phone)
    return hashed
