"""The collector's orchestration (cdp.pipeline.collect) over in-memory ports: answers, resends, quarantine."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from cdp.collector.keys import KeyCache, create_source, revoke_source, rotate_source
from cdp.collector.request import HttpRequest
from cdp.pipeline.collect import THROTTLED, Answer, Collector, CollectResult, collect
from cdp.ports import QuarantinedRecord, TransientError
from cdp_dev.memory import MemoryKeyStore

T0 = 1_792_497_600.0
IP = "198.51.100.7"
BUDGET = 6.0

Record = tuple[bytes, str]
Script = Callable[[int, Sequence[Record]], list[str | None]]  # call number, records -> error codes


@dataclass
class FakeClock:
    now_value: float = T0
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.now_value

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now_value += seconds


@dataclass
class FakeStream:
    """Stores the records its script does not refuse; ``script`` None stores everything."""

    script: Script | None = None
    raises: Callable[[int], bool] | None = None
    calls: list[list[Record]] = field(default_factory=list)
    stored: list[Record] = field(default_factory=list)

    def put(self, entries: Sequence[Record]) -> list[str | None]:
        number = len(self.calls)
        self.calls.append(list(entries))
        if self.raises is not None and self.raises(number):
            raise TransientError("ServiceUnavailable")
        codes: list[str | None] = ([None] * len(entries) if self.script is None
                                   else self.script(number, entries))
        assert len(codes) == len(entries)
        self.stored += [record for record, code in zip(entries, codes, strict=True) if code is None]
        return codes


@dataclass
class FakeQuarantine:
    stream: FakeStream
    fail: bool = False
    puts: list[list[QuarantinedRecord]] = field(default_factory=list)
    stored_when_put: list[int] = field(default_factory=list)  # how many records the stream held at each put

    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        self.stored_when_put.append(len(self.stream.stored))
        if self.fail:
            raise TransientError("SlowDown")
        self.puts.append(list(records))

    @property
    def records(self) -> list[QuarantinedRecord]:
        return [record for put in self.puts for record in put]


@dataclass
class World:
    store: MemoryKeyStore
    key: str
    clock: FakeClock
    stream: FakeStream
    quarantine: FakeQuarantine

    def collector(self) -> Collector:
        return Collector(KeyCache(self.store, ttl=0.0), self.stream, self.quarantine, now=self.clock.now,
                         sleep=self.clock.sleep, budget_seconds=BUDGET)

    def send(self, messages: list[Any], key: str | None = None, request_id: str = "req-1",
             path: str = "/v1/batch") -> tuple[Answer, CollectResult]:
        credentials = base64.b64encode(f"{key or self.key}:".encode()).decode()
        document: Any = {"batch": messages} if path == "/v1/batch" else messages[0]
        request = HttpRequest("POST", path, {"authorization": f"Basic {credentials}",
                                             "content-type": "application/json"}, json.dumps(document).encode(), IP)
        return collect(request, self.collector(), request_id)


def world(script: Script | None = None, raises: Callable[[int], bool] | None = None) -> World:
    store = MemoryKeyStore()
    key = create_source(store, "web", T0 - 86_400)
    stream = FakeStream(script, raises)
    return World(store, key, FakeClock(), stream, FakeQuarantine(stream))


def track(user: str | None, n: int) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "event": "Clicked", "messageId": f"m-{n}",
                               "timestamp": "2026-10-20T11:59:00Z"}
    if user is not None:
        message["userId"] = user
    return message


def ids_of(records: Sequence[Record]) -> list[str]:
    return [json.loads(data)["messageId"] for data, _ in records]


def refuse(numbers: set[int], code: str = THROTTLED, calls: int = 1) -> Script:
    """Refuses the records of messages ``m-<number>`` on the first ``calls`` calls."""
    refused = {f"m-{n}" for n in numbers}
    return lambda number, entries: [code if number < calls and message_id in refused else None
                                    for message_id in ids_of(entries)]


def always(code: str | Callable[[int], str]) -> Script:
    return lambda number, entries: [code(i) if callable(code) else code for i in range(len(entries))]


# ---- accepted -------------------------------------------------------------------------------------


def test_200_with_accepted_rejected_and_errors() -> None:
    w = world()
    answer, result = w.send([track("alice", 0), track(None, 1), track("bob", 2)])
    assert answer.status == 200
    assert answer.headers == {}
    assert answer.body == {"success": True, "accepted": 2, "rejected": 1,
                           "errors": [{"index": 1, "field": "userId",
                                       "reason": "either userId or anonymousId is required"}]}
    assert ids_of(w.stream.stored) == ["m-0", "m-2"]
    assert [key for _, key in w.stream.stored] == ["alice", "bob"]
    assert (result.source, result.accepted, result.rejected, result.stream_retries) == ("web", 2, Counter(userId=1),
                                                                                         0)
    assert w.clock.sleeps == []


def test_200_without_errors_when_nothing_is_rejected() -> None:
    w = world()
    answer, _ = w.send([track("alice", 0)], path="/v1/track")
    assert (answer.status, answer.body) == (200, {"success": True, "accepted": 1, "rejected": 0})
    assert w.quarantine.puts == []
    assert w.quarantine.stored_when_put == []


def test_the_answer_lists_at_most_20_errors_but_counts_all() -> None:
    w = world()
    answer, result = w.send([track("a", 0)] + [track(None, n) for n in range(1, 26)])
    assert answer.status == 200
    assert (answer.body["accepted"], answer.body["rejected"]) == (1, 25)
    assert [e["index"] for e in answer.body["errors"]] == list(range(1, 21))
    assert result.rejected == Counter(userId=25)
    assert len(w.quarantine.records) == 25


def test_a_request_whose_every_message_is_rejected_is_200_and_quarantined() -> None:
    w = world()
    answer, result = w.send([track(None, 0)], path="/v1/track")
    assert answer.status == 200, answer
    assert answer.body["accepted"] == 0 and answer.body["rejected"] == 1
    assert [r.sequence for r in w.quarantine.records] == ["req-1-0"]
    assert w.stream.stored == []
    assert result.rejected == Counter(userId=1)


def test_an_empty_batch_is_200_with_nothing_accepted() -> None:
    w = world()
    answer, _ = w.send([])
    assert (answer.status, answer.body) == (200, {"success": True, "accepted": 0, "rejected": 0}), answer
    assert w.stream.stored == [] and w.quarantine.records == []


# ---- refused before the stream --------------------------------------------------------------------


def test_401_for_an_unknown_key() -> None:
    w = world()
    answer, result = w.send([track("alice", 0)], key="wk_not_a_key_of_anyone_at_all")
    assert answer.status == 401
    assert answer.body["code"] == "unauthorized" and answer.body["field"] == "writeKey"
    assert "wk_not_a_key" not in json.dumps(answer.body)
    assert result.refused == "writeKey"
    assert w.stream.calls == [] and w.quarantine.stored_when_put == []


def test_401_for_an_expired_key() -> None:
    w = world()
    rotate_source(w.store, "web", T0 - 100, overlap=50)  # the old key expired at T0 - 50
    answer, _ = w.send([track("alice", 0)])
    assert answer.status == 401
    assert w.stream.calls == []


def test_a_key_still_in_its_overlap_is_accepted() -> None:
    w = world()
    rotate_source(w.store, "web", T0 - 100, overlap=200)
    answer, _ = w.send([track("alice", 0)])
    assert answer.status == 200


def test_401_for_a_revoked_key() -> None:
    w = world()
    revoke_source(w.store, "web", T0 - 1)
    answer, _ = w.send([track("alice", 0)])
    assert answer.status == 401
    assert w.stream.calls == []


def test_a_malformed_request_is_answered_with_its_status_and_reaches_nothing() -> None:
    w = world()
    request = HttpRequest("POST", "/v1/batch", {"content-type": "application/json"}, b"{not json", IP)
    answer, result = collect(request, w.collector(), "req-1")
    assert answer.status == 400 and answer.body["field"] == "body"
    assert result.refused == "body"
    assert w.stream.calls == [] and w.quarantine.stored_when_put == []


# ---- resending --------------------------------------------------------------------------------------


def test_refused_records_are_resent_alone_and_in_order() -> None:
    w = world(refuse({1, 3, 4}))
    answer, result = w.send([track(f"u{n}", n) for n in range(6)])
    assert answer.status == 200
    assert answer.body == {"success": True, "accepted": 6, "rejected": 0}
    assert [ids_of(call) for call in w.stream.calls] == [[f"m-{n}" for n in range(6)], ["m-1", "m-3", "m-4"]]
    assert sorted(ids_of(w.stream.stored)) == [f"m-{n}" for n in range(6)]
    assert len(w.stream.stored) == 6  # each once
    assert result.stream_retries == 3
    assert len(w.clock.sleeps) == 1


def test_records_refused_several_times_are_resent_with_growing_waits() -> None:
    w = world(refuse({0, 2}, calls=3))
    answer, result = w.send([track(f"u{n}", n) for n in range(3)])
    assert answer.status == 200
    assert [ids_of(call) for call in w.stream.calls] == [["m-0", "m-1", "m-2"], ["m-0", "m-2"], ["m-0", "m-2"],
                                                         ["m-0", "m-2"]]
    assert w.clock.sleeps == sorted(w.clock.sleeps) and w.clock.sleeps[0] < w.clock.sleeps[-1]
    assert result.stream_retries == 6


def test_throttled_until_the_budget_ends_is_429_with_retry_after() -> None:
    w = world(always(THROTTLED))
    answer, result = w.send([track("alice", 0), track(None, 1), track("bob", 2)])
    assert answer.status == 429
    assert answer.headers == {"Retry-After": "1"}
    assert answer.body["success"] is False
    assert answer.body["code"] == "throttled" and answer.body["field"] == "stream"
    assert "2 of 2" in answer.body["message"]
    assert len(w.stream.calls) > 2
    assert sum(w.clock.sleeps) <= BUDGET
    assert w.clock.now_value - T0 <= BUDGET
    assert w.quarantine.stored_when_put == []  # nothing quarantined when the SDK will send it all again
    assert result.accepted == 0 and result.rejected == Counter()


def test_throttled_for_part_of_the_batch_until_the_budget_ends_is_429() -> None:
    w = world(refuse({1}, calls=10_000))
    answer, _ = w.send([track("alice", 0), track("bob", 1)])
    assert answer.status == 429
    assert "1 of 2" in answer.body["message"]
    assert all(ids_of(call) == ["m-1"] for call in w.stream.calls[1:])


@pytest.mark.parametrize("code", ["InternalFailure", "ServiceUnavailable", "KMSThrottlingException"])
def test_other_errors_until_the_budget_ends_are_503(code: str) -> None:
    w = world(always(code))
    answer, _ = w.send([track("alice", 0), track(None, 1)])
    assert answer.status == 503
    assert answer.headers == {"Retry-After": "1"}
    assert answer.body["code"] == "unavailable" and answer.body["field"] == "stream"
    assert w.quarantine.stored_when_put == []
    assert sum(w.clock.sleeps) <= BUDGET


def test_throttling_mixed_with_other_errors_is_503() -> None:
    w = world(always(lambda i: THROTTLED if i % 2 else "InternalFailure"))
    answer, _ = w.send([track(f"u{n}", n) for n in range(4)])
    assert answer.status == 503


def test_a_transient_error_from_put_until_the_budget_ends_is_503() -> None:
    w = world(raises=lambda number: True)
    answer, _ = w.send([track("alice", 0), track(None, 1)])
    assert answer.status == 503
    assert answer.headers == {"Retry-After": "1"}
    assert answer.body["field"] == "stream"
    assert len(w.stream.calls) > 1
    assert w.quarantine.stored_when_put == []


def test_a_transient_error_from_put_once_is_resent() -> None:
    w = world(raises=lambda number: number == 0)
    answer, _ = w.send([track("alice", 0), track("bob", 1)])
    assert answer.status == 200
    assert ids_of(w.stream.stored) == ["m-0", "m-1"]
    assert len(w.clock.sleeps) == 1


def test_a_slow_stream_uses_up_the_budget_sooner() -> None:
    w = world(always(THROTTLED))
    script = w.stream.script
    assert script is not None

    def slow(number: int, entries: Sequence[Record]) -> list[str | None]:
        w.clock.now_value += 2.5
        return script(number, entries)

    w.stream.script = slow
    answer, _ = w.send([track("alice", 0)])
    assert answer.status == 429
    assert len(w.stream.calls) == 3  # each call takes 2.5 s: after the third, no wait fits in the budget


# ---- quarantine -------------------------------------------------------------------------------------


def test_rejected_messages_are_quarantined_only_after_the_stream_stored_all() -> None:
    w = world(refuse({0}))
    answer, _ = w.send([track("alice", 0), track(None, 1), "not an object", track("bob", 3)], request_id="req-9")
    assert answer.status == 200
    assert w.quarantine.stored_when_put == [2]  # the one put came after both records were stored
    assert len(w.quarantine.puts) == 1
    first, second = w.quarantine.records
    assert (first.source, first.sequence, first.field, first.at) == ("collector:web", "req-9-1", "userId", T0)
    assert first.reason == "either userId or anonymousId is required"
    assert json.loads(first.data)["messageId"] == "m-1"
    assert (second.sequence, second.field, json.loads(second.data)) == ("req-9-2", "message", "not an object")
    assert second.reason == "must be a JSON object, not a string"


def test_nothing_is_quarantined_on_a_429() -> None:
    w = world(always(THROTTLED))
    answer, _ = w.send([track("alice", 0), track(None, 1)])
    assert answer.status == 429
    assert w.quarantine.stored_when_put == []


def test_a_quarantine_failure_is_503() -> None:
    w = world()
    w.quarantine.fail = True
    answer, result = w.send([track("alice", 0), track(None, 1)])
    assert answer.status == 503
    assert answer.headers == {"Retry-After": "1"}
    assert answer.body["field"] == "quarantine"
    assert w.quarantine.stored_when_put == [1]
    assert result.accepted == 0
