"""Segment lifecycle over the HTTP API, against moto: definitions saved, versioned, validated and previewed.

The definitions store is the real DynamoDB one (moto), seeded from the YAML folder as a first deploy seeds it;
the api function's catalogue and engine follow it through a :class:`LiveCatalogue`. Jobs are recorded by an
in-memory job store and runner (the job engine has its own tests): here the question is which job a save
starts, with which options. Every reply is checked against the OpenAPI document by the ``api`` fixture.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cdp.aws.definitions import DynamoDefinitionStore, Models
from cdp.core.catalogue import CatalogueError, build_catalogue
from cdp.core.engine import Engine
from cdp.core.profile import Profile
from cdp.pipeline.definitions import folder_definitions, seed
from cdp.pipeline.jobs import Job, ScanPage
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.ports import TransientError

from . import test_api
from .support import REGION, SEGMENTS, identify, track
from .test_api import (
    DAY,
    HOUR,
    NOW,
    Api,
    Reply,
    T,
    api_handler,
    document,
    problem,
    raw_event,
    seed_alice,
    web,
)
from .test_api import seed as seed_messages

api, exchanges = test_api.api, test_api.exchanges  # the fixtures: the API over moto, replies checked

DEFINITIONS_TABLE = "cdp-definitions"
OPERATOR_ARN = "arn:aws:sts::123456789012:assumed-role/cdp-operator/ops-session"  # events/api envelopes'
BIG_SPENDERS = {"id": "big-spenders", "name": "Big spenders", "description": "Over 200 in lifetime revenue.",
                "condition": {"rfm": {"metric": "revenue", "gt": 200}}}


# ---- fakes of the job engine's ports ---------------------------------------------------------------------------


@dataclass
class RecordedJobs:
    """JobStore and JobRunner in one: jobs kept in memory, started ones recorded."""

    jobs: dict[str, Job] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)

    def create(self, job: Job) -> None:
        assert job.job_id not in self.jobs
        self.jobs[job.job_id] = job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def add_counts(self, job_id: str, counts: Any, segments_done: int, at: float) -> None:
        raise AssertionError("the API never runs a job")

    refusing: bool = False  # the runner cannot start jobs (Step Functions throttling)

    def update(self, job_id: str, at: float, **changes: Any) -> None:
        assert set(changes) == {"status", "reason"}, "the API only marks a job it could not start"
        for name, value in changes.items():
            setattr(self.jobs[job_id], name, value)

    def start(self, job_id: str) -> None:
        if self.refusing:
            raise TransientError("StartExecution was throttled")
        self.started.append(job_id)


@dataclass
class ListScan:
    """A ProfileScan over profiles read from the moto table (one scan segment, one page)."""

    profiles: list[Profile]

    def page(self, segment: int, total: int, cursor: object | None, limit: int) -> ScanPage:
        return ScanPage(list(self.profiles) if segment == 0 else [], None)

    def approximate_count(self) -> int:
        return len(self.profiles)


@dataclass
class RowsHistory:
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)

    def days(self, segment_id: str, since: str) -> list[dict[str, Any]]:
        self.asked.append((segment_id, since))
        return [row for row in self.rows.get(segment_id, []) if row["day"] >= since]


@dataclass
class Lifecycle:
    api: Api
    store: DynamoDefinitionStore
    live: LiveCatalogue
    jobs: RecordedJobs
    history: RowsHistory

    def put(self, segment_id: str, definition: Any, query: dict[str, str] | None = None) -> Reply:
        return self.api.send(request("PUT", f"/segments/{segment_id}", definition, query))

    def post(self, path: str, definition: Any, query: dict[str, str] | None = None) -> Reply:
        return self.api.send(request("POST", path, definition, query))

    def get(self, path: str, query: dict[str, str] | None = None) -> Reply:
        return self.api.send(request("GET", path, None, query))

    def delete(self, segment_id: str, query: dict[str, str] | None = None) -> Reply:
        return self.api.send(request("DELETE", f"/segments/{segment_id}", None, query))


def request(method: str, path: str, body: Any, query: dict[str, str] | None) -> dict[str, Any]:
    """An operator's request (IAM identity of the committed envelopes)."""
    event = raw_event(method, path, {k: [v] for k, v in (query or {}).items()},
                      None if body is None else json.dumps(body))
    return event


