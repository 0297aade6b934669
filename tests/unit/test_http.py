"""Resending with back-off, within the time an invocation has left."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from cdp.integrations.http import HttpResponse, retry_after, seconds_left, send, time_limit
from cdp.ports import TransientError
from tests.lambda_context import LambdaContext


class Throttled:
    """Answers 429 with a Retry-After the given number of times, then 200."""

    def __init__(self, times: int, wait: str = "5") -> None:
        self.left, self.wait, self.calls = times, wait, 0

    def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> HttpResponse:
        self.calls += 1
        if self.left:
            self.left -= 1
            return HttpResponse(429, b"", {"Retry-After": self.wait})
        return HttpResponse(200, b"{}")


def test_waits_as_the_platform_asks_then_succeeds() -> None:
    waits: list[float] = []
    response = send(Throttled(2), "POST", "https://x.test", {}, b"", service="test", sleep=waits.append)
    assert response.status == 200 and waits == [5.0, 5.0]


def test_gives_the_rows_back_instead_of_waiting_past_the_time_left() -> None:
    waits: list[float] = []
    transport = Throttled(2)
    with time_limit(3.0), pytest.raises(TransientError, match="no time left"):
        send(transport, "POST", "https://x.test", {}, b"", service="test", sleep=waits.append)
    assert waits == [] and transport.calls == 1


def test_the_limit_ends_with_its_block() -> None:
    waits: list[float] = []
    with time_limit(3.0):
        pass
    send(Throttled(1), "POST", "https://x.test", {}, b"", service="test", sleep=waits.append)
    assert waits == [5.0]


def test_after_all_attempts_the_error_names_the_status_and_never_the_body() -> None:
    with pytest.raises(TransientError) as raised:
        send(Throttled(9, wait="0"), "POST", "https://x.test", {}, b"secret@example.com", service="test",
             sleep=lambda _: None)
    assert str(raised.value) == "test still answered HTTP 429 after 5 attempts"


def test_retry_after_is_capped_and_falls_back_to_exponential() -> None:
    assert retry_after(HttpResponse(429, b"", {"retry-after": "999"}), 0) == 30.0
    assert retry_after(HttpResponse(503, b""), 2) == 2.0
    assert retry_after(HttpResponse(503, b"", {"Retry-After": "soon"}), 0) == 0.5


def test_seconds_left_keeps_a_reserve_and_is_none_outside_lambda() -> None:
    assert seconds_left(LambdaContext(remaining_ms=45_000)) == 35.0
    assert seconds_left(None) is None
