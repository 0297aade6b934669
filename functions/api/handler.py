"""The HTTP API: profiles, memberships, placement decisions and segment definitions for frontends and operators; for
operators also the computed traits' models (``GET /models``) and jobs (``POST /jobs``, ``GET /jobs/{jobId}``).

Operator routes are IAM-authorised at API Gateway; ``GET /me`` is behind a Cognito user pool
authorizer and reads only the caller's own profile. Every error is a JSON body with a stable
``code``. ``GET /openapi.json`` serves the generated OpenAPI 3 document.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache, cached_property
from typing import TYPE_CHECKING, Annotated, Any, Protocol
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
    CustomerExplanation,
    CustomerExport,
    CustomerProfile,
    CustomerSegments,
    DecisionDocument,
    DefinitionIssue,
    DefinitionProblem,
    DeletionAccepted,
    JobDocument,
    JobRequest,
    MemberPage,
    MembershipEdit,
    MembershipEditResult,
    ModelDocument,
    ModelList,
    PreviewResult,
    Problem,
    RequestStatus,
    SegmentDefinition,
    SegmentDeleted,
    SegmentExplanation,
    SegmentHistory,
    SegmentList,
    SegmentSaved,
    SegmentVersions,
    ValidationResult,
)
from cdp.api.views import (
    definition_issues,
    export_document,
    history_days,
    holds_email,
    model_document,
    model_documents,
    normalised_email,
    profile_document,
    request_document,
    segment_document,
    segments_summary,
    version_document,
)
from cdp.config import ApiConfig, cors_origins
from cdp.core.catalogue import Catalogue, Segment, load_catalogue
from cdp.core.clock import Clock, clock_from_env
from cdp.core.engine import Engine
from cdp.core.identity import customer_digest, identifier_digest, resolve_all
from cdp.core.placements import PlacementBook
from cdp.core.profile import Profile
from cdp.core.static_segments import InvalidEdit, UnknownSegment, static_edit
from cdp.pipeline.privacy import UnknownCustomer, export_customer, start_deletion
from cdp.pipeline.write import edit_static_segment
from cdp.ports import (
    CatalogueHead,
    ConflictError,
    CustomerStores,
    DefinitionStore,
    IdentityMap,
    InvalidCursor,
    MemberListing,
    PrivacyJobs,
    PrivacyRequests,
    ProfileLookup,
    SegmentChange,
    SegmentVersion,
    TransientError,
)
from cdp.wiring import assemble

if TYPE_CHECKING:
    from cdp.core.language import DefinitionError
    from cdp.pipeline.jobs import Job, JobRunner, JobStore, ProfileScan
    from cdp.pipeline.live_catalogue import LiveCatalogue

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
            501: "The deployment has no such capability configured (the message names what is missing).",
            503: "A downstream service is throttling; retry after `Retry-After` seconds."}
DEFINITION_PROBLEM = {"description": "The definition is invalid: every problem, with its path and rule (as `cdp "
                                     "segments validate` reports them).",
                      "content": {"application/json": {"model": DefinitionProblem}}}
REQUEST_ID = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


def documented(model: type[Any], description: str, *problems: int) -> dict[int, Any]:
    """The responses a route documents: its success model and the problems it can answer."""
    responses: dict[int, Any] = {200: {"description": description, "content": {"application/json": {"model": model}}}}
    for code in sorted({400, 404, *problems, 503}):
        if code == 422:
            responses[code] = DEFINITION_PROBLEM
        else:
            responses[code] = {"description": PROBLEMS[code], "content": {"application/json": {"model": Problem}}}
    return responses


def accepted(model: type[Any], description: str, *problems: int) -> dict[int, Any]:
    """The responses of a route that accepts work to do later: 202 with its model, and the problems."""
    responses = documented(model, description, *problems)
    responses[202] = responses.pop(200)
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
    # Segment definitions at runtime (None: not configured; the routes that need them answer 501)
    definitions: DefinitionStore | None = None  # writes: PUT/DELETE /segments/{segmentId}, versions
    catalogue_source: LiveCatalogue | None = None  # what ``catalogue`` and ``engine`` follow, checked per request
    job_store: JobStore | None = None
    runner: JobRunner | None = None
    scan: ProfileScan | None = None  # previews scan the profiles
    history: SegmentHistoryReader | None = None
    placements: PlacementBook | None = None  # the placements/ definitions (None: no decisions route has any)


class SegmentHistoryReader(Protocol):
    def days(self, segment_id: str, since: str) -> list[dict[str, Any]]: ...


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
    lifecycle = _Lifecycle(client, config, dict(overrides))
    return assemble(
        Dependencies, overrides,
        catalogue=lifecycle.catalogue,
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
        engine=lambda: Engine(lifecycle.catalogue(), consent_policy=config.consent_policy,
                              retention_days=config.retention_days),
        definitions=lifecycle.definitions,
        catalogue_source=lambda: lifecycle.live,
        job_store=lambda: lifecycle.jobs[0],
        runner=lambda: lifecycle.jobs[1],
        scan=lifecycle.scan,
        history=lifecycle.history,
        placements=lambda: placement_book(os.environ),
    )


def placement_book(env: Mapping[str, str]) -> PlacementBook:
    """The placement definitions ``PLACEMENTS_PATH`` names (default ``/opt/placements``, the placements layer),
    read at cold start. A path given that is not a folder of definitions is refused; the default one missing is a
    deployment with no placements."""
    from pathlib import Path

    from cdp.config import ConfigError
    from cdp.core.catalogue import CatalogueError, read_definitions

    given = env.get("PLACEMENTS_PATH", "").strip()
    path = Path(given or "/opt/placements")
    if not path.is_dir():
        if given:
            raise ConfigError(f"PLACEMENTS_PATH {given!r} is not a folder of placement definitions")
        return PlacementBook([])
    try:
        return PlacementBook(read_definitions(path))
    except CatalogueError as error:
        raise ConfigError(f"PLACEMENTS_PATH {given or str(path)!r}: {error}") from None


class _Lifecycle:
    """The parts of segment lifecycle, each built once and only when asked for (an override is never built)."""

    def __init__(self, client: Any, config: ApiConfig, overrides: dict[str, Any]) -> None:
        self.client, self.config, self.overrides = client, config, overrides

    @cached_property
    def live(self) -> LiveCatalogue | None:
        if "catalogue_source" in self.overrides:
            given: LiveCatalogue | None = self.overrides["catalogue_source"]
            return given
        from cdp.aws.definitions import live_catalogue

        return live_catalogue(os.environ, lambda: load_catalogue(self.config.catalogue_path))

    def catalogue(self) -> Catalogue:
        return self.live.catalogue if self.live is not None else load_catalogue(self.config.catalogue_path)

    def definitions(self) -> DefinitionStore | None:
        from cdp.aws.definitions import definition_store

        # Strongly consistent head: a save validates against the head it commits on.
        return definition_store(os.environ, consistent_head=True)

    @cached_property
    def jobs(self) -> tuple[JobStore | None, JobRunner | None]:
        from cdp.aws.jobs import jobs_from_env

        found = jobs_from_env(os.environ)
        return found if found is not None else (None, None)

    def scan(self) -> ProfileScan | None:
        from cdp.aws.jobs import DynamoProfileScan

        return DynamoProfileScan(self.client, self.config.profiles_table)

    def history(self) -> SegmentHistoryReader | None:
        from cdp.aws.history import segment_history

        return segment_history(os.environ)


def deps() -> Dependencies:
    return _dependencies or dependencies()


def _follow_catalogue(resolver: APIGatewayRestResolver, next_middleware: Any) -> Any:
    """Before each request: the catalogue and engine follow the definitions store (one small read at most every
    ``CATALOGUE_CHECK_SECONDS``)."""
    _refresh()
    return next_middleware(resolver)


def _refresh(*, force: bool = False) -> Dependencies:
    """The dependencies, with the live catalogue's current catalogue in ``catalogue`` (and given to the engine)."""
    d = deps()
    source = d.catalogue_source
    if source is None:
        return d
    if d.engine is not None:
        source.update(d.engine, force=force)
    else:
        source.refresh(force=force)
    if source.catalogue is not d.catalogue:
        d = replace(d, catalogue=source.catalogue)
        configure(d)
    return d