def create_definitions_table(api: Api) -> DynamoDefinitionStore:
    api.stack.dynamodb.create_table(
        TableName=DEFINITIONS_TABLE, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "segment_id", "KeyType": "HASH"},
                   {"AttributeName": "version", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "segment_id", "AttributeType": "S"},
                              {"AttributeName": "version", "AttributeType": "N"}])
    return DynamoDefinitionStore(Models(DEFINITIONS_TABLE, REGION), consistent_head=True)


@pytest.fixture
def lifecycle(api: Api) -> Iterator[Lifecycle]:
    store = create_definitions_table(api)
    assert seed(store, folder_definitions(SEGMENTS), "seed", T - DAY)
    live = LiveCatalogue(store, lambda: api.stack.catalogue, check_seconds=30)
    engine = Engine(live.catalogue)
    jobs, history = RecordedJobs(), RowsHistory()
    api.use(catalogue=live.catalogue, engine=engine, definitions=store, catalogue_source=live, job_store=jobs,
            runner=jobs, scan=None, history=history)
    yield Lifecycle(api, store, live, jobs, history)


def validate_errors(definition: dict[str, Any]) -> list[tuple[str, str, str]]:
    """What `cdp segments validate` says of this definition beside the YAML folder's (path, rule, segment)."""
    definitions = [(s, d) for s, d in folder_definitions(SEGMENTS) if isinstance(d, dict)
                   and d.get("id") != definition.get("id")]
    with pytest.raises(CatalogueError) as caught:
        build_catalogue([*definitions, ("request", definition)])
    return [(e.path, e.message, e.segment_id) for e in caught.value.errors]


def issues(reply: Reply) -> list[tuple[str, str, str]]:
    assert reply.status == 422, (reply.status, reply.text)
    body = reply.json
    assert body["code"] == "invalid_definition" and body["message"], body
    return [(e["path"], e["message"], e["segment_id"]) for e in body["errors"]]


# ---- saving -----------------------------------------------------------------------------------------------


def test_put_creates_a_segment_version_1_and_starts_a_backfill_that_delivers_to_audiences(
        lifecycle: Lifecycle) -> None:
    seeded = lifecycle.store.head().version

    reply = lifecycle.put("big-spenders", BIG_SPENDERS)

    assert reply.status == 201, reply.text
    body = reply.json
    assert body["version"] == 1 and body["catalogue_version"] == seeded + 1
    assert body["segment"]["id"] == "big-spenders" and body["segment"]["author"] == OPERATOR_ARN
    assert body["segment"]["definition"] == BIG_SPENDERS
    job = body["job"]
    assert job["kind"] == "backfill" and job["status"] == "queued"
    assert job["options"] == {"segment_id": "big-spenders", "deliver": "audiences",
                              "catalogue_version": seeded + 1, "because": "saved"}
    assert lifecycle.jobs.started == [job["id"]]
    # The store holds it, with its author; this instance answers with the new catalogue at once.
    assert lifecycle.store.head().segments["big-spenders"] == 1
    got = lifecycle.get("/segments/big-spenders")
    assert got.status == 200 and got.json["version"] == 1 and got.json["author"] == OPERATOR_ARN
    assert got.json["updated_at"] == NOW and got.json["size"] == 0 and got.json["definition"] == BIG_SPENDERS
    listed = {s["id"]: s for s in lifecycle.get("/segments").json["segments"]}
    assert listed["big-spenders"]["version"] == 1 and listed["vip"]["version"] == 1
    engine = api_handler.deps().engine
    assert engine is not None and engine.catalogue.version == seeded + 1


def test_an_edit_is_version_2_and_an_unchanged_definition_makes_no_new_version(lifecycle: Lifecycle) -> None:
    assert lifecycle.put("big-spenders", BIG_SPENDERS).status == 201
    edited = {**BIG_SPENDERS, "condition": {"rfm": {"metric": "revenue", "gt": 300}}}

    changed = lifecycle.put("big-spenders", edited, {"deliver": "none"})
    again = lifecycle.put("big-spenders", edited, {"backfill": "false"})

    assert changed.status == 200 and changed.json["version"] == 2
    assert changed.json["job"]["options"]["deliver"] == "none"
    assert again.status == 200 and again.json["version"] == 2 and again.json["job"] is None
    assert len(lifecycle.jobs.started) == 2
    versions = lifecycle.get("/segments/big-spenders/versions").json["versions"]
    assert [(v["version"], v["deleted"], v["author"]) for v in versions] == [(1, False, OPERATOR_ARN),
                                                                              (2, False, OPERATOR_ARN)]
    assert versions[1]["definition"]["condition"] == {"rfm": {"metric": "revenue", "gt": 300}}


