"""The local stack's AWS emulator (moto), in one of two layouts.

- **In process** (the default): moto's backends live in the stack's own process. The handlers' and pollers'
  boto3 clients reach them without HTTP (moto's botocore hook answers every request to an AWS endpoint), and a
  threaded moto server serves the same backends on the stack's port for everything outside the process
  (`cdp send`, `cdp tail`, tests, the benchmark). Each request then costs one boto3 call and moto's work, with
  no HTTP server, routing or second process around it: about half the CPU of a request over HTTP.
- **Child process**: moto's server in a process of its own; every client talks HTTP to it. Both cores can
  then work at once, each request costing more.

Either way some of moto's methods are replaced by equivalents that do not grow with the data or the events:
Kinesis shards look records up by sequence number instead of walking the shard from its first record
(:func:`install_kinesis_lookups`), EventBridge compiles each JSONPath of a target's input template once
(:func:`install_event_path_cache`), an SQS receive checks each message's retention without describing the
whole queue (:func:`install_queue_retention_check`), a send to a standard queue does not build the queue's
attributes, each counting its messages (:func:`install_standard_queue_send`), a DynamoDB index query sorts only
the items with its key values, not the whole table (:func:`install_index_query`), an item is built keeping a
running size instead of re-measuring its attributes for each one (:func:`install_item_builder`), and DynamoDB's
attribute values are written to JSON directly rather than by moto's generic, shape-walking serializer
(:func:`install_attribute_value_writer`). One is a correction: table stream records get unique sequence numbers
under concurrent writes (:func:`serialise_table_stream_appends`).
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import string
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

REGION = "us-east-1"


# ---- moto's Kinesis shard, without walking its records --------------------------------------------------------

def _contiguous(records: dict[int, Any]) -> bool:
    """Whether a shard's sequence numbers are one run of consecutive integers (as moto's put_record makes them)."""
    if not records:
        return True
    first, last = next(iter(records)), next(reversed(records))
    return bool(last - first + 1 == len(records))


def shard_records_after(shard: Any, last_sequence_id: str, limit: int | None) -> tuple[list[Any], int, int]:
    """moto's ``Shard.get_records``, by lookup: the records after ``last_sequence_id`` (at most ``limit``), the
    last sequence number returned (or the one given) and the milliseconds the last of them is behind the shard's
    newest record. Its own walks the shard from the first record on every call."""
    records: dict[int, Any] = shard.records
    if not _contiguous(records):
        return ORIGINAL_GET_RECORDS(shard, last_sequence_id, limit)  # type: ignore[no-any-return]
    last_sequence = int(last_sequence_id)
    if not records:
        return [], last_sequence, 0
    first, newest = next(iter(records)), next(reversed(records))
    start = max(first, last_sequence + 1)
    end = newest if not limit else min(newest, start + limit - 1)
    found = [records[number] for number in range(start, end + 1)]
    if not found:
        return [], last_sequence, 0
    behind = records[newest].created_at - found[-1].created_at
    return found, found[-1].sequence_number, int(behind * 1000)


def shard_last_sequence(shard: Any) -> int:
    """moto's ``Shard.get_max_sequence_number`` without copying the shard's keys into a list on every record."""
    return next(reversed(shard.records)) if shard.records else 0


def shard_first_sequence(shard: Any) -> int:
    """moto's ``Shard.get_min_sequence_number``, likewise."""
    return next(iter(shard.records)) if shard.records else 0


ORIGINAL_GET_RECORDS: Callable[..., Any] = lambda *args: ([], 0, 0)  # noqa: E731 - replaced on install


def install_kinesis_lookups() -> None:
    """Replace moto's Kinesis ``Shard`` methods that walk or copy every record of the shard with lookups that
    return the same (a shard's records are an insertion-ordered dict keyed by consecutive sequence numbers)."""
    global ORIGINAL_GET_RECORDS
    from moto.kinesis.models import Shard

    if getattr(Shard.get_records, "__name__", "") == shard_records_after.__name__:
        return
    ORIGINAL_GET_RECORDS = Shard.get_records
    Shard.get_records = shard_records_after  # type: ignore[assignment]
    Shard.get_max_sequence_number = shard_last_sequence  # type: ignore[assignment]
    Shard.get_min_sequence_number = shard_first_sequence  # type: ignore[assignment]


