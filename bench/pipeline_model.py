"""Every request and transition the pipeline makes for a stream of traffic, counted in one simulation.

The traffic's stream batches go, in time order, through the real ``ingest_batch`` over the in-memory
store (``cdp_dev.memory``), and before each batch the real timers ``sweep`` runs at that batch's time;
after the last batch the sweep keeps running until no deadline is left. So the transitions the
timers make (a shopper leaving "recent buyers" 30 days later) are counted with the ingest's, and a
deadline that a later event cancels is not. Each profile write is one table stream record; the
changes function reads the stream 100 records at a time, as its mapping does at sustained traffic.

Counted per write: the billed item size (rounded up to 1 KB per write request unit) and the due
index entry it moves (the index is keys-only: one unit to add or drop an entry, two to move one, none
when the deadline stays). Per changes invocation: membership writes (one per transition), size
counters touched (one update per touched segment), bus entries and PutEvents calls. Per
integration that is enabled: the deliveries its segments get, and so its SQS, Lambda and ledger
requests. :func:`cost` turns the counts into dollars.
"""

from __future__ import annotations

import math
from collections import Counter as Tally
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdp.core.clock import FixedClock
from cdp.core.engine import Engine, Transition
from cdp.core.profile import Profile, item_size
from cdp.pipeline.ingest import StreamRecord, ingest_batch
from cdp.pipeline.timers import sweep
from cdp.ports import QuarantinedRecord
from cdp_dev.memory import MemoryDueIndex, MemoryProfileStore

BUS_ENTRIES_PER_PUT_EVENTS = 10
INGEST_BATCH = 100  # records per ingest invocation at sustained traffic (the stack's batch_size)
CHANGES_BATCH = 100  # table stream records per changes invocation (its mapping's batch size) at sustained traffic
INTEGRATION_BATCH = {"email": 10, "webhook": 10, "meta": 100, "google": 100}  # the stack's default batch sizes
LOG_BYTES_PER_INVOCATION = 1200  # START, END and REPORT lines plus one metrics (EMF) line
DRAIN_DAYS = 400  # after the traffic, deadlines are followed this far (the longest window is 26 weeks)


class CountingStore(MemoryProfileStore):
    """The in-memory store, noting per write its billed size and the due-index units it costs."""

    def __init__(self) -> None:
        super().__init__()
        self.write_units: Tally[str] = Tally()  # writer -> write request units of profile items
        self.index_units: Tally[str] = Tally()  # writer -> write request units of the due index
        self.writes: Tally[str] = Tally()
        self.item_bytes: list[int] = []
        self.writer = "ingest"
        self.images: list[tuple[dict[str, Any] | None, dict[str, Any]]] = []  # the first writes, old and new
        self.keep_images = 2000

    def save(self, profile: Profile, expected_version: int) -> None:
        keeping = len(self.images) < self.keep_images
        before = self.item(profile.customer_id) if keeping else None
        stored = self._keys.get(profile.customer_id)
        super().save(profile, expected_version)
        item = profile.to_item()
        if keeping:
            self.images.append((before, item))
        size = item_size(item)
        self.item_bytes.append(size)
        self.writes[self.writer] += 1
        self.write_units[self.writer] += math.ceil(size / 1024)
        old, new = stored[2] if stored else None, item.get("nd")
        self.index_units[self.writer] += 0 if old == new else (1 if old is None or new is None else 2)


class CountingQuarantine:
    def __init__(self) -> None:
        self.records = 0

    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        self.records += len(records)


