"""Segment lifecycle over the local stack's HTTP API: a segment created at runtime is backfilled over the
existing customers within a minute, its preview counted the same customers, explain agrees with the
memberships, and premium-customers (top 20% by revenue) is populated by the statistics job.

The customers are the sample replay's (events/sample.jsonl, sent with `cdp send`; resent, it changes nothing).
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import boto3
import boto3.dynamodb.types
import pytest

from tests.e2e.conftest import ROOT, Running, wait_for

SAMPLE = ROOT / "events" / "sample.jsonl"
THRESHOLD = 300


def call(stack: Running, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(stack.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def members(stack: Running, segment_id: str) -> set[str]:
    found: set[str] = set()
    cursor = None
    while True:
        status, page = call(stack, "GET", f"/segments/{segment_id}/members?limit=1000"
                            + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, page
        found |= {m["customer_id"] for m in page["members"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return found


@pytest.fixture(scope="module")
def revenue(stack: Running, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """Every sample customer's lifetime revenue, as GET /customers/{id} shows it once the replay is in."""
    lines = SAMPLE.read_text().splitlines()
    customers = sorted({json.loads(line)["userId"] for line in lines if json.loads(line).get("userId")})
    path = tmp_path_factory.mktemp("sample") / "sample.jsonl"
    path.write_text("\n".join(lines) + "\n")
    sent = stack.cdp("send", str(path))
    assert sent.returncode == 0, sent.stderr

    def read() -> dict[str, float]:
        found = {}
        for who in customers:
            status, profile = call(stack, "GET", f"/customers/{who}")
            if status == 200:  # a sample id may be merged into another customer, or refused
                found[profile["customer_id"]] = float(profile["rfm"]["revenue"])
        return found

    # Settled: two reads two seconds apart agree (the replay's last events may still be folding).
    previous: dict[str, float] = {}

    def settled() -> dict[str, float] | None:
        nonlocal previous
        now = read()
        same = bool(now) and now == previous
        previous = now
        if not same:
            time.sleep(2)
        return now if same else None

    found: dict[str, float] = wait_for(settled, timeout=90, interval=0)
    return found


def test_a_segment_created_over_http_is_backfilled_and_matches_its_preview(stack: Running,
                                                                          revenue: dict[str, float]) -> None:
    segment_id = f"e2e-spenders-{uuid.uuid4().hex[:8]}"
    definition = {"id": segment_id, "name": "E2E spenders", "description": f"Revenue over {THRESHOLD}.",
                  "condition": {"rfm": {"metric": "revenue", "gt": THRESHOLD}}}
    assert {who for who, amount in revenue.items() if amount > THRESHOLD} < set(revenue)  # the sample: both kinds
    everyone = every_revenue(stack)  # the preview counts every customer of the stack, not only the sample's
    expected = {who for who, amount in everyone.items() if amount > THRESHOLD}
    assert expected

    status, preview = call(stack, "POST", f"/segments/{segment_id}:preview", definition)
    assert status == 200, preview
    assert preview["exact"] is True and preview["size"] == len(expected)
    assert set(preview["members"]) <= expected

    status, saved = call(stack, "PUT", f"/segments/{segment_id}?deliver=none", definition)
    assert status == 201, saved
    job_id = saved["job"]["id"]

    def finished() -> dict[str, Any] | None:
        status, job = call(stack, "GET", f"/jobs/{job_id}")
        assert status == 200, job
        assert job["status"] != "failed", job
        return job if job["status"] == "done" else None

    job = wait_for(finished, timeout=60, interval=0.5)
    assert job["counts"]["entered"] == preview["size"]
    assert wait_for(lambda: members(stack, segment_id) == expected or None, timeout=20)

    member, outsider = sorted(expected)[0], sorted(set(revenue) - expected)[0]
    for who, inside in ((member, True), (outsider, False)):
        status, explained = call(stack, "GET", f"/customers/{who}/explain?segment={segment_id}")
        assert status == 200, explained
        assert explained["holds"] is inside and explained["member"] is inside
        assert explained["condition"]["value"] == revenue[who] and explained["condition"]["threshold"] == THRESHOLD

    status, deleted = call(stack, "DELETE", f"/segments/{segment_id}?deliver=none")
    assert status == 202, deleted


def every_revenue(stack: Running) -> dict[str, float]:
    """Every customer's lifetime revenue, read from every profile in the stack's table (the population is every
    customer the stack holds: the sample's, and those of the other tests sharing the stack)."""
    from cdp.core.profile import Profile

    dynamodb = stack.client("dynamodb")
    (table,) = [name for name in stack.get("/health")[1]["resources"]["tables"] if name.startswith("StorageProfiles")]
    deserialise = boto3.dynamodb.types.TypeDeserializer().deserialize
    found: dict[str, float] = {}
    for page in dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            try:
                profile = Profile.from_item({k: deserialise(v) for k, v in item.items()})
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # an item another test put there by hand: not a profile (the jobs skip it too)
            if profile.merged_into is None:
                found[profile.customer_id] = profile.revenue / 100
    return found


def top_fifth(revenue: dict[str, float]) -> tuple[set[str], float]:
    """Top 20%: revenue above the population's 80th percentile (nearest rank), and above zero."""
    ranked = sorted(revenue.values())
    cut = ranked[math.ceil(len(ranked) * 0.8) - 1]
    return {who for who, amount in revenue.items() if amount > cut and amount > 0}, cut


def test_premium_customers_is_the_top_fifth_by_revenue(stack: Running, revenue: dict[str, float]) -> None:
    assert top_fifth(revenue)[0]  # the sample alone has a top fifth
    try:
        wait_for(lambda: members(stack, "premium-customers") == top_fifth(every_revenue(stack))[0] or None,
                 timeout=60, interval=1)
    except AssertionError:
        population = every_revenue(stack)
        expected, cut = top_fifth(population)
        found = members(stack, "premium-customers")
        pytest.fail(f"premium-customers holds {sorted(found)}; the top 20% by revenue is {sorted(expected)} "
                    f"(cut {cut}, of {len(population)} customers)")
