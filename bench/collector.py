"""The collector function on the Tracking API requests the SDKs send, against Kinesis and DynamoDB answered
at the HTTP layer.

    python -m bench.collector [--quick]

The real handler (``functions/collector/handler.py``: ``build()`` from the environment, so boto3's Kinesis
client and the pynamodb write-key lookup, behind the key cache) answers API Gateway HTTP API events
(payload 2.0) in this process, while ``bench/kinesis_stub.py`` (PutRecords) and ``bench/dynamodb_stub.py``
(GetItem on the write keys table, keyed by ``digest``) answer in other processes. The messages are the
analytics.js-shaped ones of ``bench/real_traffic.py`` (200-700 bytes), all valid, so S3 (the quarantine)
is never called. Three request shapes:

- ``analytics_js``: one message per request, as the browser library sends it: ``POST /v1/t`` (``/v1/p``,
  ``/v1/i`` for page and identify), ``text/plain``, the write key and ``sentAt`` in the body;
- ``analytics_python``: ``POST /v1/batch`` with 100 messages (its ``flush_at`` and ``upload_size``),
  HTTP Basic auth, ``application/json``;
- ``rudderstack_python``: the same batch gzipped (``Content-Encoding: gzip``, so API Gateway hands the
  body over base64-encoded).

Figures, all from one run, each the best of a few rounds over the same requests: the process time of every
thread per request (so requests/s and messages/s of one core), and per message against ``json.loads`` of
the same messages (the floor: measured before the first shape and after each, the least of them), both
for the whole handler and for the pure collector (``read_request`` and ``prepare``, no I/O). The stubs
count what they were asked: one PutRecords per request and, the key cache being warm, next to no GetItem.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STREAM = "cdp-events"
SOURCES = "cdp-write-keys"
BATCH = 100  # analytics-python's flush_at and upload_size, RudderStack's the same
ORIGIN = "https://shop.example"  # the site of bench/real_traffic.py's messages
SOURCE_IP = "198.51.100.23"
SHAPES = ("analytics_js", "analytics_python", "rudderstack_python")
SINGLE_ROUTES = {"track": "t", "page": "p", "identify": "i", "screen": "s", "group": "g", "alias": "a"}
BROWSER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                 "Chrome/124.0.0.0 Safari/537.36")


class Stub:
    """One of the stand-ins in its own process: its endpoint, and what it was asked."""

    def __init__(self, module: str, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdout is not None
        self.endpoint = f"http://127.0.0.1:{int(self.process.stdout.readline())}"

    def requests(self) -> dict[str, int]:
        """The stub's own operation: how many requests of each kind it answered."""
        ask = urllib.request.Request(self.endpoint, data=b"{}", method="POST",
                                     headers={"X-Amz-Target": "Stub.Requests", "Content-Type": "application/json"})
        with urllib.request.urlopen(ask, timeout=10) as answer:
            counts: dict[str, int] = json.loads(answer.read())
        return counts

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _environment(kinesis: str, dynamodb: str) -> None:
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL_KINESIS": kinesis, "AWS_ENDPOINT_URL_DYNAMODB": dynamodb,
                       "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",  # never called: a call would fail loudly
                       "STREAM_NAME": STREAM, "SOURCES_TABLE": SOURCES, "QUARANTINE_BUCKET": "unused",
                       "COLLECTOR_ORIGINS": ORIGIN, "POWERTOOLS_METRICS_DISABLED": "true",
                       "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR",
                       "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled"})


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"


def http_event(path: str, body: bytes, headers: dict[str, str], number: int, base64_encoded: bool = False,
               user_agent: str = BROWSER_AGENT) -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event, as the collector's integration receives it."""
    return {
        "version": "2.0", "routeKey": f"POST {path}", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "collect.example.com", "user-agent": user_agent, "content-length": str(len(body)),
                    **headers},
        "requestContext": {"accountId": "123456789012", "apiId": "c0llect", "domainName": "collect.example.com",
                           "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1", "sourceIp": SOURCE_IP,
                                    "userAgent": user_agent},
                           "requestId": f"bench-{number:08d}", "routeKey": f"POST {path}", "stage": "$default",
                           "time": "02/Dec/2026:12:00:00 +0000", "timeEpoch": 1796212800000},
        "body": base64.b64encode(body).decode() if base64_encoded else body.decode(),
        "isBase64Encoded": base64_encoded,
    }


