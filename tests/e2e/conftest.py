"""The local stack, started once for the end-to-end tests as `cdp run` would start it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Running:
    process: subprocess.Popen[str]
    endpoint: str
    api: str
    health: dict[str, Any]

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="local", aws_secret_access_key="local")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(self.api + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def send(self, lines: list[dict[str, Any]] | list[bytes], tmp: Path) -> subprocess.CompletedProcess[str]:
        """`cdp send FILE` against the local stack, as a user would run it."""
        path = tmp / f"events-{time.monotonic_ns()}.jsonl"
        path.write_bytes(b"\n".join(line if isinstance(line, bytes) else json.dumps(line).encode()
                                    for line in lines) + b"\n")
        environment = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
        return subprocess.run([sys.executable, "-m", "cdp.cli", "--endpoint-url", self.endpoint, "--region", REGION,
                               "send", str(path)], capture_output=True, text=True, timeout=60, env=environment,
                              check=False)


@pytest.fixture(scope="session")
def stack() -> Iterator[Running]:
    aws_port, api_port = free_port(), free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cdp.cli", "run", "--no-sample", "--no-feed", "--clock", "wall", "--timer-tick", "1",
         "--aws-port", str(aws_port), "--api-port", str(api_port), "--root", str(ROOT)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    api = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + 120
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the local stack exited: {process.stdout.read() if process.stdout else ''}")
        try:
            with urllib.request.urlopen(api + "/health", timeout=2) as response:
                health = json.loads(response.read())
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        raise RuntimeError("the local stack did not answer /health within 120 s")
    running = Running(process, f"http://127.0.0.1:{aws_port}", api, health)
    try:
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def wait_for(check: Any, timeout: float = 20.0, interval: float = 0.2) -> Any:
    """Poll until check() returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s")
        time.sleep(interval)
