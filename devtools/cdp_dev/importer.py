"""``cdp import FILE``: a history of Segment-spec messages loaded onto the events stream at the stream's limits.

FILE is JSON Lines (one message per line), or CSV whose columns are mapped onto message fields with dotted
paths (``--map 'userId=customer_id,timestamp=created_at,properties.revenue=total'``; ``--event`` and
``--type`` give constant fields). A line or row that cannot be read is counted and reported by its line
number and the reason, never by its content, and the import carries on.

Records go out with Kinesis ``PutRecords`` (at most 500 records and 5 MiB per call), partitioned by customer
id (``userId``, else ``anonymousId``). The send rate is the stream's own write capacity, from
``DescribeStreamSummary``, metered by token buckets for records and bytes (``--rate`` caps it lower).
``PutRecords`` does not keep the order of the records of one call, so a call carries at most one record per
customer; records the stream refuses (throttled) are sent again after a back-off, ahead of that customer's
later records, so each customer's events arrive in file order.

At the end it reports what was read, sent, refused and skipped, and how many events the ingest applied,
found duplicate or quarantined: for the local stack from the cumulative ingest totals of its ``/health``,
for a deployed stream from the ingest function's CloudWatch metrics over the import's window.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

MAX_CALL_RECORDS = 500  # PutRecords: records per call
MAX_CALL_BYTES = 5 * 1024 * 1024  # PutRecords: bytes per call, partition keys included
MAX_RECORD_BYTES = 1024 * 1024  # one record, partition key included, unless the stream says otherwise
MAX_KEY_LENGTH = 256
SHARD_RECORDS_PER_SECOND = 1_000
SHARD_BYTES_PER_SECOND = 1024 * 1024
ON_DEMAND_DEFAULT_SHARDS = 4  # an on-demand stream starts at 4 MiB/s and 4,000 records/s
LOOKAHEAD_CALLS = 10  # how far past a busy customer's records a call looks for other customers
ATTEMPTS = 10  # sends of one record before it counts as refused
MAX_BACKOFF = 5.0

# Properties that are numbers in the Ecommerce spec: CSV cells mapped to them are sent as numbers.
NUMERIC_PROPERTIES = frozenset({"revenue", "total", "subtotal", "price", "quantity", "value", "tax", "shipping",
                                "discount"})
WHOLE_NUMBERS = frozenset({"quantity"})
TIMESTAMP_FIELDS = frozenset({"timestamp", "originalTimestamp", "sentAt"})


# ---- reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One message to put on the stream. ``ordinal`` is its place among the records, ``line`` in the file."""

    ordinal: int
    line: int
    data: bytes
    key: str

    @property
    def size(self) -> int:  # as Kinesis counts it against its limits
        return len(self.data) + len(self.key.encode())


@dataclass(frozen=True, slots=True)
class Skipped:
    line: int
    reason: str


class Unreadable(ValueError):
    """A line or row that cannot become a message; the reason names no content."""


