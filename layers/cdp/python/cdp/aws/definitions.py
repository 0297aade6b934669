"""The definitions store in DynamoDB: every version of every segment definition, the catalogue head, and the
population statistics, on one table keyed by ``segment_id`` (S) and ``version`` (N).

- A **version item** per segment version (1, 2, ...): the definition as JSON (none for a deletion), its author
  and time, and the catalogue version its change made. Versions are never overwritten or deleted.
- The **head** (``~catalogue``, version 0): the catalogue version, each current segment's version, the latest
  version each segment ever had (so a segment made again after a deletion continues its numbering), the
  statistics version and when it moved. It is the only item a function reads to learn of a change.
- The **population** item (``~population``, version 0): the percentile tables of :class:`PopulationStats`.
- The **models** item (``~models``, version 0): the computed traits' model documents (:mod:`cdp.core.traits`),
  one JSON attribute per model and its training time beside it. Storing models moves the head's statistics
  version in the same transaction, so every live catalogue reads them with the statistics.

A commit is one TransactWriteItems: the head moves from ``expected`` to ``expected + 1`` on condition that it is
still at ``expected``, and each new version item is put on condition that it does not exist. Two writers racing
for one head version: one wins, the other gets :class:`ConflictError` and validates again against the new head.

A plain-record table off the hot path, so pynamodb models describe its items, bound at cold start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pynamodb.attributes import BooleanAttribute, MapAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.connection import Connection
from pynamodb.exceptions import DoesNotExist, PynamoDBException, TransactWriteError
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from cdp.aws.plain_records import bind_table
from cdp.core.catalogue import Catalogue
from cdp.core.population import PopulationStats
from cdp.core.traits import MODELS
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.ports import CatalogueHead, ConflictError, SegmentChange, SegmentVersion, TransientError

HEAD_ID = "~catalogue"  # "~" is no segment id's first character (ids are lowercase slugs)
POPULATION_ID = "~population"
MODELS_ID = "~models"
MAX_CHANGES = 99  # TransactWriteItems takes 100 items: the head and 99 versions
RETRYABLE = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
                       "InternalServerError", "ThrottlingError", "TransactionConflict",
                       "TransactionConflictException", "TransactionInProgressException"})


class DefinitionItem(Model):
    """One version of one segment."""

    class Meta:
        table_name = "definitions"  # replaced by bind_definitions

    segment_id = UnicodeAttribute(hash_key=True)
    version = NumberAttribute(range_key=True)
    definition = UnicodeAttribute(null=True)  # JSON; none: the segment was deleted
    author = UnicodeAttribute()
    at = NumberAttribute()
    catalogue_version = NumberAttribute()
    deleted = BooleanAttribute(default=False)


class HeadItem(Model):
    """The catalogue head (segment_id ``~catalogue``, version 0)."""

    class Meta:
        table_name = "definitions"

    segment_id = UnicodeAttribute(hash_key=True)
    version = NumberAttribute(range_key=True)
    catalogue_version = NumberAttribute(null=True)  # absent until the first commit (statistics may come first)
    segments: MapAttribute[str, int] = MapAttribute(null=True)  # type: ignore[no-untyped-call]  # id -> current
    latest: MapAttribute[str, int] = MapAttribute(null=True)  # type: ignore[no-untyped-call]  # id -> latest ever
    stats_version = NumberAttribute(null=True)
    updated_at = NumberAttribute(null=True)


class PopulationItem(Model):
    """The population statistics (segment_id ``~population``, version 0)."""

    class Meta:
        table_name = "definitions"

    segment_id = UnicodeAttribute(hash_key=True)
    version = NumberAttribute(range_key=True)
    percentiles = UnicodeAttribute()  # JSON: metric -> the 99 percentile values
    computed_at = NumberAttribute()
    population = NumberAttribute()


class ModelsItem(Model):
    """The computed traits' model documents (segment_id ``~models``, version 0): ``<model>`` the document as JSON,
    ``<model>_at`` its training time (what a newer job's write is conditional on)."""

    class Meta:
        table_name = "definitions"

    segment_id = UnicodeAttribute(hash_key=True)
    version = NumberAttribute(range_key=True)
    rfm = UnicodeAttribute(null=True)
    rfm_at = NumberAttribute(null=True)
    clusters = UnicodeAttribute(null=True)
    clusters_at = NumberAttribute(null=True)
    predictions = UnicodeAttribute(null=True)
    predictions_at = NumberAttribute(null=True)


class Models:
    """The item models bound to one deployment's table."""

    def __init__(self, table_name: str, region: str | None = None, host: str | None = None) -> None:
        self.versions = bind_table(DefinitionItem, table_name, region, host)
        self.head = bind_table(HeadItem, table_name, region, host)
        self.population = bind_table(PopulationItem, table_name, region, host)
        self.models = bind_table(ModelsItem, table_name, region, host)
        # pynamodb's transactions take their connection explicitly (with a custom host, the model's is not used)
        self.connection = Connection(region=region or os.environ.get("AWS_REGION") or None, host=host)


def _numbers(raw: Any) -> dict[str, int]:
    if raw is None:
        return {}
    values = raw.as_dict() if isinstance(raw, MapAttribute) else dict(raw)  # type: ignore[no-untyped-call]
    return {str(k): int(v) for k, v in values.items()}


def _transient(error: PynamoDBException, what: str) -> TransientError:
    return TransientError(f"{what} failed: {error.cause_response_code or type(error).__name__}")


class DynamoDefinitionStore:
    """:class:`cdp.ports.DefinitionStore` over the definitions table.

    ``consistent_head``: read the head strongly consistently. The functions' checks do not need it: a head
    that lags the last commit by the fraction of a second an eventually consistent read may lag is picked up
    at the next check anyway, for half the read cost. Writers (the API) pass True so that they validate
    against the head they will commit on, rather than meet a conflict.
    """

    def __init__(self, models: Models, *, consistent_head: bool = False) -> None:
        self.models = models
        self.consistent_head = consistent_head

    # ---- reads ------------------------------------------------------------------------------

    def head(self) -> CatalogueHead:
        return self._head(self.consistent_head)[0]

    def _head(self, consistent: bool) -> tuple[CatalogueHead, dict[str, int]]:
        """The head, and the latest version of every segment ever stored."""
        try:
            item = self.models.head.get(HEAD_ID, 0, consistent_read=consistent)
        except DoesNotExist:
            return CatalogueHead(0, {}), {}
        except PynamoDBException as error:
            raise _transient(error, "reading the catalogue head") from error
        latest = _numbers(item.latest)
        head = CatalogueHead(int(item.catalogue_version or 0), _numbers(item.segments),
                             int(item.stats_version or 0), float(item.updated_at or 0), tuple(sorted(latest)))
        return head, latest

    def current(self, head: CatalogueHead) -> list[SegmentVersion]:
        # Strongly consistent: version items were written in the commit that moved the head, and an eventually
        # consistent read just after it could miss one. This read happens only when the head moved.
        keys = sorted(head.segments.items())
        try:
            found = {(item.segment_id, int(item.version)): item
                     for item in self.models.versions.batch_get(keys, consistent_read=True)}
        except PynamoDBException as error:
            raise _transient(error, "reading segment definitions") from error
        missing = [f"{segment_id}@{version}" for segment_id, version in keys if (segment_id, version) not in found]
        if missing:
            raise TransientError(f"segment versions named by the head are not readable yet: {', '.join(missing)}")
        return [self._version(found[key]) for key in keys]

    def history(self, segment_id: str) -> list[SegmentVersion]:
        try:
            items = list(self.models.versions.query(segment_id, self.models.versions.version > 0,
                                                    consistent_read=True, scan_index_forward=True))
        except PynamoDBException as error:
            raise _transient(error, "reading a segment's history") from error
        return [self._version(item) for item in items]

    @staticmethod
    def _version(item: DefinitionItem) -> SegmentVersion:
        definition = None if item.deleted or item.definition is None else json.loads(item.definition)
        return SegmentVersion(item.segment_id, int(item.version), definition, item.author, float(item.at),
                              int(item.catalogue_version))

    def population(self) -> PopulationStats | None:
        try:
            item = self.models.population.get(POPULATION_ID, 0, consistent_read=True)
        except DoesNotExist:
            item = None
        except PynamoDBException as error:
            raise _transient(error, "reading the population statistics") from error
        models = self._models()
        if item is None:
            return PopulationStats({}, models=models) if models else None
        table = {metric: tuple(float(v) for v in values) for metric, values in json.loads(item.percentiles).items()}
        return PopulationStats(table, int(item.computed_at), int(item.population), models=models)

    def _models(self) -> dict[str, dict[str, Any]]:
        try:
            item = self.models.models.get(MODELS_ID, 0, consistent_read=True)
        except DoesNotExist:
            return {}
        except PynamoDBException as error:
            raise _transient(error, "reading the computed traits' models") from error
        return {name: json.loads(getattr(item, name)) for name in MODELS if getattr(item, name, None)}

    # ---- writes -----------------------------------------------------------------------------

    def commit(self, changes: Sequence[SegmentChange], author: str, at: float, expected: int) -> CatalogueHead:
        if not changes or len(changes) > MAX_CHANGES:
            raise ValueError(f"a commit holds 1 to {MAX_CHANGES} changes, not {len(changes)}")
        if len({change.segment_id for change in changes}) != len(changes):
            raise ValueError("a commit changes each segment at most once")
        head, latest = self._head(consistent=True)  # the latest versions: a new one continues them
        if head.version != expected:
            raise ConflictError(f"the catalogue is at version {head.version}, not {expected}")
        version = expected + 1
        segments, latest = dict(head.segments), dict(latest)
        models = self.models
        items = []
        for change in changes:
            number = latest.get(change.segment_id, 0) + 1
            latest[change.segment_id] = number
            if change.definition is None:
                segments.pop(change.segment_id, None)
            else:
                segments[change.segment_id] = number
            items.append(models.versions(
                change.segment_id, number, author=author, at=at, catalogue_version=version,
                deleted=change.definition is None,
                definition=None if change.definition is None else json.dumps(change.definition, default=str)))
        state = models.head.catalogue_version
        condition = (state.does_not_exist() | (state == 0)) if expected == 0 else (state == expected)
        try:
            with TransactWrite(connection=models.connection) as transaction:
                transaction.update(models.head(HEAD_ID, 0), actions=[
                    state.set(version), models.head.segments.set(segments), models.head.latest.set(latest),
                    models.head.updated_at.set(at)], condition=condition)
                for item in items:
                    transaction.save(item, condition=models.versions.version.does_not_exist())
        except TransactWriteError as error:
            raise self._commit_error(error) from error
        except PynamoDBException as error:
            raise _transient(error, "committing segment definitions") from error
        return CatalogueHead(version, segments, head.stats_version, at, tuple(sorted(latest)))

    @staticmethod
    def _commit_error(error: TransactWriteError) -> Exception:
        codes = {reason.code for reason in error.cancellation_reasons if reason is not None}
        if "ConditionalCheckFailed" in codes:
            return ConflictError("the catalogue moved on since it was read")
        if codes & RETRYABLE or (error.cause_response_code or "") in RETRYABLE:
            return TransientError(f"committing segment definitions was throttled ({', '.join(sorted(codes))})")
        return _transient(error, "committing segment definitions")

    def put_population(self, stats: PopulationStats) -> CatalogueHead:
        models = self.models
        item = models.population(POPULATION_ID, 0, computed_at=int(stats.computed_at), population=int(stats.population),
                                 percentiles=json.dumps({k: list(v) for k, v in stats.percentiles.items()}))
        stored = models.population.computed_at
        try:
            with TransactWrite(connection=models.connection) as transaction:
                # Only over older statistics: two jobs can overlap, and the one that scanned earlier must not win.
                transaction.save(item, condition=stored.does_not_exist() | (stored < int(stats.computed_at)))
                transaction.update(models.head(HEAD_ID, 0), actions=[
                    models.head.stats_version.add(1), models.head.updated_at.set(float(stats.computed_at))])
        except TransactWriteError as error:
            codes = {reason.code for reason in error.cancellation_reasons if reason is not None}
            if codes != {"ConditionalCheckFailed"} and codes != {"ConditionalCheckFailed", "None"}:
                raise _transient(error, "storing the population statistics") from error
        except PynamoDBException as error:
            raise _transient(error, "storing the population statistics") from error
        return self._head(consistent=True)[0]


    def put_models(self, documents: Mapping[str, Mapping[str, Any]]) -> CatalogueHead:
        unknown = sorted(set(documents) - set(MODELS))
        if unknown or not documents:
            raise ValueError(f"models are {', '.join(MODELS)}, not {', '.join(unknown) or 'none'}")
        models = self.models
        item = models.models
        actions: list[Any] = []
        condition: Any = None
        for name, document in sorted(documents.items()):
            trained_at = int(document["trained_at"])
            stamp = getattr(item, f"{name}_at")
            actions += [getattr(item, name).set(json.dumps(document, default=str)), stamp.set(trained_at)]
            # Of two overlapping jobs the later one wins (at the same moment, as an event clock gives, the last).
            newer = stamp.does_not_exist() | (stamp <= trained_at)
            condition = newer if condition is None else condition & newer
        try:
            with TransactWrite(connection=models.connection) as transaction:
                transaction.update(item(MODELS_ID, 0), actions=actions, condition=condition)
                transaction.update(models.head(HEAD_ID, 0), actions=[models.head.stats_version.add(1)])
        except TransactWriteError as error:
            codes = {reason.code for reason in error.cancellation_reasons if reason is not None}
            if "ConditionalCheckFailed" not in codes or codes - {"ConditionalCheckFailed", "None"}:
                raise _transient(error, "storing the computed traits' models") from error
        except PynamoDBException as error:
            raise _transient(error, "storing the computed traits' models") from error
        return self._head(consistent=True)[0]


def definition_store(env: Mapping[str, str], *, consistent_head: bool = False) -> DynamoDefinitionStore | None:
    """The store ``DEFINITIONS_TABLE`` names; None when it is unset (the YAML folder is the catalogue)."""
    from cdp.config import CatalogueConfig

    config = CatalogueConfig.from_env(env)
    if not config.definitions_table:
        return None
    return DynamoDefinitionStore(Models(config.definitions_table, env.get("AWS_REGION") or None),
                                 consistent_head=consistent_head)


def live_catalogue(env: Mapping[str, str], fallback: Callable[[], Catalogue]) -> LiveCatalogue:
    """A function's :class:`LiveCatalogue`: over the store ``DEFINITIONS_TABLE`` names (none: ``fallback`` only),
    checked every ``CATALOGUE_CHECK_SECONDS``."""
    from cdp.config import CatalogueConfig

    config = CatalogueConfig.from_env(env)
    return LiveCatalogue(definition_store(env), fallback, check_seconds=config.check_seconds)


def live_part(overrides: Mapping[str, Any], fallback: Callable[[], Catalogue]) -> Callable[[], LiveCatalogue]:
    """A handler's ``live`` part for :func:`cdp.wiring.assemble`: the one given (``build(live=...)``), or one from
    the environment, built once however many parts (the engine, the function's own) ask for it."""
    made: list[LiveCatalogue] = []

    def part() -> LiveCatalogue:
        given = overrides.get("live")
        if isinstance(given, LiveCatalogue):
            return given
        if "live" in overrides:  # given as None: the fallback's catalogue, never a store
            given = LiveCatalogue(None, fallback)
            return given
        if not made:
            made.append(live_catalogue(os.environ, fallback))
        return made[0]

    return part
