"""The HTTP API: profiles, memberships and segment definitions for frontends and operators.

Operator routes are IAM-authorised at API Gateway; ``GET /me`` is behind a Cognito user pool
authorizer and reads only the caller's own profile. Every error is a JSON body with a stable
``code``. ``GET /openapi.json`` serves the generated OpenAPI 3 document.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from functools import cache
from typing import Annotated, Any
from urllib.parse import unquote

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.models import Server
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.api.models import (
    CustomerExport,
    CustomerProfile,
    CustomerSegments,
    DeletionAccepted,
    MemberPage,
    MembershipEdit,
    MembershipEditResult,
    Problem,
    RequestStatus,
    SegmentDefinition,
    SegmentList,
)
from cdp.api.views import (
    export_document,
    holds_email,
    normalised_email,
    profile_document,
    request_document,
    segment_document,
    segments_summary,
)
from cdp.config import ApiConfig, cors_origins
from cdp.core.catalogue import Catalogue, Segment, load_catalogue
from cdp.core.clock import Clock, clock_from_env
from cdp.core.engine import Engine
from cdp.core.identity import customer_digest, identifier_digest, resolve_all
from cdp.core.profile import Profile
from cdp.core.static_segments import InvalidEdit, UnknownSegment, static_edit
from cdp.pipeline.privacy import UnknownCustomer, export_customer, start_deletion
from cdp.pipeline.write import edit_static_segment
from cdp.ports import (
    ConflictError,
    CustomerStores,
    IdentityMap,
    InvalidCursor,
    MemberListing,
    PrivacyJobs,
    PrivacyRequests,
    ProfileLookup,
    TransientError,
)
from cdp.wiring import assemble

logger = Logger(service="cdp-api")
metrics = Metrics(namespace="cdp", service="api")

# The routes take their CORS settings when they are registered, at import: before build() reads the rest.
_origins = cors_origins(os.environ)
app = APIGatewayRestResolver(
    enable_validation=True,
    cors=CORSConfig(allow_origin=_origins[0], extra_origins=list(_origins[1:])) if _origins else None,
)

OPERATOR: list[dict[str, list[str]]] = [{"iam": []}]
END_USER: list[dict[str, list[str]]] = [{"cognito": []}]
ID = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^/]+$")]
SEGMENT_ID = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]
PROBLEMS = {400: "The request is invalid; `field` names what is wrong.", 403: "Not allowed.",
            404: "Not found.", 409: "The profile kept changing while it was being updated; try again.",
            415: "The body is not application/json.",
            503: "A downstream service is throttling; retry after `Retry-After` seconds."}
REQUEST_ID = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


def documented(model: type[Any], description: str, *problems: int) -> dict[int, Any]:
    """The responses a route documents: its success model and the problems it can answer."""
    responses: dict[int, Any] = {200: {"description": description, "content": {"application/json": {"model": model}}}}
    for code in sorted({400, 404, *problems, 503}):
        responses[code] = {"description": PROBLEMS[code], "content": {"application/json": {"model": Problem}}}
    return responses


class NotFound(Exception):
    pass


class Forbidden(Exception):
    pass


class NoLookup(Exception):
    """GET /customers without a lookup: it answers as it did before lookups existed (no route)."""


class Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Dependencies:
    catalogue: Catalogue
    profiles: ProfileLookup
    members: MemberListing
    clock: Clock
    me_claim: str
    identity_map: IdentityMap | None = None  # merged ids and email addresses -> their canonical customer
    # Data subject requests (None: not configured, the routes answer 503)
    requests: PrivacyRequests | None = None
    jobs: PrivacyJobs | None = None
    stores: CustomerStores | None = None
    request_days: int = 365
    # What static-segment edits evaluate with: the deployment's consent policy and profile retention
    engine: Engine | None = None


_dependencies: Dependencies | None = None


def configure(dependencies: Dependencies) -> None:
    """Use these dependencies (tests and the local stack)."""
    global _dependencies
    _dependencies = dependencies


@cache
def dependencies() -> Dependencies:
    """Built on the first request (cold start), not at import."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment; a part given by name is used instead and never built
    (the local stack gives its shared clock: ``configure(build(clock=...))``)."""
    import boto3

    from cdp.aws.dynamo import DynamoProfileStore
    from cdp.aws.erasure import DynamoCustomerStores, SqsPrivacyJobs
    from cdp.aws.identity_map import DynamoIdentityMap, bind_identity_map
    from cdp.aws.members import DynamoMembersIndex
    from cdp.aws.pseudonyms import pseudonyms_from_env
    from cdp.aws.requests import DynamoPrivacyRequests, bind_requests

    config = ApiConfig.from_env(os.environ)
    pseudonyms = pseudonyms_from_env(os.environ)  # the members index's and ledger's ids: read at cold start
    client = boto3.client("dynamodb")
    region = os.environ.get("AWS_REGION")
    privacy = bool(config.requests_table and config.privacy_queue_url)
    return assemble(
        Dependencies, overrides,
        catalogue=lambda: load_catalogue(config.catalogue_path),
        profiles=lambda: DynamoProfileStore(client, config.profiles_table),
        members=lambda: DynamoMembersIndex(client, config.members_table, config.member_shards,
                                           pseudonyms=pseudonyms),
        clock=lambda: clock_from_env(config.clock),
        me_claim=lambda: config.me_claim,
        identity_map=lambda: DynamoIdentityMap(bind_identity_map(config.identity_table, region)),
        requests=lambda: DynamoPrivacyRequests(bind_requests(config.requests_table, region)) if privacy else None,
        jobs=lambda: SqsPrivacyJobs(boto3.client("sqs"), config.privacy_queue_url) if privacy else None,
        # The export reads the ledger only (deletion's erasing is the privacy function's): no bucket here.
        stores=lambda: DynamoCustomerStores(client, None, profiles_table=config.profiles_table,
                                            members_table=config.members_table, ledger_table=config.ledger_table,
                                            quarantine_bucket="", pseudonyms=pseudonyms) if privacy else None,
        request_days=lambda: config.request_days,
        engine=lambda: Engine(load_catalogue(config.catalogue_path), consent_policy=config.consent_policy,
                              retention_days=config.retention_days),
    )


def deps() -> Dependencies:
    return _dependencies or dependencies()


def _problem(status: int, code: str, message: str, field: str | None = None,
             headers: dict[str, str] | None = None) -> Response[str]:
    body = Problem(code=code, message=message, field=field).model_dump_json()
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers)


@app.exception_handler(RequestValidationError)
def _invalid_request(error: RequestValidationError) -> Response[str]:
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":
        return _problem(400, "invalid_request", "body: is not valid JSON", "body")
    location = [str(part) for part in first.get("loc", ()) if part not in ("path", "query", "body")]
    field = ".".join(location) or None
    return _problem(400, "invalid_request", f"{field or 'request'}: {first.get('msg', 'is invalid')}", field)


@app.exception_handler(RequestUnsupportedContentType)
def _unsupported_media_type(error: RequestUnsupportedContentType) -> Response[str]:
    return _problem(415, "unsupported_media_type", "the body must be application/json", "Content-Type")


@app.exception_handler([Invalid, InvalidEdit])
def _invalid(error: Invalid | InvalidEdit) -> Response[str]:
    return _problem(400, "invalid_request", str(error), error.field)


@app.exception_handler([NotFound, UnknownSegment, UnknownCustomer])
def _not_found(error: NotFound | UnknownSegment | UnknownCustomer) -> Response[str]:
    return _problem(404, "not_found", str(error.args[0] if error.args else error))


class NotConfigured(Exception):
    """A data subject route of a deployment without REQUESTS_TABLE and PRIVACY_QUEUE_URL: it has no such route."""


@app.exception_handler(NotConfigured)
def _not_configured(_: NotConfigured) -> Response[str]:
    return _no_route_problem()


@app.exception_handler(Forbidden)
def _forbidden(error: Forbidden) -> Response[str]:
    return _problem(403, "forbidden", str(error))


@app.exception_handler(ConflictError)
def _conflict(error: ConflictError) -> Response[str]:
    return _problem(409, "conflict", "the profile kept changing while it was being updated; try again")


@app.exception_handler(TransientError)
def _throttled(error: TransientError) -> Response[str]:
    return _problem(503, "unavailable", f"a downstream service is busy ({error}); try again", headers={
        "Retry-After": "1"})


def _no_route_problem() -> Response[str]:
    # The path is not repeated back: it can hold a customer id. The routes are in /openapi.json.
    return _problem(404, "no_route", f"no {app.current_event.http_method} route matches this path (see /openapi.json)")


@app.not_found
def _no_route(_: Exception) -> Response[str]:
    return _no_route_problem()


@app.exception_handler(NoLookup)
def _no_lookup(_: NoLookup) -> Response[str]:
    return _no_route_problem()


NOT_FOUND = "customerId: no profile has this customer id"  # the id is not repeated back
FOLLOW_LIMIT = 4  # frozen profiles followed at most: the map resolves chains itself, this only covers its lag


def _profile(customer_id: str) -> Profile:
    profile = deps().profiles.get(customer_id)
    if profile is None:
        raise NotFound(NOT_FOUND)
    return profile


def _canonical(customer_id: str) -> str:
    """The customer an id now belongs to, through the id map (one batched read; more only for a chain).
    Without a map every id is its own customer."""
    id_map = deps().identity_map
    return customer_id if id_map is None else resolve_all({customer_id}, id_map.links)[customer_id]


def _live_profile(canonical: str, not_found: str) -> Profile:
    """The live profile of a resolved customer. A frozen one (merged away, which the map may not show yet) is
    never answered: its ``merged_into`` leads on, through the map again."""
    current, seen = canonical, set()
    for _ in range(FOLLOW_LIMIT):
        profile = deps().profiles.get(current)
        if profile is None:
            break
        if profile.merged_into is None:
            return profile
        seen.add(current)
        current = _canonical(profile.merged_into)
        if current in seen:
            break
    raise NotFound(not_found)


def _customer_document(profile: Profile, requested_id: str | None = None) -> CustomerProfile:
    d = deps()
    return CustomerProfile.model_validate(profile_document(profile, d.catalogue, d.clock.now(), requested_id))


@app.get("/customers/<customerId>", summary="A customer's profile, memberships and score, by any id merged into it",
         responses=documented(CustomerProfile, "The canonical customer's profile", 404), security=OPERATOR,
         tags=["customers"])
def get_customer(customerId: ID) -> CustomerProfile:
    requested = unquote(customerId)  # API Gateway passes the path as sent, percent-encoded
    return _customer_document(_live_profile(_canonical(requested), NOT_FOUND), requested)


EMAIL = Annotated[str | None, Query(min_length=1, max_length=320, description="An email address (any case).")]
ANONYMOUS_ID = Annotated[str | None, Query(min_length=1, max_length=256,
                                           description="An anonymous id, merged into its customer or not.")]


@app.get("/customers", summary="The profile of the customer an email address or anonymous id belongs to",
         description="Give exactly one of `email` and `anonymous_id`. The answer is the canonical customer's "
                     "profile, as `GET /customers/{customerId}` gives it.",
         responses=documented(CustomerProfile, "The canonical customer's profile", 404), security=OPERATOR,
         tags=["customers"])
def find_customer(email: EMAIL = None, anonymous_id: ANONYMOUS_ID = None) -> CustomerProfile:
    if not app.current_event.query_string_parameters:
        raise NoLookup()  # there is no customer listing
    # Never repeat the address or id back: errors name the parameter only.
    if email is not None and anonymous_id is not None:
        raise Invalid("anonymous_id", "anonymous_id: give email or anonymous_id, not both")
    if anonymous_id is not None:
        return _customer_document(_live_profile(_canonical(anonymous_id),
                                                "anonymous_id: no profile has this anonymous id"), anonymous_id)
    if email is None:
        raise Invalid("email", "email: give email or anonymous_id (exactly one is required)")
    if not normalised_email(email):
        raise Invalid("email", "email: is blank")
    return _customer_document(_by_email(email, "email: no profile has this email address"))


def _by_email(email: str, not_found: str) -> Profile:
    """The customer the email index names, if their profile holds the address now (the index is written just
    before the profile, and an address can move on)."""
    id_map = deps().identity_map
    digest = identifier_digest("email", email)
    indexed = id_map.links([digest]).get(digest) if id_map is not None else None
    if indexed is None:
        raise NotFound(not_found)
    profile = _live_profile(_canonical(indexed), not_found)
    if not holds_email(profile, email):
        raise NotFound(not_found)
    return profile


@app.get("/customers/<customerId>/segments", summary="A customer's segments, primary segment and score",
         responses=documented(CustomerSegments, "The canonical customer's segments", 404), security=OPERATOR,
         tags=["customers"])
def get_customer_segments(customerId: ID) -> CustomerSegments:
    requested = unquote(customerId)
    profile = _live_profile(_canonical(requested), NOT_FOUND)
    return CustomerSegments.model_validate({"customer_id": profile.customer_id,
                                            "requested_id": requested if requested != profile.customer_id else None,
                                            **segments_summary(profile, deps().catalogue)})


@app.get("/me", summary="The signed-in end user's own profile",
         responses=documented(CustomerProfile, "The caller's own profile", 403, 404), security=END_USER,
         tags=["customers"])
def get_me() -> CustomerProfile:
    d = deps()
    authorizer: dict[str, Any] = dict(app.current_event.request_context.authorizer or {})
    claims = authorizer.get("claims")
    customer_id = claims.get(d.me_claim) if isinstance(claims, dict) else None
    if not customer_id:
        raise Forbidden("a verified identity token is required")
    profile = _profile(str(customer_id))
    if profile.merged_into is not None:
        # Merged into another customer: that profile is not the caller's to read, and this one is no longer live.
        raise NotFound("this customer's profile was merged into another customer")
    return _customer_document(profile)


@app.get("/segments", summary="Every enabled segment's definition",
         responses=documented(SegmentList, "The enabled segments, highest priority first"), security=OPERATOR,
         tags=["segments"])
def list_segments() -> SegmentList:
    segments = sorted(deps().catalogue.segments.values(), key=lambda s: s.rank())
    return SegmentList(segments=[SegmentDefinition.model_validate(segment_document(s)) for s in segments])


def _segment(segment_id: str) -> Segment:
    segment = deps().catalogue.segments.get(segment_id)
    if segment is None:
        raise NotFound("segmentId: no enabled segment has this id")
    return segment


@app.get("/segments/<segmentId>", summary="A segment's definition and current size",
         responses=documented(SegmentDefinition, "The definition and size", 404),
         security=OPERATOR, tags=["segments"])
def get_segment(segmentId: SEGMENT_ID) -> SegmentDefinition:
    segment = _segment(segmentId)
    return SegmentDefinition.model_validate(segment_document(segment, deps().members.size(segment.id)))


@app.get("/segments/<segmentId>/members", summary="A page of a segment's members",
         responses=documented(MemberPage, "A page of members", 404),
         security=OPERATOR, tags=["segments"])
def list_members(segmentId: SEGMENT_ID,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 cursor: Annotated[str | None, Query(max_length=512)] = None) -> MemberPage:
    segment = _segment(segmentId)
    try:
        members, next_cursor = deps().members.page(segment.id, limit, cursor)
    except InvalidCursor as error:
        raise Invalid("cursor", str(error)) from None
    return MemberPage.model_validate({"segment_id": segment.id, "members": members, "next_cursor": next_cursor})


@app.post("/segments/<segmentId>/members", summary="Add or remove customers of a static segment",
          responses=documented(MembershipEditResult, "What changed", 404, 409, 415), security=OPERATOR,
          tags=["segments"])
def edit_members(segmentId: SEGMENT_ID,
                 edit: Annotated[MembershipEdit, Body()]) -> MembershipEditResult:
    d = deps()
    # Merged ids are edited as the customer they belong to (one batched read of the map for all of them).
    asked = {*edit.add, *edit.remove}
    roots = resolve_all(asked, d.identity_map.links) if d.identity_map is not None and asked else {}
    add = list(dict.fromkeys(roots.get(c, c) for c in edit.add))
    remove = list(dict.fromkeys(roots.get(c, c) for c in edit.remove))
    checked = static_edit(d.catalogue, segmentId, add, remove)
    # A deleted customer (a tombstone in the id map) is never re-created by an edit: reported unchanged.
    deleted = _deleted(d.identity_map, add)
    if deleted:
        checked = replace(checked, members={c: m for c, m in checked.members.items() if c not in deleted})
    done = edit_static_segment(d.profiles, d.engine or Engine(d.catalogue), checked, d.clock.now)
    return MembershipEditResult(segment_id=checked.segment_id, added=done.added, removed=done.removed,
                                unchanged=[*done.unchanged, *(c for c in add if c in deleted)])


def _deleted(id_map: IdentityMap | None, customer_ids: list[str]) -> set[str]:
    """The customers among these whose id carries a tombstone (one batched read)."""
    if id_map is None or not customer_ids:
        return set()
    digests = {customer_digest(c): c for c in customer_ids}
    return {digests[d] for d in id_map.read(list(digests)).tombstones}


def _privacy() -> tuple[PrivacyRequests, PrivacyJobs, CustomerStores]:
    d = deps()
    if d.requests is None or d.jobs is None or d.stores is None:
        raise NotConfigured("data subject requests are not configured (REQUESTS_TABLE, PRIVACY_QUEUE_URL)")
    return d.requests, d.jobs, d.stores


DELETION_RESPONSES: dict[int, Any] = {
    202: {"description": "The request was recorded and its job queued",
          "content": {"application/json": {"model": DeletionAccepted}}},
    **{code: value for code, value in documented(DeletionAccepted, "", 404).items() if code != 200}}


@app.delete("/customers/<customerId>", summary="Delete a customer everywhere their data is held",
            description="Starts a deletion that reaches the profile, every id of the identity map, the members "
                        "index, the delivery ledger, the destinations' audiences and lists (a remove is sent) and "
                        "the quarantine. Follow it at `status_url`.",
            responses=DELETION_RESPONSES, security=OPERATOR, tags=["privacy"])
def delete_customer(customerId: ID) -> Response[str]:
    requests, jobs, _ = _privacy()
    d = deps()
    request = start_deletion(d.identity_map, d.profiles, requests, jobs, unquote(customerId), d.clock.now(),
                             d.request_days)
    body = DeletionAccepted(request_id=request.request_id, status=request.status,
                            status_url=f"/requests/{request.request_id}")
    return Response(status_code=202, content_type=content_types.APPLICATION_JSON, body=body.model_dump_json())


@app.get("/requests/<requestId>", summary="A data subject request: its status, per-store counts or failure reason",
         responses=documented(RequestStatus, "The request and its audit record", 404), security=OPERATOR,
         tags=["privacy"])
def get_request(requestId: REQUEST_ID) -> RequestStatus:
    requests, _, _ = _privacy()
    request = requests.get(requestId)
    if request is None:
        raise NotFound("requestId: no request has this id")
    return RequestStatus.model_validate(request_document(request))


@app.get("/customers/<customerId>/export", summary="Everything held about a customer",
         description="The profile, the memberships with since-times, the consent history, the deliveries made "
                     "and the ids. Assembled on request and recorded as an export request (audit).",
         responses=documented(CustomerExport, "The customer's data", 404), security=OPERATOR, tags=["privacy"])
def get_customer_export(customerId: ID) -> CustomerExport:
    requests, _, stores = _privacy()
    d = deps()
    now = d.clock.now()
    export = export_customer(d.identity_map, d.profiles, stores, requests, unquote(customerId), now, d.request_days)
    return CustomerExport.model_validate(export_document(export, d.catalogue, now))


@app.get("/openapi.json", include_in_schema=False)
def openapi() -> Response[str]:
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=openapi_document())


def openapi_document() -> str:
    schema = app.get_openapi_json_schema(
        title="cdp API", version="1", servers=[Server(url="/")],
        description="Profiles, segment memberships and segment definitions. Operator routes use IAM "
                    "(SigV4); /me uses a Cognito user pool token.",
        security_schemes={
            "iam": {"type": "apiKey", "name": "Authorization", "in": "header",
                    "description": "AWS Signature Version 4"},  # type: ignore[dict-item]
            "cognito": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},  # type: ignore[dict-item]
        })
    document = json.loads(schema)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)  # validation problems are answered as 400
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        schemas.pop(unused, None)
    return json.dumps(document, separators=(",", ":"))


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId")
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