@dataclass
class Shape:
    """The requests of one SDK's shape: their events, their messages, and the bytes sent per request."""

    name: str
    events: list[dict[str, Any]]
    messages_per_request: int
    request_bytes: list[int]  # the body as sent (compressed when gzipped)


def shapes(messages: Sequence[bytes], key: str, singles: int, batches: int) -> dict[str, Shape]:
    """The first ``singles`` messages one per request, and the first ``batches`` x 100 in batches, as each SDK
    sends them (every message valid: a ``sentAt`` on each, as the SDKs set it)."""
    documents = [json.loads(data) for data in messages]
    for document in documents:  # analytics.js sets sentAt on every message; the workload keeps it when it fits
        document.setdefault("sentAt", document["timestamp"])
    single = []
    for number, document in enumerate(documents[:singles]):
        body = json.dumps({**document, "writeKey": key}, separators=(",", ":")).encode()
        single.append(http_event(f"/v1/{SINGLE_ROUTES[document['type']]}", body,
                                 {"content-type": "text/plain", "origin": ORIGIN,
                                  "referer": f"{ORIGIN}/"}, number))
    server_agent = "analytics-python/2.3.3"
    plain, zipped = [], []
    for number in range(batches):
        batch = documents[number * BATCH:(number + 1) * BATCH]
        # analytics-python: json.dumps with its default separators; messages without sentAt get the batch's.
        sent = [{k: v for k, v in document.items() if k != "sentAt"} for document in batch]
        body = json.dumps({"batch": sent, "sentAt": _iso(time.time())}).encode()
        plain.append(http_event("/v1/batch", body, {"content-type": "application/json",
                                                    "authorization": _basic(key)}, number, user_agent=server_agent))
        packed = gzip.compress(body)
        zipped.append(http_event("/v1/batch", packed, {"content-type": "application/json",
                                                       "content-encoding": "gzip", "authorization": _basic(key)},
                                 number, base64_encoded=True, user_agent="rudder-analytics-python/2.1.0"))
    return {
        "analytics_js": Shape("analytics_js", single, 1, [len(e["body"]) for e in single]),
        "analytics_python": Shape("analytics_python", plain, BATCH, [len(e["body"]) for e in plain]),
        "rudderstack_python": Shape("rudderstack_python", zipped, BATCH,
                                    [len(base64.b64decode(e["body"])) for e in zipped]),
    }


def best_of(rounds: int, run: Callable[[], None]) -> tuple[float, float]:
    """The least process time (every thread) of ``rounds`` runs, and the wall time of that run, in seconds."""
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        best = min(best, (time.process_time() - cpu, time.perf_counter() - wall))
    return best


def json_floor_us(messages: Sequence[bytes], rounds: int) -> float:
    """``json.loads`` of every message, best of ``rounds``, in µs per message."""

    def run() -> None:
        for data in messages:
            json.loads(data)

    return best_of(rounds, run)[0] / len(messages) * 1e6