app.use(middlewares=[_follow_catalogue])


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


EXPLAIN_SEGMENT = Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$",
                                               description="A segment id; without it, every segment's verdict.")]


@app.get("/customers/<customerId>/explain", summary="Why a customer is, or is not, in a segment",
         description="With `segment`: the condition tree as the engine evaluates it now, with at each node the "
                     "profile's value, the threshold, true or false, and for time conditions when it next changes. "
                     "Without it: every enabled segment's verdict (`holds`, `member`, `entered_by`).",
         responses=documented(SegmentExplanation | CustomerExplanation,  # type: ignore[arg-type]
                              "The segment's explanation (`segment` given), or every segment's verdict", 404),
         security=OPERATOR, tags=["customers"])
def explain_customer(customerId: ID, segment: EXPLAIN_SEGMENT = None) -> Response[str]:
    from cdp.core.explain import explain_segment

    d = deps()
    requested = unquote(customerId)
    profile = _live_profile(_canonical(requested), NOT_FOUND)
    stats = d.catalogue_source.stats if d.catalogue_source is not None else None
    refusal = d.engine.profiling_refusal(profile) if d.engine is not None else None
    now = d.clock.now()
    who = {"customer_id": profile.customer_id}
    if requested != profile.customer_id:
        who["requested_id"] = requested
    body: SegmentExplanation | CustomerExplanation
    if segment is not None:
        body = SegmentExplanation.model_validate(
            {**who, **explain_segment(d.catalogue, segment, profile, now, stats, refusal)})
    else:
        verdicts = [explain_segment(d.catalogue, s.id, profile, now, stats, refusal)
                    for s in sorted(d.catalogue.segments.values(), key=lambda s: s.rank())]
        body = CustomerExplanation.model_validate({**who, "segments": [
            {key: v.get(key) for key in ("segment", "name", "holds", "member", "since", "entered_by", "note")}
            for v in verdicts]})
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON,
                    body=body.model_dump_json())