def customer_key(message: dict[str, Any]) -> str:
    """The partition key: the customer id (userId, else anonymousId), as ``cdp send`` keys it."""
    for name in ("userId", "anonymousId"):
        value = message.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
            return str(value)[:MAX_KEY_LENGTH]
    raise Unreadable("has no userId or anonymousId")


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def jsonl_message(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unreadable("is not UTF-8 text") from None
    try:
        message = json.loads(text)
    except json.JSONDecodeError as error:  # its message names the problem and the column, not the text
        raise Unreadable(f"is not JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise Unreadable("is nested too deeply to read") from None
    if not isinstance(message, dict):
        raise Unreadable(f"is {_json_type(message)}, not a JSON object")
    return message


def _record(ordinal: int, line: int, data: bytes, key: str, max_record_bytes: int) -> Record:
    record = Record(ordinal, line, data, key)
    if record.size > max_record_bytes:
        raise Unreadable(f"is {record.size:,} bytes with its partition key; a record holds at most "
                         f"{max_record_bytes:,}")
    return record


def jsonl_records(lines: Iterable[bytes], max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[Record | Skipped]:
    """The records of JSON Lines, in file order; blank lines are passed over."""
    ordinal = 0
    for number, raw in enumerate(lines, start=1):
        data = raw.strip()
        if not data:
            continue
        try:
            record = _record(ordinal, number, data, customer_key(jsonl_message(data)), max_record_bytes)
        except Unreadable as problem:
            yield Skipped(number, str(problem))
            continue
        ordinal += 1
        yield record


@dataclass(frozen=True)
class ColumnMapping:
    """Message fields by dotted path, each from a CSV column; constants for ``type`` and ``event``."""

    columns: tuple[tuple[str, str], ...]  # (path, column)
    message_type: str = "track"
    event: str | None = None

    def message(self, row: dict[str, str]) -> dict[str, Any]:
        message: dict[str, Any] = {"type": self.message_type}
        if self.event:
            message["event"] = self.event
        for path, column in self.columns:
            cell = (row.get(column) or "").strip()
            if cell:
                _set_path(message, path, _cell_value(path, column, cell))
        if "messageId" not in message:  # stable, so importing the same file twice applies it once
            digest = hashlib.sha256(json.dumps(message, sort_keys=True).encode()).hexdigest()
            message["messageId"] = f"csv-{digest[:32]}"
        return message


def parse_mapping(spec: str | None, header: Sequence[str], message_type: str = "track",
                  event: str | None = None) -> ColumnMapping:
    """``--map 'path=column,...'``; with none, every column maps to the field of its own name."""
    pairs: list[tuple[str, str]] = []
    for item in (spec.split(",") if spec else [f"{name}={name}" for name in header]):
        path, equals, column = (part.strip() for part in item.partition("="))
        if not equals or not path or not column:
            raise ValueError(f"--map entries are path=column, not {item.strip()!r}")
        if column not in header:
            raise ValueError(f"--map names column {column!r}, which the CSV header does not have")
        pairs.append((path, column))
    paths = [p for p, _ in pairs]
    for path in paths:
        if paths.count(path) > 1 or any(other.startswith(path + ".") for other in paths):
            raise ValueError(f"--map gives {path!r} more than one value")
    return ColumnMapping(tuple(pairs), message_type, event)


def _set_path(message: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    node = message
    for name in parents:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise Unreadable(f"field {path} cannot be set: {name} is not an object")
        node = child
    node[last] = value


def _cell_value(path: str, column: str, cell: str) -> object:
    name = path.rsplit(".", 1)[-1]
    if name in TIMESTAMP_FIELDS:
        return _timestamp(column, cell)
    if name not in NUMERIC_PROPERTIES:
        return cell
    try:
        number = float(cell)
    except ValueError:
        raise Unreadable(f"column {column} ({path}) is not a number") from None
    if name in WHOLE_NUMBERS or (number.is_integer() and cell.lstrip("+-").isdigit()):
        if not number.is_integer():
            raise Unreadable(f"column {column} ({path}) is not a whole number")
        return int(number)
    return number


def _timestamp(column: str, cell: str) -> str:
    """ISO 8601 (taken as UTC without a zone) or seconds since the epoch (milliseconds past 1e11)."""
    try:
        seconds = float(cell)
    except ValueError:
        try:
            moment = datetime.fromisoformat(cell)
        except ValueError:
            raise Unreadable(f"column {column} is not an ISO 8601 date or seconds since the epoch") from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    else:
        moment = datetime.fromtimestamp(seconds / 1000 if seconds > 1e11 else seconds, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def csv_records(text: Iterable[str], spec: str | None, message_type: str = "track", event: str | None = None,
                max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[Record | Skipped]:
    """The records of a CSV file (a header row, then one message per row), in file order."""
    reader = csv.DictReader(text)
    mapping = parse_mapping(spec, reader.fieldnames or [], message_type, event)
    ordinal = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield Skipped(reader.line_num, f"is not CSV ({error})")
            continue
        try:
            if any("\ufffd" in (cell or "") for cell in row.values() if isinstance(cell, str)):
                # undecodable bytes, replaced so that the reader keeps its place: such a row is not sent
                raise Unreadable("is not UTF-8 text")
            message = mapping.message(row)
            data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
            record = _record(ordinal, reader.line_num, data, customer_key(message), max_record_bytes)
        except Unreadable as problem:
            yield Skipped(reader.line_num, str(problem))
            continue
        ordinal += 1
        yield record


class Source:
    """The records of a reader, with what it skipped kept aside; ``exhausted`` once all is read."""

    def __init__(self, items: Iterable[Record | Skipped]) -> None:
        self._items = iter(items)
        self.skipped: list[Skipped] = []
        self.read = 0
        self.exhausted = False

    def __iter__(self) -> Iterator[Record]:
        for item in self._items:
            if isinstance(item, Skipped):
                self.skipped.append(item)
            else:
                self.read += 1
                yield item
        self.exhausted = True


# ---- the stream's limits and the send rate --------------------------------------------------------------


@dataclass(frozen=True)
class StreamLimits:
    records_per_second: float
    bytes_per_second: float
    max_record_bytes: int = MAX_RECORD_BYTES
    mode: str = "PROVISIONED"
    shards: int = 1

    @property
    def call_records(self) -> int:
        """Records per PutRecords call: the API's limit, and no more than one second of the rate."""
        return max(1, min(MAX_CALL_RECORDS, int(self.records_per_second)))

    @property
    def call_bytes(self) -> int:
        return max(1, min(MAX_CALL_BYTES, int(self.bytes_per_second)))

    def capped(self, records_per_second: float | None) -> StreamLimits:
        if records_per_second is None or records_per_second >= self.records_per_second:
            return self
        if records_per_second <= 0:
            raise ValueError("--rate must be a positive number of records per second")
        return StreamLimits(records_per_second, self.bytes_per_second, self.max_record_bytes, self.mode, self.shards)


def stream_limits(summary: dict[str, Any]) -> StreamLimits:
    """The write capacity of a stream from its ``DescribeStreamSummary`` response.

    Provisioned: 1,000 records/s and 1 MiB/s per open shard. On demand: the same per shard, and at least
    the 4,000 records/s and 4 MiB/s an on-demand stream starts with, or its warm throughput if higher.
    """
    description = summary["StreamDescriptionSummary"]
    mode = str(description.get("StreamModeDetails", {}).get("StreamMode", "PROVISIONED"))
    shards = int(description.get("OpenShardCount") or 1)
    writable = max(shards, ON_DEMAND_DEFAULT_SHARDS) if mode == "ON_DEMAND" else shards
    records, size = float(writable * SHARD_RECORDS_PER_SECOND), float(writable * SHARD_BYTES_PER_SECOND)
    warm = float(description.get("WarmThroughput", {}).get("CurrentMiBps") or 0)
    if mode == "ON_DEMAND" and warm * 1024 * 1024 > size:
        records, size = warm * SHARD_RECORDS_PER_SECOND, warm * 1024 * 1024
    max_record = int(description.get("MaxRecordSizeInKiB") or MAX_RECORD_BYTES // 1024) * 1024
    return StreamLimits(records, size, max_record, mode, shards)


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``. ``reserve(n)`` takes n tokens now (the level may
    go below zero) and says how long to wait before using them, so a steady caller runs at ``rate``."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.rate, self.burst, self._clock = rate, burst, clock
        self.level = burst
        self._stamp = clock()

    def reserve(self, tokens: float) -> float:
        now = self._clock()
        self.level = min(self.burst, self.level + (now - self._stamp) * self.rate)
        self._stamp = now
        self.level -= tokens
        return max(0.0, -self.level / self.rate)


class Throttle:
    """The stream's two limits at once: records and bytes per second."""

    def __init__(self, limits: StreamLimits, clock: Callable[[], float]) -> None:
        self.records = TokenBucket(limits.records_per_second, limits.records_per_second, clock)
        self.bytes = TokenBucket(limits.bytes_per_second, limits.bytes_per_second, clock)

    def wait(self, records: int, size: int) -> float:
        return max(self.records.reserve(records), self.bytes.reserve(size))


# ---- sending ---------------------------------------------------------------------------------------------


class Calls:
    """The order of sending: each call holds at most one record per customer, in file order per customer.

    A record whose customer is already in the call waits for the next one, and so do that customer's later
    records; records the stream refused go back ahead of their customer's later ones.
    """

    def __init__(self, records: Iterable[Record], max_records: int = MAX_CALL_RECORDS,
                 max_bytes: int = MAX_CALL_BYTES) -> None:
        self._source = iter(records)
        self._waiting: deque[Record] = deque()
        self.max_records, self.max_bytes = max_records, max_bytes
        self.lookahead = max_records * LOOKAHEAD_CALLS

    def _next(self) -> Record | None:
        return self._waiting.popleft() if self._waiting else next(self._source, None)

    def next_call(self) -> list[Record]:
        call: list[Record] = []
        held: list[Record] = []
        keys: set[str] = set()
        size = scanned = 0
        while len(call) < self.max_records and scanned < self.lookahead:
            record = self._next()
            if record is None:
                break
            scanned += 1
            if record.key in keys:
                held.append(record)
            elif call and size + record.size > self.max_bytes:
                held.append(record)
                break
            else:
                call.append(record)
                keys.add(record.key)
                size += record.size
        self._waiting.extendleft(reversed(held))  # they came off the front, in order
        return call

    def resend(self, refused: Sequence[Record]) -> None:
        """Put refused records back in file order, before every later record of the same customers."""
        if refused:
            self._waiting = deque(heapq.merge(sorted(refused, key=_ordinal), self._waiting, key=_ordinal))


def _ordinal(record: Record) -> int:
    return record.ordinal


@dataclass
class SendReport:
    sent: int = 0
    calls: int = 0
    resent: int = 0  # sends of a record after the stream refused it
    refused: list[Record] = field(default_factory=list)  # still refused after ATTEMPTS sends
    errors: Counter[str] = field(default_factory=Counter)  # refusal codes, every attempt
    seconds: float = 0.0


class Sleeper(Protocol):
    def __call__(self, seconds: float, /) -> None: ...


def send_records(kinesis: Any, stream: str, records: Iterable[Record], limits: StreamLimits, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Sleeper = time.sleep,
                 on_sent: Callable[[int], None] = lambda count: None, attempts: int = ATTEMPTS) -> SendReport:
    """Send every record at the stream's limits; refused records are resent with a back-off, in order."""
    report = SendReport()
    started = clock()
    calls = Calls(records, limits.call_records, limits.call_bytes)
    throttle = Throttle(limits, clock)
    tries: Counter[int] = Counter()
    backoff = 0
    while call := calls.next_call():
        sleep(throttle.wait(len(call), sum(r.size for r in call)))
        response = kinesis.put_records(StreamName=stream,
                                       Records=[{"Data": r.data, "PartitionKey": r.key} for r in call])
        report.calls += 1
        refused = _refused(call, response["Records"], report, tries, attempts)
        report.sent += len(call) - len(refused)
        on_sent(len(call) - len(refused))
        calls.resend([r for r in refused if tries[r.ordinal] < attempts])
        report.refused.extend(r for r in refused if tries[r.ordinal] >= attempts)
        backoff = backoff + 1 if refused else 0
        if refused:
            sleep(min(0.1 * 2 ** (backoff - 1), MAX_BACKOFF))
    report.refused.sort(key=_ordinal)
    report.seconds = clock() - started
    return report


def _refused(call: list[Record], results: list[dict[str, Any]], report: SendReport, tries: Counter[int],
             attempts: int) -> list[Record]:
    refused = []
    for record, result in zip(call, results, strict=True):
        if tries[record.ordinal]:
            report.resent += 1
        tries[record.ordinal] += 1
        if result.get("ErrorCode"):
            report.errors[str(result["ErrorCode"])] += 1
            refused.append(record)
    return refused


# ---- what the ingest made of it --------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    """Cumulative ingest outcomes (as the local stack's /health reports them, or summed metrics)."""

    applied: int = 0
    duplicates: int = 0
    quarantined: int = 0
    records: int = 0
    retried: int = 0

    @property
    def settled(self) -> int:
        """Records the ingest is done with: applied, found duplicate, or quarantined."""
        return self.applied + self.duplicates + self.quarantined

    def since(self, baseline: Totals) -> Totals:
        return Totals(self.applied - baseline.applied, self.duplicates - baseline.duplicates,
                      self.quarantined - baseline.quarantined, self.records - baseline.records,
                      self.retried - baseline.retried)


class IngestTotals(Protocol):
    def read(self) -> Totals | None: ...


def _get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class HealthTotals:
    """The local stack's cumulative ingest totals from ``GET /health`` (``{"ingest": {...}}``)."""

    def __init__(self, api: str, fetch: Callable[[str], Any] = _get_json) -> None:
        self.url = f"{api.rstrip('/')}/health"
        self._fetch = fetch

    def read(self) -> Totals | None:
        try:
            totals = self._fetch(self.url).get("ingest")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(totals, dict):
            return None
        return Totals(*(int(totals.get(name) or 0) for name in
                        ("applied", "duplicates", "quarantined", "records", "retried")))


METRIC_NAMESPACE = "cdp"  # as functions/ingest/handler.py publishes them (Powertools, dimension service=ingest)
METRICS = (("applied", "EventsApplied"), ("duplicates", "EventsDuplicate"), ("quarantined", "EventsQuarantined"))


class MetricTotals:
    """A deployed ingest function's outcomes since ``start``: its CloudWatch metrics, summed per minute."""

    def __init__(self, cloudwatch: Any, start: datetime, now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self._cloudwatch = cloudwatch
        self._start = start.replace(second=0, microsecond=0)
        self._now = now

    def read(self) -> Totals | None:
        queries = [{"Id": field_name, "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": METRIC_NAMESPACE, "MetricName": metric,
                       "Dimensions": [{"Name": "service", "Value": "ingest"}]},
            "Period": 60, "Stat": "Sum"}} for field_name, metric in METRICS]
        sums: Counter[str] = Counter()
        token: str | None = None
        while True:
            page = self._cloudwatch.get_metric_data(
                MetricDataQueries=queries, StartTime=self._start, EndTime=self._now() + timedelta(minutes=1),
                **({"NextToken": token} if token else {}))
            for result in page.get("MetricDataResults", []):
                sums[result["Id"]] += int(sum(result.get("Values", [])))
            token = page.get("NextToken")
            if not token:
                return Totals(sums["applied"], sums["duplicates"], sums["quarantined"])


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the import started
    settled: int  # records settled since the import started


class Watch:
    """Polls ingest totals at most every ``interval`` seconds and keeps the samples for the rates."""

    def __init__(self, totals: IngestTotals, clock: Callable[[], float], interval: float) -> None:
        self._totals, self._clock, self.interval = totals, clock, interval
        self.started = clock()
        self.baseline = totals.read()
        self.latest = Totals()
        self.samples: list[Sample] = [Sample(0.0, 0)]
        self._polled = self.started

    @property
    def available(self) -> bool:
        return self.baseline is not None

    def poll(self, force: bool = False) -> Totals:
        now = self._clock()
        if self.baseline is None or (not force and now - self._polled < self.interval):
            return self.latest
        self._polled = now
        totals = self._totals.read()
        if totals is not None:
            self.latest = totals.since(self.baseline)
            self.samples.append(Sample(now - self.started, self.latest.settled))
        return self.latest

    def wait(self, expected: int, timeout: float, sleep: Sleeper,
             on_poll: Callable[[Totals], None] = lambda totals: None) -> bool:
        """Until ``expected`` records have settled since the start; False if ``timeout`` passed first."""
        deadline = self._clock() + timeout
        while True:
            totals = self.poll(force=True)
            on_poll(totals)
            if totals.settled >= expected:
                return True
            if self._clock() >= deadline:
                return False
            sleep(min(self.interval, max(0.0, deadline - self._clock())))


def reached(samples: Sequence[Sample], count: float) -> float | None:
    """When ``count`` records had settled, interpolated between the samples either side."""
    for index, sample in enumerate(samples):
        if sample.settled >= count:
            if index == 0:
                return sample.at
            before = samples[index - 1]  # before.settled < count <= sample.settled
            return before.at + (sample.at - before.at) * (count - before.settled) / (sample.settled - before.settled)
    return None


def window_rates(samples: Sequence[Sample], expected: int) -> tuple[float, float] | None:
    """Records settled per second over the first 10% and over the last 10% of ``expected``."""
    if expected < 10:
        return None
    tenth = expected / 10
    first, ninth, last = reached(samples, tenth), reached(samples, expected - tenth), reached(samples, expected)
    if first is None or ninth is None or last is None or first <= 0 or last <= ninth:
        return None
    return tenth / first, tenth / (last - ninth)


# ---- the report ------------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{seconds:.1f}s"


def skipped_lines(skipped: Sequence[Skipped], shown: int = 10) -> list[str]:
    if not skipped:
        return []
    lines = [f"skipped {len(skipped):,} lines that could not be read:"]
    lines += [f"  line {s.line}: {s.reason}" for s in skipped[:shown]]
    if len(skipped) > shown:
        reasons = Counter(s.reason.split(" (")[0] for s in skipped)
        lines.append(f"  ... and {len(skipped) - shown:,} more ("
                     + "; ".join(f"{count:,} {reason}" for reason, count in reasons.most_common(3)) + ")")
    return lines


def send_lines(source: Source, report: SendReport) -> list[str]:
    rate = report.sent / report.seconds if report.seconds > 0 else 0.0
    lines = [f"read {source.read:,} records; sent {report.sent:,} in {duration(report.seconds)} "
             f"({rate:,.0f} records/s, {report.calls:,} PutRecords calls)"]
    if report.resent:
        codes = ", ".join(f"{code} {count:,}" for code, count in report.errors.most_common())
        lines.append(f"the stream refused {sum(report.errors.values()):,} sends ({codes}); {report.resent:,} resent")
    if report.refused:
        lines.append(f"refused by the stream and not sent after {ATTEMPTS} tries: {len(report.refused):,} "
                     f"(first: line {report.refused[0].line})")
    return [*lines, *skipped_lines(source.skipped)]


def outcome_lines(totals: Totals, sent: int, seconds: float, rates: tuple[float, float] | None) -> list[str]:
    lines = [f"applied {totals.applied:,}, duplicates {totals.duplicates:,}, quarantined {totals.quarantined:,} "
             f"of {sent:,} sent, in {duration(seconds)}"
             + (f" ({totals.retried:,} retried by the ingest)" if totals.retried else "")]
    if rates is not None:
        first, last = rates
        lines.append(f"rate over the first 10%: {first:,.0f} records/s; over the last 10%: {last:,.0f} records/s "
                     f"({last / first:.2f}x)")
    return lines


# ---- the command -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportOptions:
    file_format: str | None = None  # "jsonl" or "csv"; None: from the file name
    mapping: str | None = None
    event: str | None = None
    message_type: str = "track"
    rate: float | None = None  # records per second, below the stream's limit
    wait: float = 15 * 60.0  # seconds to wait for the ingest to settle every record sent
    no_wait: bool = False
    quiet: bool = False
    poll_interval: float = 0.5
    window_rates: bool = True  # rates over the first and last 10% (from totals fine-grained enough)


def file_format(path: str, given: str | None) -> str:
    if given:
        return given
    return "csv" if path.lower().endswith((".csv", ".csv.txt")) else "jsonl"


def count_lines(path: str) -> int | None:
    """Non-blank lines: the progress bar's total (a CSV's header and multi-line cells make it approximate)."""
    if path == "-":
        return None
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def read_file(path: str, options: ImportOptions, max_record_bytes: int) -> Iterator[Record | Skipped]:
    if file_format(path, options.file_format) == "csv":
        with _open_text(path) as text:
            yield from csv_records(text, options.mapping, options.message_type, options.event, max_record_bytes)
        return
    with _open_binary(path) as lines:
        yield from jsonl_records(lines, max_record_bytes)


def _open_text(path: str) -> io.TextIOBase:
    if path == "-":
        import sys

        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def _open_binary(path: str) -> io.BufferedIOBase:
    if path == "-":
        import sys

        return sys.stdin.buffer  # type: ignore[return-value]
    return open(path, "rb")


class Bars:
    """The progress bars on standard error (``rich``): records sent, then records settled by the ingest."""

    def __init__(self, quiet: bool) -> None:
        self._progress: Any = None
        if quiet:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                                  _rate_column(), TimeRemainingColumn(), TimeElapsedColumn(),
                                  console=Console(stderr=True), speed_estimate_period=10)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def show(self, name: str, completed: int, total: int | None) -> None:
        if self._progress is None:
            return
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=total)
        self._progress.update(self._tasks[name], completed=completed, total=total)


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RecordsPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} records/s" if task.speed else "- records/s", style="progress.data.speed")

    return RecordsPerSecond()


def run_import(path: str, kinesis: Any, stream: str, totals: IngestTotals | None, options: ImportOptions,
               print_line: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
               sleep: Sleeper = time.sleep) -> int:
    """Import ``path`` onto ``stream``; 1 if a record was refused for good or the ingest did not settle in time."""
    limits = stream_limits(kinesis.describe_stream_summary(StreamName=stream)).capped(options.rate)
    print_line(f"stream {stream}: {limits.mode.lower().replace('_', '-')}, {limits.shards} open shard(s); sending "
               f"at up to {limits.records_per_second:,.0f} records/s and {limits.bytes_per_second / 2**20:,.1f} MiB/s")
    source = Source(read_file(path, options, limits.max_record_bytes))
    total = count_lines(path)
    watch = Watch(totals, clock, options.poll_interval) if totals is not None and not options.no_wait else None
    with Bars(options.quiet) as bars:
        sent = 0

        def on_sent(count: int) -> None:
            nonlocal sent
            sent += count
            expected = source.read if source.exhausted else None if total is None else max(total, sent)
            bars.show("sent", sent, expected)
            if watch is not None:
                bars.show("settled", watch.poll().settled, None)

        report = send_records(kinesis, stream, source, limits, clock=clock, sleep=sleep, on_sent=on_sent)
        bars.show("sent", report.sent, report.sent)
        for line in send_lines(source, report):
            print_line(line)
        timed_out = False
        if watch is not None and watch.available:
            timed_out = not watch.wait(report.sent, options.wait, sleep,
                                       lambda t: bars.show("settled", t.settled, report.sent))
    _report_outcome(watch, report, options, timed_out, print_line, totals is not None)
    return 1 if report.refused or timed_out else 0


def _report_outcome(watch: Watch | None, report: SendReport, options: ImportOptions, timed_out: bool,
                    print_line: Callable[[str], None], countable: bool) -> None:
    if watch is None:
        print_line("not waiting for the ingest (--no-wait)" if countable and options.no_wait else
                   "no ingest totals at this endpoint: applied and quarantined are not known")
        return
    if not watch.available:
        print_line("the stack reports no ingest totals: applied and quarantined are not known")
        return
    elapsed = watch.samples[-1].at
    rates = window_rates(watch.samples, report.sent) if options.window_rates and not timed_out else None
    for line in outcome_lines(watch.latest, report.sent, elapsed, rates):
        print_line(line)
    if timed_out:
        print_line(f"the ingest had not settled every record after waiting {duration(options.wait)} "
                   f"({report.sent - watch.latest.settled:,} outstanding)")


def totals_for(local_api: str | None, deployed: bool, cloudwatch: Callable[[], Any]) -> IngestTotals | None:
    """Where the ingest's outcomes are read: the local stack's /health, a deployed stack's metrics, or nowhere
    (an endpoint that is not a registered local stack)."""
    if local_api is not None:
        return HealthTotals(local_api)
    if deployed:
        return MetricTotals(cloudwatch(), datetime.now(UTC))
    return None
