"""analytics.js in headless Chromium, on a page of another origin, sends identify, track and page to the
collector; the customer's profile shows them. Nothing is blocked by CORS and nothing leaves the machine."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import Site, Watched
from tests.e2e.conftest import Running, wait_for

pytestmark = pytest.mark.browser


def counts(profile: dict[str, Any]) -> dict[str, int]:
    return {c["key"]: c["lifetime"] for c in profile["counters"]}


def cors_messages(seen: Watched) -> list[str]:
    return [m.text for m in seen.console if "CORS" in m.text or "Access-Control" in m.text]


def test_analytics_js_identify_track_and_page_reach_the_profile_across_origins(
        stack: Running, site: Site, watched: Watched) -> None:
    who, page = f"browser-{uuid.uuid4().hex[:10]}", watched.page
    page.goto(site.origin + "/")
    page.evaluate("""async (who) => {
        await analytics.identify(who, {email: "ada@example.com", plan: "gold"});
        await analytics.track("Product Viewed", {product_id: "p1", price: 20});
        await analytics.page();
    }""", who)

    last: list[tuple[int, dict[str, Any]]] = []

    def shown() -> dict[str, Any] | None:
        status, profile = stack.get(f"/customers/{who}")
        last[:] = [(status, profile)]
        done = status == 200 and counts(profile) == {"Identify": 1, "Product Viewed": 1, "Page Viewed": 1}
        return profile if done else None

    try:
        profile = wait_for(shown, timeout=30)
    except AssertionError as waited:
        raise AssertionError(f"{waited}: the profile was {last}; {watched.summary()}") from None
    assert profile["traits"]["email"] == "ada@example.com" and profile["traits"]["plan"] == "gold"

    # What the browser did: one cross-origin POST per call, each answered 200 with the CORS header, after a
    # preflight (analytics.js sends the key as an Authorization header) that the collector itself answered.
    assert cors_messages(watched) == [], cors_messages(watched)
    assert [m.text for m in watched.console if m.type == "error"] == [] and watched.errors == []
    assert watched.failed == [], [(r.url, r.failure) for r in watched.failed]
    sent = sorted((r.request.method, urlsplit(r.url).path, r.status) for r in watched.collector)
    assert sent == [("POST", "/v1/i", 200), ("POST", "/v1/p", 200), ("POST", "/v1/t", 200)], sent
    for response in watched.collector:
        assert response.request.all_headers()["origin"] == site.origin
        assert response.all_headers()["access-control-allow-origin"] == "*"
        assert response.json()["success"] is True and response.json()["accepted"] == 1
    preflights = list(watched.preflights.values())
    assert sorted((p["method"], urlsplit(p["url"]).path) for p in preflights) == [
        ("OPTIONS", "/v1/i"), ("OPTIONS", "/v1/p"), ("OPTIONS", "/v1/t")], preflights
    for preflight in preflights:
        assert preflight["status"] == 204, preflight
        assert preflight["headers"]["access-control-allow-origin"] == "*"
        assert "authorization" in preflight["headers"]["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in preflight["headers"]  # not Playwright's stand-in answer
    assert site.origin + "/analytics-next/bundles/index.js" in [r.url for r in watched.requests]
    assert watched.foreign(urlsplit(site.origin).netloc, urlsplit(stack.api).netloc) == []


def test_a_cors_refusal_and_a_request_off_the_machine_are_both_seen(
        stack: Running, site: Site, watched: Watched) -> None:
    """The checks above can fail. A header the collector's preflight does not allow is refused by the browser
    and said so on the console (so the preflights are the collector's own answers); a request to any other
    host fails and is recorded."""
    page = watched.page
    page.goto(site.origin + "/")
    outcome = page.evaluate("""async (url) => {
        try {
            await fetch(url, {method: "POST", headers: {"X-Unlisted": "1"}, body: "{}"});
            return "sent";
        } catch (error) {
            return String(error);
        }
    }""", stack.api + "/v1/t")
    assert "Failed to fetch" in outcome
    began = time.monotonic()
    while not cors_messages(watched) and time.monotonic() - began < 5:
        page.wait_for_timeout(100)
    (message,) = cors_messages(watched)
    assert "x-unlisted" in message.lower() and site.origin in message

    gone = page.evaluate("""(url) => fetch(url).then(() => "sent", (error) => String(error))""",
                         "https://cdn.segment.com/v1/projects/x/settings")
    assert "Failed to fetch" in gone
    assert watched.foreign(urlsplit(site.origin).netloc, urlsplit(stack.api).netloc) == [
        "https://cdn.segment.com/v1/projects/x/settings"]
    assert [r.failure for r in watched.failed if "cdn.segment.com" in r.url] == ["net::ERR_NAME_NOT_RESOLVED"]
