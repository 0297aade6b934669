"""The whole pipeline on one machine: an AWS emulator (moto) plus the real handlers, wired like AWS.

Resources come from the synthesised CDK template, so local and cloud cannot drift: every stream,
table, bucket, queue and bus in the template is created on the emulator under its logical id, each
function gets the environment the template gives it (references resolved to those names), and each
event source mapping is emulated with the template's batch size, retries, bisect and on-failure
destination. The API is served over HTTP as API Gateway proxy events, and the collector beside it under
``/v1/`` as HTTP API (payload 2.0) events, with one source (``local``) and its write key made at start-up.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cdp_dev.emulator import LAYOUTS, Emulator
from cdp_dev.handlers import load_handler
from cdp_dev.lambda_events import kinesis_record, stream_envelope
from cdp_dev.local_jobs import InProcessJobRunner, LocalPopulationSchedule, local_traits_schedule, runner_override

REGION = "us-east-1"
LOCAL_VERIFY_DELAY_SECONDS = 2  # a deletion's verify pass (the template's waits a minute for the exits)
LOCAL_VISIBILITY_SECONDS = 2  # a failed integration batch comes back this soon (the template's is minutes)
FEED_QUEUE = "cdp-local-transitions"
FEED_KEEP = 200  # with no feed printing them, the feed queue keeps the newest transitions, for cdp tail and tests
# Functions CloudFormation runs at deploy time (custom resources): the local stack runs each once at start, as a
# deploy would, and never as a component.
DEPLOY_TIME = ("catalogue",)
SHARED_CLOCK = ("ingest", "timers", "api", "jobs")  # given the stack's one clock (email's cap is wall time)
SOURCE = "cdp.segments"
COLLECTOR_PREFIX = "/v1/"  # Segment's Tracking API routes, served by the collector function
LOCAL_SOURCE = "local"  # the source `cdp run` makes, whose write key it prints
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # an HTTP API's payload quota: API Gateway answers 413 past it
SAMPLE_BATCH_BYTES = 400 * 1024  # well under the collector's 500 KB per batch
SAMPLE_BATCH_MESSAGES = 1_000  # well under its 2,500 messages
STOP_SECONDS = 6.0  # for the components' invocations in hand, within the 10 s a stop is given


def synthesised_template(root: Path, context: dict[str, object] | None = None) -> dict[str, Any]:
    """Synthesise the stack (cdk-nag included) with cdk.synth and return its CloudFormation template.

    In a child process: the CDK's Node.js runtime (jsii) then ends with it, instead of living on beside the
    stack (and dying noisily with it on Ctrl-C, as the terminal signals the whole process group).
    """
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "template.json"
        env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
        done = subprocess.run([sys.executable, "-m", "cdk.synth", str(output)], input=json.dumps(context),
                              capture_output=True, text=True, cwd=root, env=env, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise RuntimeError(f"synthesising the CDK template failed: {last}")
        template: dict[str, Any] = json.loads(output.read_text())
    return template


@dataclass
class Mapping:
    """One event source mapping, as the template defines it."""

    function: str  # folder name: ingest, changes
    source: str  # logical id of the stream or table
    batch_size: int
    retries: int
    bisect: bool
    failure_queue: str | None


@dataclass
class Schedule:
    """A scheduled rule that invokes a function, as the template defines it."""

    function: str  # folder name
    seconds: float
    inputs: list[dict[str, Any]] = field(default_factory=list)  # one event per target of the rule


@dataclass
class Rule:
    """A bus rule with an event pattern, delivering to queues."""

    name: str
    bus: str
    pattern: dict[str, Any]
    queues: list[str]


@dataclass
class Resources:
    names: dict[str, str] = field(default_factory=dict)  # logical id -> local name
    streams: list[str] = field(default_factory=list)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    buckets: list[str] = field(default_factory=list)
    versioned: list[str] = field(default_factory=list)  # buckets the template versions (the quarantine)
    queues: list[str] = field(default_factory=list)
    buses: list[str] = field(default_factory=list)
    functions: dict[str, dict[str, str]] = field(default_factory=dict)  # folder -> environment
    mappings: list[Mapping] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    redrives: dict[str, tuple[str, int]] = field(default_factory=dict)  # queue -> (dead-letter queue, receives)
    queue_refs: dict[str, dict[str, str]] = field(default_factory=dict)  # folder -> variable -> queue (a URL)


def _ref(value: Any) -> str | None:
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            return str(value["Fn::GetAtt"][0])
    return None


def resources_from_template(template: dict[str, Any], root: Path) -> Resources:
    """What the emulator needs of the template: stores first, then the functions (whose environment refers
    to them), then what invokes the functions."""
    found = Resources()
    items: dict[str, dict[str, Any]] = template["Resources"]
    for logical, resource in items.items():
        _add_store(found, logical, resource["Type"], resource.get("Properties", {}))
    folders = {logical: _add_function(found, resource["Properties"], root)
               for logical, resource in items.items() if resource["Type"] == "AWS::Lambda::Function"}
    for logical, resource in items.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::EventSourceMapping":
            found.mappings.append(_mapping(found, folders, properties))
        elif resource["Type"] == "AWS::Events::Rule" and "EventPattern" in properties:
            _add_rule(found, logical, properties)
        elif resource["Type"] == "AWS::Events::Rule" and "ScheduleExpression" in properties:
            found.schedules += _schedules(folders, properties)
    return found


def _add_store(found: Resources, logical: str, kind: str, properties: dict[str, Any]) -> None:
    """A stream, table, bucket, queue or bus, under its local name (anything else is not a store)."""
    if kind == "AWS::Kinesis::Stream":
        found.names[logical] = logical
        found.streams.append(logical)
    elif kind == "AWS::DynamoDB::Table":
        found.names[logical] = logical
        found.tables[logical] = properties
    elif kind == "AWS::S3::Bucket":
        found.names[logical] = logical.lower()
        found.buckets.append(logical.lower())
        if properties.get("VersioningConfiguration", {}).get("Status") == "Enabled":
            found.versioned.append(logical.lower())
    elif kind == "AWS::SQS::Queue":
        found.names[logical] = logical
        found.queues.append(logical)
        redrive = properties.get("RedrivePolicy")
        if redrive:
            found.redrives[logical] = (_ref(redrive["deadLetterTargetArn"]) or "", int(redrive["maxReceiveCount"]))
    elif kind == "AWS::Events::EventBus":
        found.names[logical] = str(properties["Name"])
        found.buses.append(str(properties["Name"]))


def _add_function(found: Resources, properties: dict[str, Any], root: Path) -> str:
    """The function's environment with references resolved to the local names; returns its folder."""
    variables = properties.get("Environment", {}).get("Variables", {})
    folder = str(variables.get("POWERTOOLS_SERVICE_NAME", "")).removeprefix("cdp-")
    environment = {}
    for name, value in variables.items():
        reference = _ref(value)
        if reference in found.queues:
            found.queue_refs.setdefault(folder, {})[name] = reference  # a queue's Ref is its URL
        environment[name] = _variable(found, value, reference)
    environment["CATALOGUE_PATH"] = str(root / "segments")
    if "PLACEMENTS_PATH" in environment:  # the placements layer's folder, as checked out
        environment["PLACEMENTS_PATH"] = str(root / "placements")
    found.functions[folder] = environment
    return folder


