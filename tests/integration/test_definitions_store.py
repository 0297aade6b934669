"""The DynamoDB definitions store under moto: commits and their conditions, every version kept, the head,
the population statistics, and AWS errors turned into the domain's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp.aws.definitions import DynamoDefinitionStore, Models, definition_store, live_catalogue
from cdp.config import ConfigError
from cdp.core.catalogue import Catalogue, load_catalogue
from cdp.core.population import PopulationStats
from cdp.pipeline.definitions import current_definitions, folder_definitions, save_segments, seed
from cdp.pipeline.live_catalogue import stored_catalogue
from cdp.ports import ConflictError, SegmentChange, TransientError
from cdp_dev.handlers import load_handler
from tests.lambda_context import LambdaContext

from .support import DEFINITIONS_TABLE, REGION, ROOT, SEGMENTS, InjectedError, create_definitions_table

TABLE = DEFINITIONS_TABLE


@pytest.fixture
def ddb(session: boto3.Session) -> Iterator[Any]:
    with mock_aws():
        client = session.client("dynamodb")
        create_definitions_table(client)
        yield client


@pytest.fixture
def store(ddb: Any) -> DynamoDefinitionStore:
    return DynamoDefinitionStore(Models(TABLE, REGION), consistent_head=True)


def rich(revenue: int = 300) -> dict[str, Any]:
    return {"id": "rich", "name": "Rich", "condition": {"rfm": {"metric": "revenue", "gt": revenue}}}


def test_an_empty_store_has_head_version_0(store: DynamoDefinitionStore) -> None:
    head = store.head()
    assert (head.version, head.segments, head.stats_version) == (0, {}, 0)
    assert store.current(head) == [] and store.population() is None


def test_a_commit_moves_the_head_and_writes_each_version(store: DynamoDefinitionStore, ddb: Any) -> None:
    head = store.commit([SegmentChange("rich", rich()), SegmentChange("poor", {**rich(), "id": "poor"})],
                        "ana", 100.5, expected=0)
    assert (head.version, head.segments) == (1, {"rich": 1, "poor": 1})
    assert store.head() == head
    versions = store.current(head)
    assert [(v.segment_id, v.version, v.definition, v.author, v.at, v.catalogue_version) for v in versions] == [
        ("poor", 1, {**rich(), "id": "poor"}, "ana", 100.5, 1), ("rich", 1, rich(), "ana", 100.5, 1)]
    item = ddb.get_item(TableName=TABLE, Key={"segment_id": {"S": "~catalogue"}, "version": {"N": "0"}})["Item"]
    assert item["catalogue_version"] == {"N": "1"}
    assert item["segments"]["M"] == {"rich": {"N": "1"}, "poor": {"N": "1"}}


def test_every_version_is_kept_with_deletions_in_order(store: DynamoDefinitionStore) -> None:
    store.commit([SegmentChange("rich", rich())], "ana", 1.0, expected=0)
    store.commit([SegmentChange("rich", rich(500))], "bo", 2.0, expected=1)
    deleted = store.commit([SegmentChange("rich", None)], "cy", 3.0, expected=2)
    assert deleted.segments == {}
    again = store.commit([SegmentChange("rich", rich(9))], "di", 4.0, expected=3)
    assert again.segments == {"rich": 4}
    history = store.history("rich")
    assert [(v.version, v.author, v.catalogue_version, v.definition is None) for v in history] == [
        (1, "ana", 1, False), (2, "bo", 2, False), (3, "cy", 3, True), (4, "di", 4, False)]
    assert history[1].definition == rich(500)
    assert store.history("ghost") == []


def test_the_head_names_every_segment_ever_stored_deleted_ones_too(store: DynamoDefinitionStore) -> None:
    store.commit([SegmentChange("rich", rich()), SegmentChange("poor", rich(1))], "ana", 1.0, expected=0)
    committed = store.commit([SegmentChange("rich", None)], "bo", 2.0, expected=1)
    assert committed.segments == {"poor": 1} and committed.ever == ("poor", "rich")
    assert store.head().ever == ("poor", "rich")  # its members rows outlive it: the erasure reads this


def test_a_commit_on_a_head_that_moved_is_a_conflict_and_writes_nothing(store: DynamoDefinitionStore) -> None:
    store.commit([SegmentChange("rich", rich())], "ana", 1.0, expected=0)
    with pytest.raises(ConflictError):
        store.commit([SegmentChange("rich", rich(500)), SegmentChange("new", {**rich(), "id": "new"})],
                     "bo", 2.0, expected=0)
    assert store.head().segments == {"rich": 1}
    assert [v.version for v in store.history("rich")] == [1] and store.history("new") == []


def test_two_writers_racing_for_one_version_one_wins(ddb: Any) -> None:
    """The second writer read the head before the first committed: the head's condition stops it in the
    transaction itself (its own check of the head is skipped by reading the head as it was)."""
    first = DynamoDefinitionStore(Models(TABLE, REGION))
    second = DynamoDefinitionStore(Models(TABLE, REGION))
    first.commit([SegmentChange("rich", rich())], "ana", 1.0, expected=0)
    stale = second._head(consistent=True)
    first.commit([SegmentChange("rich", rich(400))], "ana", 2.0, expected=1)
    second._head = lambda consistent: stale  # type: ignore[method-assign]
    with pytest.raises(ConflictError):
        second.commit([SegmentChange("rich", rich(500))], "bo", 3.0, expected=1)
    assert first.head().version == 2 and first.current(first.head())[0].definition == rich(400)


def test_throttling_is_a_transient_error(store: DynamoDefinitionStore) -> None:
    injected = InjectedError(store.models.connection.client, "TransactWriteItems", "ThrottlingException", limit=10)
    with pytest.raises(TransientError):
        store.commit([SegmentChange("rich", rich())], "ana", 1.0, expected=0)
    assert injected.injected >= 1
    injected.remove()
    assert store.commit([SegmentChange("rich", rich())], "ana", 1.0, expected=0).version == 1


def test_population_statistics_round_trip_and_move_the_stats_version(store: DynamoDefinitionStore) -> None:
    stats = PopulationStats.from_values({"revenue": [float(n) for n in range(200)], "orders": [1, 2, 3]},
                                        computed_at=1_700_000_000)
    head = store.put_population(stats)
    assert (head.version, head.stats_version) == (0, 1)
    assert store.population() == stats
    # statistics stored before any definitions do not stop the first commit (the seed)
    assert store.commit([SegmentChange("rich", rich())], "ana", 1.0, expected=0).stats_version == 1
    newer = PopulationStats.from_values({"revenue": [5.0, 6.0]}, computed_at=1_700_003_600)
    assert store.put_population(newer).stats_version == 2 and store.head().version == 1
    # A job that scanned earlier (an overlapping, slower one) never replaces newer statistics.
    assert store.put_population(stats).stats_version == 2 and store.population() == newer


def test_seeding_the_folder_builds_the_folders_catalogue_from_the_store(store: DynamoDefinitionStore) -> None:
    assert seed(store, folder_definitions(SEGMENTS), "deploy", 1.0)
    assert not seed(store, folder_definitions(SEGMENTS), "deploy", 2.0)
    head = store.head()
    catalogue: Catalogue = stored_catalogue(store, head)
    folder = load_catalogue(SEGMENTS)
    assert head.version == 1 and catalogue.version == 1
    assert sorted(catalogue.all_segments) == sorted(folder.all_segments)
    assert catalogue.fingerprint.split(".")[1] == folder.fingerprint


def test_save_segments_over_dynamodb(store: DynamoDefinitionStore) -> None:
    seed(store, folder_definitions(SEGMENTS), "deploy", 1.0)
    saved = save_segments(store, [SegmentChange("rich", rich())], "ana", 2.0)
    assert saved.head.version == 2 and saved.versions == {"rich": 1} and "rich" in saved.catalogue.segments
    head, current = current_definitions(store)
    assert head == saved.head and current["rich"].author == "ana"


def test_the_environment_names_the_store(ddb: Any) -> None:
    folder = load_catalogue(SEGMENTS)
    assert definition_store({}) is None
    assert live_catalogue({}, lambda: folder).store is None
    env = {"DEFINITIONS_TABLE": TABLE, "CATALOGUE_CHECK_SECONDS": "12", "AWS_REGION": REGION}
    live = live_catalogue(env, lambda: folder)
    assert live.check_seconds == 12 and isinstance(live.store, DynamoDefinitionStore)
    assert live.catalogue is folder  # nothing stored yet
    with pytest.raises(ConfigError, match="CATALOGUE_CHECK_SECONDS"):
        live_catalogue({**env, "CATALOGUE_CHECK_SECONDS": "0"}, lambda: folder)


# ---- the seeding custom resource (functions/catalogue) ------------------------------------------------------

catalogue_handler = load_handler(ROOT, "catalogue")
CREATE = {"RequestType": "Create", "ResponseURL": "https://cloudformation-custom-resource.example/answer",
          "StackId": "stack", "RequestId": "r1", "LogicalResourceId": "CatalogueSeed"}


def test_the_seeding_resource_seeds_on_create_only_an_empty_store_and_ignores_delete(
        store: DynamoDefinitionStore) -> None:
    deps = catalogue_handler.Dependencies(store=store, folder=str(SEGMENTS))
    assert catalogue_handler.handle(CREATE, None, deps) == {"PhysicalResourceId": "cdp-catalogue-seed",
                                                            "Data": {"Seeded": "true"}}
    save_segments(store, [SegmentChange("rich", rich())], "ana", 2.0)  # a runtime edit
    update = {**CREATE, "RequestType": "Update", "PhysicalResourceId": "cdp-catalogue-seed"}
    assert catalogue_handler.handle(update, None, deps)["Data"] == {"Seeded": "false"}
    assert catalogue_handler.handle({**update, "RequestType": "Delete"}, None, deps)["Data"] == {"Seeded": "false"}
    head = store.head()
    assert head.version == 2 and head.segments["rich"] == 1  # the redeploy kept the runtime edit


def test_the_seeding_resource_always_answers_cloudformation(monkeypatch: pytest.MonkeyPatch, ddb: Any) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(catalogue_handler, "send_response", lambda url, body: sent.append((url, json.loads(body))))
    monkeypatch.setenv("DEFINITIONS_TABLE", DEFINITIONS_TABLE)
    monkeypatch.setenv("CATALOGUE_PATH", str(SEGMENTS))
    catalogue_handler.dependencies.cache_clear()
    catalogue_handler.handler(CREATE, LambdaContext())
    catalogue_handler.handler({**CREATE, "RequestType": "Replace"}, LambdaContext())
    catalogue_handler.dependencies.cache_clear()
    (url, success), (_, failure) = sent
    assert url == CREATE["ResponseURL"]
    assert success["Status"] == "SUCCESS" and success["Data"] == {"Seeded": "true"}
    assert (success["PhysicalResourceId"], success["RequestId"], success["StackId"]) == ("cdp-catalogue-seed", "r1",
                                                                                        "stack")
    assert failure["Status"] == "FAILED" and "RequestType" in failure["Reason"]
