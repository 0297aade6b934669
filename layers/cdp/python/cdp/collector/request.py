"""A Tracking API request read into its write key and messages, or refused with Segment's answer.

Pure: no I/O. The rules are Segment's documented ones (RudderStack's server follows them): a write key
as the HTTP Basic username with an empty password, or ``writeKey`` in the body; JSON sent as
``application/json`` or ``text/plain`` (what browsers use to skip a CORS preflight), gzipped when
``Content-Encoding: gzip``; 32 KB per message, 500 KB per batch request and 2,500 messages per batch.
A refusal names what is wrong and never quotes the body, which may hold personal data.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdp.core.events import MAX_MESSAGE_BYTES, json_type

MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2_500
# One route per message type, with the one-letter forms analytics.js uses; "batch" takes an array.
ROUTES = {"batch": "batch", "b": "batch", "track": "track", "t": "track", "identify": "identify",
          "i": "identify", "page": "page", "p": "page", "screen": "screen", "s": "screen", "group": "group",
          "g": "group", "alias": "alias", "a": "alias"}
ROUTE_PREFIX = "/v1/"
JSON_TYPES = ("application/json", "text/plain")
# SDK error handling reads ``code`` and ``message`` from a refusal's body (analytics-python, rudder-sdk-python).
REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
           413: "payload_too_large", 415: "unsupported_media_type", 429: "throttled", 503: "unavailable"}


class Refused(Exception):
    """The whole request is answered with ``status``; ``field`` names the part of it that is wrong."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"success": False, "code": REASONS.get(self.status, "error"), "field": self.field,
                "message": f"{self.field}: {self.message}"}


@dataclass(frozen=True)
class HttpRequest:
    """What the collector reads of an HTTP request. Header names are lower case."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    source_ip: str | None = None


@dataclass(frozen=True)
class TrackingRequest:
    """A request that may be accepted: its write key, its messages (each still to be checked) and what a
    batch gives all of its messages (``sentAt``, ``context``, ``integrations``)."""

    route: str  # "batch" or the message type of a single-message route
    write_key: str
    messages: list[Any]
    sent_at: Any = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


def route_of(path: str) -> str:
    """``/v1/t`` -> ``track``; anything else is a 404."""
    name = path.removeprefix(ROUTE_PREFIX) if path.startswith(ROUTE_PREFIX) else None
    if name is None or name.rstrip("/") not in ROUTES:
        raise Refused(404, "path", f"is not a Tracking API route (POST {ROUTE_PREFIX}batch, track, identify, "
                                   "page, screen, group or alias, or their one-letter forms)")
    return ROUTES[name.rstrip("/")]


def limit_of(route: str) -> int:
    """The most bytes a request body may hold, inflated: one message, or one batch."""
    return MAX_BATCH_BYTES if route == "batch" else MAX_MESSAGE_BYTES


def read_request(request: HttpRequest) -> TrackingRequest:
    """The request's write key and messages; raises :class:`Refused` with the documented status."""
    if request.method != "POST":
        raise Refused(405, "method", "must be POST")
    route = route_of(request.path)
    limit = limit_of(route)
    _check_content_type(request.headers.get("content-type", ""))
    text = _decode(inflate(request.body, request.headers.get("content-encoding", ""), limit), limit)
    document = _parse(text)
    key = write_key(request.headers.get("authorization", ""), document)
    document.pop("writeKey", None)  # never kept with the message: the stream, quarantine and profiles never see it
    if route != "batch":
        return TrackingRequest(route, key, [document])
    batch = document.get("batch")
    if not isinstance(batch, list):
        what = "is required" if batch is None else f"must be an array, not {json_type(batch)}"
        raise Refused(400, "batch", f"{what} (an array of messages)")
    if len(batch) > MAX_BATCH_MESSAGES:
        raise Refused(413, "batch", f"holds {len(batch):,} messages; the limit is {MAX_BATCH_MESSAGES:,}")
    return TrackingRequest(route, key, batch, document.get("sentAt"), _shared(document, "context"),
                           _shared(document, "integrations"))


def _check_content_type(value: str) -> None:
    media = value.split(";", 1)[0].strip().lower()
    if media and media not in JSON_TYPES:
        raise Refused(415, "Content-Type", "must be application/json or text/plain (JSON either way)")


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """The body as sent, or gunzipped, never past ``limit`` bytes: a small body that would inflate past the
    limit (a gzip bomb) is refused after inflating ``limit`` bytes of it, not all of it."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        if len(body) > limit:
            raise Refused(413, "body", f"is {len(body):,} bytes; the limit is {limit:,}")
        return body
    if coding != "gzip":
        raise Refused(415, "Content-Encoding", "must be gzip, or absent")
    if len(body) > limit:  # gzip never makes JSON bigger than this, so the inflated body would be over too
        raise Refused(413, "body", f"is {len(body):,} bytes compressed; the limit is {limit:,} inflated")
    inflated, rest = b"", body
    while rest:  # a gzip body may be several members, one after another
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            inflated += inflater.decompress(rest, limit + 1 - len(inflated))
        except zlib.error:
            raise Refused(400, "body", "is not valid gzip (Content-Encoding says gzip)") from None
        if len(inflated) > limit:
            raise Refused(413, "body", f"inflates past {limit:,} bytes, the limit")
        if not inflater.eof:
            raise Refused(400, "body", "is a truncated gzip stream")
        rest = inflater.unused_data
    return inflated


def _decode(body: bytes, limit: int) -> str:
    if not body.strip():
        raise Refused(400, "body", "is empty; send a JSON object")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "body", "is not UTF-8 text") from None


def _parse(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise Refused(400, "body", f"is not valid JSON ({error.args[0]})") from None
    except RecursionError:
        raise Refused(400, "body", "is nested too deeply to be a message") from None
    if not isinstance(document, dict):
        raise Refused(400, "body", f"must be a JSON object, not {json_type(document)}")
    return document


def write_key(authorization: str, document: Mapping[str, Any]) -> str:
    """The write key: the Basic username (the password is empty), else the body's ``writeKey``."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "basic" and credentials.strip():
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise Refused(401, "Authorization", "is not valid Basic credentials (base64 of writeKey:)") from None
        key = decoded.split(":", 1)[0]
        if key:
            return key
    elif authorization.strip():
        raise Refused(401, "Authorization", "must be Basic (the write key as username, no password)")
    given = document.get("writeKey")
    if isinstance(given, str) and given:
        return given
    raise Refused(401, "writeKey", "is required: the write key as HTTP Basic username, or writeKey in the body")


def _shared(document: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Refused(400, key, f"must be an object, not {json_type(value)}")
    return value