@app.get("/me", summary="The signed-in end user's own profile",
         responses=documented(CustomerProfile, "The caller's own profile", 403, 404), security=END_USER,
         tags=["customers"])
def get_me() -> CustomerProfile:
    profile = _profile(_caller())
    if profile.merged_into is not None:
        # Merged into another customer: that profile is not the caller's to read, and this one is no longer live.
        raise NotFound("this customer's profile was merged into another customer")
    return _customer_document(profile)


def _caller() -> str:
    """The signed-in end user's customer id, from the claim the Cognito authorizer verified."""
    authorizer: dict[str, Any] = dict(app.current_event.request_context.authorizer or {})
    claims = authorizer.get("claims")
    customer_id = claims.get(deps().me_claim) if isinstance(claims, dict) else None
    if not customer_id:
        raise Forbidden("a verified identity token is required")
    return str(customer_id)


# ---- decisions: the content a placement serves a customer, from one profile read -------------------------------

PLACEMENT = Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$",
                                 description="A placement id (a placements/*.yaml file's `id`).")]
PAGE = Annotated[str | None, Query(min_length=1, max_length=2048, description="The page, e.g. `/` or `/shoes/red`.")]
DEVICE = Annotated[str | None, Query(min_length=1, max_length=64, description="The device, e.g. `mobile`.")]
UTM = Annotated[str | None, Query(min_length=1, max_length=256, description="The UTM parameter of the visit.")]
DECISION_DESCRIPTION = (
    "The placement's rules are matched in order against the profile (one read) and the request context (`page`, "
    "`device`, `utm_campaign`, `utm_source`, `utm_medium`). When several match, the rule naming the customer's "
    "primary segment wins (then the segments' overlap order), else the first; with none, the placement's default. "
    "`reason` says which rule won and why, and `matched` lists every rule that matched. An id no profile has is a "
    "new visitor: `known` is false and the rules are evaluated on an empty profile (so only context rules can "
    "match).")


def _decision(placement: str, profile: Profile, known: bool, context: dict[str, str],
              requested_id: str | None = None) -> DecisionDocument:
    from cdp.core.placements import decide, fallback
    from cdp.core.profile import ProfileView

    d = deps()
    book = d.placements or PlacementBook([])
    found = book.get(placement, d.catalogue)
    if found is None:
        raise NotFound(f"placement: no placement has the id {placement!r} (placements: "
                       f"{', '.join(book.ids()) or 'none'})")
    if isinstance(found, Exception):
        logger.warning("placement invalid against the catalogue", extra={"placement": placement,
                                                                         "problem": str(found)})
        decision = fallback(placement, book, found)
    else:
        stats = d.catalogue_source.stats if d.catalogue_source is not None else None
        decision = decide(found, ProfileView(profile, d.clock.now(), stats), context)
    return DecisionDocument.model_validate({
        "placement": decision.placement, "customer_id": profile.customer_id or None,
        "requested_id": requested_id if requested_id not in (None, profile.customer_id) else None, "known": known,
        "content": {"id": decision.content.id, "payload": dict(decision.content.payload)},
        "rule": decision.rule, "reason": decision.reason, "matched": list(decision.matched), "context": context})