def test_a_body_without_its_id_takes_the_paths_and_one_naming_another_segment_is_refused(
        lifecycle: Lifecycle) -> None:
    without = {k: v for k, v in BIG_SPENDERS.items() if k != "id"}
    assert lifecycle.put("big-spenders", without).status == 201

    assert issues(lifecycle.put("big-spenders", {**BIG_SPENDERS, "id": "other"})) == [
        ("id", "must equal the segment id in the path", "big-spenders")]


def test_disabling_is_a_put_with_enabled_false_and_its_backfill_is_because_disabled(lifecycle: Lifecycle) -> None:
    lifecycle.put("big-spenders", BIG_SPENDERS)

    reply = lifecycle.put("big-spenders", {**BIG_SPENDERS, "enabled": False})

    assert reply.status == 200 and reply.json["job"]["options"]["because"] == "disabled"
    assert "big-spenders" not in {s["id"] for s in lifecycle.get("/segments").json["segments"]}
    listed = lifecycle.get("/segments", {"disabled": "true"}).json["segments"]
    assert next(s for s in listed if s["id"] == "big-spenders")["enabled"] is False
    assert lifecycle.get("/segments/big-spenders").json["enabled"] is False


def test_delete_saves_a_deletion_and_starts_a_backfill_that_makes_members_exit(lifecycle: Lifecycle) -> None:
    lifecycle.put("big-spenders", BIG_SPENDERS)

    reply = lifecycle.delete("big-spenders")

    assert reply.status == 202, reply.text
    assert reply.json["version"] == 2 and reply.json["job"]["options"]["because"] == "deleted"
    assert "big-spenders" not in lifecycle.store.head().segments
    problem(lifecycle.get("/segments/big-spenders"), 404, "not_found")
    versions = lifecycle.get("/segments/big-spenders/versions").json["versions"]
    assert [(v["version"], v["deleted"]) for v in versions] == [(1, False), (2, True)]
    assert versions[1]["definition"] is None
    problem(lifecycle.delete("big-spenders"), 404, "not_found")
    problem(lifecycle.get("/segments/never-saved/versions"), 404, "not_found")


def test_a_segment_another_refers_to_cannot_be_deleted(lifecycle: Lifecycle) -> None:
    lifecycle.put("big-spenders", BIG_SPENDERS)
    lifecycle.put("big-and-recent", {"id": "big-and-recent", "name": "Big and recent", "condition": {
        "all": [{"segment": {"id": "big-spenders"}}, {"recency": {"event": "Order Completed", "within": "7d"}}]}})

    found = issues(lifecycle.delete("big-spenders"))

    assert found == [("", "cannot be deleted: segment 'big-and-recent' refers to it", "big-spenders")]
    assert "big-spenders" in lifecycle.store.head().segments


# ---- validation: the same errors as `cdp segments validate` ------------------------------------------------------


INVALID = [
    {**BIG_SPENDERS, "condition": {"rfm": {"metric": "revenue", "gt": "lots"}}},
    {**BIG_SPENDERS, "priority": "high", "colour": "red"},
    {**BIG_SPENDERS, "condition": {"segment": {"id": "no-such-segment"}}},
    {**BIG_SPENDERS, "condition": {"count": {"event": "Order Completed", "within": "forever", "gte": 1}}},
]


@pytest.mark.parametrize("definition", INVALID, ids=["type", "fields", "reference", "duration"])
def test_an_invalid_definition_is_422_with_the_errors_cdp_segments_validate_gives(
        lifecycle: Lifecycle, definition: dict[str, Any]) -> None:
    expected = validate_errors(definition)
    lifecycle.api.use(scan=ListScan([]))

    for reply in (lifecycle.put("big-spenders", definition), lifecycle.post("/segments:validate", definition),
                  lifecycle.post("/segments/big-spenders:preview", definition)):
        assert issues(reply) == expected
    assert "big-spenders" not in lifecycle.store.head().segments and lifecycle.jobs.started == []


