"""Reading a Tracking API request (cdp.collector.request): routes, the write key, content types, limits, gzip."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections.abc import Mapping
from typing import Any

import pytest

from cdp.collector.request import (
    MAX_BATCH_BYTES,
    MAX_BATCH_MESSAGES,
    HttpRequest,
    Refused,
    TrackingRequest,
    read_request,
)
from cdp.core.events import MAX_MESSAGE_BYTES

KEY = "wk_test_0123456789abcdefghij"
MESSAGE = {"type": "track", "event": "Signed Up", "userId": "alice", "messageId": "m-1"}


def basic(username: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def post(path: str = "/v1/track", document: Any = MESSAGE, body: bytes | None = None,
         headers: Mapping[str, str] | None = None, method: str = "POST") -> HttpRequest:
    """A request; with the write key as Basic username unless ``headers`` say otherwise."""
    data = json.dumps(document).encode() if body is None else body
    given = {"authorization": basic(KEY), "content-type": "application/json"} if headers is None else dict(headers)
    return HttpRequest(method, path, given, data, "198.51.100.7")


def refusal(request: HttpRequest) -> Refused:
    with pytest.raises(Refused) as caught:
        read_request(request)
    return caught.value


def batch_of(count: int, **extra: Any) -> dict[str, Any]:
    return {"batch": [{"type": "track", "event": "E", "userId": f"u{n}"} for n in range(count)], **extra}


# ---- routes and methods -------------------------------------------------------------------------

SINGLE_ROUTES = {"track": "track", "t": "track", "identify": "identify", "i": "identify", "page": "page",
                 "p": "page", "screen": "screen", "s": "screen", "group": "group", "g": "group",
                 "alias": "alias", "a": "alias"}


@pytest.mark.parametrize(("name", "route"), sorted(SINGLE_ROUTES.items()))
def test_every_single_message_route_and_its_short_form(name: str, route: str) -> None:
    tracking = read_request(post(f"/v1/{name}"))
    assert tracking == TrackingRequest(route, KEY, [MESSAGE])


@pytest.mark.parametrize("name", ["batch", "b", "batch/"])
def test_batch_route_and_its_short_form(name: str) -> None:
    tracking = read_request(post(f"/v1/{name}", batch_of(3)))
    assert tracking.route == "batch"
    assert tracking.write_key == KEY
    assert [m["userId"] for m in tracking.messages] == ["u0", "u1", "u2"]


@pytest.mark.parametrize("path", ["/v1/import", "/v2/track", "/track", "/v1/", "/v1", "/", "", "/v1/Track",
                                  "/v1/track/extra", "/x/v1/track"])
def test_other_paths_are_404(path: str) -> None:
    refused = refusal(post(path))
    assert refused.status == 404
    assert refused.field == "path"
    assert refused.body()["code"] == "not_found"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_methods_other_than_post_are_405(method: str) -> None:
    refused = refusal(post("/v1/track", method=method))
    assert refused.status == 405
    assert refused.body() == {"success": False, "code": "method_not_allowed", "field": "method",
                              "message": "method: must be POST"}


# ---- the write key ------------------------------------------------------------------------------


def test_write_key_from_basic_auth_username_with_empty_password() -> None:
    assert read_request(post(headers={"authorization": basic("wk_from_header")})).write_key == "wk_from_header"


def test_write_key_from_the_body() -> None:
    tracking = read_request(post(document={**MESSAGE, "writeKey": "wk_from_body"}, headers={}))
    assert tracking.write_key == "wk_from_body"
    batch = read_request(post("/v1/batch", batch_of(1, writeKey="wk_batch_body"), headers={}))
    assert batch.write_key == "wk_batch_body"


def test_basic_auth_wins_over_the_body() -> None:
    tracking = read_request(post(document={**MESSAGE, "writeKey": "wk_from_body"},
                                 headers={"authorization": basic("wk_from_header")}))
    assert tracking.write_key == "wk_from_header"


def test_basic_auth_scheme_name_is_case_insensitive_and_password_is_ignored() -> None:
    header = "basic " + base64.b64encode(b"wk_lower:ignored").decode()
    assert read_request(post(headers={"authorization": header})).write_key == "wk_lower"


@pytest.mark.parametrize("document", [MESSAGE, {**MESSAGE, "writeKey": ""}, {**MESSAGE, "writeKey": 12345},
                                      {**MESSAGE, "writeKey": None}])
def test_missing_write_key_is_401(document: dict[str, Any]) -> None:
    refused = refusal(post(document=document, headers={"content-type": "application/json"}))
    assert refused.status == 401
    assert refused.field == "writeKey"
    assert refused.body()["code"] == "unauthorized"


def test_missing_write_key_in_a_batch_is_401() -> None:
    refused = refusal(post("/v1/batch", batch_of(2), headers={}))
    assert (refused.status, refused.field) == (401, "writeKey")


@pytest.mark.parametrize("header", ["Basic !!!not-base64!!!", "Basic d2tfa2V5O", "Basic " + base64.b64encode(
    b"\xff\xfe:").decode(), "Bearer " + KEY, "Digest username=x", KEY])
def test_malformed_or_other_authorization_is_401(header: str) -> None:
    refused = refusal(post(document={**MESSAGE, "writeKey": "wk_body_must_not_rescue_it"},
                           headers={"authorization": header}))
    assert refused.status == 401
    assert refused.field == "Authorization"
    assert KEY not in refused.body()["message"]


# ---- content types ------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "text/plain",
                                          "text/plain;charset=UTF-8", "Text/Plain; charset=utf-8",
                                          "APPLICATION/JSON", None])
def test_json_content_types_and_none_are_accepted(content_type: str | None) -> None:
    headers = {"authorization": basic(KEY)}
    if content_type is not None:
        headers["content-type"] = content_type
    assert read_request(post(headers=headers)).messages == [MESSAGE]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "application/xml", "text/html", "application/jsonp"])
def test_other_content_types_are_415(content_type: str) -> None:
    refused = refusal(post(headers={"authorization": basic(KEY), "content-type": content_type}))
    assert (refused.status, refused.field) == (415, "Content-Type")
    assert refused.body()["code"] == "unsupported_media_type"


# ---- the body -----------------------------------------------------------------------------------


def test_invalid_json_is_400_with_the_reason_and_without_the_body() -> None:
    secret = b'{"type": "identify", "traits": {"email": "secret.person@example.com"'
    refused = refusal(post(body=secret))
    assert (refused.status, refused.field) == (400, "body")
    message = refused.body()["message"]
    assert message.startswith("body: is not valid JSON (")
    assert "Expecting" in message  # the parser's reason
    assert "secret.person" not in message
    assert "example.com" not in json.dumps(refused.body())


@pytest.mark.parametrize("body", [b"", b"   ", b"\n\t "])
def test_empty_body_is_400(body: bytes) -> None:
    refused = refusal(post(body=body))
    assert (refused.status, refused.field) == (400, "body")
    assert "empty" in refused.message


@pytest.mark.parametrize(("document", "kind"), [([MESSAGE], "an array"), ("track", "a string"), (7, "a number"),
                                                (None, "null"), (True, "a boolean")])
def test_a_body_that_is_not_an_object_is_400(document: Any, kind: str) -> None:
    refused = refusal(post(document=document))
    assert (refused.status, refused.field) == (400, "body")
    assert refused.message == f"must be a JSON object, not {kind}"


def test_a_body_that_is_not_utf8_is_400() -> None:
    refused = refusal(post(body=b'{"event": "\xff\xfe"}'))
    assert (refused.status, refused.field) == (400, "body")


@pytest.mark.parametrize(("batch", "words"), [({"type": "track"}, "must be an array, not an object"),
                                              ("[]", "must be an array, not a string"),
                                              (None, "is required")])
def test_batch_that_is_not_an_array_is_400(batch: Any, words: str) -> None:
    document = {} if batch is None else {"batch": batch}
    refused = refusal(post("/v1/batch", document))
    assert (refused.status, refused.field) == (400, "batch")
    assert refused.message.startswith(words)


def test_batch_context_integrations_and_sent_at_are_read() -> None:
    document = batch_of(1, sentAt="2026-10-20T12:00:00.000Z", context={"library": {"name": "analytics-python"}},
                        integrations={"All": False})
    tracking = read_request(post("/v1/batch", document))
    assert tracking.sent_at == "2026-10-20T12:00:00.000Z"
    assert tracking.context == {"library": {"name": "analytics-python"}}
    assert tracking.integrations == {"All": False}


@pytest.mark.parametrize("key", ["context", "integrations"])
def test_batch_context_or_integrations_that_is_not_an_object_is_400(key: str) -> None:
    refused = refusal(post("/v1/batch", batch_of(1, **{key: ["x"]})))
    assert (refused.status, refused.field) == (400, key)


# ---- limits -------------------------------------------------------------------------------------


def test_2500_messages_are_accepted_and_2501_are_413() -> None:
    assert len(read_request(post("/v1/batch", batch_of(MAX_BATCH_MESSAGES))).messages) == 2_500
    refused = refusal(post("/v1/batch", batch_of(MAX_BATCH_MESSAGES + 1)))
    assert (refused.status, refused.field) == (413, "batch")
    assert refused.body()["code"] == "payload_too_large"
    assert "2,501" in refused.message


def test_a_batch_body_up_to_500_kb_is_accepted_and_one_byte_more_is_413() -> None:
    padding_at_limit = b" " * (MAX_BATCH_BYTES - len(json.dumps(batch_of(1)).encode()))
    at_limit = json.dumps(batch_of(1)).encode() + padding_at_limit
    assert len(at_limit) == MAX_BATCH_BYTES
    assert len(read_request(post("/v1/batch", body=at_limit)).messages) == 1
    refused = refusal(post("/v1/batch", body=at_limit + b" "))
    assert (refused.status, refused.field) == (413, "body")


def test_a_single_message_body_over_32_kb_is_413() -> None:
    base = json.dumps(MESSAGE).encode()
    at_limit = base + b" " * (MAX_MESSAGE_BYTES - len(base))
    assert read_request(post(body=at_limit)).messages == [MESSAGE]
    refused = refusal(post(body=at_limit + b" "))
    assert (refused.status, refused.field) == (413, "body")


class InflateSpy:
    """Wraps zlib.decompressobj to see how much a body was inflated, and with which bound."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.max_lengths: list[int] = []
        self.inflated = 0
        real = zlib.decompressobj

        def spying(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            inner = real(*args, **kwargs)
            spy = self

            class Recording:
                def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                    spy.max_lengths.append(max_length)
                    out = inner.decompress(data, max_length)
                    spy.inflated += len(out)
                    return out

                @property
                def eof(self) -> bool:
                    return bool(inner.eof)

            return Recording()

        monkeypatch.setattr(zlib, "decompressobj", spying)  # looked up on zlib at each call


def test_a_10_mb_body_is_413_without_decompressing(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = InflateSpy(monkeypatch)
    huge = b"\x1f\x8b" + b"\x00" * (10 * 1024 * 1024)
    for encoding in ("gzip", ""):
        refused = refusal(post("/v1/batch", body=huge, headers={"authorization": basic(KEY),
                                                                "content-encoding": encoding}))
        assert (refused.status, refused.field) == (413, "body")
    assert spy.calls == 0


def test_a_gzip_body_is_inflated() -> None:
    document = batch_of(2, sentAt="2026-10-20T12:00:00.000Z")
    headers = {"authorization": basic(KEY), "content-type": "text/plain", "content-encoding": "gzip"}
    tracking = read_request(post("/v1/batch", body=gzip.compress(json.dumps(document).encode()), headers=headers))
    assert tracking.messages == document["batch"]
    assert tracking.sent_at == "2026-10-20T12:00:00.000Z"
    single = read_request(post(body=gzip.compress(json.dumps(MESSAGE).encode()),
                               headers={**headers, "content-encoding": " GZIP "}))
    assert single.messages == [MESSAGE]


def test_a_gzip_bomb_is_413_after_inflating_no_more_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = gzip.compress(b"0" * (10 * 1024 * 1024))
    assert len(bomb) < 64 * 1024  # small enough to pass the compressed-size check
    spy = InflateSpy(monkeypatch)
    refused = refusal(post("/v1/batch", body=bomb, headers={"authorization": basic(KEY), "content-encoding": "gzip"}))
    assert (refused.status, refused.field) == (413, "body")
    assert "inflates past" in refused.message
    assert spy.calls == 1
    assert all(0 < bound <= MAX_BATCH_BYTES + 1 for bound in spy.max_lengths)
    assert spy.inflated <= MAX_BATCH_BYTES + 1


def test_a_gzip_bomb_on_a_single_message_route_stops_at_32_kb(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = InflateSpy(monkeypatch)
    refused = refusal(post(body=gzip.compress(b" " * (1024 * 1024)),
                           headers={"authorization": basic(KEY), "content-encoding": "gzip"}))
    assert (refused.status, refused.field) == (413, "body")
    assert spy.inflated <= MAX_MESSAGE_BYTES + 1


def test_truncated_gzip_is_400() -> None:
    whole = gzip.compress(json.dumps(batch_of(50)).encode())
    for cut in (len(whole) - 4, len(whole) // 2, 12):
        refused = refusal(post("/v1/batch", body=whole[:cut],
                               headers={"authorization": basic(KEY), "content-encoding": "gzip"}))
        assert (refused.status, refused.field) == (400, "body")


def test_a_body_that_is_not_gzip_although_the_header_says_so_is_400() -> None:
    refused = refusal(post(body=json.dumps(MESSAGE).encode(),
                           headers={"authorization": basic(KEY), "content-encoding": "gzip"}))
    assert (refused.status, refused.field) == (400, "body")
    assert "gzip" in refused.message


@pytest.mark.parametrize("encoding", ["deflate", "br", "compress", "zstd", "gzip, br"])
def test_content_encoding_other_than_gzip_is_415(encoding: str) -> None:
    refused = refusal(post(body=zlib.compress(json.dumps(MESSAGE).encode()),
                           headers={"authorization": basic(KEY), "content-encoding": encoding}))
    assert (refused.status, refused.field) == (415, "Content-Encoding")


def test_identity_content_encoding_is_the_body_as_sent() -> None:
    tracking = read_request(post(headers={"authorization": basic(KEY), "content-encoding": "identity"}))
    assert tracking.messages == [MESSAGE]


def test_the_write_key_is_never_kept_with_the_message() -> None:
    tracking = read_request(post(document={**MESSAGE, "writeKey": "wk_from_body"}, headers={}))
    assert tracking.write_key == "wk_from_body"
    assert all("writeKey" not in message for message in tracking.messages)
    assert "wk_from_body" not in json.dumps(tracking.messages)


def test_a_gzip_body_of_several_members_is_read_whole() -> None:
    first, second = json.dumps(batch_of(2))[:20].encode(), json.dumps(batch_of(2))[20:].encode()
    body = gzip.compress(first) + gzip.compress(second)
    headers = {"authorization": basic(KEY), "content-encoding": "gzip"}
    tracking = read_request(post("/v1/batch", body=body, headers=headers))
    assert [m["userId"] for m in tracking.messages] == ["u0", "u1"]


def test_several_gzip_members_together_past_the_limit_are_413() -> None:
    half = gzip.compress(b" " * (MAX_MESSAGE_BYTES // 2 + 10))
    body = half + half + gzip.compress(json.dumps(MESSAGE).encode())
    refused = refusal(post(body=body, headers={"authorization": basic(KEY), "content-encoding": "gzip"}))
    assert refused.status == 413