def _request_context(page: str | None, device: str | None, utm_campaign: str | None, utm_source: str | None,
                     utm_medium: str | None) -> dict[str, str]:
    given = {"page": page, "device": device, "utm_campaign": utm_campaign, "utm_source": utm_source,
             "utm_medium": utm_medium}
    return {key: value for key, value in given.items() if value is not None}


@app.get("/customers/<customerId>/decisions", summary="The content a placement serves a customer, and why",
         description=DECISION_DESCRIPTION + " Merged ids resolve to their customer as `GET /customers/{customerId}` "
                                            "does.",
         responses=documented(DecisionDocument, "The decision", 404), security=OPERATOR, tags=["decisions"])
def get_customer_decision(customerId: ID, placement: PLACEMENT, page: PAGE = None, device: DEVICE = None,
                          utm_campaign: UTM = None, utm_source: UTM = None,
                          utm_medium: UTM = None) -> DecisionDocument:
    requested = unquote(customerId)
    canonical = _canonical(requested)
    context = _request_context(page, device, utm_campaign, utm_source, utm_medium)
    try:
        profile, known = _live_profile(canonical, NOT_FOUND), True
    except NotFound:
        profile, known = Profile(canonical), False  # a new visitor
    return _decision(placement, profile, known, context, requested)


@app.get("/me/decisions", summary="The content a placement serves the signed-in end user, and why",
         description=DECISION_DESCRIPTION + " A caller with no profile yet, or whose profile was merged into "
                                            "another customer's, is a new visitor (`customer_id` null).",
         responses=documented(DecisionDocument, "The decision", 403, 404), security=END_USER, tags=["decisions"])
def get_my_decision(placement: PLACEMENT, page: PAGE = None, device: DEVICE = None, utm_campaign: UTM = None,
                    utm_source: UTM = None, utm_medium: UTM = None) -> DecisionDocument:
    caller = _caller()
    context = _request_context(page, device, utm_campaign, utm_source, utm_medium)
    profile = deps().profiles.get(caller)
    if profile is None or profile.merged_into is not None:
        # Another customer's profile is not the caller's to be decided on: served as anyone new would be.
        return _decision(placement, Profile(""), False, context)
    return _decision(placement, profile, True, context)


@app.get("/segments", summary="Every segment's definition and stored version",
         description="The enabled segments, highest priority first; with `disabled=true` the disabled ones too.",
         responses=documented(SegmentList, "The segments, highest priority first"), security=OPERATOR,
         tags=["segments"])
def list_segments(disabled: Annotated[bool, Query(description="Include disabled segments.")] = False) -> SegmentList:
    d = deps()
    catalogue = d.catalogue
    versions = _stored_versions(d)
    chosen = catalogue.all_segments if disabled else catalogue.segments
    segments = sorted(chosen.values(), key=lambda s: s.rank())
    return SegmentList(segments=[SegmentDefinition.model_validate(
        segment_document(s, version=versions.get(s.id))) for s in segments])


def _stored_versions(d: Dependencies) -> dict[str, int]:
    """Each stored segment's current version, as the head in hand names it (no read)."""
    head = d.catalogue_source.state.head if d.catalogue_source is not None else None
    return dict(head.segments) if head is not None else {}


def _segment(segment_id: str) -> Segment:
    segment = deps().catalogue.segments.get(segment_id)
    if segment is None:
        raise NotFound("segmentId: no enabled segment has this id")
    return segment


@app.get("/segments/<segmentId>", summary="A segment's definition, stored version and current size",
         responses=documented(SegmentDefinition, "The definition and size", 404),
         security=OPERATOR, tags=["segments"])
def get_segment(segmentId: SEGMENT_ID) -> SegmentDefinition:
    d = deps()
    segment = d.catalogue.all_segments.get(segmentId)
    if segment is None:
        raise NotFound("segmentId: no segment has this id")
    stored = _current_version(d, segment.id)
    return SegmentDefinition.model_validate(segment_document(
        segment, d.members.size(segment.id) if segment.enabled else 0, version=stored.version if stored else None,
        author=stored.author if stored else None, at=stored.at if stored else None))


