"""PutRecords within its limits: 500 records and 5 MB per call, in order, errors mapped back in order."""

from __future__ import annotations

from typing import Any

from cdp.aws.kinesis import MAX_BYTES, MAX_RECORDS, KinesisEventStream, chunks


class RecordingKinesis:
    """A PutRecords client that refuses the records whose data is in ``refuse`` (with a throttling code)."""

    def __init__(self, refuse: frozenset[bytes] = frozenset()) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.refuse = refuse

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(Records)
        return {"Records": [{"ErrorCode": "ProvisionedThroughputExceededException"} if r["Data"] in self.refuse
                            else {"SequenceNumber": "1", "ShardId": "shardId-0"} for r in Records]}


def test_1200_records_go_in_calls_of_500_500_and_200_in_their_order() -> None:
    records = [(f"event-{i}".encode(), f"customer-{i % 7}") for i in range(1200)]
    client = RecordingKinesis()
    errors = KinesisEventStream(client, "events").put(records)
    assert [len(call) for call in client.calls] == [MAX_RECORDS, MAX_RECORDS, 200]
    sent = [(r["Data"], r["PartitionKey"]) for call in client.calls for r in call]
    assert sent == records
    assert errors == [None] * 1200


def test_a_call_never_carries_more_than_5_mb_of_data_and_keys() -> None:
    big = b"x" * (1024 * 1024)  # 1 MB records: five fill a call with their keys past the limit
    records = [(big, f"k{i}") for i in range(11)]
    sizes = [sum(len(data) + len(key) for data, key in chunk) for chunk in chunks(records)]
    assert all(size <= MAX_BYTES for size in sizes)
    assert [len(chunk) for chunk in chunks(records)] == [4, 4, 3]
    assert sum(len(chunk) for chunk in chunks(records)) == 11


def test_refused_records_are_reported_at_their_own_positions_across_calls() -> None:
    records = [(f"event-{i}".encode(), "c") for i in range(700)]
    refused = frozenset({b"event-3", b"event-499", b"event-500", b"event-699"})
    errors = KinesisEventStream(RecordingKinesis(refused), "events").put(records)
    assert {i for i, error in enumerate(errors) if error} == {3, 499, 500, 699}
    assert errors[3] == "ProvisionedThroughputExceededException"