def test_a_definition_that_would_form_a_reference_cycle_is_refused(lifecycle: Lifecycle) -> None:
    lifecycle.put("big-spenders", BIG_SPENDERS)
    lifecycle.put("loop-a", {"id": "loop-a", "name": "A", "condition": {"segment": {"id": "big-spenders"}}})
    cyclic = {**BIG_SPENDERS, "condition": {"segment": {"id": "loop-a"}}}

    for reply in (lifecycle.post("/segments:validate", cyclic), lifecycle.put("big-spenders", cyclic)):
        [(path, message, _)] = issues(reply)
        assert path == "condition" and "cycle" in message and "big-spenders" in message and "loop-a" in message
    assert lifecycle.store.head().segments["big-spenders"] == 1


def test_validate_answers_valid_and_saves_nothing(lifecycle: Lifecycle) -> None:
    before = lifecycle.store.head()

    reply = lifecycle.post("/segments:validate", BIG_SPENDERS)

    assert reply.status == 200 and reply.json == {"valid": True, "segment_id": "big-spenders"}
    assert lifecycle.store.head() == before
    assert issues(lifecycle.post("/segments:validate", {"name": "No id", "condition": {"manual": True}}))[0][0] == "id"


def test_a_body_that_is_not_a_json_object_is_400(lifecycle: Lifecycle) -> None:
    problem(lifecycle.api.send(raw_event("PUT", "/segments/big-spenders", body="[1, 2]")), 400, "invalid_request")
    problem(lifecycle.api.send(raw_event("POST", "/segments:validate", body="{not json")), 400, "invalid_request",
            "body")
    problem(lifecycle.put("big-spenders", BIG_SPENDERS, {"deliver": "everyone"}), 400, "invalid_request", "deliver")
    problem(lifecycle.put("Big", BIG_SPENDERS), 400, "invalid_request", "segmentId")


# ---- preview -----------------------------------------------------------------------------------------------------


def seed_spenders(app: Api) -> dict[str, float]:
    """Customers with known lifetime revenue (alice 244.85 among them)."""
    seed_alice(app.stack)
    revenue = {"alice": 244.85, "bob": 50.0, "carol": 310.0, "dave": 199.99, "erin": 1000.0}
    messages = []
    for number, (who, amount) in enumerate(revenue.items()):
        if who != "alice":
            messages += [web(identify(who, T - 3 * DAY, f"{who}-id")),
                         web(track(who, "Order Completed", T - 2 * DAY - number * HOUR, f"{who}-o", order_id=who,
                                   revenue=amount))]
    seed_messages(app.stack, messages)
    return revenue


def test_preview_counts_the_candidate_over_a_fresh_scan_without_saving(lifecycle: Lifecycle) -> None:
    revenue = seed_spenders(lifecycle.api)
    profiles = [lifecycle.api.stack.store().get(who) for who in revenue]
    lifecycle.api.use(scan=ListScan([p for p in profiles if p is not None]))

    reply = lifecycle.post("/segments/big-spenders:preview", BIG_SPENDERS, {"sample": "2"})

    assert reply.status == 200, reply.text
    expected = sorted(who for who, amount in revenue.items() if amount > 200)
    assert reply.json["size"] == len(expected) == 3 and reply.json["scanned"] == 5
    assert reply.json["exact"] is True and reply.json["error_bound"] == 0
    assert len(reply.json["members"]) == 2 and set(reply.json["members"]) <= set(expected)
    assert "big-spenders" not in lifecycle.store.head().segments


def test_preview_without_a_scan_is_501_and_of_a_disabled_definition_400(lifecycle: Lifecycle) -> None:
    problem(lifecycle.post("/segments/big-spenders:preview", BIG_SPENDERS), 501, "not_configured")
    lifecycle.api.use(scan=ListScan([]))
    problem(lifecycle.post("/segments/big-spenders:preview", {**BIG_SPENDERS, "enabled": False}), 400,
            "invalid_request", "enabled")
    assert lifecycle.api.send(raw_event("POST", "/segments/big-spenders:count", body="{}")).status == 404


# ---- jobs ------------------------------------------------------------------------------------------------------