def measure(quick: bool = False) -> dict[str, Any]:
    """Every figure of the module docstring; the environment it sets for the handler is restored after."""
    saved = dict(os.environ)
    try:
        return _measure(quick)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _measure(quick: bool) -> dict[str, Any]:
    from bench import prices, real_traffic
    from cdp.aws.write_keys import DynamoKeyStore, bind_write_keys
    from cdp.collector.keys import issue
    from cdp.collector.messages import prepare
    from cdp.collector.request import read_request
    from cdp_dev.handlers import load_handler

    customers, rounds, singles, batches = (300, 3, 1500, 30) if quick else (1000, 5, 5000, 100)
    workload = real_traffic.batches(customers, 3)
    # The live messages, then the customers' histories: the same analytics.js shapes, enough for every request.
    messages = workload.messages + [data for sessions in workload.histories.values() for session in sessions
                                    for data in session]
    messages = messages[:max(singles, batches * BATCH)]
    assert len(messages) == max(singles, batches * BATCH), len(messages)
    kinesis = Stub("bench.kinesis_stub")
    try:
        dynamodb = Stub("bench.dynamodb_stub", "--keys", json.dumps({SOURCES: "digest"}))
    except BaseException:
        kinesis.close()
        raise
    try:
        _environment(kinesis.endpoint, dynamodb.endpoint)
        key, record = issue("web", time.time() - 60)
        DynamoKeyStore(bind_write_keys(SOURCES, "us-east-1")).put(record)  # PutItem, as `cdp sources create`
        handler = load_handler(ROOT, "collector")
        deps = handler.build()
        floors = [json_floor_us(messages, rounds)]  # measured again after each shape: the least is the floor
        figures: dict[str, Any] = {"messages": len(messages), "rounds": rounds,
                                   "message_bytes_mean": sum(map(len, messages)) / len(messages), "shapes": {}}
        built = shapes(messages, key, singles, batches)
        handled = 0
        for name in SHAPES:
            shape = built[name]
            answers: list[dict[str, Any]] = []

            def run(events: list[dict[str, Any]] = shape.events, answers: list[dict[str, Any]] = answers) -> None:
                for event in events:
                    answers.append(handler.handle(event, None, deps))
                    handler.metrics.clear_metrics()

            run(shape.events[:3])  # connections opened, the key in the cache, code paths warm
            cpu, wall = best_of(rounds, run)
            handled += len(answers)
            for answer in answers:
                body = json.loads(answer["body"])
                assert answer["statusCode"] == 200 and body["rejected"] == 0, answer
                assert body["accepted"] == shape.messages_per_request, answer
            requests = [handler.http_request(event) for event in shape.events]
            received = time.time()

            def pure(requests: list[Any] = requests, received: float = received) -> None:
                for request in requests:
                    prepared = prepare(read_request(request), received, request.source_ip)
                    assert not prepared.rejected

            pure_cpu, _ = best_of(rounds, pure)
            count = len(shape.events)
            in_messages = count * shape.messages_per_request
            cpu_per_request = cpu / count
            handler_us = cpu / in_messages * 1e6
            pure_us = pure_cpu / in_messages * 1e6
            figures["shapes"][name] = {
                "requests": count, "messages_per_request": shape.messages_per_request,
                "request_bytes_mean": sum(shape.request_bytes) / count,
                "api_gateway_units_per_request": sum(-(-size // prices.API_GATEWAY_HTTP_METER_BYTES)
                                                     for size in shape.request_bytes) / count,
                "cpu_s_per_request": cpu_per_request, "requests_per_cpu_second": 1 / cpu_per_request,
                "messages_per_cpu_second": in_messages / cpu, "cpu_us_per_message": handler_us,
                "wall_ms_per_request_local": wall / count * 1e3,
                "pure_us_per_message": pure_us,
                "handler_to_pure": handler_us / pure_us,
            }
            floors.append(json_floor_us(messages, rounds))
        asked_kinesis, asked_dynamodb = kinesis.requests(), dynamodb.requests()
    finally:
        kinesis.close()
        dynamodb.close()
    floor = min(floors)
    figures["json_floor_us_per_message"] = floor
    figures["json_floor_spread"] = max(floors) / floor  # how noisy the machine was over the run
    for row in figures["shapes"].values():
        row["handler_to_json_floor"] = row["cpu_us_per_message"] / floor
        row["pure_to_json_floor"] = row["pure_us_per_message"] / floor
    figures["stand_ins"] = {"kinesis": asked_kinesis, "dynamodb": asked_dynamodb, "handled_requests": handled,
                            "put_records_per_request": asked_kinesis.get("PutRecords", 0) / handled,
                            "get_item_per_request": asked_dynamodb.get("GetItem", 0) / handled}
    assert asked_kinesis.get("PutRecords") == handled, asked_kinesis
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The collector function on the SDKs' request shapes.")
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    figures = measure(args.quick)
    print(json.dumps(figures, indent=2))
    print(f"\n{'shape':<20} {'requests/s':>11} {'messages/s':>11} {'µs/message':>11} {'handler/json':>13} "
          f"{'pure/json':>10}   (json.loads {figures['json_floor_us_per_message']:.2f} µs/message)")
    for name, shape in figures["shapes"].items():
        print(f"{name:<20} {shape['requests_per_cpu_second']:>11,.0f} {shape['messages_per_cpu_second']:>11,.0f} "
              f"{shape['cpu_us_per_message']:>11.1f} {shape['handler_to_json_floor']:>13.1f} "
              f"{shape['pure_to_json_floor']:>10.1f}")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
