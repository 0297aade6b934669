"""The local stack, started once for the end-to-end tests as `cdp run` would start it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STOP_SECONDS = 10  # a stopped stack's whole process group is gone within this


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a reused id of someone else's group: ours is gone
        return False
    return True


def stop_group(process: subprocess.Popen[Any], seconds: float = STOP_SECONDS) -> bool:
    """SIGTERM to the process group; True when all of it was gone within ``seconds``. Whatever is left
    then is killed, so nothing outlives a test, even a failed one."""
    pgid = process.pid  # started with start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, so its id leaves the group
        if not group_alive(pgid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait(timeout=10)
    return False


@contextlib.contextmanager
def launched(command: str | Sequence[str], log: Path, env: dict[str, str], *, shell: bool = False
             ) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in its own session (cwd: the repo root), output to ``log``; its whole group is stopped
    on the way out."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, shell=shell, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None or group_alive(process.pid):
            stop_group(process)


def wait_for_health(api: str, process: subprocess.Popen[Any], log: Path, seconds: float = 180) -> dict[str, Any]:
    """Poll ``/health`` until it answers; the stack's output is in the error if it exits or never answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the local stack exited ({process.returncode}): {log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(api + "/health", timeout=2) as response:
                health: dict[str, Any] = json.loads(response.read())
                return health
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"the local stack did not answer /health within {seconds:g} s: "
                       f"{log.read_text(errors='replace')}")


def environment(**extra: str) -> dict[str, str]:
    """The test's environment without AWS settings (as on a fresh machine), plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **extra}


@dataclass
class Running:
    process: subprocess.Popen[Any]
    endpoint: str
    api: str
    health: dict[str, Any]
    state_dir: Path | None = None  # where this stack registered itself, for `cdp send` with no flags

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="local", aws_secret_access_key="local")

    def cdp(self, *arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``cdp ARGUMENTS`` as a user runs it, with no flags added: it finds this stack by its state file."""
        found = {"CDP_STATE_DIR": str(self.state_dir)} if self.state_dir is not None else {}
        return subprocess.run([sys.executable, "-m", "cdp_dev.cli", *arguments], capture_output=True, text=True,
                              timeout=60, check=False, cwd=ROOT, env=env or environment(**found))

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
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
        return subprocess.run([sys.executable, "-m", "cdp_dev.cli", "--endpoint-url", self.endpoint, "--region", REGION,
                               "send", str(path)], capture_output=True, text=True, timeout=60, env=env, check=False)


@contextlib.contextmanager
def started(*options: str, name: str) -> Iterator[Running]:
    """``cdp run --no-sample --no-feed OPTIONS`` on free ports, registered in a state folder of its own."""
    aws_port, api_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix=f"cdp-e2e-{name}-") as folder:
        state, log = Path(folder) / "state", Path(folder) / "stack.log"
        command = [sys.executable, "-m", "cdp_dev.cli", "run", "--no-sample", "--no-feed", *options,
                   "--aws-port", str(aws_port), "--api-port", str(api_port), "--root", str(ROOT)]
        with launched(command, log, environment(CDP_STATE_DIR=str(state))) as process:
            api = f"http://127.0.0.1:{api_port}"
            health = wait_for_health(api, process, log)
            yield Running(process, f"http://127.0.0.1:{aws_port}", api, health, state)
            assert stop_group(process), f"the local stack was still running {STOP_SECONDS} s after SIGTERM"


@pytest.fixture(scope="session")
def stack() -> Iterator[Running]:
    """The stack most tests share: wall time, a timers sweep every second."""
    with started("--clock", "wall", "--timer-tick", "1", name="wall") as running:
        yield running


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def track(customer: str, event: str, at: float | None = None, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": customer, "messageId": str(uuid.uuid4()),
            "timestamp": iso(time.time() if at is None else at), "properties": properties,
            "context": {"library": {"name": "analytics.js"}}}


def customer() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


def bus_events(stack: Running, who: str) -> list[dict[str, Any]]:
    """Drain the local queue behind the bus rule; keep this customer's events (others come back a second
    later for their tests: hidden meanwhile, so however many wait, this customer's are reached)."""
    sqs = stack.client("sqs")
    url = sqs.get_queue_url(QueueName="cdp-local-transitions")["QueueUrl"]
    mine = []
    for _ in range(100):
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                       VisibilityTimeout=1).get("Messages", [])
        if not messages:
            break
        for message in messages:
            event = json.loads(message["Body"])
            if event["detail"]["customer_id"] == who:
                mine.append(event)
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return mine


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
