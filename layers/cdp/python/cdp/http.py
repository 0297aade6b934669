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
from collections.abc import Callable, Mapping
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


def send(transport: Transport, method: str, url: str, headers: Mapping[str, str], body: bytes | None, *,
         service: str, attempts: int = 5, throttled: Callable[[HttpResponse], bool] = lambda r: False,
         sleep: Callable[[float], None] = time.sleep) -> HttpResponse:
    """Send, resending on network errors, 429, 5xx and whatever ``throttled`` recognises, with back-off.

    Returns the first other response (success or a refusal for the caller to read); raises
    TransientError when the platform still says 'later' after ``attempts``.
    """
    response = HttpResponse(0, b"")
    for attempt in range(attempts):
        response = transport.request(method, url, headers, body)
        if response.status and response.status not in RETRY_STATUSES and not throttled(response):
            return response
        if attempt + 1 < attempts:
            sleep(retry_after(response, attempt))
    status = f"HTTP {response.status}" if response.status else "no connection"
    raise TransientError(f"{service} still answered {status} after {attempts} attempts")
