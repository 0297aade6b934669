"""`cdp import`: reading JSON Lines and mapped CSV, calls at the stream's limits, resends in order, the report."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cdp.core.events import parse_record
from cdp_dev.importer import (
    MAX_CALL_BYTES,
    Calls,
    HealthTotals,
    ImportOptions,
    MetricTotals,
    Record,
    Sample,
    Skipped,
    StreamLimits,
    Throttle,
    TokenBucket,
    Totals,
    Watch,
    csv_records,
    jsonl_records,
    parse_mapping,
    reached,
    run_import,
    send_records,
    skipped_lines,
    stream_limits,
    window_rates,
)

SECRET = "alice.private@example.com"  # content that must never appear in a reason


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def line(user: str | None, number: int, **extra: Any) -> bytes:
    message: dict[str, Any] = {"type": "track", "event": "Product Viewed", "messageId": f"m-{number}",
                               "timestamp": "2026-10-01T09:00:00Z", **extra}
    if user is not None:
        message["userId"] = user
    return json.dumps(message).encode()


def records(*keys: str, size: int = 10) -> list[Record]:
    return [Record(i, i + 1, b"x" * size, key) for i, key in enumerate(keys)]


# ---- reading JSON Lines ----------------------------------------------------------------------------------


def test_jsonl_lines_become_records_keyed_by_customer_in_file_order() -> None:
    lines = [line("alice", 1), b"", line(None, 2, anonymousId="anon-7"), b"   ", line("bob", 3)]
    items = list(jsonl_records(lines))
    assert [(r.ordinal, r.line, r.key) for r in items if isinstance(r, Record)] == [
        (0, 1, "alice"), (1, 3, "anon-7"), (2, 5, "bob")]
    assert not [i for i in items if isinstance(i, Skipped)]


def test_bad_lines_are_counted_with_their_line_and_reason_never_their_content() -> None:
    lines = [
        line("alice", 1),
        f'{{"userId": "{SECRET}", "event": '.encode(),  # cut off
        json.dumps([SECRET]).encode(),
        json.dumps({"type": "track", "traits": {"email": SECRET}}).encode(),
        b'{"userId": "\xff' + SECRET.encode() + b'"}',
        line(SECRET, 6, properties={"blob": "y" * 2000}),
        line("bob", 7),
    ]
    items = list(jsonl_records(lines, max_record_bytes=1024))
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert [s.line for s in skipped] == [2, 3, 4, 5, 6]
    assert skipped[0].reason.startswith("is not JSON (")
    assert skipped[1].reason == "is an array, not a JSON object"
    assert skipped[2].reason == "has no userId or anonymousId"
    assert skipped[3].reason == "is not UTF-8 text"
    assert "a record holds at most 1,024" in skipped[4].reason
    assert all(SECRET not in s.reason and "alice" not in s.reason for s in skipped)
    report = "\n".join(skipped_lines(skipped))
    assert "skipped 5 lines" in report and "line 4: has no userId" in report and SECRET not in report
    assert [r.key for r in items if isinstance(r, Record)] == ["alice", "bob"]


# ---- reading CSV with a column mapping -------------------------------------------------------------------

CSV = """customer_id,kind,created_at,total,qty,order_no,email
c-1,Order Completed,2026-10-01 09:00:00,59.90,2,1001,a@example.com
c-2,Order Completed,1790000000,12,1,1002,
"""


def test_csv_rows_are_mapped_with_dotted_paths_and_numbers_for_numeric_properties() -> None:
    spec = ("userId=customer_id,event=kind,timestamp=created_at,properties.revenue=total,"
            "properties.quantity=qty,properties.order_id=order_no,context.traits.email=email")
    items = list(csv_records(io.StringIO(CSV), spec))
    assert all(isinstance(i, Record) for i in items)
    first, second = (json.loads(i.data) for i in items if isinstance(i, Record))
    assert first["type"] == "track" and first["event"] == "Order Completed" and first["userId"] == "c-1"
    assert first["timestamp"] == "2026-10-01T09:00:00.000Z"  # no zone: taken as UTC
    assert first["properties"] == {"revenue": 59.9, "quantity": 2, "order_id": "1001"}
    assert first["context"]["traits"]["email"] == "a@example.com"
    assert second["timestamp"] == datetime.fromtimestamp(1790000000, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    assert second["properties"]["revenue"] == 12 and isinstance(second["properties"]["revenue"], int)
    assert "context" not in second  # an empty cell sets nothing
    for item in items:
        assert isinstance(item, Record)
        event = parse_record(item.data)
        assert event.order_id in {"1001", "1002"} and event.amount in {59.9, 12.0}


def test_csv_constants_and_stable_message_ids() -> None:
    text = "user,amount,order\nu-1,10.5,o-1\nu-2,3,o-2\n"
    spec = "userId=user,properties.revenue=amount,properties.order_id=order"
    once = [i for i in csv_records(io.StringIO(text), spec, event="Order Completed") if isinstance(i, Record)]
    again = [i for i in csv_records(io.StringIO(text), spec, event="Order Completed") if isinstance(i, Record)]
    assert [json.loads(r.data)["event"] for r in once] == ["Order Completed"] * 2
    ids = [json.loads(r.data)["messageId"] for r in once]
    assert ids == [json.loads(r.data)["messageId"] for r in again] and len(set(ids)) == 2
    assert [r.line for r in once] == [2, 3]


def test_csv_without_a_map_uses_the_header_names_as_paths() -> None:
    text = "userId,event,timestamp,properties.price,properties.product_id\nu,Product Viewed,2026-10-01T09:00Z,5,p1\n"
    (record,) = csv_records(io.StringIO(text), None)
    assert isinstance(record, Record)
    assert json.loads(record.data)["properties"] == {"price": 5, "product_id": "p1"}


def test_rows_that_cannot_be_mapped_are_skipped_by_line_and_reason() -> None:
    text = (f"user,amount,at\n,10,2026-10-01T09:00:00Z\nu-2,{SECRET},2026-10-01T09:00:00Z\n"
            f"u-3,5,{SECRET}\nu-4,5,2026-10-01T09:00:00Z\n")
    items = list(csv_records(io.StringIO(text), "userId=user,properties.revenue=amount,timestamp=at",
                             event="Order Completed"))
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert [(s.line, s.reason) for s in skipped] == [
        (2, "has no userId or anonymousId"),
        (3, "column amount (properties.revenue) is not a number"),
        (4, "column at is not an ISO 8601 date or seconds since the epoch")]
    assert [i.key for i in items if isinstance(i, Record)] == ["u-4"]


@pytest.mark.parametrize(("spec", "problem"), [
    ("userId=nope", "which the CSV header does not have"),
    ("userId", "path=column"),
    ("properties=user,properties.x=user", "more than one value"),
])
def test_a_bad_mapping_stops_before_anything_is_read(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_mapping(spec, ["user"])


# ---- calls at the limits of PutRecords -------------------------------------------------------------------


def drain(calls: Calls) -> list[list[Record]]:
    out = []
    while call := calls.next_call():
        out.append(call)
    return out


def test_calls_hold_at_most_500_records() -> None:
    sizes = [len(c) for c in drain(Calls(records(*(f"c{i}" for i in range(1_200)))))]
    assert sizes == [500, 500, 200]


def test_calls_hold_at_most_5_mib() -> None:
    big = records(*(f"c{i}" for i in range(30)), size=400 * 1024)
    calls = drain(Calls(big))
    assert all(sum(r.size for r in call) <= MAX_CALL_BYTES for call in calls)
    assert [len(c) for c in calls] == [12, 12, 6]
    assert [r.ordinal for c in calls for r in c] == list(range(30))


def test_a_call_holds_one_record_per_customer_and_keeps_each_customers_order() -> None:
    keys = ["a", "a", "b", "a", "c", "b"]
    calls = drain(Calls(records(*keys)))
    assert [[(r.key, r.ordinal) for r in c] for c in calls] == [
        [("a", 0), ("b", 2), ("c", 4)], [("a", 1), ("b", 5)], [("a", 3)]]


def test_refused_records_go_back_before_their_customers_later_records() -> None:
    calls = Calls(records("a", "b", "a", "b", "c"))
    first = calls.next_call()
    assert [r.ordinal for r in first] == [0, 1, 4]
    calls.resend([first[1]])  # b's first record was refused
    rest = drain(calls)
    assert [[r.ordinal for r in c] for c in rest] == [[1, 2], [3]]


# ---- the stream's limits and the rate ------------------------------------------------------------------


def summary(mode: str, shards: int, **extra: Any) -> dict[str, Any]:
    return {"StreamDescriptionSummary": {"StreamModeDetails": {"StreamMode": mode}, "OpenShardCount": shards,
                                         **extra}}


def test_provisioned_streams_take_a_thousand_records_and_a_mib_a_second_per_shard() -> None:
    limits = stream_limits(summary("PROVISIONED", 3))
    assert (limits.records_per_second, limits.bytes_per_second) == (3_000, 3 * 1024 * 1024)
    assert (limits.call_records, limits.call_bytes) == (500, 3 * 1024 * 1024)


def test_on_demand_streams_take_their_write_capacity() -> None:
    assert stream_limits(summary("ON_DEMAND", 1)).records_per_second == 4_000
    assert stream_limits(summary("ON_DEMAND", 8)).bytes_per_second == 8 * 1024 * 1024
    warm = stream_limits(summary("ON_DEMAND", 4, WarmThroughput={"CurrentMiBps": 10}, MaxRecordSizeInKiB=2048))
    assert (warm.records_per_second, warm.max_record_bytes) == (10_000, 2048 * 1024)


def test_rate_caps_the_stream_and_the_call_size() -> None:
    limits = stream_limits(summary("PROVISIONED", 2)).capped(50)
    assert (limits.records_per_second, limits.call_records) == (50, 50)
    assert stream_limits(summary("PROVISIONED", 1)).capped(5_000).records_per_second == 1_000
    with pytest.raises(ValueError):
        stream_limits(summary("PROVISIONED", 2)).capped(0)


def test_token_bucket_spends_its_burst_then_meters_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst=100, clock=clock)
    assert bucket.reserve(100) == 0
    assert bucket.reserve(50) == pytest.approx(0.5)
    clock.sleep(0.5)
    assert bucket.reserve(100) == pytest.approx(1.0)
    clock.now += 10  # idle: it refills to its burst, no further
    assert bucket.reserve(100) == 0 and bucket.reserve(1) == pytest.approx(0.01)


def test_a_steady_sender_runs_at_the_rate_after_the_burst() -> None:
    clock = FakeClock()
    throttle = Throttle(StreamLimits(records_per_second=200, bytes_per_second=1e9), clock)
    start = clock.now
    for _ in range(20):  # 2,000 records in calls of 100
        clock.sleep(throttle.wait(100, 1_000))
    assert clock.now - start == pytest.approx((2_000 - 200) / 200)  # the first 200 go at once, as the burst


def test_bytes_meter_as_well_as_records() -> None:
    clock = FakeClock()
    throttle = Throttle(StreamLimits(records_per_second=1e6, bytes_per_second=1_000), clock)
    waits = [throttle.wait(1, 500) for _ in range(4)]
    assert waits == [0, 0, pytest.approx(0.5), pytest.approx(1.0)]


# ---- sending, with refusals -----------------------------------------------------------------------------


class FakeStream:
    """PutRecords in memory: refuses the listed (record, attempt) sends as throttled. A record is named by its
    messageId, or by its data when that is not JSON."""

    def __init__(self, refuse: set[tuple[str, int]] | None = None, always: set[str] | None = None) -> None:
        self.refuse = refuse or set()
        self.always = always or set()
        self.attempts: defaultdict[str, int] = defaultdict(int)
        self.accepted: list[tuple[str, bytes]] = []
        self.calls: list[int] = []

    def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:
        return summary("PROVISIONED", 1)

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(len(Records))
        results = []
        for record in Records:
            data = ident(record["Data"])
            self.attempts[data] += 1
            if data in self.always or (data, self.attempts[data]) in self.refuse:
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow"})
            else:
                self.accepted.append((record["PartitionKey"], record["Data"]))
                results.append({"SequenceNumber": str(len(self.accepted)), "ShardId": "shardId-0"})
        return {"FailedRecordCount": sum("ErrorCode" in r for r in results), "Records": results}


def ident(data: bytes) -> str:
    try:
        return str(json.loads(data)["messageId"])
    except ValueError:
        return data.decode()


def keyed(keys: list[str]) -> list[Record]:
    return [Record(i, i + 1, f"{key}:{i}".encode(), key) for i, key in enumerate(keys)]


def per_key(accepted: list[tuple[str, bytes]]) -> dict[str, list[int]]:
    order: defaultdict[str, list[int]] = defaultdict(list)
    for key, data in accepted:
        order[key].append(int(data.decode().split(":")[1]))
    return dict(order)


def test_refused_records_are_resent_after_a_back_off_in_order_per_customer() -> None:
    keys = ["a", "b", "a", "c", "a", "b"] * 50
    stream = FakeStream(refuse={("a:0", 1), ("b:1", 1), ("b:1", 2), ("c:3", 1)})
    clock = FakeClock()
    sent: list[int] = []
    report = send_records(stream, "s", keyed(keys), StreamLimits(1_000, 1e9), clock=clock, sleep=clock.sleep,
                          on_sent=sent.append)
    assert report.sent == 300 and not report.refused and sum(sent) == 300
    assert report.resent == 4 and report.errors == {"ProvisionedThroughputExceededException": 4}
    order = per_key(stream.accepted)
    for key in "abc":
        assert order[key] == [i for i, k in enumerate(keys) if k == key]
    assert [s for s in clock.slept if s > 0][:2] == [pytest.approx(0.1), pytest.approx(0.2)]


def test_a_record_refused_every_time_is_reported_after_the_last_try() -> None:
    stream = FakeStream(always={"b:1"})
    clock = FakeClock()
    report = send_records(stream, "s", keyed(["a", "b", "c"]), StreamLimits(1_000, 1e9), clock=clock,
                          sleep=clock.sleep, attempts=3)
    assert report.sent == 2 and [r.ordinal for r in report.refused] == [1]
    assert stream.attempts["b:1"] == 3


def test_sending_keeps_to_the_rate() -> None:
    stream = FakeStream()
    clock = FakeClock()
    report = send_records(stream, "s", keyed([f"c{i}" for i in range(1_000)]), StreamLimits(100, 1e9),
                          clock=clock, sleep=clock.sleep)
    assert stream.calls == [100] * 10  # one second of the rate per call
    assert report.seconds == pytest.approx(9.0)  # the first second is the bucket's burst


# ---- what the ingest made of it -----------------------------------------------------------------------


def test_health_totals_read_the_ingest_section_and_none_without_it() -> None:
    health = {"status": "ok", "ingest": {"records": 9, "applied": 5, "duplicates": 1, "quarantined": 2,
                                         "retried": 1}}
    seen: list[str] = []

    def fetch(url: str) -> Any:
        seen.append(url)
        return health

    totals = HealthTotals("http://127.0.0.1:3000/", fetch).read()
    assert seen == ["http://127.0.0.1:3000/health"]
    assert totals == Totals(applied=5, duplicates=1, quarantined=2, records=9, retried=1) and totals.settled == 8
    assert HealthTotals("http://x", lambda url: {"status": "ok"}).read() is None

    def down(url: str) -> Any:
        raise OSError("refused")

    assert HealthTotals("http://x", down).read() is None


class FakeCloudWatch:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        if "NextToken" not in request:
            return {"MetricDataResults": [{"Id": "applied", "Values": [40.0, 2.0]},
                                          {"Id": "quarantined", "Values": [1.0]}], "NextToken": "more"}
        return {"MetricDataResults": [{"Id": "applied", "Values": [8.0]}, {"Id": "duplicates", "Values": [3.0]}]}


def test_metric_totals_sum_the_ingest_functions_metrics_over_the_window() -> None:
    cloudwatch = FakeCloudWatch()
    start = datetime(2026, 10, 1, 9, 30, 17, tzinfo=UTC)
    totals = MetricTotals(cloudwatch, start, now=lambda: datetime(2026, 10, 1, 9, 40, tzinfo=UTC)).read()
    assert totals == Totals(applied=50, duplicates=3, quarantined=1)
    request = cloudwatch.requests[0]
    assert request["StartTime"] == datetime(2026, 10, 1, 9, 30, tzinfo=UTC)
    metrics = {q["MetricStat"]["Metric"]["MetricName"]: q["MetricStat"] for q in request["MetricDataQueries"]}
    assert set(metrics) == {"EventsApplied", "EventsDuplicate", "EventsQuarantined"}
    for stat in metrics.values():
        assert stat["Metric"]["Namespace"] == "cdp" and stat["Stat"] == "Sum"
        assert stat["Metric"]["Dimensions"] == [{"Name": "service", "Value": "ingest"}]


class GrowingTotals:
    """An ingest that settles ``per_read`` more records each time it is asked, from a baseline."""

    def __init__(self, per_read: int, quarantine_every: int = 0) -> None:
        self.settled, self.per_read, self.quarantine_every = 0, per_read, quarantine_every
        self.reads = 0

    def read(self) -> Totals:
        self.reads += 1
        total = 1_000 + self.settled
        self.settled += self.per_read
        quarantined = total // self.quarantine_every if self.quarantine_every else 0
        return Totals(applied=total - quarantined, quarantined=quarantined)


def test_watch_waits_until_the_records_sent_have_settled_since_the_start() -> None:
    clock = FakeClock()
    watch = Watch(GrowingTotals(per_read=30), clock, interval=1.0)
    assert watch.wait(100, timeout=60, sleep=clock.sleep)
    assert watch.latest.settled >= 100 and watch.samples[-1].at == pytest.approx(3.0)


def test_watch_gives_up_at_its_timeout() -> None:
    clock = FakeClock()
    watch = Watch(GrowingTotals(per_read=1), clock, interval=1.0)
    assert not watch.wait(100, timeout=5, sleep=clock.sleep)
    assert clock.now - watch.started == pytest.approx(5.0)


def test_rates_over_the_first_and_last_tenth() -> None:
    samples = [Sample(0, 0), Sample(10, 100), Sample(20, 800), Sample(30, 1_000)]
    assert reached(samples, 100) == 10 and reached(samples, 450) == pytest.approx(15.0)
    assert reached(samples, 1_001) is None
    first, last = window_rates(samples, 1_000) or (0, 0)
    assert first == pytest.approx(10.0)  # 100 records in 10 s
    assert last == pytest.approx(100 / 5)  # 900 reached at 25 s, 1,000 at 30 s


# ---- the whole import, in memory ------------------------------------------------------------------------


def history_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join([line(f"c{i % 7}", i) for i in range(count)] + [b"not json"]) + b"\n")
    return path


def test_an_import_reports_sent_skipped_and_what_the_ingest_applied(tmp_path: Path) -> None:
    path = history_file(tmp_path, 200)
    printed: list[str] = []
    clock = FakeClock()
    stream = FakeStream(refuse={("m-1", 1)})
    code = run_import(str(path), stream, "events", GrowingTotals(per_read=40, quarantine_every=100),
                      ImportOptions(quiet=True, poll_interval=1.0), printed.append, clock, clock.sleep)
    text = "\n".join(printed)
    assert code == 0, text
    assert len(stream.accepted) == 200
    assert "read 200 records; sent 200" in text and "1 resent" in text
    assert "skipped 1 lines" in text and "line 201: is not JSON" in text
    assert "quarantined" in text and "of 200 sent" in text
    assert "rate over the first 10%" in text


def test_an_import_fails_when_a_record_stays_refused_or_the_ingest_does_not_settle(tmp_path: Path) -> None:
    path = history_file(tmp_path, 20)
    clock = FakeClock()
    printed: list[str] = []
    refused = run_import(str(path), FakeStream(always={"m-3"}), "events", None,
                         ImportOptions(quiet=True), printed.append, clock, clock.sleep)
    assert refused == 1 and any("not sent after" in p and "line 4" in p for p in printed)
    slow = run_import(str(path), FakeStream(), "events", GrowingTotals(per_read=1),
                      ImportOptions(quiet=True, wait=3, poll_interval=1.0), printed.append, clock, clock.sleep)
    assert slow == 1 and any("had not settled" in p for p in printed)


def test_a_csv_file_is_imported_through_its_mapping(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("\ufeffcustomer,placed,total,order\nc-1,2026-10-01T09:00:00Z,20.5,o-1\nc-2,yesterday,3,o-2\n"
                    "c-1,2026-10-02T09:00:00Z,7,o-3\n", encoding="utf-8")
    stream = FakeStream()
    printed: list[str] = []
    options = ImportOptions(mapping="userId=customer,timestamp=placed,properties.revenue=total,"
                                    "properties.order_id=order", event="Order Completed", quiet=True)
    assert run_import(str(path), stream, "events", None, options, printed.append) == 0
    sent = [json.loads(data) for _, data in stream.accepted]
    assert [(m["userId"], m["properties"]["order_id"]) for m in sent] == [("c-1", "o-1"), ("c-1", "o-3")]
    assert all(parse_record(json.dumps(m).encode()).amount in {20.5, 7.0} for m in sent)
    assert any("line 3: column placed is not an ISO 8601 date" in p for p in printed)