@dataclass
class Counts:
    """What the pipeline did for ``events`` events."""

    events: int = 0
    record_bytes: int = 0
    ingest_invocations: int = 0
    batch_gets: Tally[str] = field(default_factory=Tally)  # writer -> BatchGetItem calls
    sweeps: int = 0
    due_queries: int = 0
    transitions: Tally[str] = field(default_factory=Tally)  # ingest | timers
    changes_invocations: int = 0
    stream_records: int = 0
    size_updates: int = 0
    bus_entries: int = 0
    put_events_calls: int = 0
    deliveries: Tally[str] = field(default_factory=Tally)  # integration -> deliveries
    quarantined: int = 0
    store: CountingStore = field(default_factory=CountingStore)

    def per_event(self) -> dict[str, float]:
        n = self.events or 1
        store = self.store
        return {
            "transitions": sum(self.transitions.values()) / n,
            "transitions_ingest": self.transitions["ingest"] / n,
            "transitions_timers": self.transitions["timers"] / n,
            "profile_writes_ingest": store.writes["ingest"] / n, "profile_writes_timers": store.writes["timers"] / n,
            "profile_write_units": sum(store.write_units.values()) / n,
            "due_index_write_units": sum(store.index_units.values()) / n,
            "batch_gets": sum(self.batch_gets.values()) / n,
            "ingest_invocations": self.ingest_invocations / n,
            "changes_invocations": self.changes_invocations / n,
            "size_updates": self.size_updates / n, "bus_entries": self.bus_entries / n,
            "put_events_calls": self.put_events_calls / n,
            **{f"deliveries_{name}": count / n for name, count in self.deliveries.items()},
        }


class Pipeline:
    """The ingest, the timers and the changes function's bookkeeping over one in-memory store."""

    def __init__(self, engine: Engine, published: Collection[str] | None,
                 integrations: Mapping[str, Collection[str]]) -> None:
        self.engine = engine
        self.published = published  # None: every segment's transitions go on the bus
        self.integrations = integrations
        self.counts = Counts()
        self.index = MemoryDueIndex(self.counts.store)
        self.pending_records = 0  # table stream records not yet read by the changes function
        self.pending: list[Transition] = []

    def ingest(self, batch: Sequence[StreamRecord]) -> None:
        counts, store = self.counts, self.counts.store
        moment = max(_event_time(record) for record in batch)
        self.sweep(moment)
        store.writer = "ingest"
        quarantine = CountingQuarantine()
        before = store.writes["ingest"]
        gets = store.requests["BatchGetItem"]
        result = ingest_batch(batch, self.engine, store, quarantine, FixedClock(moment))
        counts.batch_gets["ingest"] += store.requests["BatchGetItem"] - gets
        counts.events += len(batch)
        counts.record_bytes += sum(len(record.data) for record in batch)
        counts.ingest_invocations += 1
        counts.quarantined += quarantine.records
        counts.transitions["ingest"] += len(result.transitions)
        self.changes(store.writes["ingest"] - before, result.transitions)

    def sweep(self, moment: float) -> None:
        store = self.counts.store
        if not any(entries and entries[0][0] <= moment for entries in store._due.values()):
            return  # nothing due: a real run costs its queries only (a fixed cost per minute)
        store.writer = "timers"
        before, gets, queries = store.writes["timers"], store.requests["BatchGetItem"], store.requests["Query"]
        result = sweep(self.index, store, self.engine, FixedClock(moment))
        self.counts.sweeps += 1
        self.counts.batch_gets["timers"] += store.requests["BatchGetItem"] - gets
        self.counts.due_queries += store.requests["Query"] - queries
        self.counts.transitions["timers"] += len(result.transitions)
        self.changes(store.writes["timers"] - before, result.transitions)

    def drain(self, last: float) -> None:
        """Follow every deadline left after the traffic, as the sweep would each minute."""
        store = self.counts.store
        end = last + DRAIN_DAYS * 86400
        while True:
            due = [entries[0][0] for entries in store._due.values() if entries]
            if not due or min(due) > end:
                return
            self.sweep(min(due))

    def changes(self, stream_records: int, transitions: Sequence[Transition]) -> None:
        """The table stream records of one write batch, read by the changes function 100 at a time."""
        self.pending_records += stream_records
        self.pending += transitions
        if self.pending_records >= CHANGES_BATCH:
            self.flush()

    def flush(self) -> None:
        """One changes invocation over the stream records read so far."""
        if not self.pending_records:
            return
        counts, transitions = self.counts, self.pending
        counts.stream_records += self.pending_records
        counts.changes_invocations += 1
        counts.size_updates += len({t.segment_id for t in transitions})  # one ADD per touched segment
        published = [t for t in transitions if self.published is None or t.segment_id in self.published]
        counts.bus_entries += len(published)
        counts.put_events_calls += math.ceil(len(published) / BUS_ENTRIES_PER_PUT_EVENTS)
        for name, segments in self.integrations.items():
            counts.deliveries[name] += sum(t.segment_id in segments for t in published)
        self.pending_records, self.pending = 0, []


