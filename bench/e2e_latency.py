"""End-to-end latency through the local stack: from putting an event on the stream to its
`Segment Entered` arriving on the queue behind the bus rule.

    python bench/e2e_latency.py [--events 200]

Starts `cdp run --no-sample --no-feed` on free ports, sends one `Product Added` per new customer
(each enters potential-abandoners at once) at a steady rate, and times each customer's event.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def measure(events: int = 200, burst: int = 1, pause: float = 0.1) -> dict[str, float | int | None]:
    """Send ``events`` new customers' Product Added, ``burst`` at a time with ``pause`` between, and time each
    one until its Segment Entered (potential-abandoners) reaches the queue behind the bus rule."""
    aws_port, api_port = free_port(), free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen([sys.executable, "-m", "cdp_dev.cli", "run", "--no-sample", "--no-feed",
                                "--clock", "wall", "--aws-port", str(aws_port), "--api-port", str(api_port),
                                "--root", str(ROOT)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/health", timeout=2) as response:
                    health = json.loads(response.read())
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("the local stack did not start")
        endpoint = f"http://127.0.0.1:{aws_port}"
        session = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "local",
                   "aws_secret_access_key": "local"}
        kinesis, sqs = boto3.client("kinesis", **session), boto3.client("sqs", **session)
        stream = health["resources"]["streams"][0]
        queue = sqs.get_queue_url(QueueName="cdp-local-transitions")["QueueUrl"]
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        run = uuid.uuid4().hex[:6]
        customers = [f"lat-{run}-{n:04d}" for n in range(events)]

        def drain() -> None:
            for message in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=0).get("Messages", []):
                detail = json.loads(message["Body"])["detail"]
                who = detail["customer_id"]
                if who in sent and detail["segment"]["id"] == "potential-abandoners" and who not in seen:
                    seen[who] = time.monotonic()
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])

        began = time.monotonic()
        for start in range(0, len(customers), burst):
            group = customers[start:start + burst]
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            records = [{"PartitionKey": who, "Data": json.dumps({
                "type": "track", "event": "Product Added", "userId": who, "messageId": f"{who}-add",
                "timestamp": now, "properties": {"product_id": "p1", "price": 10}}).encode()} for who in group]
            moment = time.monotonic()
            kinesis.put_records(StreamName=stream, Records=records)
            for who in group:
                sent[who] = moment
            drain()
            time.sleep(pause)
        rate = len(sent) / (time.monotonic() - began)
        deadline = time.monotonic() + 60
        while len(seen) < len(sent) and time.monotonic() < deadline:
            drain()
        latencies = [(seen[who] - sent[who]) * 1000 for who in seen]
        return {"events": len(sent), "arrived": len(seen), "rate_per_s": round(rate, 1),
                "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
                "p95_ms": round(percentile(latencies, 0.95), 1) if latencies else None,
                "max_ms": round(max(latencies), 1) if latencies else None}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--burst", type=int, default=1, help="events put together before each pause")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between bursts")
    args = parser.parse_args(argv)
    result = measure(args.events, args.burst, args.pause)
    print(json.dumps(result, indent=2))
    return 0 if result["arrived"] == result["events"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
