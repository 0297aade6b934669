"""Writes the API Gateway REST (payload format 1.0) proxy envelopes in events/api.

    python events/make_api_envelopes.py

One envelope per route, shaped as API Gateway sends them to a Lambda proxy integration: ``path`` as
requested (still percent-encoded), ``pathParameters`` decoded, single- and multi-value headers and query
strings, and a ``requestContext`` with the stage, request id and caller identity. Operator routes carry
an IAM (SigV4) identity; ``GET /me`` carries the Cognito user pool authorizer's claims, and
``get-me-unauthenticated`` has none. The tests load these and change ids where they need to.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
API_ID = "a1b2c3d4e5"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
STAGE = "prod"
HOST = f"{API_ID}.execute-api.{REGION}.amazonaws.com"
EPOCH_MS = 1792497600000  # 2026-10-20T12:00:00Z
OPERATOR_ARN = f"arn:aws:sts::{ACCOUNT}:assumed-role/cdp-operator/ops-session"
USER_POOL = f"https://cognito-idp.{REGION}.amazonaws.com/{REGION}_Ab12Cd34E"
END_USER_SUB = "alice"
BIG_SPENDERS = {"id": "big-spenders", "name": "Big spenders", "description": "Over 200 in lifetime revenue.",
                "condition": {"rfm": {"metric": "revenue", "gt": 200}}}


def _identity(operator: bool) -> dict[str, Any]:
    return {
        "cognitoIdentityPoolId": None, "cognitoIdentityId": None, "cognitoAuthenticationType": None,
        "cognitoAuthenticationProvider": None, "apiKey": None, "apiKeyId": None, "principalOrgId": None,
        "accountId": ACCOUNT if operator else None,
        "caller": "AROAEXAMPLEOPERATOR:ops-session" if operator else None,
        "accessKey": "ASIAEXAMPLEACCESSKEY" if operator else None,
        "user": "AROAEXAMPLEOPERATOR:ops-session" if operator else None,
        "userArn": OPERATOR_ARN if operator else None,
        "sourceIp": "203.0.113.10", "userAgent": "cdp-tests/1.0", "clientCert": None,
    }


def _claims(sub: str) -> dict[str, str]:
    """The claims of a Cognito id token, as the REST API's user pool authorizer passes them (all strings)."""
    return {
        "sub": sub, "cognito:username": sub, "email": f"{sub}@example.com", "email_verified": "true",
        "token_use": "id", "iss": USER_POOL, "aud": "4example0client0id0abcdefgh",
        "auth_time": "1792497000", "iat": "1792497000", "exp": "Tue Oct 20 13:10:00 UTC 2026",
        "event_id": "6c4e3f0a-0c9b-4a57-9d0c-8a5b4a4f7e21",
    }


def envelope(name: str, method: str, resource: str, path_parameters: dict[str, str] | None = None,
             query: dict[str, str] | None = None, body: Any = None, auth: str = "iam") -> dict[str, Any]:
    """One proxy event. ``auth`` is ``iam`` (operator), ``cognito`` (end user) or ``none``."""
    path = resource
    digest = hashlib.sha256(name.encode()).hexdigest()
    for key, value in (path_parameters or {}).items():
        path = path.replace("{" + key + "}", quote(value, safe=""))
    headers: dict[str, str] = {
        "Accept": "application/json",
        "Host": HOST,
        "User-Agent": "cdp-tests/1.0",
        "X-Amzn-Trace-Id": f"Root=1-6716f0c0-{digest[:24]}",
        "X-Forwarded-For": "203.0.113.10",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
    }
    if auth == "iam":
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEACCESSKEY/20261020/{REGION}/"
                                    "execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature=0f0f")
        headers["X-Amz-Date"] = "20261020T120000Z"
    elif auth == "cognito":
        headers["Authorization"] = "Bearer eyJraWQiOiJleGFtcGxlIn0.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    if body is not None:
        headers["Content-Type"] = "application/json"
    request_context: dict[str, Any] = {
        "resourceId": "r3s0ur",
        "resourcePath": resource,
        "httpMethod": method,
        "extendedRequestId": f"{name}-ext=",
        "requestTime": "20/Oct/2026:12:00:00 +0000",
        "path": f"/{STAGE}{path}",
        "accountId": ACCOUNT,
        "protocol": "HTTP/1.1",
        "stage": STAGE,
        "domainPrefix": API_ID,
        "requestTimeEpoch": EPOCH_MS,
        "requestId": f"c0ffee00-0000-4000-8000-{digest[:12]}",
        "identity": _identity(auth == "iam"),
        "domainName": HOST,
        "apiId": API_ID,
    }
    if auth == "cognito":
        request_context["authorizer"] = {"claims": _claims(END_USER_SUB)}
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {key: [value] for key, value in headers.items()},
        "queryStringParameters": dict(query) if query else None,
        "multiValueQueryStringParameters": {key: [value] for key, value in query.items()} if query else None,
        "pathParameters": dict(path_parameters) if path_parameters else None,
        "stageVariables": None,
        "requestContext": request_context,
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }


def envelopes() -> dict[str, dict[str, Any]]:
    customer = {"customerId": "alice"}
    segment = {"segmentId": "vip"}
    new_segment = {"segmentId": "big-spenders"}
    return {
        "get-customer": envelope("get-customer", "GET", "/customers/{customerId}", customer),
        "get-customer-segments": envelope("get-customer-segments", "GET", "/customers/{customerId}/segments",
                                          customer),
        "get-me": envelope("get-me", "GET", "/me", auth="cognito"),
        "get-me-unauthenticated": envelope("get-me-unauthenticated", "GET", "/me", auth="none"),
        "list-segments": envelope("list-segments", "GET", "/segments"),
        "get-segment": envelope("get-segment", "GET", "/segments/{segmentId}", segment),
        "list-members": envelope("list-members", "GET", "/segments/{segmentId}/members", segment,
                                 query={"limit": "10"}),
        "edit-members": envelope("edit-members", "POST", "/segments/{segmentId}/members", segment,
                                 body={"add": ["alice", "bob"], "remove": ["carol"]}),
        # The segment lifecycle: a definition saved (a backfill starts), validated, previewed, its versions and
        # history, the backfill's job, a customer's explanation, and the segment deleted.
        "put-segment": envelope("put-segment", "PUT", "/segments/{segmentId}", new_segment,
                                query={"deliver": "audiences"}, body=BIG_SPENDERS),
        "validate-segment": envelope("validate-segment", "POST", "/segments:validate", body=BIG_SPENDERS),
        "preview-segment": preview_envelope(),
        "list-segment-versions": envelope("list-segment-versions", "GET", "/segments/{segmentId}/versions",
                                          new_segment),
        "get-segment-history": envelope("get-segment-history", "GET", "/segments/{segmentId}/history",
                                        new_segment, query={"days": "30"}),
        "get-job": envelope("get-job", "GET", "/jobs/{jobId}", {"jobId": "job-0000000000000000"}),
        "explain-customer": envelope("explain-customer", "GET", "/customers/{customerId}/explain", customer,
                                     query={"segment": "big-spenders"}),
        "delete-segment": envelope("delete-segment", "DELETE", "/segments/{segmentId}", new_segment),
        # Computed traits: the stored models, one of them, and a traits job started on demand.
        "list-models": envelope("list-models", "GET", "/models"),
        "get-model": envelope("get-model", "GET", "/models/{name}", {"name": "clusters"}),
        "start-job": envelope("start-job", "POST", "/jobs", body={"kind": "traits", "options": {}}),
        # Decisions: a placement's content for a customer (operator) and for the signed-in end user, with context.
        "get-customer-decision": envelope("get-customer-decision", "GET", "/customers/{customerId}/decisions",
                                          customer, query={"placement": "home-hero", "page": "/",
                                                           "device": "mobile"}),
        "get-me-decision": envelope("get-me-decision", "GET", "/me/decisions",
                                    query={"placement": "home-hero", "page": "/", "utm_campaign": "spring-sale"},
                                    auth="cognito"),
    }


def preview_envelope() -> dict[str, Any]:
    """``POST /segments/big-spenders:preview``: API Gateway has no resource for a suffix after a path parameter, so
    the request reaches ``/segments/{segmentId}`` with the suffix in the parameter, and the path as sent."""
    found = envelope("preview-segment", "POST", "/segments/{segmentId}", {"segmentId": "big-spenders:preview"},
                     query={"sample": "5"}, body=BIG_SPENDERS)
    found["path"] = "/segments/big-spenders:preview"
    found["requestContext"]["path"] = f"/{STAGE}/segments/big-spenders:preview"
    return found


def write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def main() -> None:
    for name, document in envelopes().items():
        write(HERE / "api" / f"{name}.json", document)


if __name__ == "__main__":
    main()