def _event_time(record: StreamRecord) -> float:
    from cdp.core.events import parse_record

    return parse_record(record.data).timestamp


def simulate(batches: Sequence[Sequence[StreamRecord]], engine: Engine, published: Collection[str] | None = None,
             integrations: Mapping[str, Collection[str]] | None = None) -> Counts:
    """Run the traffic (stream batches in time order) and every deadline it leaves; return the counts."""
    pipeline = Pipeline(engine, published, integrations or {})
    last = 0.0
    for batch in batches:
        pipeline.ingest(batch)
        last = max(last, max(_event_time(record) for record in batch))
    pipeline.drain(last)
    pipeline.flush()
    return pipeline.counts


def integration_segments(context: Mapping[str, Any]) -> dict[str, set[str]]:
    """Integration name -> the segments it routes, from cdk.json's ``integrations`` (enabled or not)."""
    return {name: set((given.get("segments") or {}).keys())
            for name, given in (context.get("integrations") or {}).items()}


def cost(counts: Counts, *, ingest_cpu_s_per_event: float, client_cpu_s_per_write: float,
         changes_cpu_s_per_record: float, timers_cpu_s_per_due: float, memory_mb: int, concurrency: int,
         integrations_enabled: bool, ingest_memory_mb: int | None = None) -> dict[str, Any]:
    """US dollars per million events, line by line, from the counts and the measured CPU times."""
    from bench import prices

    per = counts.per_event()
    n = 1e6  # events
    wait = prices.LATENCY_SECONDS
    share = min(1.0, memory_mb / 1769)
    gb_s = memory_mb / 1024 * prices.LAMBDA_ARM_GB_SECOND
    ingest_mb = ingest_memory_mb or memory_mb
    ingest_share, ingest_gb_s = min(1.0, ingest_mb / 1769), ingest_mb / 1024 * prices.LAMBDA_ARM_GB_SECOND
    writes_ingest = per["profile_writes_ingest"]
    writes_timers = per["profile_writes_timers"]
    # Lambda time: CPU at the memory setting's vCPU share, plus the round trips it waits on (writes
    # go out ``concurrency`` at a time; a batch's puts wait about ceil(writes / concurrency) round trips).
    # At sustained traffic a shard's batches are full (the mapping's batch size), whatever the simulation's
    # batches were cut at to keep one event per customer per batch.
    ingest_batches = n / INGEST_BATCH
    ingest_seconds = (n * (ingest_cpu_s_per_event + writes_ingest * client_cpu_s_per_write) / ingest_share
                      + 2 * ingest_batches * wait["BatchGetItem"]  # the id map, then the profiles
                      + n * writes_ingest / concurrency * wait["PutItem"]
                      + ingest_batches * wait["PutItem"])
    timers_seconds = (n * writes_timers * (timers_cpu_s_per_due + client_cpu_s_per_write) / share
                      + n * writes_timers / concurrency * wait["PutItem"])
    changes_calls = n * (per["transitions"] + per["size_updates"] + per["put_events_calls"])
    changes_seconds = (n * (per["profile_writes_ingest"] + per["profile_writes_timers"]) * changes_cpu_s_per_record
                       / share + changes_calls / concurrency * wait["PutItem"]
                       + per["changes_invocations"] * n * wait["PutEvents"])
    mean_record = counts.record_bytes / max(counts.events, 1)
    lines: dict[str, float] = {
        "kinesis on-demand ingest (each record rounded up to 1 KB)":
            n * math.ceil(mean_record / 1024) / 1024 ** 2 * prices.KINESIS_ON_DEMAND_INGEST_GB,
        "kinesis retrieval": n * mean_record / 1024 ** 3 * prices.KINESIS_ON_DEMAND_RETRIEVAL_GB,
        "ingest lambda requests": ingest_batches * prices.LAMBDA_REQUEST,
        "ingest lambda duration": ingest_seconds * ingest_gb_s,
        "profile reads (BatchGetItem, 1 RRU per profile up to 4 KB)":
            n * (writes_ingest + writes_timers) * prices.DYNAMODB_READ_REQUEST_UNIT,
        "id map reads (BatchGetItem, eventually consistent: 0.5 RRU per id per batch)":
            n * writes_ingest * 0.5 * prices.DYNAMODB_READ_REQUEST_UNIT,
        "id map writes (a merge's link, a new email address: 1 WRU each)":
            n * per.get("id_map_writes", 0.0) * prices.DYNAMODB_WRITE_REQUEST_UNIT,
        "profile writes (1 WRU per KB, measured sizes)":
            n * per["profile_write_units"] * prices.DYNAMODB_WRITE_REQUEST_UNIT,
        "due index writes (keys only: 1 to add or drop, 2 to move)":
            n * per["due_index_write_units"] * prices.DYNAMODB_WRITE_REQUEST_UNIT,
        "timers lambda duration (due customers)": timers_seconds * gb_s,
        "changes lambda requests": n * per["changes_invocations"] * prices.LAMBDA_REQUEST,
        "changes lambda duration": changes_seconds * gb_s,
        "members index: membership writes (1 WRU per transition)":
            n * per["transitions"] * prices.DYNAMODB_WRITE_REQUEST_UNIT,
        "members index: size counters (1 WRU per touched counter per batch)":
            n * per["size_updates"] * prices.DYNAMODB_WRITE_REQUEST_UNIT,
        "eventbridge events (published transitions)": n * per["bus_entries"] * prices.EVENTBRIDGE_CUSTOM_EVENT,
        "eventbridge archive (1 KB per event)": n * per["bus_entries"] / 1024 ** 2 * prices.EVENTBRIDGE_ARCHIVE_GB,
        "logs (Lambda start/end/report and one metrics line per invocation)":
            (ingest_batches + n * per["changes_invocations"]) * LOG_BYTES_PER_INVOCATION
            / 1024 ** 3 * prices.CLOUDWATCH_LOGS_INGEST_GB,
        "table stream reads by lambda": 0.0,
    }
    if integrations_enabled:
        deliveries = sum(per.get(f"deliveries_{name}", 0.0) for name in INTEGRATION_BATCH)
        batches = sum(per.get(f"deliveries_{name}", 0.0) / size for name, size in INTEGRATION_BATCH.items())
        lines["integrations: SQS (send by the rule, receive and delete per batch)"] = (
            n * (deliveries + 2 * batches) * prices.SQS_REQUEST)
        lines["integrations: lambda requests and duration (one destination call per batch)"] = (
            n * batches * (prices.LAMBDA_REQUEST + prices.LATENCY_SECONDS["Destination"] * gb_s))
        lines["integrations: delivery ledger (1 RRU + 1 WRU per delivery)"] = (
            n * deliveries * (prices.DYNAMODB_READ_REQUEST_UNIT + prices.DYNAMODB_WRITE_REQUEST_UNIT))
        lines["integrations: ledger's customer index (keys only: 1 WRU per ledger write)"] = (
            n * deliveries * prices.DYNAMODB_WRITE_REQUEST_UNIT)
        lines["integrations: consent read at delivery (the customer's profile, 1 RRU per delivery)"] = (
            n * deliveries * prices.DYNAMODB_READ_REQUEST_UNIT)
    return {"usd_per_million_events": sum(lines.values()), "lines": lines, "per_event": per,
            "assumptions": {"lambda_memory_mb": memory_mb, "ingest_memory_mb": ingest_mb,
                            "write_concurrency": concurrency,
                            "latency_seconds": dict(wait), "prices_region": prices.REGION,
                            "prices_taken": prices.TAKEN, "integrations_enabled": integrations_enabled,
                            "mean_record_bytes": mean_record,
                            "mean_item_bytes": sum(counts.store.item_bytes) / max(len(counts.store.item_bytes), 1)}}


