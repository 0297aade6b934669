"""In-process AWS (moto ``mock_aws``) for the ingest and changes handlers.

Each test gets fresh resources: the profiles table (with its NEW_AND_OLD_IMAGES stream), the
members index table, the quarantine bucket, a custom bus whose rule for source ``cdp.segments``
delivers to an SQS queue, and ``Dependencies`` for both handlers built from the real adapters
(``Stack.ingest_deps`` / ``Stack.changes_deps``). The handlers are called through
``handle(event, context, deps)``, never ``dependencies()``.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from cdp.core.catalogue import Catalogue, load_catalogue
from cdp.core.clock import FixedClock

from .support import (
    REGION,
    SEGMENTS,
    RequestCounter,
    Stack,
    create_resources,
    last_event_time,
    load_envelope,
)


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return load_catalogue(SEGMENTS)


@pytest.fixture(scope="session")
def session() -> boto3.Session:
    """One session for all tests: its clients share loaded service models (a client costs ms, not 0.5 s).
    Each client still has its own copy of the event hooks, so counters and injected errors stay per test."""
    return boto3.Session(region_name=REGION)


@pytest.fixture
def stack(catalogue: Catalogue, session: boto3.Session) -> Iterator[Stack]:
    with mock_aws():
        counter = RequestCounter()
        ddb, streams, s3, events, sqs = (counter.register(session.client(name)) for name in
                                         ("dynamodb", "dynamodbstreams", "s3", "events", "sqs"))
        stream_arn, queue_url = create_resources(ddb, s3, events, sqs)
        counter.reset()
        batch = load_envelope("kinesis/batch.json")
        clock = FixedClock(last_event_time(batch) + 60)
        yield Stack(ddb, streams, s3, events, sqs, counter, clock, catalogue, stream_arn, queue_url)
