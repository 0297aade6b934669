"""The webhook list sync's rules that need no receiver (cdp.integrations.webhook): request signing and options.

Deliveries to a receiver, and the function on the AWS emulator, are integration tests
(tests/integration/test_webhook.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from cdp.config import ConfigError
from cdp.integrations.http import UrllibTransport
from cdp.integrations.webhook import WebhookLists, WebhookOptions, signature, verify_signature

SECRET = "whsec_test_0123456789abcdef"
SEGMENT, LIST = "cart-abandoners", "list-abandoners"
TARGETS = {SEGMENT: LIST, "vip": "list-vip"}


# ---- signing ------------------------------------------------------------------------------------

VECTOR_TIMESTAMP = "1790000000"
VECTOR_BODY = b'{"list_id":"l1","action":"add","operations":[]}'
VECTOR_HEX = "7b0cfc31f9ee533b9693d87b8993de11b2413c73708506c2b63285d84e9ad638"  # also: openssl dgst -sha256 -hmac


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1790000000." + VECTOR_BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY) == f"v1={expected}"
    assert signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY.decode()) == f"v1={expected}"
    assert expected == VECTOR_HEX  # the published vector for receivers' own tests
    at = int(VECTOR_TIMESTAMP)
    assert verify_signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY, f"v1={expected}", now=at)
    assert verify_signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY, f"v1={expected}", now=at + 300)
    # Several signatures (a secret being rotated): one matching is enough.
    assert verify_signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY, f"v1={'0' * 64}, v1={expected}", now=at)


def test_verify_signature_rejects_tampering_replays_and_malformed_headers() -> None:
    at = int(VECTOR_TIMESTAMP)
    good = signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert not verify_signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY.replace(b"add", b"adx"), good, now=at)
    assert not verify_signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY + b" ", good, now=at)
    assert not verify_signature("another-secret-0123", VECTOR_TIMESTAMP, VECTOR_BODY, good, now=at)
    assert not verify_signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY, good, now=at + 301)  # stale: a replay
    assert not verify_signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY, good, now=at - 301)  # from the future
    assert not verify_signature(SECRET, str(at + 1), VECTOR_BODY, good, now=at)  # timestamp is signed too
    assert not verify_signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY, good, tolerance=60, now=at + 61)
    for header in (None, "", good.replace("v1=", "v0="), good[3:], good.upper()):
        assert not verify_signature(SECRET, VECTOR_TIMESTAMP, VECTOR_BODY, header, now=at)
    for timestamp in (None, "", "1790000000.5", "-1790000000", "17e8"):
        assert not verify_signature(SECRET, timestamp, VECTOR_BODY, good, now=at)
    assert not verify_signature("", VECTOR_TIMESTAMP, VECTOR_BODY, signature("", VECTOR_TIMESTAMP, VECTOR_BODY),
                                now=at)


# ---- options ------------------------------------------------------------------------------------


def test_options_are_checked() -> None:
    assert WebhookOptions.parse({"url": "https://hooks.example.com/x"}) == WebhookOptions(
        "https://hooks.example.com/x", 100, False)
    assert WebhookOptions.parse({"url": "https://h.example/x", "batch_size": 1000, "include_email": True}) == \
        WebhookOptions("https://h.example/x", 1000, True)
    for options, name in (({}, "OPTIONS.url"), ({"url": "http://hooks.example.com/x"}, "OPTIONS.url"),
                          ({"url": "https://user:pw@hooks.example.com/x"}, "OPTIONS.url"),
                          ({"url": "https:///x"}, "OPTIONS.url"),
                          ({"url": "https://h.example", "batch_size": 0}, "OPTIONS.batch_size"),
                          ({"url": "https://h.example", "batch_size": 1001}, "OPTIONS.batch_size"),
                          ({"url": "https://h.example", "batch_size": "10"}, "OPTIONS.batch_size"),
                          ({"url": "https://h.example", "batch_size": True}, "OPTIONS.batch_size"),
                          ({"url": "https://h.example", "include_email": "yes"}, "OPTIONS.include_email"),
                          ({"url": "https://h.example", "include_emails": True}, "unknown option")):
        with pytest.raises(ConfigError, match=re.escape(name)):
            WebhookOptions.parse(options)
    assert repr(SECRET) not in repr(WebhookLists(TARGETS, WebhookOptions("https://h.example"), SECRET,
                                                 UrllibTransport()))