def _current_version(d: Dependencies, segment_id: str) -> SegmentVersion | None:
    """The stored version the head in hand names (one read), or None for a segment of the YAML folder."""
    head = d.catalogue_source.state.head if d.catalogue_source is not None else None
    store = d.definitions or (d.catalogue_source.store if d.catalogue_source is not None else None)
    if head is None or store is None or segment_id not in head.segments:
        return None
    found = store.current(CatalogueHead(head.version, {segment_id: head.segments[segment_id]}))
    return found[0] if found else None


# ---- segment lifecycle: definitions saved at runtime, validated, previewed, backfilled -------------------------

DELIVER_MODES = ("none", "audiences", "all")
DELIVER = Annotated[str, Query(pattern=r"^(none|audiences|all)$", description=(
    "Where the backfill's entries and exits go: `audiences` (the default: ad audiences and list syncs, never "
    "email, so no one gets a message because a segment was saved), `all` (email too) or `none` (only the "
    "profiles and the members index)."))]
BACKFILL = Annotated[bool, Query(description="Start a backfill that evaluates every profile (default true).")]
DEFINITION = Annotated[dict[str, Any], Body(description="A segment definition, as in a segments/*.yaml file "
                                                        "(as JSON).")]
SAVE_RESPONSES: dict[int, Any] = {
    **documented(SegmentSaved, "The segment's new version (an edit of an existing segment)", 409, 415, 422, 501),
    201: {"description": "The segment's first version", "content": {"application/json": {"model": SegmentSaved}}}}


class DefinitionInvalid(Exception):
    """A definition that cannot be saved: 422 with every problem."""

    def __init__(self, errors: list[DefinitionError]) -> None:
        super().__init__(errors[0].render() if errors else "the definition is invalid")
        self.errors = errors


class Unavailable(Exception):
    """A capability the deployment did not configure (501): the message names the missing variables."""


@app.exception_handler(DefinitionInvalid)
def _definition_invalid(error: DefinitionInvalid) -> Response[str]:
    issues = definition_issues(error.errors)
    first = issues[0] if issues else None
    count = len(issues)
    message = (f"{first['path'] or 'definition'}: {first['message']}" if count == 1 and first
               else f"the definition has {count} problems (see errors)")
    body = DefinitionProblem(code="invalid_definition", message=message, field=first["path"] or None if first else None,
                             errors=[DefinitionIssue.model_validate(issue) for issue in issues])
    return Response(status_code=422, content_type=content_types.APPLICATION_JSON, body=body.model_dump_json())


class CatalogueBusy(Exception):
    """Other saves kept committing first (after every retry)."""


@app.exception_handler(CatalogueBusy)
def _catalogue_busy(_: CatalogueBusy) -> Response[str]:
    return _problem(409, "conflict", "other changes to the catalogue kept committing first; try again")


@app.exception_handler(Unavailable)
def _unavailable(error: Unavailable) -> Response[str]:
    return _problem(501, "not_configured", str(error))


def _store(d: Dependencies) -> DefinitionStore:
    if d.definitions is None:
        raise Unavailable("segment definitions are not stored in this deployment (DEFINITIONS_TABLE is not set)")
    return d.definitions


def _jobs(d: Dependencies, hint: str = "; pass backfill=false to save without one") -> tuple[JobStore, JobRunner]:
    if d.job_store is None or d.runner is None:
        raise Unavailable(f"jobs are not configured in this deployment (JOBS_TABLE, JOBS_STATE_MACHINE_ARN){hint}")
    return d.job_store, d.runner


def _author() -> str:
    """The caller's IAM principal (API Gateway's IAM authorisation put it there), or ``local``."""
    identity = (app.current_event.raw_event.get("requestContext") or {}).get("identity") or {}
    return str(identity.get("userArn") or identity.get("caller") or "local")


MAX_DEFINITION_BYTES = 64 * 1024  # a stored version is one DynamoDB item (at most 400 KB)


