"""Stopping the local stack: every component's invocation in hand ends before the emulator goes.

A handler cut off mid-batch would send its retries to real AWS endpoints once the emulator is gone, and
its request pool's workers would then hold the process's exit up past the 10 s a stop is given.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cdp_dev import local_stack
from cdp_dev.local_stack import LocalStack


class RecordingEmulator:
    in_process = True

    def __init__(self) -> None:
        self.stopped_at: float | None = None

    def stop(self) -> None:
        self.stopped_at = time.monotonic()


def stack_with(emulator: RecordingEmulator) -> LocalStack:
    stack = LocalStack(Path("."), aws_port=1, api_port=2)
    stack.emulator = emulator  # type: ignore[assignment]
    return stack


def test_a_component_mid_invocation_finishes_before_the_emulator_stops() -> None:
    emulator, finished = RecordingEmulator(), []
    stack = stack_with(emulator)
    busy = threading.Event()

    def invocation() -> None:
        busy.set()
        stack.stopping.wait()
        time.sleep(0.3)  # the rest of the batch, after the stop was asked for
        finished.append((time.monotonic(), emulator.stopped_at))

    stack._thread("ingest", invocation)
    busy.wait(5)
    assert stack.stop() == []
    (done_at, emulator_stopped_then), = finished
    assert emulator_stopped_then is None and emulator.stopped_at is not None and done_at <= emulator.stopped_at


def test_a_component_still_busy_after_the_wait_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_stack, "STOP_SECONDS", 0.2)
    emulator, release = RecordingEmulator(), threading.Event()
    stack = stack_with(emulator)
    def held() -> None:
        release.wait(10)

    def idle() -> None:
        stack.stopping.wait()

    stack._thread("changes", held)
    stack._thread("timers", idle)
    try:
        assert stack.stop() == ["changes"]
        assert emulator.stopped_at is not None
    finally:
        release.set()