# ---- moto's EventBridge targets, without compiling their input paths on every event ----------------------------

def install_event_path_cache() -> None:
    """Compile each JSONPath of moto's EventBridge input templates once, not once per target per event.

    moto renders every event for every rule target through its input template, compiling each of the template's
    JSONPaths with ``jsonpath_ng.ext.parse`` (a parser built on each call: milliseconds per path, tens of
    milliseconds per published event). A compiled path is immutable, so the same one serves every event."""
    import jsonpath_ng.ext

    compile_path = getattr(jsonpath_ng.ext, "parse")  # noqa: B009 - the module does not export it by name
    if not hasattr(compile_path, "cache_info"):
        setattr(jsonpath_ng.ext, "parse", functools.lru_cache(maxsize=512)(compile_path))  # noqa: B010


# ---- moto's SQS receive, without describing the whole queue for every message -------------------------------

def message_within_retention(backend: Any, queue_name: str, message: Any) -> bool:
    """moto's ``SQSBackend.is_message_valid_based_on_retention_period``: whether the message is still within its
    queue's retention period. Its own asks ``get_queue_attributes`` for the period, which builds every attribute
    of the queue three times over, each counting the queue's messages (visible, in flight, delayed) by the clock:
    three walks of the whole queue for every message a receive returns."""
    from moto.core.utils import unix_time

    retention: int = backend.get_queue(queue_name).message_retention_period
    return bool(retention + message.sent_timestamp / 1000 > unix_time())


ORIGINAL_RETENTION_CHECK: Callable[..., bool] = lambda *args: True  # noqa: E731 - replaced on install


def install_queue_retention_check() -> None:
    """Replace moto's per-message retention check with :func:`message_within_retention` (its own stays at
    :data:`ORIGINAL_RETENTION_CHECK`)."""
    global ORIGINAL_RETENTION_CHECK
    from moto.sqs.models import SQSBackend

    if SQSBackend.is_message_valid_based_on_retention_period is message_within_retention:
        return
    ORIGINAL_RETENTION_CHECK = SQSBackend.is_message_valid_based_on_retention_period
    SQSBackend.is_message_valid_based_on_retention_period = message_within_retention  # type: ignore[assignment]


def send_to_standard_queue(backend: Any, queue_name: str, message_body: str,
                           message_attributes: dict[str, Any] | None = None, delay_seconds: int | None = None,
                           deduplication_id: str | None = None, group_id: str | None = None,
                           system_attributes: dict[str, Any] | None = None, validate_group_id: bool = True) -> Any:
    """moto's ``SQSBackend.send_message`` without building the queue's attributes for a standard queue. Its own
    asks ``queue.attributes`` whether content-based deduplication is on, which counts the queue's visible, in-flight
    and delayed messages by the clock (three walks of the whole queue for every message sent, every event a bus
    rule delivers); a standard queue's attributes never hold that setting, so the answer is always no. A FIFO
    queue goes to moto's own (:data:`ORIGINAL_SEND_MESSAGE`)."""
    from moto.moto_api._internal import mock_random
    from moto.sqs.exceptions import InvalidParameterValue
    from moto.sqs.models import MAXIMUM_MESSAGE_DELAY, Message

    queue = backend.get_queue(queue_name)
    if queue.fifo_queue:
        return ORIGINAL_SEND_MESSAGE(backend, queue_name, message_body, message_attributes, delay_seconds,
                                     deduplication_id, group_id, system_attributes, validate_group_id)
    backend._validate_message(queue, message_body=message_body, delay_seconds=int(delay_seconds or 0),
                              deduplication_id=deduplication_id, group_id=group_id,
                              validate_group_id=validate_group_id)
    delay: int = int(delay_seconds) if delay_seconds is not None else queue.delay_seconds
    message = Message(str(mock_random.uuid4()), message_body, system_attributes)
    if deduplication_id is not None:
        message.deduplication_id = deduplication_id
        message.sequence_number = "".join(mock_random.choice(string.digits) for _ in range(20))
    if group_id is not None:
        message.group_id = group_id
    if message_attributes:
        message.message_attributes = message_attributes
    if delay > MAXIMUM_MESSAGE_DELAY:
        raise InvalidParameterValue(f"Value {delay} for parameter DelaySeconds is invalid. "
                                    "Reason: DelaySeconds must be >= 0 and <= 900.")
    message.mark_sent(delay_seconds=delay)
    queue.add_message(message)
    return message