def test_get_job_shows_the_job_a_save_started(lifecycle: Lifecycle) -> None:
    job = lifecycle.put("big-spenders", BIG_SPENDERS).json["job"]

    reply = lifecycle.get(f"/jobs/{job['id']}")

    assert reply.status == 200 and reply.json == job
    assert reply.json["progress"] == 0 and reply.json["created_at"] == NOW
    problem(lifecycle.get("/jobs/no-such-job"), 404, "not_found")
    problem(lifecycle.get("/jobs/bad_id!"), 400, "invalid_request", "jobId")


# ---- explain -----------------------------------------------------------------------------------------------------


def test_explain_agrees_with_the_stored_memberships(lifecycle: Lifecycle) -> None:
    seed_alice(lifecycle.api.stack)
    profile = lifecycle.api.stack.store().get("alice")
    assert profile is not None

    one = lifecycle.get("/customers/alice/explain", {"segment": "recent-buyers"})
    every = lifecycle.get("/customers/alice/explain")

    assert one.status == 200, one.text
    assert one.json["customer_id"] == "alice" and one.json["segment"] == "recent-buyers"
    assert one.json["holds"] is True and one.json["member"] is True
    assert one.json["condition"]["result"] is True and one.json["condition"]["changes_at"] is not None
    verdicts = {v["segment"]: v for v in every.json["segments"]}
    assert set(verdicts) == set(lifecycle.live.catalogue.segments)
    assert {s for s, v in verdicts.items() if v["member"]} == set(profile.memberships)
    assert {s for s, v in verdicts.items() if v["holds"]} == set(profile.memberships)
    problem(lifecycle.get("/customers/alice/explain", {"segment": "no-such-segment"}), 404, "not_found")
    problem(lifecycle.get("/customers/nobody/explain", {"segment": "recent-buyers"}), 404, "not_found")


# ---- history -----------------------------------------------------------------------------------------------------


def test_history_gives_the_days_asked_for_and_todays_size_before_the_snapshot(lifecycle: Lifecycle) -> None:
    lifecycle.history.rows["vip"] = [{"day": "2026-09-01", "size": 3, "entered": 3, "exited": 0},
                                     {"day": "2026-10-19", "size": 4, "entered": 2, "exited": 1},
                                     {"day": "2026-10-20", "size": None, "entered": 1, "exited": 0}]

    week = lifecycle.get("/segments/vip/history", {"days": "7"})
    default = lifecycle.get("/segments/vip/history")

    assert week.status == 200, week.text
    assert week.json["days"] == [{"day": "2026-10-19", "size": 4, "entered": 2, "exited": 1},
                                 {"day": "2026-10-20", "size": 0, "entered": 1, "exited": 0}]
    assert lifecycle.history.asked == [("vip", "2026-10-14"), ("vip", "2026-09-21")]
    assert len(default.json["days"]) == 2
    problem(lifecycle.get("/segments/vip/history", {"days": "401"}), 400, "invalid_request", "days")
    problem(lifecycle.get("/segments/no-such-segment/history"), 404, "not_found")


# ---- a deployment without the stores ---------------------------------------------------------------------------


def test_routes_whose_stores_are_not_configured_answer_501_and_save_nothing(lifecycle: Lifecycle) -> None:
    lifecycle.api.use(job_store=None, runner=None)
    problem(lifecycle.put("big-spenders", BIG_SPENDERS), 501, "not_configured")
    assert "big-spenders" not in lifecycle.store.head().segments
    problem(lifecycle.get("/jobs/abc"), 501, "not_configured")
    assert lifecycle.put("big-spenders", BIG_SPENDERS, {"backfill": "false"}).status == 201
    lifecycle.api.use(definitions=None, history=None)
    problem(lifecycle.put("big-spenders", BIG_SPENDERS, {"backfill": "false"}), 501, "not_configured")
    problem(lifecycle.get("/segments/big-spenders/versions"), 501, "not_configured")
    problem(lifecycle.get("/segments/vip/history"), 501, "not_configured")
    assert lifecycle.post("/segments:validate", BIG_SPENDERS).status == 200  # needs no store