def _variable(found: Resources, value: Any, reference: str | None) -> str:
    if reference:
        return found.names.get(reference, "")
    if isinstance(value, dict) and "Fn::Join" in value:
        return _joined(value)
    return str(value)


def _mapping(found: Resources, folders: dict[str, str], properties: dict[str, Any]) -> Mapping:
    destination = properties.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
    return Mapping(
        function=folders[_ref(properties["FunctionName"]) or ""],
        source=_ref(properties["EventSourceArn"]) or "",
        batch_size=int(properties.get("BatchSize", 100)),
        retries=int(properties.get("MaximumRetryAttempts", 0)),
        bisect=bool(properties.get("BisectBatchOnFunctionError", False)),
        failure_queue=found.names.get(_ref(destination) or "") if destination else None,
    )


def _add_rule(found: Resources, logical: str, properties: dict[str, Any]) -> None:
    """A bus rule with an event pattern, if it delivers to queues of the template."""
    queues = [q for q in (_ref(t["Arn"]) for t in properties.get("Targets", [])) if q in found.queues]
    bus = found.names.get(_ref(properties.get("EventBusName")) or "", "")
    if queues and bus:
        found.rules.append(Rule(logical, bus, properties["EventPattern"], queues))


def _schedules(folders: dict[str, str], properties: dict[str, Any]) -> list[Schedule]:
    """A scheduled rule's function targets: one schedule per function, one input per target."""
    by_function: dict[str, Schedule] = {}
    for target in properties.get("Targets", []):
        invoked = folders.get(_ref(target["Arn"]) or "")
        if invoked:
            schedule = by_function.setdefault(
                invoked, Schedule(invoked, _rate_seconds(str(properties["ScheduleExpression"]))))
            schedule.inputs.append(json.loads(target["Input"]) if "Input" in target else {})
    return list(by_function.values())


def local_context(root: Path, sandbox_url: str) -> dict[str, object]:
    """cdk.json's context with every documented integration on, pointed at the local sandbox."""
    context: dict[str, Any] = json.loads((root / "cdk.json").read_text()).get("context", {})
    for name, settings in context.get("integrations", {}).items():
        settings["enabled"] = True
        options = settings.setdefault("options", {})
        if name in ("meta", "google"):
            settings["base_url"] = sandbox_url
        if name == "google":
            options["token_url"] = f"{sandbox_url}/token"
        if name == "webhook":
            options["url"] = f"{sandbox_url}/webhook"
    return context


def _joined(value: dict[str, Any]) -> str:
    """An ``Fn::Join`` of text and pseudo parameters, as the emulator's account sees it; a secret's ARN
    becomes its name, which the emulator resolves for sure."""
    pseudo = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": "123456789012",
              "AWS::URLSuffix": "amazonaws.com"}
    separator, parts = value["Fn::Join"]
    text: str = str(separator).join(str(pseudo.get(p["Ref"], "")) if isinstance(p, dict) and "Ref" in p else str(p)
                          for p in parts)
    return text.split(":secret:", 1)[1] if ":secret:" in text else text


def _rate_seconds(expression: str) -> float:
    """``rate(1 minute)``, ``rate(5 minutes)``, ``rate(1 hour)`` as seconds; a ``cron(...)`` as a day (the
    stack's crons are daily: the segment history's snapshot)."""
    if expression.startswith("cron("):
        return 86400.0
    amount, unit = expression.removeprefix("rate(").removesuffix(")").split()
    return float(amount) * {"minute": 60, "hour": 3600, "day": 86400}[unit.rstrip("s")]


@dataclass
class IngestTotals:
    """What the ingest function did, summed over every invocation since the stack started: records delivered
    (a redelivered record counts again), events applied, duplicates ignored, events quarantined, records
    reported for retry. All sent events are through once applied + duplicates + quarantined reach the sent count."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    quarantined: int = 0
    retried: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, records: int, result: Any) -> None:
        """One invocation's batch result (cdp.pipeline.ingest.BatchResult)."""
        with self._lock:
            self.records += records
            self.applied += result.applied
            self.duplicates += result.duplicates
            self.quarantined += sum(result.quarantined.values())
            self.retried += len(result.failed)

    def as_json(self) -> dict[str, int]:
        with self._lock:
            return {"records": self.records, "applied": self.applied, "duplicates": self.duplicates,
                    "quarantined": self.quarantined, "retried": self.retried}