def _definition(segment_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body as the definition of ``segment_id``: its ``id`` may be left out, but not name another segment.
    Numbers must be finite (JSON has no NaN or Infinity, so a stored one would not read back), and the whole at most
    64 KB."""
    from cdp.core.language import DefinitionError

    definition = {"id": segment_id, **body}
    if definition["id"] != segment_id:
        raise DefinitionInvalid([DefinitionError("id", "must equal the segment id in the path",
                                                 segment_id=segment_id)])
    try:
        text = json.dumps(definition, allow_nan=False)
    except ValueError:
        raise DefinitionInvalid([DefinitionError("condition", "numbers must be finite (not NaN or Infinity)",
                                                 segment_id=segment_id)]) from None
    if len(text.encode()) > MAX_DEFINITION_BYTES:
        raise DefinitionInvalid([DefinitionError("", f"must be at most {MAX_DEFINITION_BYTES // 1024} KB as JSON",
                                                 segment_id=segment_id)])
    return definition


def _candidate(d: Dependencies, change: SegmentChange) -> Catalogue:
    """The catalogue in hand with ``change`` made (raises DefinitionInvalid)."""
    from cdp.pipeline.definitions import DefinitionRejected, candidate_catalogue

    current = {s.id: s.definition for s in d.catalogue.all_segments.values()}
    try:
        return candidate_catalogue(current, [change], d.catalogue.version)
    except DefinitionRejected as error:
        raise DefinitionInvalid(list(error.errors)) from None


def _backfill(d: Dependencies, segment_id: str, deliver: str, catalogue_version: int, because: str) -> Job:
    from cdp.pipeline.jobs import start_job

    job_store, runner = _jobs(d)
    options = {"segment_id": segment_id, "deliver": deliver, "catalogue_version": catalogue_version,
               "because": because}
    return start_job(job_store, runner, "backfill", options, d.clock.now())


def _job_model(job: Job | None) -> JobDocument | None:
    from cdp.pipeline.jobs import job_document

    return None if job is None else JobDocument.model_validate(job_document(job))


def _save(d: Dependencies, change: SegmentChange) -> tuple[Any, Dependencies]:
    """Commit one change (validated against the store's head; DefinitionInvalid when refused), then follow it."""
    from cdp.pipeline.definitions import DefinitionRejected, save_segments

    try:
        saved = save_segments(_store(d), [change], _author(), d.clock.now())
    except DefinitionRejected as error:
        raise DefinitionInvalid(list(error.errors)) from None
    except ConflictError:
        raise CatalogueBusy() from None
    return saved, _refresh(force=True)  # this instance answers with the new catalogue at once


@app.put("/segments/<segmentId>", summary="Create or change a segment, then backfill it",
         description="Saves a new version of the definition (every version is kept, with its author and time) and "
                     "starts a backfill that evaluates every existing profile. A definition with `enabled: false` "
                     "disables the segment: its members exit (reason `segment disabled`). Follow the job at "
                     "`GET /jobs/{jobId}`.",
         responses=SAVE_RESPONSES, security=OPERATOR, tags=["segments"])
def put_segment(segmentId: SEGMENT_ID, definition: DEFINITION, deliver: DELIVER = "audiences",
                backfill: BACKFILL = True) -> Response[str]:
    d = deps()
    if backfill:
        _jobs(d)  # before saving: a save the deployment cannot backfill is refused, not half done
    change = SegmentChange(segmentId, _definition(segmentId, definition))
    saved, d = _save(d, change)
    version = saved.versions[segmentId]
    because = "disabled" if change.definition and change.definition.get("enabled") is False else "saved"
    job = _backfill(d, segmentId, deliver, saved.head.version, because) if backfill else None
    segment = saved.catalogue.all_segments[segmentId]
    body = SegmentSaved(
        segment=SegmentDefinition.model_validate(segment_document(segment, version=version, author=_author(),
                                                                  at=d.clock.now())),
        version=version, catalogue_version=saved.head.version, job=_job_model(job))
    return Response(status_code=201 if version == 1 else 200, content_type=content_types.APPLICATION_JSON,
                    body=body.model_dump_json())


DELETE_RESPONSES = accepted(SegmentDeleted, "The deletion is saved; its backfill makes every member exit",
                            409, 422, 501)


@app.delete("/segments/<segmentId>", summary="Delete a segment; its members exit",
            description="Saves a deletion (a version with no definition) and starts a backfill that makes every "
                        "member exit with reason `segment disabled`. A segment another one refers to cannot be "
                        "deleted (422).",
            responses=DELETE_RESPONSES, security=OPERATOR, tags=["segments"])
def delete_segment(segmentId: SEGMENT_ID, deliver: DELIVER = "audiences", backfill: BACKFILL = True) -> Response[str]:
    d = deps()
    store = _store(d)
    if segmentId not in store.head().segments:
        raise NotFound("segmentId: no stored segment has this id")
    if backfill:
        _jobs(d)
    saved, d = _save(d, SegmentChange(segmentId, None))
    job = _backfill(d, segmentId, deliver, saved.head.version, "deleted") if backfill else None
    body = SegmentDeleted(segment_id=segmentId, version=saved.versions[segmentId],
                          catalogue_version=saved.head.version, job=_job_model(job))
    return Response(status_code=202, content_type=content_types.APPLICATION_JSON, body=body.model_dump_json())


@app.post("/segments:validate", summary="Check a definition without saving it",
          description="The same checks as saving it, against the current catalogue (unknown or disabled references "
                      "and reference cycles included), with the same messages as `cdp segments validate`.",
          responses=documented(ValidationResult, "The definition is valid", 409, 415, 422), security=OPERATOR,
          tags=["segments"])
def validate_segment(definition: DEFINITION) -> ValidationResult:
    d = deps()
    segment_id = _checked_id(definition)
    _candidate(d, SegmentChange(segment_id, definition))
    return ValidationResult(valid=True, segment_id=segment_id)


def _checked_id(definition: dict[str, Any]) -> str:
    """The definition's own id, or the parser's error for it (as ``cdp segments validate`` reports it)."""
    from cdp.core.catalogue import parse_definition
    from cdp.core.language import SLUG, DefinitionError

    segment_id = definition.get("id")
    if isinstance(segment_id, str) and SLUG.match(segment_id):
        return segment_id
    try:
        parse_definition(definition)
    except DefinitionError as error:
        raise DefinitionInvalid([error]) from None
    raise DefinitionInvalid([DefinitionError("id", "is required")])  # pragma: no cover - the parser refuses it


SAMPLE = Annotated[int, Query(ge=0, le=100, description="Members to sample (default 20).")]


@app.post("/segments/<segmentId>:preview", summary="The size a definition would have now, before saving it",
          description="Evaluates the definition over a fresh scan of the profiles (a sample of them on a large "
                      "table, with the 95% error bound) and answers the size and a sample of members.",
          responses=documented(PreviewResult, "The size now and a sample of members", 409, 415, 422, 501),
          security=OPERATOR, tags=["segments"])
def preview_segment(segmentId: SEGMENT_ID, definition: DEFINITION, sample: SAMPLE = 20) -> PreviewResult:
    from cdp.pipeline.jobs import preview

    d = deps()
    candidate = _candidate(d, SegmentChange(segmentId, _definition(segmentId, definition)))
    if d.scan is None:
        raise Unavailable("previews need a profile scan, which this deployment does not configure")
    stats = d.catalogue_source.stats if d.catalogue_source is not None else None
    if segmentId not in candidate.segments:
        raise Invalid("enabled", "enabled: a disabled segment has no members to preview")
    policy = d.engine.consent_policy if d.engine is not None else None
    found = preview(d.scan, candidate, stats, segmentId, d.clock.now(), sample=sample, consent_policy=policy)
    return PreviewResult(segment_id=segmentId, size=found.size, scanned=found.scanned, exact=found.exact,
                         error_bound=found.error_bound, members=list(found.members))


@app.get("/segments/<segmentId>/versions", summary="Every version of a segment's definition",
         responses=documented(SegmentVersions, "Every version, oldest first (deletions included)", 501),
         security=OPERATOR, tags=["segments"])
def list_versions(segmentId: SEGMENT_ID) -> SegmentVersions:
    versions = _store(deps()).history(segmentId)
    if not versions:
        raise NotFound("segmentId: no stored segment has this id")
    return SegmentVersions.model_validate({"segment_id": segmentId,
                                           "versions": [version_document(v) for v in versions]})


JOB_ID = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


@app.get("/jobs/<jobId>", summary="A job: its status and progress",
         responses=documented(JobDocument, "The job", 501), security=OPERATOR, tags=["jobs"])
def get_job(jobId: JOB_ID) -> JobDocument:
    job_store, _ = _jobs(deps())
    job = job_store.get(jobId)
    if job is None:
        raise NotFound("jobId: no job has this id")
    return JobDocument.model_validate(_job_document(job))


def _job_document(job: Job) -> dict[str, Any]:
    from cdp.pipeline.jobs import job_document

    return job_document(job)


@app.post("/jobs", summary="Start a job: a backfill, the population statistics or the computed traits",
          description="`traits` trains the computed traits' models (RFM quintiles, clusters, predictions) and "
                      "writes every profile whose traits changed; `percentiles` recomputes the population "
                      "statistics; `backfill` evaluates every profile for one segment (`options.segment_id`). "
                      "Follow the job at `GET /jobs/{jobId}`.",
          responses=accepted(JobDocument, "The job, queued and started", 415, 501), security=OPERATOR,
          tags=["jobs"])
def post_job(request: Annotated[JobRequest, Body()]) -> Response[str]:
    from cdp.pipeline.jobs import InvalidJob, start_job

    d = deps()
    job_store, runner = _jobs(d, "")
    try:
        job = start_job(job_store, runner, request.kind, dict(request.options), d.clock.now())
    except InvalidJob as error:
        raise Invalid(error.field if error.field == "kind" else f"options.{error.field}", str(error)) from None
    body = JobDocument.model_validate(_job_document(job))
    return Response(status_code=202, content_type=content_types.APPLICATION_JSON, body=body.model_dump_json())


MODEL_NAME = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[a-z]+$",
                                 description="rfm | clusters | predictions")]


