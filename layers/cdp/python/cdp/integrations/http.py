"""HTTP for the integrations: one small transport, and resending with back-off when a platform says 'later'.

Errors and logs carry the platform's status and error code, never request bodies (they hold
hashed or personal identifiers).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdp.ports import TransientError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else {}
        except ValueError:
            return {}


class Transport(Protocol):
    def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> HttpResponse: ...


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx itself becomes the answer


class UrllibTransport:
    """The standard library's HTTP client: no dependency, and enough for JSON and form APIs.

    A redirect is an answer, never followed: urllib would follow a 301/302/303 after a POST with a
    bodiless GET and return that answer as the POST's, so a redirecting URL would look like success.
    A broken connection is an answer too (status 0), for the caller to resend.
    """

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirects)

    def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> HttpResponse:
        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return HttpResponse(response.status, response.read(), dict(response.headers.items()))
        except urllib.error.HTTPError as error:
            return HttpResponse(error.code, error.read(), dict(error.headers.items()))
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            return HttpResponse(0, type(error).__name__.encode())


def retry_after(response: HttpResponse, attempt: int) -> float:
    """The platform's Retry-After (seconds) if it gave one, else exponential back-off from 0.5 s."""
    header = next((v for k, v in response.headers.items() if k.lower() == "retry-after"), None)
    try:
        wait = float(header) if header is not None else 0.5 * 2 ** attempt
    except ValueError:
        wait = 0.5 * 2 ** attempt
    return min(max(wait, 0.0), MAX_WAIT_SECONDS)


_give_up_at: ContextVar[float | None] = ContextVar("give_up_at", default=None)


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Within this block, ``send`` waits for no back-off that would end after ``seconds`` from now: it gives
    the rows back for a retry instead, before the function's own timeout would lose the whole batch."""
    token = _give_up_at.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _give_up_at.reset(token)


def seconds_left(context: Any, reserve: float = 10.0) -> float | None:
    """A Lambda context's remaining time, less ``reserve`` for recording results; None outside Lambda."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return None if remaining is None else max(remaining() / 1000 - reserve, 0.0)


def send(transport: Transport, method: str, url: str, headers: Mapping[str, str], body: bytes | None, *,
         service: str, attempts: int = 5, throttled: Callable[[HttpResponse], bool] = lambda r: False,
         sleep: Callable[[float], None] = time.sleep) -> HttpResponse:
    """Send, resending on network errors, 429, 5xx and whatever ``throttled`` recognises, with back-off.

    Returns the first other response (success or a refusal for the caller to read); raises
    TransientError when the platform still says 'later' after ``attempts``.
    """
    response = HttpResponse(0, b"")
    give_up_at = _give_up_at.get()
    for attempt in range(attempts):
        response = transport.request(method, url, headers, body)
        if response.status and response.status not in RETRY_STATUSES and not throttled(response):
            return response
        if attempt + 1 < attempts:
            wait = retry_after(response, attempt)
            if give_up_at is not None and time.monotonic() + wait > give_up_at:
                status = f"HTTP {response.status}" if response.status else "no connection"
                raise TransientError(f"{service} answered {status}; no time left in this invocation to wait")
            sleep(wait)
    status = f"HTTP {response.status}" if response.status else "no connection"
    raise TransientError(f"{service} still answered {status} after {attempts} attempts")