@dataclass
class ChangeTotals:
    """What the changes function did, summed over every invocation: table stream records delivered,
    transitions published (Segment Entered / Exited), records reported for retry."""

    records: int = 0
    published: int = 0
    retried: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, records: int, result: Any) -> None:
        """One invocation's result (cdp.pipeline.changes.ChangesResult)."""
        with self._lock:
            self.records += records
            self.published += len(result.published)
            self.retried += len(result.failed)

    def as_json(self) -> dict[str, int]:
        with self._lock:
            return {"records": self.records, "published": self.published, "retried": self.retried}


def observe_batches(module: Any, name: str, tally: Callable[[int, Any], None]) -> None:
    """Hand each call of ``module.<name>(records, ...)`` (the pipeline function a handler calls once per
    invocation) to ``tally`` with the number of records and the result, which is returned unchanged. The
    handlers' Powertools metrics cannot be read instead: they are one set shared by every function of the
    process, and each clears it."""
    batch = getattr(getattr(module, name), "__wrapped__", getattr(module, name))  # never wrapped twice

    @functools.wraps(batch)
    def observed(records: Any, *args: Any, **kwargs: Any) -> Any:
        result = batch(records, *args, **kwargs)
        tally(len(records), result)
        return result

    setattr(module, name, observed)


def response_headers(response: dict[str, Any]) -> dict[str, list[str]]:
    """A proxy integration's response headers as API Gateway sends them: ``headers`` and ``multiValueHeaders``
    merged into one list per name, a pair given in both once; no Content-Length (the body's own is sent)."""
    merged: dict[str, list[str]] = {str(k): [str(v)] for k, v in (response.get("headers") or {}).items()}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        kept = merged.setdefault(str(name), [])
        kept += [str(v) for v in values if str(v) not in kept]
    return {name: values for name, values in merged.items() if name.lower() != "content-length"}


def drop_oldest(sqs: Any, url: str, keep: int) -> int:
    """Delete the oldest visible messages of the queue at ``url`` until at most ``keep`` remain; returns how many
    were deleted. Messages in flight (received, not yet visible again) are neither counted nor touched."""
    waiting = int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
                  ["Attributes"]["ApproximateNumberOfMessages"])
    dropped = 0
    while waiting - dropped > keep:
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, waiting - dropped - keep),
                                       VisibilityTimeout=60, WaitTimeSeconds=0).get("Messages", [])
        if not received:
            break
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(number), "ReceiptHandle": message["ReceiptHandle"]} for number, message in enumerate(received)])
        dropped += len(received)
    return dropped