def fixed_monthly(customers: int, item_bytes: float, events_per_month: float, bus_events_per_month: float,
                  integrations: int) -> dict[str, float]:
    """What the stack costs a month whatever the traffic, for ``customers`` stored profiles."""
    from bench import prices

    minutes = 30 * 24 * 60
    storage_gb = customers * item_bytes / 1024 ** 3
    return {
        "kinesis on-demand stream (hourly)": 730 * prices.KINESIS_ON_DEMAND_STREAM_HOUR,
        "timers: a run a minute (Lambda request + 32 due-index queries)":
            minutes * (prices.LAMBDA_REQUEST + 32 * prices.DYNAMODB_READ_REQUEST_UNIT / 2),
        "integrations: idle SQS long polls (5 pollers, one every 20 s)":
            integrations * 5 * minutes * 3 * prices.SQS_REQUEST,
        "kms: customer key": prices.KMS_KEY_MONTH,
        "kms: data-key requests (services re-use keys for 5 minutes)": minutes / 5 * 6 * prices.KMS_REQUEST,
        "cloudwatch: custom metrics (about 30)": 30 * prices.CLOUDWATCH_METRIC_MONTH,
        f"dynamodb storage ({customers:,} profiles)": storage_gb * prices.DYNAMODB_STORAGE_GB_MONTH,
        f"dynamodb point-in-time recovery ({customers:,} profiles)": storage_gb * prices.DYNAMODB_PITR_GB_MONTH,
        "eventbridge archive storage (a month of events, 1 KB each)":
            bus_events_per_month / 1024 ** 2 * prices.EVENTBRIDGE_ARCHIVE_STORAGE_GB_MONTH,
        "quarantine bucket (negligible at a clean source)": 0.0 * events_per_month,
    }


