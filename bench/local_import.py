"""A purchase history imported through the local stack: how long until every event is applied, and whether the
rate holds up as the tables grow.

    python bench/local_import.py [--quick] [--orders N --customers M]

Starts `cdp run --no-sample --no-feed` (event time) on free ports, generates the history of `cdp history`
(70,000 orders from 23,000 customers over 18 months, each customer's identify before their first order;
`--quick` a tenth of both), puts its messages on the stream in PutRecords calls at the stream's limit (500
records), and polls the stack's `/health` ingest totals from the first PutRecords on until every event is
applied (or counted as a duplicate or quarantined). Reports the seconds, the events per second overall and
over the first and last 10% of the events, the last-to-first ratio (below 1: the stack slows as its tables
grow), and what the changes function had done by then (table stream records, transitions published; it may
still be behind). The floor is json.loads of the same messages, measured in the same run. `CDP_EMULATOR=child`
measures the emulator in a process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
ORDERS, CUSTOMERS, MONTHS = 70_000, 23_000, 18
SAMPLE_SECONDS = 0.25
TIMEOUT_SECONDS = 1800


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def order_history(orders: int, customers: int) -> list[bytes]:
    """The generated history (`cdp history`): each customer's identify, then their Order Completed messages,
    over 18 months, in time order, one JSON line each."""
    from cdp_dev.order_history import HistoryShape, history

    shape = HistoryShape(orders=orders, customers=customers, months=MONTHS, seed=15)
    return [json.dumps(message, separators=(",", ":")).encode() for message in history(shape)]


def health(api: str) -> dict[str, Any]:
    with urllib.request.urlopen(api + "/health", timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def through(totals: dict[str, int]) -> int:
    """Events the ingest function is done with: applied, or known as duplicates, or quarantined."""
    return totals["applied"] + totals["duplicates"] + totals["quarantined"]


def start_stack(extra: list[str]) -> tuple[subprocess.Popen[bytes], str, str]:
    aws_port, api_port = free_port(), free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen([sys.executable, "-m", "cdp_dev.cli", "run", "--no-sample", "--no-feed",
                                "--clock", "event", "--aws-port", str(aws_port), "--api-port", str(api_port),
                                "--root", str(ROOT), *extra],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    api = f"http://127.0.0.1:{api_port}"
    for _ in range(480):
        if process.poll() is not None:
            raise RuntimeError(f"the local stack exited ({process.returncode})")
        try:
            health(api)
            return process, f"http://127.0.0.1:{aws_port}", api
        except OSError:
            time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    raise RuntimeError("the local stack did not start")


def send(endpoint: str, stream: str, lines: list[bytes]) -> float:
    """Put the lines on the stream (PutRecords, 500 at a time); returns the seconds it took."""
    from cdp_dev.sender import send_lines

    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="local", aws_secret_access_key="local")
    began = time.monotonic()
    send_lines(kinesis, stream, lines)
    return time.monotonic() - began


def rate_between(samples: list[tuple[float, int]], low: int, high: int) -> float:
    """Events per second while the count went from ``low`` to ``high`` (first samples at or past each)."""
    first = next(t for t, n in samples if n >= low)
    last = next(t for t, n in samples if n >= high)
    return (high - low) / max(last - first, SAMPLE_SECONDS)


def wait_until_through(api: str, events: int, began: float, samples: list[tuple[float, int]]) -> dict[str, Any]:
    """Sample the ingest totals until ``events`` are through; returns the last health answer."""
    while True:
        answer = health(api)
        done = through(answer["ingest"])
        samples.append((time.monotonic() - began, done))
        if done >= events:
            return answer
        if time.monotonic() - began > TIMEOUT_SECONDS:
            raise RuntimeError(f"only {done} of {events} events applied after {TIMEOUT_SECONDS} s")
        time.sleep(SAMPLE_SECONDS)


def floor_seconds(lines: list[bytes]) -> float:
    """json.loads of every message, best of 3: the least any pipeline must spend on them."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for line in lines:
            json.loads(line)
        best = min(best, time.perf_counter() - began)
    return best


def measure(quick: bool, orders: int | None = None, customers: int | None = None,
            extra: list[str] | None = None) -> dict[str, Any]:
    """Import the history into a fresh local stack and time it (see the module's docstring)."""
    scale = 10 if quick else 1
    orders, customers = orders or ORDERS // scale, customers or CUSTOMERS // scale
    lines = order_history(orders, customers)
    process, endpoint, api = start_stack(extra or [])
    try:
        stream = health(api)["resources"]["streams"][0]
        samples: list[tuple[float, int]] = []
        events = len(lines)
        with ThreadPoolExecutor(max_workers=1) as sender:
            began = time.monotonic()
            sending = sender.submit(send, endpoint, stream, lines)  # sampled from the start: the stack applies
            final = wait_until_through(api, events, began, samples)  # events while the rest are being sent
            sent_seconds = sending.result()
        seconds = samples[-1][0]
        changes = final["changes"]
        tenth = events // 10
        first, last = rate_between(samples, 0, tenth), rate_between(samples, events - tenth, events)
        floor = floor_seconds(lines)
        return {"orders": orders, "customers": customers, "events": events, "seconds": round(seconds, 1),
                "events_per_s": round(events / seconds, 1), "send_seconds": round(sent_seconds, 1),
                "first_10pct_per_s": round(first, 1), "last_10pct_per_s": round(last, 1),
                "last_to_first": round(last / first, 2), "ingest": final["ingest"],
                "changes_when_applied": changes, "transitions_published_when_applied": changes["published"],
                "errors": final.get("errors", []),
                "floor_json_loads_s": round(floor, 4), "seconds_per_floor": round(seconds / floor)}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a tenth of the history (7,000 orders)")
    parser.add_argument("--orders", type=int, help="orders in the history (default 70,000)")
    parser.add_argument("--customers", type=int, help="customers placing them (default 23,000)")
    args, extra = parser.parse_known_args(argv)
    result = measure(args.quick, args.orders, args.customers, extra)
    print(json.dumps(result, indent=2))
    return 0 if result["ingest"]["quarantined"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
