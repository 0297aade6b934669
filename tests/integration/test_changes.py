"""The changes handler under moto: which segments it publishes, how it is configured, and what it reports
when a size update keeps failing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from .support import (
    MEMBERS_TABLE,
    InjectedError,
    Stack,
    changes_handler,
    failures,
    kinesis_envelope,
    load_envelope,
    track,
)

CATALOGUE = str(Path(__file__).resolve().parents[2] / "segments")


def published(stack: Stack) -> list[tuple[str, str]]:
    return sorted((e["detail"]["segment"]["id"], e["detail"]["change"]) for e in stack.drain_events())


def test_only_the_published_segments_reach_the_bus_and_the_index_gets_every_transition(stack: Stack) -> None:
    envelope = load_envelope("dynamodb/stream.json")  # frank enters cart-abandoners, leaves potential-abandoners

    assert failures(stack.changes(envelope, published_segments=frozenset({"cart-abandoners"}))) == []

    assert published(stack) == [("cart-abandoners", "entered")]
    assert set(stack.members()) == {("cart-abandoners", "frank"), ("potential-abandoners", "frank")}
    assert stack.counter.of("eventbridge") == {"PutEvents": 1}


def test_with_every_segment_published_both_transitions_reach_the_bus(stack: Stack) -> None:
    assert failures(stack.changes(load_envelope("dynamodb/stream.json"), concurrency=1)) == []
    assert published(stack) == [("cart-abandoners", "entered"), ("potential-abandoners", "exited")]


def test_build_reads_the_pool_size_and_the_published_segments_from_the_environment(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"MEMBERS_TABLE": MEMBERS_TABLE, "EVENT_BUS_NAME": "bus", "CATALOGUE_PATH": CATALOGUE,
                        "CDP_CHANGES_CONCURRENCY": "4", "CDP_PUBLISHED_SEGMENTS": "vip,cart-abandoners"}.items():
        monkeypatch.setenv(name, value)
    deps = changes_handler.build(catalogue=stack.catalogue)
    assert (deps.concurrency, deps.published_segments) == (4, frozenset({"vip", "cart-abandoners"}))
    monkeypatch.setenv("CDP_PUBLISHED_SEGMENTS", "*")
    assert changes_handler.build(catalogue=stack.catalogue).published_segments is None


def test_a_size_update_that_keeps_failing_is_logged_and_counted_and_fails_no_record(
        stack: Stack, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    from cdp.aws.members import DynamoMembersIndex

    InjectedError(stack.dynamodb, "UpdateItem", "ProvisionedThroughputExceededException")
    index = DynamoMembersIndex(stack.dynamodb, MEMBERS_TABLE, 16, sleep=lambda _: None)

    with caplog.at_level(logging.ERROR):
        response = changes_handler.handle(load_envelope("dynamodb/stream.json"), None,
                                          stack.changes_deps(index=index))
        changes_handler.metrics.flush_metrics()

    assert failures(response) == []  # the memberships are written and the events published
    assert len(published(stack)) == 2
    assert stack.counter.of("dynamodb") == {"PutItem": 2, "UpdateItem": 6}  # resent in process, then given up
    logged = [r for r in caplog.records if "size updates failed" in r.getMessage()]
    assert len(logged) == 1 and getattr(logged[0], "segments", None) == ["cart-abandoners"]
    assert "frank" not in caplog.text
    emitted: list[dict[str, Any]] = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                                     if line.startswith("{")]
    assert any(m.get("MemberSizeUpdatesLost") == [1.0] for m in emitted), emitted


# ---- consent and deletion -----------------------------------------------------------------------------------


def consent_message(customer_id: str, at: float, message_id: str, **categories: bool) -> dict[str, Any]:
    message = track(customer_id, "Segment Consent Preference Updated", at, message_id)
    message["context"] = {"consent": {"categoryPreferences": categories}}
    return message


def test_a_consent_change_is_announced_per_segment_and_withdrawn_profiling_exits_them_all(stack: Stack) -> None:
    from cdp.core.consent import ConsentPolicy
    from cdp.core.engine import Engine

    policy = ConsentPolicy.parse({"uses": {"profiling": ["analytics"], "meta": ["advertising"]}})
    engine = Engine(stack.catalogue, consent_policy=policy)
    assert failures(stack.ingest(load_envelope("kinesis/batch.json"), engine=engine)) == []
    assert failures(stack.changes(stack.stream_envelope())) == []
    stack.drain_events()
    segments = set(stack.profile("dave").memberships)
    assert segments, "the sample puts dave in a segment"
    now = stack.clock.now()

    # Advertising withdrawn: dave stays in his segments, and each integration hears of it.
    assert failures(stack.ingest(kinesis_envelope([consent_message("dave", now, "c-1", analytics=True,
                                                                   advertising=False)], first=900),
                                 engine=engine)) == []
    assert failures(stack.changes(stack.stream_envelope())) == []
    events = [e for e in stack.drain_events() if e["detail"]["customer_id"] == "dave"]
    kept = segments & set(stack.profile("dave").memberships)
    consent = [e for e in events if e["detail-type"] == "Segment Consent Changed"]
    assert sorted(e["detail"]["segment"]["id"] for e in consent) == sorted(kept)
    assert {(e["detail"]["change"], e["detail"]["clause"]["path"]) for e in consent} == {("consent", "consent")}
    assert {(seg, cid) for seg, cid in stack.members() if cid == "dave"} == {(s, "dave") for s in kept}
    assert stack.profile("dave").consent.categories == {"analytics": True, "advertising": False}

    # Analytics withdrawn: no profiling, so dave leaves every segment, saying why.
    assert failures(stack.ingest(kinesis_envelope([consent_message("dave", now + 1, "c-2", analytics=False)],
                                                  first=901), engine=engine)) == []
    assert failures(stack.changes(stack.stream_envelope())) == []
    exits = [e for e in stack.drain_events() if e["detail"]["customer_id"] == "dave"]
    assert sorted(e["detail"]["segment"]["id"] for e in exits) == sorted(kept)
    assert {(e["detail-type"], e["detail"]["clause"]["path"]) for e in exits} == {("Segment Exited", "consent")}
    assert all("analytics" in e["detail"]["clause"]["reason"] for e in exits)
    assert stack.profile("dave").memberships == {}


def test_a_deleted_profile_leaves_its_segments_with_clause_deleted(stack: Stack) -> None:
    import copy

    removed = copy.deepcopy(load_envelope("dynamodb/stream.json"))
    for record in removed["Records"]:
        record["eventName"] = "REMOVE"
        body = record["dynamodb"]
        body["OldImage"] = body.pop("NewImage")
    assert failures(stack.changes(removed)) == []
    details = [e["detail"] for e in stack.drain_events()]
    assert details and {(d["change"], d["clause"]["path"], d["clause"]["reason"]) for d in details} == {
        ("exited", "deleted", "the profile was deleted")}