PSEUDONYM_READERS = 7  # functions that read the pseudonym key: changes, api, privacy and the four integrations
# Lambda replaces instances unannounced (idle ones within minutes to hours): assume each reader runs 4 instances,
# each started again every hour, so 7 x 4 x 730 cold starts a month, each one GetSecretValue (and its KMS Decrypt).
COLD_STARTS_PER_READER_MONTH = 4 * 730


def pseudonym_fixed_monthly(cold_starts_per_reader: float = COLD_STARTS_PER_READER_MONTH) -> dict[str, float]:
    """What ``pseudonymous_indexes`` adds a month whatever the traffic: the key's secret, and its reads."""
    from bench import prices

    reads = PSEUDONYM_READERS * cold_starts_per_reader
    return {
        "secrets manager: the pseudonym key (one secret)": prices.SECRETS_MANAGER_SECRET_MONTH,
        f"secrets manager: GetSecretValue at cold starts (~{reads:,.0f}) with its KMS Decrypt":
            reads * (prices.SECRETS_MANAGER_REQUEST + prices.KMS_REQUEST),
    }


COLLECTOR_KEY_CACHE_SECONDS = 30  # the collector's CDP_KEY_CACHE_SECONDS default: one GetItem per key per 30 s
# The HTTP API stage's access log (cdk/collector.py): one JSON line per request (request id, time, route,
# status, latency, sizes, error), about 200 bytes with CloudWatch's 26 bytes per log event.
ACCESS_LOG_BYTES_PER_REQUEST = 200


