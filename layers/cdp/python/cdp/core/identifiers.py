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


GMAIL_DOMAINS = ("gmail.com", "googlemail.com")


def normalise_email_for_google(value: object) -> str | None:
    """Google Customer Match's rule on top of the usual one: no dots before @gmail.com / @googlemail.com."""
    email = normalise_email(value)
    if email is None:
        return None
    local, _, domain = email.partition("@")
    return f"{local.replace('.', '')}@{domain}" if domain in GMAIL_DOMAINS else email


def normalise_phone_for_google(value: object) -> str | None:
    """Google wants E.164 with its plus: '+49301234567'."""
    digits = normalise_phone(value)
    return f"+{digits}" if digits else None


def is_sha256(value: object) -> bool:
    """64 lower-case hex digits: what every platform here accepts as a hashed identifier."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hashed_identifiers(traits: dict[str, Any]) -> dict[str, str]:
    """The hashed identifiers the integrations match on, from a profile's traits.

    ``email_sha256`` / ``phone_sha256`` follow Meta's normalisation (and most platforms'):
    trimmed lower-case email; phone digits with the country code and no plus.
    ``google_email_sha256`` / ``google_phone_sha256`` follow Google Customer Match's: Gmail
    addresses without dots in the local part; phone in E.164 with the plus.
    """
    hashed: dict[str, str] = {}
    email, phone = traits.get("email"), traits.get("phone")
    for key, normalised in (("email_sha256", normalise_email(email)), ("phone_sha256", normalise_phone(phone)),
                            ("google_email_sha256", normalise_email_for_google(email)),
                            ("google_phone_sha256", normalise_phone_for_google(phone))):
        if normalised:
            hashed[key] = sha256(normalised)
    return hashed