def http_api_event(method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes,
                   source_ip: str, request_id: str, now: float | None = None) -> dict[str, Any]:
    """An HTTP API (payload format 2.0) event, as API Gateway hands a request to a Lambda integration: header
    names in lower case (repeated headers joined with commas, cookies apart), the raw path and query, and the
    body as text, or base64 (``isBase64Encoded``) when it is not UTF-8 or has a ``Content-Encoding``."""
    url = urlsplit(target)
    joined: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    cookies = [c.strip() for c in joined.pop("cookie", "").split(";") if c.strip()]
    moment = time.time() if now is None else now
    event: dict[str, Any] = {
        "version": "2.0", "routeKey": f"{method} {url.path}", "rawPath": url.path, "rawQueryString": url.query,
        "headers": joined,
        "requestContext": {
            "accountId": "123456789012", "apiId": "local", "domainName": joined.get("host", "127.0.0.1"),
            "domainPrefix": "local", "requestId": request_id, "routeKey": f"{method} {url.path}",
            "stage": "$default", "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(moment)),
            "timeEpoch": int(moment * 1000),
            "http": {"method": method, "path": url.path, "protocol": "HTTP/1.1", "sourceIp": source_ip,
                     "userAgent": joined.get("user-agent", "")},
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    query = parse_qs(url.query, keep_blank_values=True)
    if query:
        event["queryStringParameters"] = {k: ",".join(v) for k, v in query.items()}
    if body:
        text = None
        if not joined.get("content-encoding"):
            with contextlib.suppress(UnicodeDecodeError):
                text = body.decode("utf-8")
        if text is None:
            event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode("ascii"), True
        else:
            event["body"] = text
    return event


def read_body(stream: Any, headers: Any, limit: int = MAX_REQUEST_BYTES) -> bytes | None:
    """A request's body (by its Content-Length, or chunked); None when it is past ``limit``, API Gateway's
    payload quota. All of it is read either way, so the client gets the answer rather than a reset."""
    if "chunked" in str(headers.get("Transfer-Encoding") or "").lower():
        parts, size = [], 0
        while length := int(stream.readline().split(b";", 1)[0].strip() or b"0", 16):
            size += length
            chunk = stream.read(length)
            stream.readline()
            if size <= limit:
                parts.append(chunk)
        stream.readline()  # the blank line after the last chunk (no trailers are sent by the SDKs)
        return b"".join(parts) if size <= limit else None
    length = int(headers.get("Content-Length") or 0)
    if length <= limit:
        return bytes(stream.read(length)) if length else b""
    while length > 0 and (read := stream.read(min(length, 1 << 20))):
        length -= len(read)
    return None


@dataclass
class CollectorTotals:
    """What the collector answered since the stack started: requests, messages accepted onto the stream and
    rejected (quarantined), and requests refused whole (any answer but 200)."""

    requests: int = 0
    accepted: int = 0
    rejected: int = 0
    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, status: int, body: str) -> None:
        try:
            answer = json.loads(body) if status == 200 else {}
        except ValueError:
            answer = {}
        with self._lock:
            self.requests += 1
            self.refused += status != 200
            self.accepted += int(answer.get("accepted", 0)) if isinstance(answer, dict) else 0
            self.rejected += int(answer.get("rejected", 0)) if isinstance(answer, dict) else 0

    def as_json(self) -> dict[str, int]:
        with self._lock:
            return {"requests": self.requests, "accepted": self.accepted, "rejected": self.rejected,
                    "refused": self.refused}


@dataclass
class PostReport:
    """What posting messages to the collector came to."""

    accepted: int = 0
    rejected: int = 0  # by the collector (quarantined), or not a JSON object (never sent)
    requests: int = 0


def sample_batches(lines: Sequence[bytes], max_bytes: int = SAMPLE_BATCH_BYTES,
                   max_messages: int = SAMPLE_BATCH_MESSAGES) -> tuple[list[list[Any]], int]:
    """The JSON objects of ``lines`` in batches under both limits (in order), and how many lines were not one.
    ``sentAt`` is left out: the messages carry their own time, which the collector's skew correction would
    otherwise move to the time they arrive."""
    batches: list[list[Any]] = [[]]
    size, unreadable = 0, 0
    for line in lines:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            unreadable += 1
            continue
        message.pop("sentAt", None)
        length = len(json.dumps(message, separators=(",", ":")).encode()) + 1
        if batches[-1] and (size + length > max_bytes or len(batches[-1]) >= max_messages):
            batches.append([])
            size = 0
        batches[-1].append(message)
        size += length
    return [batch for batch in batches if batch], unreadable


def post_to_collector(url: str, write_key: str, lines: Sequence[bytes], attempts: int = 5,
                      sleep: Callable[[float], None] = time.sleep) -> PostReport:
    """POST the messages of ``lines`` to the collector at ``url`` (``.../v1``) as gzipped batches with the write
    key, as an SDK does; a 429 or 503 is sent again after its ``Retry-After``. Raises on any other refusal."""
    batches, unreadable = sample_batches(lines)
    report = PostReport(rejected=unreadable)
    token = base64.b64encode(f"{write_key}:".encode()).decode()
    for batch in batches:
        body = gzip.compress(json.dumps({"batch": batch}, separators=(",", ":")).encode())
        for attempt in range(attempts):
            request = urllib.request.Request(
                f"{url.rstrip('/')}/batch", data=body, method="POST",
                headers={"Authorization": f"Basic {token}", "Content-Type": "application/json",
                         "Content-Encoding": "gzip"})
            report.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
                report.accepted += int(answer.get("accepted", 0))
                report.rejected += int(answer.get("rejected", 0))
                break
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", "replace")
                if error.code not in (429, 503) or attempt == attempts - 1:
                    message = json.loads(detail).get("message", detail) if detail.startswith("{") else detail
                    raise RuntimeError(f"the collector answered {error.code}: {message}") from None
                sleep(float(error.headers.get("Retry-After") or 1))
    return report


class LocalStack:
    def __init__(self, root: Path, *, aws_port: int = 4566, api_port: int = 3000, clock: str = "wall",
                 feed: Callable[[dict[str, Any]], None] | None = None, poll_seconds: float = 0.05,
                 timer_tick: float | None = None, emulator: str | None = None) -> None:
        self.root = root
        self.aws_port, self.api_port = aws_port, api_port
        self.clock_mode = clock
        self.feed = feed
        self.poll_seconds = poll_seconds
        self.timer_tick = timer_tick  # None: the schedule's own rate
        self.last_sweep: dict[str, Any] = {}
        self.ingest = IngestTotals()
        self.changes = ChangeTotals()
        self.collected = CollectorTotals()
        self.write_key = ""  # the local source's, made at start-up
        self.endpoint = f"http://127.0.0.1:{aws_port}"
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.resources = Resources()
        self.feed_queue_url = ""
        self.queue_urls: dict[str, str] = {}
        self.sandbox: Any = None
        layout = emulator or os.environ.get("CDP_EMULATOR") or "in-process"
        if layout not in LAYOUTS:
            raise ValueError(f"CDP_EMULATOR: {layout!r} is not one of {', '.join(LAYOUTS)}")
        self.emulator: Emulator = LAYOUTS[layout](aws_port)
        self._http: ThreadingHTTPServer | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self, template: dict[str, Any] | None = None) -> None:
        """Start everything; if any part fails, stop what was started and raise."""
        try:
            self._start(template)
        except BaseException:
            self.stop()
            raise

    def _start(self, template: dict[str, Any] | None) -> None:
        environment = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                       "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled", "POWERTOOLS_TRACE_DISABLED": "true",
                       "POWERTOOLS_METRICS_NAMESPACE": "cdp", "POWERTOOLS_LOG_LEVEL": "WARNING",
                       "POWERTOOLS_METRICS_DISABLED": "true"}
        for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL")]:
            del os.environ[name]  # no endpoint of the user's may take the handlers' requests elsewhere
        if not self.emulator.in_process:
            environment["AWS_ENDPOINT_URL"] = self.endpoint  # in process, the emulator answers AWS's own endpoints
        os.environ.update(environment)
        self.emulator.start()
        from cdp_dev.sandbox import Sandbox

        self.sandbox = Sandbox(0, self.feed)
        self.threads.append(self.sandbox.start())
        if template is None:
            template = synthesised_template(self.root, local_context(self.root, self.sandbox.url))
        self.resources = resources_from_template(template, self.root)
        if "privacy" in self.resources.functions:  # a deletion's verify pass within seconds, not a minute
            self.resources.functions["privacy"]["VERIFY_DELAY_SECONDS"] = str(LOCAL_VERIFY_DELAY_SECONDS)
        self._create()
        for variables in self.resources.functions.values():
            os.environ.update(variables)
        os.environ.update({"POWERTOOLS_SERVICE_NAME": "cdp-local", "POWERTOOLS_LOG_LEVEL": "WARNING"})
        self._deploy()
        self._wire()

    def _deploy(self) -> None:
        """Run the template's deploy-time functions as CloudFormation's Create would (the catalogue's seeds the
        definitions store from segments/), then leave them out of the running stack."""
        for folder in [f for f in DEPLOY_TIME if f in self.resources.functions]:
            handler = load_handler(self.root, folder)
            with self._environment_of(folder):
                handler.handle({"RequestType": "Create"}, None, handler.build())
            del self.resources.functions[folder]

    def stop(self) -> list[str]:
        """Stop every component, then the emulator; the names of components still busy after STOP_SECONDS.

        The emulator stops last: a handler cut off mid-batch would otherwise retry its requests against
        the endpoints of real AWS once the emulator is gone. A component that outlives the wait is left to
        the caller (a daemon thread, but its request pool's workers would hold a normal exit up).
        """
        self.stopping.set()
        if self.sandbox is not None:
            self.sandbox.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        deadline = time.monotonic() + STOP_SECONDS  # for all of them together
        runner = getattr(self, "job_runner", None)  # made once the functions are wired
        jobs = runner.running() if runner is not None else []
        for thread in [*self.threads, *jobs]:  # a job ends after the page in hand (its runner sees the stop)
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.emulator.stop()
        return [thread.name for thread in [*self.threads, *jobs] if thread.is_alive()]

    def client(self, service: str) -> Any:
        """A boto3 client of the emulator, as the handlers' own reach it."""
        return self.emulator.client(service)

    def _create(self) -> None:
        self._create_stores()
        self._create_queues()
        self._create_buses()
        self._create_integration_accounts()

    def _create_stores(self) -> None:
        kinesis, dynamodb, s3 = (self.client(s) for s in ("kinesis", "dynamodb", "s3"))
        for stream in self.resources.streams:
            kinesis.create_stream(StreamName=stream, ShardCount=2)
        for name, properties in self.resources.tables.items():
            spec: dict[str, Any] = {"TableName": name, "KeySchema": properties["KeySchema"],
                                    "AttributeDefinitions": properties["AttributeDefinitions"],
                                    "BillingMode": "PAY_PER_REQUEST"}
            if "StreamSpecification" in properties:
                spec["StreamSpecification"] = {"StreamEnabled": True, **properties["StreamSpecification"]}
            if "GlobalSecondaryIndexes" in properties:
                spec["GlobalSecondaryIndexes"] = properties["GlobalSecondaryIndexes"]
            dynamodb.create_table(**spec)
        for bucket in self.resources.buckets:
            s3.create_bucket(Bucket=bucket)
            if bucket in self.resources.versioned:  # a deletion scrubs every version: keep them as AWS does
                s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    def _create_queues(self) -> None:
        """The template's queues (dead-letter queues first, for the redrive policies), the functions' queue URLs,
        and the feed's queue."""
        sqs = self.client("sqs")
        self.queue_urls = {}
        for queue in sorted(self.resources.queues, key=lambda q: q in self.resources.redrives):  # DLQs first
            attributes = {"VisibilityTimeout": str(LOCAL_VISIBILITY_SECONDS)}
            if queue in self.resources.redrives:
                target, receives = self.resources.redrives[queue]
                attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": self._queue_arn(target),
                                                          "maxReceiveCount": str(receives)})
            self.queue_urls[queue] = sqs.create_queue(QueueName=queue, Attributes=attributes)["QueueUrl"]
        for folder, variables in self.resources.queue_refs.items():
            for variable, queue in variables.items():
                self.resources.functions[folder][variable] = self.queue_urls[queue]
        self.feed_queue_url = sqs.create_queue(QueueName=FEED_QUEUE)["QueueUrl"]

    def _queue_arn(self, queue: str) -> str:
        url = self.feed_queue_url if queue == FEED_QUEUE else self.queue_urls[queue]
        attributes = self.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(attributes["Attributes"]["QueueArn"])

    def _create_buses(self) -> None:
        """The buses, each with a rule to the feed's queue, and the template's rules to its queues."""
        events = self.client("events")
        feed_arn = self._queue_arn(FEED_QUEUE)
        for bus in self.resources.buses:
            events.create_event_bus(Name=bus)
            events.put_rule(Name="local-feed", EventBusName=bus, EventPattern=json.dumps({"source": [SOURCE]}))
            events.put_targets(Rule="local-feed", EventBusName=bus, Targets=[{"Id": "feed", "Arn": feed_arn}])
        for rule in self.resources.rules:
            events.put_rule(Name=rule.name, EventBusName=rule.bus, EventPattern=json.dumps(rule.pattern))
            events.put_targets(Rule=rule.name, EventBusName=rule.bus,
                               Targets=[{"Id": queue, "Arn": self._queue_arn(queue)} for queue in rule.queues])

    def _create_integration_accounts(self) -> None:
        """What a user sets up by hand before enabling an integration: its secret, SES identity and templates."""
        secrets = {"meta": {"access_token": "local-meta-token"},
                   "google": {"developer_token": "local", "client_id": "local", "client_secret": "local",
                              "refresh_token": "local"},
                   "webhook": {"signing_secret": "local-signing-secret"}}
        for folder, environment in self.resources.functions.items():
            if environment.get("SECRET_ARN") and folder in secrets:
                self.client("secretsmanager").create_secret(Name=environment["SECRET_ARN"],
                                                            SecretString=json.dumps(secrets[folder]))
            if folder == "email":
                ses = self.client("ses")
                options = json.loads(environment.get("OPTIONS") or "{}")
                source = str(options.get("source", "")).split("<")[-1].strip(">").strip()
                ses.verify_email_identity(EmailAddress=source)
                for template in sorted(set(json.loads(environment["TARGETS"]).values())):
                    ses.create_template(Template={"TemplateName": template, "SubjectPart": "Hello {{first_name}}",
                                                  "TextPart": f"{template} for {{{{customer_id}}}}",
                                                  "HtmlPart": f"<p>{template}</p>"})

    def _schedule_jobs(self) -> None:
        """The hourly population statistics, here whenever the ingest has moved and settled; and the daily computed
        traits, first once a replay has settled (when the models extra, scikit-learn, is installed)."""
        jobs = self._dependencies["jobs"].job_store
        self.population = LocalPopulationSchedule(jobs, self.job_runner, lambda: self.ingest.applied, self.clock.now)
        self._thread("schedule->population", self.population.run, self.stopping)
        if importlib.util.find_spec("sklearn") is not None:
            self.traits = local_traits_schedule(jobs, self.job_runner, lambda: self.ingest.applied, self.clock.now)
            self._thread("schedule->traits", self.traits.run, self.stopping)

    def _wire(self) -> None:
        from cdp.core.clock import EventClock, WallClock

        # One clock for every function that evaluates memberships. In event time the ingest moves it to the
        # latest event it has seen, and the timers sweep and the API read it, so deadlines fall due in event
        # time. (In Lambda each function has its own clock, so the timers function runs on wall time.)
        self.clock = EventClock() if self.clock_mode == "event" else WallClock()
        handlers = {folder: load_handler(self.root, folder) for folder in self.resources.functions}
        self.handlers = handlers
        self._count_batches()
        self._dependencies: dict[str, Any] = {}
        # Jobs run on threads here, over the jobs function's own steps (no Step Functions locally).
        self.job_runner = InProcessJobRunner(lambda: self._dependencies["jobs"].job_engine(), stopping=self.stopping)
        for folder, handler in handlers.items():
            given = {"clock": self.clock} if folder in SHARED_CLOCK else {}
            given.update(runner_override(handler, self.job_runner))
            with self._environment_of(folder):  # each function's cold start reads its own environment
                self._dependencies[folder] = handler.build(**given)
        self._configure_front()
        if "jobs" in handlers:
            self._schedule_jobs()
        for mapping in self.resources.mappings:
            if mapping.source in self.resources.streams:
                self._thread(f"kinesis->{mapping.function}", self._poll_kinesis, mapping)
            elif mapping.source in self.resources.tables:
                self._thread(f"table stream->{mapping.function}", self._poll_table, mapping)
            elif mapping.source in self.resources.queues:
                self._thread(f"queue->{mapping.function}", self._poll_queue, mapping)
        for schedule in self.resources.schedules:
            self._thread(f"schedule->{schedule.function}", self._tick, schedule)
        if self.feed is not None:
            self._thread("feed", self._poll_feed)
        else:
            self._thread("feed keeper", self._keep_feed)
        if "api" in handlers:
            self._serve_api()

    def _configure_front(self) -> None:
        """The api function's routes get their dependencies; the collector gets its local source."""
        if "api" in self.handlers:
            self.handlers["api"].configure(self._dependencies["api"])
        if "collector" in self.handlers:
            self.write_key = self._create_local_source()

    @property
    def write_keys_table(self) -> str:
        """The collector's table of write keys (its SOURCES_TABLE), or "" when the template has no collector."""
        return self.resources.functions.get("collector", {}).get("SOURCES_TABLE", "")

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}{COLLECTOR_PREFIX.rstrip('/')}"

    def _create_local_source(self) -> str:
        """The source ``local`` in the write keys table, as `cdp sources create local` makes it; its key."""
        from cdp.collector.keys import create_source
        from cdp_dev.sources import key_store

        store = key_store(self.write_keys_table, REGION, None if self.emulator.in_process else self.endpoint,
                          ("local", "local"))
        return create_source(store, LOCAL_SOURCE, time.time())

    def _count_batches(self) -> None:
        """The totals /health reports, from each invocation's batch result."""
        if "ingest" in self.handlers:
            observe_batches(self.handlers["ingest"], "ingest_batch", self.ingest.add)
        if "changes" in self.handlers:
            observe_batches(self.handlers["changes"], "publish_changes", self.changes.add)

    @contextlib.contextmanager
    def _environment_of(self, folder: str) -> Iterator[None]:
        """The function's own environment while its cold start reads it, as each Lambda has its own."""
        saved = dict(os.environ)
        os.environ.update(self.resources.functions[folder])
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def _thread(self, name: str, target: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            while not self.stopping.is_set():
                try:
                    target(*args)
                    return
                except Exception as error:  # keep the component alive; report, then carry on
                    if self.stopping.is_set():
                        return
                    self.errors.append(f"{name}: {type(error).__name__}: {error}")
                    time.sleep(0.5)
        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    # ---- event source mapping emulation ---------------------------------------------------------

    def _invoke(self, mapping: Mapping, event: dict[str, Any]) -> list[str]:
        """Run the function; returns the failed item identifiers (all of them if it raised)."""
        handler = self.handlers[mapping.function]
        try:
            response = handler.handle(event, None, self._dependencies[mapping.function])
        except Exception as error:
            self.errors.append(f"{mapping.function}: {type(error).__name__}: {error}")
            return ["*"]
        finally:
            handler.metrics.clear_metrics()  # Lambda flushes them per invocation; nothing here reads them
        return [str(item["itemIdentifier"]) for item in response.get("batchItemFailures", [])]

    def _deliver(self, mapping: Mapping, records: list[Any], envelope: Callable[[list[Any]], dict[str, Any]],
                 sequence: Callable[[Any], str], failure_info: Callable[[list[Any]], dict[str, Any]]) -> None:
        """Lambda's semantics: retry from the first failed record, bisect on errors, then give up to the
        on-failure destination and move on."""
        pending, attempts, size = list(records), 0, mapping.batch_size
        while pending and not self.stopping.is_set():
            batch = pending[:size]
            failed = self._invoke(mapping, envelope(batch))
            if not failed:
                pending, attempts, size = pending[len(batch):], 0, mapping.batch_size
                continue
            first = 0 if "*" in failed else min(i for i, r in enumerate(batch) if sequence(r) in failed)
            pending = pending[first:]
            attempts += 1
            if "*" in failed and mapping.bisect and len(batch) > 1:
                size = max(1, len(batch) // 2)
            elif attempts > mapping.retries:
                given_up = batch[first:]
                if mapping.failure_queue:
                    sqs = self.client("sqs")
                    url = sqs.get_queue_url(QueueName=mapping.failure_queue)["QueueUrl"]
                    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(failure_info(given_up)))
                pending, attempts, size = pending[len(given_up):], 0, mapping.batch_size
            else:
                time.sleep(min(0.05 * 2 ** attempts, 1.0))

    def _poll_kinesis(self, mapping: Mapping) -> None:
        kinesis = self.client("kinesis")
        stream = mapping.source
        description = kinesis.describe_stream(StreamName=stream)["StreamDescription"]
        arn = description["StreamARN"]
        iterators = {shard["ShardId"]: kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            for shard in description["Shards"]}

        def envelope(batch: list[dict[str, Any]]) -> dict[str, Any]:
            return {"Records": [kinesis_record(r["Data"], r["PartitionKey"], r["SequenceNumber"],
                                               arrival=r["ApproximateArrivalTimestamp"].timestamp(),
                                               shard_id=r["_shard"], stream_arn=arn, region=REGION) for r in batch]}

        def failure_info(batch: list[dict[str, Any]]) -> dict[str, Any]:
            return {"KinesisBatchInfo": {"shardId": batch[0]["_shard"], "streamArn": arn, "batchSize": len(batch),
                                         "startSequenceNumber": batch[0]["SequenceNumber"],
                                         "endSequenceNumber": batch[-1]["SequenceNumber"]}}

        while not self.stopping.is_set():
            idle = True
            for shard, iterator in list(iterators.items()):
                response = kinesis.get_records(ShardIterator=iterator, Limit=mapping.batch_size)
                iterators[shard] = response["NextShardIterator"]
                records = [{**r, "_shard": shard} for r in response["Records"]]
                if records:
                    idle = False
                    self._deliver(mapping, records, envelope, lambda r: str(r["SequenceNumber"]), failure_info)
            if idle:
                self.stopping.wait(self.poll_seconds)

    def _poll_table(self, mapping: Mapping) -> None:
        dynamodb, streams = self.client("dynamodb"), self.client("dynamodbstreams")
        arn = dynamodb.describe_table(TableName=mapping.source)["Table"]["LatestStreamArn"]
        iterators: dict[str, str] = {}

        def envelope(batch: list[dict[str, Any]]) -> dict[str, Any]:
            return stream_envelope(batch, region=REGION, stream_arn=arn)

        def failure_info(batch: list[dict[str, Any]]) -> dict[str, Any]:
            return {"DDBStreamBatchInfo": {"streamArn": arn, "batchSize": len(batch),
                                           "startSequenceNumber": batch[0]["dynamodb"]["SequenceNumber"],
                                           "endSequenceNumber": batch[-1]["dynamodb"]["SequenceNumber"]}}

        described = 0.0
        while not self.stopping.is_set():
            if time.monotonic() - described > 5:  # new shards appear rarely
                described = time.monotonic()
                shards = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
            for shard in shards:
                if shard["ShardId"] not in iterators:
                    iterators[shard["ShardId"]] = streams.get_shard_iterator(
                        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            idle = True
            for shard_id, iterator in list(iterators.items()):
                response = streams.get_records(ShardIterator=iterator, Limit=mapping.batch_size)
                iterators[shard_id] = response.get("NextShardIterator") or iterator
                if response["Records"]:
                    idle = False
                    self._deliver(mapping, response["Records"], envelope,
                                  lambda r: str(r["dynamodb"]["SequenceNumber"]), failure_info)
            if idle:
                self.stopping.wait(self.poll_seconds)

    def _poll_queue(self, mapping: Mapping) -> None:
        """Lambda's SQS poller: batches up to the mapping's size, deletes what the function did not report
        as failed; the rest comes back after the visibility timeout and the queue redrives it in the end."""
        sqs = self.client("sqs")
        url = self.queue_urls[mapping.source]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        while not self.stopping.is_set():
            messages: list[dict[str, Any]] = []
            while len(messages) < mapping.batch_size:
                received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, mapping.batch_size),
                                               WaitTimeSeconds=0 if messages else 1, AttributeNames=["All"],
                                               MessageAttributeNames=["All"]).get("Messages", [])
                if not received:
                    break
                messages += received
            if not messages:
                continue
            event = {"Records": [{
                "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                "attributes": m.get("Attributes", {}), "messageAttributes": m.get("MessageAttributes", {}),
                "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": REGION,
            } for m in messages]}
            failed = set(self._invoke(mapping, event))
            for message in messages:
                if "*" not in failed and message["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def _tick(self, schedule: Schedule) -> None:
        """EventBridge's schedule: a Scheduled Event to the function at every tick."""
        # The tick override is for the minute schedules (the timers'), not for daily ones.
        seconds = self.timer_tick if self.timer_tick is not None and schedule.seconds <= 60 else schedule.seconds
        handler = self.handlers[schedule.function]
        while not self.stopping.wait(seconds):
            scheduled = {"version": "0", "id": f"local-{time.monotonic_ns()}", "detail-type": "Scheduled Event",
                         "source": "aws.events", "account": "000000000000", "region": REGION,
                         "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resources": [], "detail": {}}
            summaries = []
            for given in schedule.inputs:  # a target with an Input gets that instead of the scheduled event
                try:
                    summaries.append(handler.handle(given or scheduled, None, self._dependencies[schedule.function]))
                except Exception as error:  # the schedule retries on the next tick, as in AWS
                    self.errors.append(f"{schedule.function}: {type(error).__name__}: {error}")
                finally:
                    handler.metrics.clear_metrics()
            self.last_sweep = {"targets": summaries}

    def _poll_feed(self) -> None:
        sqs = self.client("sqs")
        while not self.stopping.is_set():
            messages = sqs.receive_message(QueueUrl=self.feed_queue_url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1).get("Messages", [])
            for message in messages:
                if self.feed is not None:
                    self.feed(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.feed_queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _keep_feed(self) -> None:
        """With no feed printing the transitions, keep the newest :data:`FEED_KEEP` of them on the feed queue
        for `cdp tail` and tests, and drop older ones: every message kept costs the emulator's queue work on
        every later send and receive, so a queue nobody drains would slow the whole stack as it grows."""
        sqs = self.client("sqs")
        while not self.stopping.wait(1.0):
            drop_oldest(sqs, self.feed_queue_url, FEED_KEEP)

    # ---- the API over HTTP ----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if all(t.is_alive() for t in self.threads) else "degraded",
            "aws_endpoint": self.endpoint,
            "clock": self.clock_mode,
            "components": {t.name: "running" if t.is_alive() else "stopped" for t in self.threads},
            "resources": {"streams": self.resources.streams, "tables": sorted(self.resources.tables),
                          "buckets": self.resources.buckets, "queues": [*self.resources.queues, FEED_QUEUE],
                          "buses": self.resources.buses},
            "environment": self.resources.functions,
            "schedules": {s.function: self.timer_tick if self.timer_tick is not None and s.seconds <= 60 else s.seconds
                          for s in self.resources.schedules},
            "sandbox": {"url": self.sandbox.url if self.sandbox else None,
                        "deliveries": list(self.sandbox.deliveries[-50:]) if self.sandbox else []},
            "last_sweep": self.last_sweep,
            "collector": ({"url": self.collector_url, "write_key": self.write_key, "source": LOCAL_SOURCE}
                          if self.write_key else None),
            "collected": self.collected.as_json(),
            "ingest": self.ingest.as_json(),
            "changes": self.changes.as_json(),
            "errors": self.errors[-10:],
        }

    def _api_response(self, method: str, path: str, headers: Any, body: bytes) -> dict[str, Any]:
        """The api function's answer to a request, given to it as an API Gateway REST (proxy) event."""
        url = urlsplit(path)
        raw = body.decode("utf-8", "replace") if body else None
        query = parse_qs(url.query, keep_blank_values=True)
        claims = {"sub": headers["X-Local-User"]} if headers.get("X-Local-User") else None
        event = {
            "resource": url.path, "path": url.path, "httpMethod": method,
            "headers": dict(headers.items()),
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
            "multiValueQueryStringParameters": query or None,
            "pathParameters": None, "stageVariables": None, "body": raw, "isBase64Encoded": False,
            "requestContext": {"requestId": f"local-{time.monotonic_ns()}", "stage": "local",
                               "httpMethod": method, "path": url.path, "resourcePath": url.path,
                               "identity": {"sourceIp": "127.0.0.1"},
                               "authorizer": {"claims": claims} if claims else None},
        }
        try:
            response: dict[str, Any] = self.handlers["api"].app.resolve(event, None)
        finally:
            self.handlers["api"].metrics.clear_metrics()
        return response

    def _collector_response(self, method: str, path: str, headers: Any, body: bytes,
                            source_ip: str) -> dict[str, Any]:
        """The collector function's answer, given the request as an HTTP API (payload 2.0) event; a function
        error is API Gateway's 500, as in AWS."""
        handler = self.handlers["collector"]
        event = http_api_event(method, path, list(headers.items()), body, source_ip, f"local-{time.monotonic_ns()}")
        try:
            response: dict[str, Any] = handler.handle(event, None, self._dependencies["collector"])
        except Exception as error:
            self.errors.append(f"collector: {type(error).__name__}: {error}")
            response = {"statusCode": 500, "headers": {"Content-Type": "application/json"},
                        "body": json.dumps({"message": "Internal Server Error"})}
        finally:
            handler.metrics.clear_metrics()  # Lambda flushes them per invocation; nothing here reads them
        if method != "OPTIONS":  # a preflight sends no messages
            self.collected.add(int(response.get("statusCode", 200)), str(response.get("body") or ""))
        return response

    def _answer(self, method: str, path: str, headers: Any, body: bytes | None, source_ip: str) -> dict[str, Any]:
        """The answer to a request (not /health): the collector's under /v1/, else the api function's."""
        if body is None:
            return {"statusCode": 413, "headers": {"Content-Type": "application/json"},
                    "body": json.dumps({"message": "Request Entity Too Large"})}
        if "collector" in self.handlers and urlsplit(path).path.startswith(COLLECTOR_PREFIX):
            return self._collector_response(method, path, headers, body, source_ip)
        return self._api_response(method, path, headers, body)

    def _serve_api(self) -> None:
        stack = self
        collector = "collector" in self.handlers

        class Handler(BaseHTTPRequestHandler):
            def _respond(self) -> None:
                url = urlsplit(self.path)
                body = read_body(self.rfile, self.headers)
                if url.path == "/health":
                    encoded, status = json.dumps(stack.health()).encode(), 200
                    headers = {"Content-Type": ["application/json"]}
                else:
                    response = stack._answer(self.command, self.path, self.headers, body, self.client_address[0])
                    status, text = response["statusCode"], response.get("body") or ""
                    encoded = base64.b64decode(text) if response.get("isBase64Encoded") else text.encode()
                    headers = response_headers(response)
                self.send_response(status)
                for key, values in headers.items():
                    for value in values:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)

            def do_OPTIONS(self) -> None:  # a browser's CORS preflight, for the collector's routes only
                if collector and urlsplit(self.path).path.startswith(COLLECTOR_PREFIX):
                    self._respond()
                else:
                    self.send_error(501, f"Unsupported method ({self.command!r})")

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _respond

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", self.api_port), Handler)
        thread = threading.Thread(target=self._http.serve_forever, name="api", daemon=True)
        thread.start()
        self.threads.append(thread)