def collector_cost(*, cpu_s_per_request: float, messages_per_request: float, api_units_per_request: float,
                   memory_mb: int) -> dict[str, Any]:
    """US dollars per million events for the collector in front of the stream (the stream itself, its
    PutRecords ingest and retrieval, is in :func:`cost`'s Kinesis lines and not counted again here).

    A request is one HTTP API request (billed per 512 KB of it) and one invocation: its measured CPU at the
    memory setting's vCPU share plus one PutRecords round trip, billed per started millisecond. The write
    key is read at most once per key per ``COLLECTOR_KEY_CACHE_SECONDS`` per function instance, so ~0 reads
    per request (a warm instance: 86,400 eventually consistent reads, half a unit each, a month). Valid
    traffic puts nothing in the quarantine. Logs: the function's (start, end, report and one metrics line per
    invocation) and the stage's access log line per request.
    """
    from bench import prices

    n = 1e6  # events
    requests = n / messages_per_request
    share = min(1.0, memory_mb / 1769)
    seconds = cpu_s_per_request / share + prices.LATENCY_SECONDS["PutRecords"]
    billed = math.ceil(seconds * 1000) / 1000  # Lambda bills duration per millisecond, rounded up
    gb_s = memory_mb / 1024 * prices.LAMBDA_ARM_GB_SECOND
    key_reads_month = 30 * 86400 / COLLECTOR_KEY_CACHE_SECONDS
    lines: dict[str, float] = {
        "api gateway http api requests (1 per 512 KB of request)":
            requests * api_units_per_request * prices.API_GATEWAY_HTTP_REQUEST,
        "collector lambda requests": requests * prices.LAMBDA_REQUEST,
        "collector lambda duration (measured CPU at vCPU share + PutRecords wait)": requests * billed * gb_s,
        "write-key reads (GetItem, cached 30 s per instance: ~0 per request)": 0.0,
        "kinesis PutRecords (in the pipeline's kinesis lines, not counted twice)": 0.0,
        "logs (Lambda start/end/report and one metrics line per invocation)":
            requests * LOG_BYTES_PER_INVOCATION / 1024 ** 3 * prices.CLOUDWATCH_LOGS_INGEST_GB,
        "logs (the HTTP API stage's access log, one line per request)":
            requests * ACCESS_LOG_BYTES_PER_REQUEST / 1024 ** 3 * prices.CLOUDWATCH_LOGS_INGEST_GB,
        "quarantine (S3 PUT per request with a rejected message: none here)": 0.0,
    }
    return {"usd_per_million_events": sum(lines.values()), "lines": lines,
            "per_million_events": {"requests": requests, "lambda_seconds_billed": requests * billed},
            "assumptions": {"messages_per_request": messages_per_request, "memory_mb": memory_mb,
                            "vcpu_share": share, "cpu_ms_per_request": cpu_s_per_request * 1e3,
                            "invocation_ms": seconds * 1e3, "billed_ms": billed * 1e3,
                            "api_gateway_units_per_request": api_units_per_request,
                            "put_records_round_trip_s": prices.LATENCY_SECONDS["PutRecords"],
                            "write_key_reads_per_instance_month": key_reads_month,
                            "write_key_reads_usd_per_instance_month":
                                key_reads_month * 0.5 * prices.DYNAMODB_READ_REQUEST_UNIT,
                            "prices_region": prices.REGION, "prices_taken": prices.TAKEN}}


def collector_mix(browser: dict[str, Any], server: dict[str, Any], browser_share: float) -> dict[str, Any]:
    """A mix of the two: ``browser_share`` of the events from browsers one per request, the rest from servers."""
    lines = {line: browser_share * usd + (1 - browser_share) * server["lines"][line]
             for line, usd in browser["lines"].items()}
    return {"usd_per_million_events": sum(lines.values()), "lines": lines,
            "assumptions": {"browser_share_of_events": browser_share,
                            "server_share_of_events": 1 - browser_share}}