ORIGINAL_SEND_MESSAGE: Callable[..., Any] = lambda *args: None  # noqa: E731 - replaced on install


def install_standard_queue_send() -> None:
    """Replace moto's SQS send with :func:`send_to_standard_queue` (its own stays at
    :data:`ORIGINAL_SEND_MESSAGE`); ``send_message_batch`` and EventBridge's SQS targets send through it."""
    global ORIGINAL_SEND_MESSAGE
    from moto.sqs.models import SQSBackend

    if SQSBackend.send_message is send_to_standard_queue:
        return
    ORIGINAL_SEND_MESSAGE = SQSBackend.send_message
    SQSBackend.send_message = send_to_standard_queue  # type: ignore[method-assign,assignment]


# ---- moto's DynamoDB index query, without sorting the whole table ----------------------------------------------

def _has_values(item: Any, conditions: list[tuple[str, Any]]) -> bool:
    """Whether the item holds every ``(attribute, value)`` of an index query's key conditions (moto's own test)."""
    for name, expected in conditions:
        value = item.attrs.get(name)
        if not value or value != expected:
            return False
    return True


def items_in_partition(table: Any, conditions: list[tuple[str, Any]]) -> list[Any]:
    """moto's ``Table.all_items`` (every item, sorted by primary key) cut down to the items holding the index
    query's key values: the same items in the same order as moto's query keeps of all of them."""
    hash_sets = list(table.items.values())  # copied at once: writers in other threads add items meanwhile
    stored = (item for hash_set in hash_sets
              for item in (list(hash_set.values()) if table.range_key_attr else (hash_set,)))
    return sorted((item for item in stored if _has_values(item, conditions)),
                  key=lambda x: (x.hash_key, x.range_key) if x.range_key else x.hash_key)


def query_index_partition(table: Any, hash_key: Any, range_comparison: str | None, range_objs: list[Any],
                          limit: int, exclusive_start_key: dict[str, Any] | None, scan_index_forward: bool,
                          projection_expressions: Any, index_name: str | None = None, consistent_read: bool = False,
                          filter_expression: Any = None, hash_key_conditions: list[tuple[str, Any]] | None = None,
                          range_key_conditions: Any = None, **filter_kwargs: Any) -> Any:
    """moto's ``Table.query``, which for an index query sorts every item of the table by primary key (the profiles
    table's due index: 32 shard queries per sweep, each sorting every profile) and then skips those without the
    query's key values. This one gives moto's own query (:data:`ORIGINAL_QUERY`) a view of the table whose
    ``all_items`` holds only the items with those values, sorted alike (:func:`items_in_partition`): the same
    candidates in the same order, so the same page, Limit, LastEvaluatedKey and projection. Table queries and
    index queries without key values go to moto's own as they are."""
    view = table
    if index_name and hash_key_conditions:
        view = copy.copy(table)
        conditions = list(hash_key_conditions)
        view.all_items = lambda: items_in_partition(table, conditions)
    return ORIGINAL_QUERY(view, hash_key, range_comparison, range_objs, limit, exclusive_start_key,
                          scan_index_forward, projection_expressions, index_name, consistent_read,
                          filter_expression, hash_key_conditions=hash_key_conditions,
                          range_key_conditions=range_key_conditions, **filter_kwargs)


ORIGINAL_QUERY: Callable[..., Any] = lambda *args, **kwargs: ([], 0, None)  # noqa: E731 - replaced on install


def install_index_query() -> None:
    """Replace moto's DynamoDB ``Table.query`` with :func:`query_index_partition` (its own stays at
    :data:`ORIGINAL_QUERY`)."""
    global ORIGINAL_QUERY
    from moto.dynamodb.models.table import Table

    current: Callable[..., Any] = Table.query
    if current is query_index_partition:
        return
    ORIGINAL_QUERY = current
    Table.query = query_index_partition  # type: ignore[method-assign,assignment]


