"""`cdp run`'s stop signals: a second SIGTERM arriving inside the first one's handler must not hang the stack."""

from __future__ import annotations

import signal
import threading

import pytest

from cdp_dev.cli import StopSignals


class SignalledDuringSet(threading.Event):
    """An event whose set() takes a second signal while it holds its lock, as `make run` and the stack can."""

    def __init__(self) -> None:
        super().__init__()
        self.handler: StopSignals | None = None

    def set(self) -> None:
        with self._cond:  # what Event.set holds while it notifies the waiters
            if self.handler is not None:
                self.handler(signal.SIGTERM, None)  # the second signal, inside the first handler
            self._flag = True
            self._cond.notify_all()


@pytest.mark.timeout(5)
def test_a_second_signal_inside_the_first_handler_neither_hangs_nor_sets_again() -> None:
    done = SignalledDuringSet()
    stop = StopSignals(done)
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