def _stored_models(d: Dependencies) -> Mapping[str, Mapping[str, Any]]:
    """The model documents the live catalogue's statistics carry (none without a definitions store)."""
    from cdp.core.traits import model_documents as carried

    return carried(d.catalogue_source.stats if d.catalogue_source is not None else None)


@app.get("/models", summary="The computed traits' models: versions, training times and what they learnt",
         responses=documented(ModelList, "Every trained model"), security=OPERATOR, tags=["models"])
def list_models() -> ModelList:
    return ModelList.model_validate({"models": model_documents(_stored_models(deps()))})


@app.get("/models/<name>", summary="One computed traits model: RFM cuts, clusters in plain words, or the "
                                   "predictions' validation",
         description="`clusters`: each cluster's size, its centroid in the features' own units and a description "
                     "in plain words. `predictions`: the time-split validation (AUC against the baseline, the "
                     "error of predicted against actual orders against the last period's rate), the horizon.",
         responses=documented(ModelDocument, "The model", 404), security=OPERATOR, tags=["models"])
def get_model(name: MODEL_NAME) -> ModelDocument:
    from cdp.core.traits import MODELS

    if name not in MODELS:
        raise NotFound(f"name: no such model (one of {', '.join(MODELS)})")
    stored = _stored_models(deps()).get(name)
    if not stored:
        raise NotFound(f"name: the {name} model is not trained yet (run the traits job: POST /jobs "
                       '{"kind": "traits"} or `cdp jobs run traits`)')
    return ModelDocument.model_validate(model_document(stored))