# ---- moto's DynamoDB items, without re-measuring the item for every attribute -----------------------------------

ITEM_SIZE_LIMIT = 405000  # moto's LimitedSizeDict: between DynamoDB's measured 409 and 410 KB


def build_item(item: Any, hash_key: Any, range_key: Any, attrs: dict[str, Any]) -> None:
    """moto's ``Item.__init__``, keeping a running size. Its own sets each attribute through ``LimitedSizeDict``,
    which measures every attribute already set (keys and nested values) before each one: quadratic in the
    attributes of every item written, and growing as profiles grow. The same ``LimitedSizeDict`` results, with
    ``ItemSizeTooLarge`` raised at the same attribute."""
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType, LimitedSizeDict
    from moto.dynamodb.models.utilities import bytesize

    item.hash_key = hash_key
    item.range_key = range_key
    item.attrs = LimitedSizeDict()
    size = 0
    for key, value in attrs.items():
        typed = DynamoType(value)
        if size + bytesize(key) + typed.size() > ITEM_SIZE_LIMIT:
            raise ItemSizeTooLarge
        dict.__setitem__(item.attrs, key, typed)
        size += bytesize(str(key)) + typed.size()  # as LimitedSizeDict measures the attributes it holds


ORIGINAL_ITEM_INIT: Callable[..., None] = lambda *args: None  # noqa: E731 - replaced on install


def install_item_builder() -> None:
    """Replace moto's DynamoDB ``Item.__init__`` with :func:`build_item` (its own stays at
    :data:`ORIGINAL_ITEM_INIT`)."""
    global ORIGINAL_ITEM_INIT
    from moto.dynamodb.models.dynamo_type import Item

    if Item.__init__ is build_item:
        return
    ORIGINAL_ITEM_INIT = Item.__init__
    Item.__init__ = build_item  # type: ignore[method-assign,assignment]


# ---- moto's DynamoDB responses, without the generic serializer for every attribute value --------------------

ATTRIBUTE_VALUE_TYPES = ("S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL")  # the shape's member order


class NotPlain(Exception):
    """An attribute value :func:`plain_attribute_value` leaves to moto's own serializer."""


def _text(value: Any) -> Any:
    return str(value) if value not in [None, {}, []] else value  # moto's _serialize_type_string


def plain_attribute_value(serializer: Any, value: Any) -> dict[str, Any]:
    """An ``AttributeValue`` (``{"S": ...}``, ``{"M": {...}}``, ...) as moto's JSON serializer writes it, member
    by member of the shape: strings by ``str``, binaries in base64, booleans and nulls as they are, maps and lists
    recursively (a missing value skipped in a map, kept in a list). Raises :class:`NotPlain` for anything but a
    dict of those members."""
    if not isinstance(value, dict) or not value or any(name not in ATTRIBUTE_VALUE_TYPES for name in value):
        raise NotPlain
    written: dict[str, Any] = {}
    for name in ATTRIBUTE_VALUE_TYPES:
        member = value.get(name)
        if member is None:
            continue
        if name in ("S", "N"):
            written[name] = _text(member)
        elif name == "B":
            written[name] = serializer._base64(member)
        elif name in ("SS", "NS"):
            written[name] = [_text(item) for item in member]
        elif name == "BS":
            written[name] = [serializer._base64(item) for item in member]
        elif name == "M":
            written[name] = {key: plain_attribute_value(serializer, item) for key, item in member.items()
                             if item is not None}
        elif name == "L":
            written[name] = [None if item is None else plain_attribute_value(serializer, item) for item in member]
        else:
            written[name] = member
    return written


def serialize_structure(serializer: Any, serialized: dict[str, Any], value: Any, shape: Any, key: str) -> None:
    """moto's ``BaseJSONSerializer._serialize_type_structure``, writing a plain ``AttributeValue`` directly
    (:func:`plain_attribute_value`) instead of through the value picker for each of its ten members, and each
    member of each nested map and list (the bulk of every GetItem, BatchGetItem, Query and stream record)."""
    if value is not None and key and shape.name == "AttributeValue" \
            and not getattr(serializer._value_picker, "response_transformers", None):
        try:
            serialized[serializer.get_serialized_name(shape, key)] = plain_attribute_value(serializer, value)
            return
        except NotPlain:
            pass
    ORIGINAL_SERIALIZE_STRUCTURE(serializer, serialized, value, shape, key)


