"""Configuration read once per function: CDP_CLOCK, CORS_ORIGINS and the email and webhook settings."""

from __future__ import annotations

import json

import pytest

from cdp.config import ConfigError, EmailConfig, WebhookConfig, clock_mode, cors_origins

DESTINATION = {"TARGETS": json.dumps({"cart-abandoners": "cart-reminder"}), "LEDGER_TABLE": "ledger",
               "DEAD_LETTER_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/dlq"}


def test_the_clock_is_wall_time_unless_event_time_is_asked_for() -> None:
    assert clock_mode({}) == clock_mode({"CDP_CLOCK": " "}) == clock_mode({"CDP_CLOCK": "wall"}) == "wall"
    assert clock_mode({"CDP_CLOCK": "event"}) == "event"
    with pytest.raises(ConfigError, match="CDP_CLOCK"):
        clock_mode({"CDP_CLOCK": "Event"})


def test_cors_origins_are_https_origins_or_local_ones() -> None:
    assert cors_origins({}) == ()
    assert cors_origins({"CORS_ORIGINS": " https://shop.example.com, http://localhost:3000 ,"}) == (
        "https://shop.example.com", "http://localhost:3000")
    for bad in ("http://shop.example.com", "https://shop.example.com/path", "shop.example.com", "https://",
                "http://localhost.example.com"):
        with pytest.raises(ConfigError, match="CORS_ORIGINS"):
            cors_origins({"CORS_ORIGINS": bad})


def test_the_email_function_needs_its_profiles_a_template_and_a_sender() -> None:
    env = {**DESTINATION, "PROFILES_TABLE": "profiles", "OPTIONS": json.dumps({"source": "shop@example.com"})}
    config = EmailConfig.from_env(env)
    assert (config.profiles_table, config.options.source, config.destination.ledger_table) == (
        "profiles", "shop@example.com", "ledger")
    for changes, error in (({"PROFILES_TABLE": " "}, "PROFILES_TABLE is required"),
                           ({"TARGETS": "{}"}, "TARGETS must map at least one segment"),
                           ({"OPTIONS": "{}"}, "OPTIONS.source is required")):
        with pytest.raises(ConfigError, match=error):
            EmailConfig.from_env({**env, **changes})


def test_the_webhook_function_needs_the_profiles_only_to_send_emails() -> None:
    env = {**DESTINATION, "OPTIONS": json.dumps({"url": "https://hooks.example.com/lists"})}
    assert WebhookConfig.from_env(env).profiles_table is None
    assert WebhookConfig.from_env({**env, "PROFILES_TABLE": "profiles"}).profiles_table is None
    with_email = {**env, "OPTIONS": json.dumps({"url": "https://hooks.example.com/lists", "include_email": True})}
    with pytest.raises(ConfigError, match="PROFILES_TABLE"):
        WebhookConfig.from_env(with_email)
    assert WebhookConfig.from_env({**with_email, "PROFILES_TABLE": "profiles"}).profiles_table == "profiles"
    with pytest.raises(ConfigError, match=r"OPTIONS\.url"):
        WebhookConfig.from_env({**env, "OPTIONS": json.dumps({"url": "http://hooks.example.com/lists"})})