DAYS = Annotated[int, Query(ge=1, le=400, description="Days back from today, today included (default 30).")]


@app.get("/segments/<segmentId>/history", summary="A segment's size, entries and exits per day",
         responses=documented(SegmentHistory, "One row per day, oldest first", 501), security=OPERATOR,
         tags=["segments"])
def get_history(segmentId: SEGMENT_ID, days: DAYS = 30) -> SegmentHistory:
    d = deps()
    if d.history is None:
        raise Unavailable("segment history is not kept in this deployment (HISTORY_TABLE is not set)")
    now = d.clock.now()
    since = datetime.fromtimestamp(now - (days - 1) * 86400, UTC).date().isoformat()
    rows = d.history.days(segmentId, since)
    segment = d.catalogue.segments.get(segmentId)
    if not rows and segmentId not in d.catalogue.all_segments:
        raise NotFound("segmentId: no segment has this id")
    # Today's size before the day's snapshot: the members index's count.
    size_now = d.members.size(segmentId) if segment is not None else None
    return SegmentHistory.model_validate({"segment_id": segmentId,
                                          "days": history_days(rows, now, size_now)})


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


DELETION_RESPONSES = accepted(DeletionAccepted, "The request was recorded and its job queued", 404)


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
        description="Profiles, segment memberships, segment definitions, computed traits' models and jobs. "
                    "Operator routes use IAM "
                    "(SigV4); /me uses a Cognito user pool token.",
        security_schemes={
            "iam": {"type": "apiKey", "name": "Authorization", "in": "header",
                    "description": "AWS Signature Version 4"},  # type: ignore[dict-item]
            "cognito": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},  # type: ignore[dict-item]
        })
    document = json.loads(schema)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "HTTPValidationError" in json.dumps(responses.get("422", {})):
                responses.pop("422")  # request validation problems are answered as 400; 422 is a bad definition
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        schemas.pop(unused, None)
    return json.dumps(document, separators=(",", ":"))


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId")
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