def test_the_openapi_document_describes_the_lifecycle_routes() -> None:
    from openapi_spec_validator import validate

    validate(document())
    paths = document()["paths"]
    assert set(paths["/segments/{segmentId}"]) == {"get", "put", "delete"}
    assert set(paths["/segments/{segmentId}"]["put"]["responses"]) >= {"200", "201", "400", "422", "501"}
    assert "202" in paths["/segments/{segmentId}"]["delete"]["responses"]
    for route in ("/segments:validate", "/segments/{segmentId}:preview"):
        assert "422" in paths[route]["post"]["responses"]
    for route in ("/segments/{segmentId}/versions", "/segments/{segmentId}/history", "/jobs/{jobId}",
                  "/customers/{customerId}/explain"):
        assert "get" in paths[route]


# ---- the committed sample envelopes (events/api), as API Gateway sends them ---------------------------------


def committed(name: str, **path_parameters: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((SEGMENTS.parent / "events" / "api" / f"{name}.json").read_text())
    for key, value in path_parameters.items():
        event["path"] = event["path"].replace(event["pathParameters"][key], value)
        event["pathParameters"][key] = value
    return event


def test_the_committed_lifecycle_envelopes_save_preview_explain_and_delete_a_segment(lifecycle: Lifecycle) -> None:
    revenue = seed_spenders(lifecycle.api)
    profiles = [lifecycle.api.stack.store().get(who) for who in revenue]
    lifecycle.api.use(scan=ListScan([p for p in profiles if p is not None]))
    over = sorted(who for who, amount in revenue.items() if amount > 200)

    assert lifecycle.api.send(committed("validate-segment")).json == {"valid": True, "segment_id": "big-spenders"}
    preview = lifecycle.api.send(committed("preview-segment"))
    assert preview.status == 200 and preview.json["size"] == len(over) and preview.json["exact"] is True
    assert sorted(preview.json["members"]) == over
    saved = lifecycle.api.send(committed("put-segment"))
    assert saved.status == 201 and saved.json["job"]["options"]["deliver"] == "audiences"
    job = lifecycle.api.send(committed("get-job", jobId=saved.json["job"]["id"]))
    assert job.status == 200 and job.json["kind"] == "backfill"
    versions = lifecycle.api.send(committed("list-segment-versions"))
    assert [v["version"] for v in versions.json["versions"]] == [1]
    assert lifecycle.api.send(committed("get-segment-history")).status == 200
    explained = lifecycle.api.send(committed("explain-customer"))  # alice: 244.85 > 200, not yet backfilled
    assert explained.status == 200 and explained.json["holds"] is True and explained.json["member"] is False
    deleted = lifecycle.api.send(committed("delete-segment"))
    assert deleted.status == 202 and deleted.json["job"]["options"]["because"] == "deleted"
    assert "big-spenders" not in lifecycle.store.head().segments



def test_a_backfill_that_cannot_start_leaves_the_saved_version_and_a_failed_job_never_a_queued_one(
        lifecycle: Lifecycle) -> None:
    lifecycle.jobs.refusing = True

    reply = lifecycle.put("big-spenders", BIG_SPENDERS)

    assert reply.status == 201 and reply.json["version"] == 1  # saved: the answer says so
    job = reply.json["job"]
    assert job["status"] == "failed" and job["reason"].startswith("the job could not be started")
    assert lifecycle.jobs.jobs[job["id"]].status == "failed" and lifecycle.jobs.started == []
    lifecycle.jobs.refusing = False
    again = lifecycle.put("big-spenders", BIG_SPENDERS)  # saving it unchanged starts a new backfill
    assert again.json["version"] == 1 and again.json["job"]["status"] == "queued"


@pytest.mark.parametrize(("body", "rule"), [
    ('{"name": "N", "condition": {"rfm": {"metric": "revenue", "gt": NaN}}}', "numbers must be finite"),
    ('{"name": "N", "condition": {"rfm": {"metric": "revenue", "gt": 1e400}}}', "numbers must be finite"),
    ('{"name": "N", "description": "' + "x" * 70_000 + '", "condition": {"rfm": {"metric": "revenue", "gt": 1}}}',
     "must be at most 64 KB"),
])
def test_a_definition_that_would_not_store_or_read_back_is_422_not_a_5xx(lifecycle: Lifecycle, body: str,
                                                                       rule: str) -> None:
    reply = lifecycle.api.send(raw_event("PUT", "/segments/big-spenders", {}, body))
    assert rule in " ".join(message for _, message, _ in issues(reply))
    assert "big-spenders" not in lifecycle.store.head().segments
