"""`cdp run`'s stop signals: a second SIGTERM arriving inside the first one's handler must not hang the stack."""

from __future__ import annotations

import signal
import threading

import pytest

from cdp_dev.cli import StopSignals


class SignalledDuringSet:
    """An event whose set() takes a second signal while it holds its (non-reentrant) lock, as Event.set holds its
    condition's lock while it notifies the waiters: what `make run` and the stack can do to each other."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.flag = False
        self.handler: StopSignals | None = None

    def set(self) -> None:
        with self.lock:
            if self.handler is not None:
                self.handler(signal.SIGTERM, None)  # the second signal, inside the first handler
            self.flag = True

    def is_set(self) -> bool:
        return self.flag


@pytest.mark.timeout(5)
def test_a_second_signal_inside_the_first_handler_neither_hangs_nor_sets_again() -> None:
    done = SignalledDuringSet()
    stop = StopSignals(done)  # type: ignore[arg-type]
    done.handler = stop

    stop(signal.SIGTERM, None)

    assert done.is_set() and stop.received == [signal.SIGTERM, signal.SIGTERM]


def test_a_signal_while_starting_interrupts_the_start_once() -> None:
    stop = StopSignals()
    stop.starting.set()
    with pytest.raises(KeyboardInterrupt):
        stop(signal.SIGINT, None)
    assert not stop.starting.is_set() and not stop.done.is_set()
    stop(signal.SIGINT, None)
    assert stop.done.is_set()