ORIGINAL_SERIALIZE_STRUCTURE: Callable[..., None] = lambda *args: None  # noqa: E731 - replaced on install


def install_attribute_value_writer() -> None:
    """Replace moto's JSON structure serializer with :func:`serialize_structure` (its own stays at
    :data:`ORIGINAL_SERIALIZE_STRUCTURE`)."""
    global ORIGINAL_SERIALIZE_STRUCTURE
    from moto.core.serialize import BaseJSONSerializer

    if BaseJSONSerializer._serialize_type_structure is serialize_structure:
        return
    ORIGINAL_SERIALIZE_STRUCTURE = BaseJSONSerializer._serialize_type_structure
    BaseJSONSerializer._serialize_type_structure = serialize_structure  # type: ignore[assignment,method-assign]


def serialise_table_stream_appends() -> None:
    """Give every write its own table stream sequence number, as DynamoDB does.

    moto numbers a stream record by the shard's length, read and then appended to without a lock, so two profile
    writes from the ingest's write threads can get the same number. The changes function then keys two customers'
    records, and their images, by one id, and reading the stream after a repeated last number never advances. One
    lock around moto's append keeps the numbers unique and in append order.
    """
    from moto.dynamodb.models.table import StreamShard

    if getattr(StreamShard.add, "serialised", False):
        return
    append = StreamShard.add
    lock = threading.Lock()

    @functools.wraps(append)
    def add(self: StreamShard, old: Any, new: Any) -> None:
        with lock:
            append(self, old, new)

    add.serialised = True  # type: ignore[attr-defined]
    StreamShard.add = add  # type: ignore[method-assign]


def install_lookups() -> None:
    serialise_table_stream_appends()
    """Every replacement of moto's own methods this module makes (see above)."""
    install_kinesis_lookups()
    install_event_path_cache()
    install_queue_retention_check()
    install_standard_queue_send()
    install_index_query()
    install_item_builder()
    install_attribute_value_writer()


# ---- the two layouts -----------------------------------------------------------------------------------------

def wait_until_serving(endpoint: str, alive: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the AWS emulator exited (is the port of {endpoint} free?)")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the AWS emulator did not start on {endpoint}")


class InProcessEmulator:
    """moto's backends in this process: boto3 clients with no endpoint URL reach them directly, and a threaded
    server serves them over HTTP on ``port``."""

    in_process = True

    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.port = port
        self._mock: Any = None
        self._server: Any = None

    def start(self) -> None:
        from moto import mock_aws
        from moto.server import ThreadedMotoServer

        install_lookups()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no request log lines in the feed
        self._mock = mock_aws()
        self._mock.start()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        try:
            self._server.start()
        except OSError as error:
            raise RuntimeError(f"the AWS emulator could not serve {self.endpoint}: {error}") from error
        wait_until_serving(self.endpoint, lambda: True)

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._mock is not None:
            self._mock.stop()
            self._mock = None


class ChildProcessEmulator:
    """moto's server in a child process on ``port``; clients use its endpoint URL."""

    in_process = False

    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-m", "cdp_dev.emulator", "--port", str(self.port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        process = self._process
        wait_until_serving(self.endpoint, lambda: process.poll() is None)

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._process = None


Emulator = InProcessEmulator | ChildProcessEmulator
LAYOUTS: dict[str, type[InProcessEmulator] | type[ChildProcessEmulator]] = {
    "in-process": InProcessEmulator, "child": ChildProcessEmulator}


def main(argv: list[str] | None = None) -> int:
    """The child process's emulator: moto's server, with the replacements above installed."""
    parser = argparse.ArgumentParser(description="moto's server for the local stack")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    install_lookups()
    from moto.server import main as serve

    serve(["-H", "127.0.0.1", "-p", str(args.port)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
