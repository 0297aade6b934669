"""Writes the Lambda envelopes in events/kinesis and events/dynamodb from events/sample.jsonl.

    .venv/bin/python events/make_envelopes.py

Kinesis: a good batch, a batch with poison pills mid-batch, and a batch with a producer
duplicate. DynamoDB stream: one MODIFY record whose images show a segment entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdp_dev.lambda_events import sample_kinesis_record

HERE = Path(__file__).resolve().parent
TABLE_STREAM_ARN = ("arn:aws:dynamodb:eu-west-1:123456789012:table/cdp-profiles/stream/"
                    "2026-10-01T00:00:00.000")


def envelope(records: list[tuple[bytes, str]]) -> dict[str, Any]:
    return {"Records": [sample_kinesis_record(n, data, key) for n, (data, key) in enumerate(records, start=1)]}


def write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def main() -> None:
    messages = [json.loads(line) for line in (HERE / "sample.jsonl").read_text().splitlines() if line]
    good = [(json.dumps(m).encode(), str(m.get("userId") or m.get("anonymousId"))) for m in messages]
    write(HERE / "kinesis" / "batch.json", envelope(good[:60]))

    valid = good[:8]
    missing_id = dict(messages[3])
    del missing_id["messageId"]
    unknown_type = {**messages[4], "type": "purchase", "messageId": "poison-type"}
    # Segment accepts an order without order_id, and so does the ingest: applied among the poison, by its message id.
    no_order_id = {"type": "track", "event": "Order Completed", "messageId": "order-without-id", "userId": "alice",
                   "timestamp": "2026-10-02T10:00:00Z", "properties": {"revenue": 10}}
    oversize = {**messages[5], "messageId": "poison-big", "properties": {"blob": "x" * 40_000}}
    poison: list[tuple[bytes, str]] = [
        valid[0], valid[1],
        (b"\xff\xfe not base64 after decoding", "alice"),  # replaced below with invalid base64
        (b"{not json", "bob"),
        (json.dumps(missing_id).encode(), "alice"),
        valid[2],
        (json.dumps(unknown_type).encode(), "carol"),
        (json.dumps(no_order_id).encode(), "alice"),
        (json.dumps(oversize).encode(), "dave"),
        valid[3], valid[4],
    ]
    document = envelope(poison)
    document["Records"][2]["kinesis"]["data"] = "%%% not base64 %%%"
    write(HERE / "kinesis" / "poison.json", document)

    # A producer retry: the same message sent twice, so it appears under two sequence numbers.
    write(HERE / "kinesis" / "duplicate.json", envelope([good[0], good[1], good[0], good[2], good[1]]))

    old_image = {"customer_id": {"S": "frank"}, "v": {"N": "1"}, "ua": {"N": "1791277200"},
                 "m": {"M": {"potential-abandoners": {"N": "1791277200"}}}}
    new_image = {"customer_id": {"S": "frank"}, "v": {"N": "2"}, "ua": {"N": "1791450000"},
                 "t": {"M": {"email": {"S": "Frank@Example.com"}}},
                 "m": {"M": {"cart-abandoners": {"N": "1791450000"}}},
                 "tx": {"L": [
                     {"L": [{"S": "cart-abandoners"}, {"S": "entered"}, {"N": "1791450000"},
                            {"S": "condition.absence"},
                            {"S": "no Order Completed within 2d after Product Added"}]},
                     {"L": [{"S": "potential-abandoners"}, {"S": "exited"}, {"N": "1791450000"},
                            {"S": "condition.absence"},
                            {"S": "no longer: no Order Completed within 0s after Product Added"}]}]}}
    write(HERE / "dynamodb" / "stream.json", {"Records": [{
        "eventID": "c81e728d9d4c2f636f067f89cc14862c", "eventName": "MODIFY", "eventVersion": "1.1",
        "eventSource": "aws:dynamodb", "awsRegion": "eu-west-1", "eventSourceARN": TABLE_STREAM_ARN,
        "dynamodb": {"ApproximateCreationDateTime": 1791450000, "Keys": {"customer_id": {"S": "frank"}},
                     "NewImage": new_image, "OldImage": old_image, "SequenceNumber": "111100000000000000000001",
                     "SizeBytes": 420, "StreamViewType": "NEW_AND_OLD_IMAGES"}}]})


if __name__ == "__main__":
    main()
