"""Data subject requests in the synthesised template: the requests table, the privacy queue and function, the
id map's tombstone TTL and index, quarantine retention, the API's routes, and least-privilege grants."""

from __future__ import annotations

import json
from typing import Any

from tests.infra.conftest import QUARANTINE_BUCKET, resource


def functions(template: Any) -> dict[str, dict[str, Any]]:
    found = template.find_resources("AWS::Lambda::Function")
    return {r["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]: {"id": name, **r["Properties"]}
            for name, r in found.items()}


def statements_of(template: Any, service: str) -> list[dict[str, Any]]:
    role_id = functions(template)[f"cdp-{service}"]["Role"]["Fn::GetAtt"][0]
    policies = template.find_resources("AWS::IAM::Policy")
    return [statement for policy in policies.values() if {"Ref": role_id} in policy["Properties"]["Roles"]
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]]


def actions_of(template: Any, service: str) -> set[str]:
    found: set[str] = set()
    for statement in statements_of(template, service):
        actions = statement["Action"]
        found.update([actions] if isinstance(actions, str) else actions)
    return found


def test_the_requests_table_is_encrypted_recoverable_and_expires_its_records(template: Any) -> None:
    tables = template.find_resources("AWS::DynamoDB::Table")
    [requests] = [t["Properties"] for t in tables.values()
                  if t["Properties"]["KeySchema"][0]["AttributeName"] == "request_id"]
    assert requests["SSESpecification"]["SSEEnabled"] is True
    assert requests["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert requests["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_the_privacy_queue_is_encrypted_keeps_raw_ids_a_day_and_feeds_the_privacy_function(template: Any) -> None:
    privacy = functions(template)["cdp-privacy"]
    variables = privacy["Environment"]["Variables"]
    queue_id = variables["PRIVACY_QUEUE_URL"]["Ref"]
    queue = template.find_resources("AWS::SQS::Queue")[queue_id]["Properties"]
    assert queue["MessageRetentionPeriod"] == 86_400
    assert "KmsMasterKeyId" in queue
    dead_letters = template.find_resources("AWS::SQS::Queue")[queue["RedrivePolicy"]["deadLetterTargetArn"]
                                                               ["Fn::GetAtt"][0]]["Properties"]
    assert dead_letters["MessageRetentionPeriod"] == 86_400
    mappings = [m["Properties"] for m in template.find_resources("AWS::Lambda::EventSourceMapping").values()
                if m["Properties"]["FunctionName"] == {"Ref": privacy["id"]}]
    assert [m["EventSourceArn"]["Fn::GetAtt"][0] for m in mappings] == [queue_id]
    assert mappings[0]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert variables["VERIFY_DELAY_SECONDS"] == "60"
    assert variables["TOMBSTONE_RETENTION_DAYS"] == "400"


def test_tombstones_expire_and_the_id_map_is_indexed_by_customer(template: Any) -> None:
    tables = template.find_resources("AWS::DynamoDB::Table")
    [id_map] = [t["Properties"] for t in tables.values()
                if t["Properties"]["KeySchema"] == [{"AttributeName": "digest", "KeyType": "HASH"}]
                and any(i["IndexName"] == "canonical" for i in t["Properties"].get("GlobalSecondaryIndexes", []))]
    assert id_map["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    [index] = id_map["GlobalSecondaryIndexes"]
    assert index["Projection"] == {"ProjectionType": "KEYS_ONLY"}


def test_quarantine_objects_expire_after_the_configured_retention(template: Any) -> None:
    rules = resource(template, "AWS::S3::Bucket", QUARANTINE_BUCKET)["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rules[0]["ExpirationInDays"] == 30
    assert rules[0]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}


def test_the_api_routes_requests_as_iam_operator_routes(template: Any) -> None:
    methods = [m["Properties"] for m in template.find_resources("AWS::ApiGateway::Method").values()]
    deletes = [m for m in methods if m["HttpMethod"] == "DELETE"]  # a customer's deletion, a segment's
    assert len(deletes) == 2 and all(d["AuthorizationType"] == "AWS_IAM" for d in deletes)
    assert {next(iter(d["RequestParameters"])) for d in deletes} == {"method.request.path.customerId",
                                                                     "method.request.path.segmentId"}
    resources = template.find_resources("AWS::ApiGateway::Resource")
    parts = {r["Properties"]["PathPart"] for r in resources.values()}
    assert {"requests", "{requestId}", "export"} <= parts
    api = functions(template)["cdp-api"]["Environment"]["Variables"]
    assert {"REQUESTS_TABLE", "PRIVACY_QUEUE_URL", "REQUEST_RETENTION_DAYS"} <= set(api)


def test_grants_are_least_privilege(template: Any, integrated: Any) -> None:
    assert not any(a.endswith(":*") for a in actions_of(template, "privacy"))
    api = actions_of(template, "api")
    assert "dynamodb:DeleteItem" not in api and "s3:GetObject" not in api  # the api starts deletions, never erases
    assert {"sqs:SendMessage", "dynamodb:GetItem"} <= api
    # With integrations, the privacy function reads the ledger by customer through its index only.
    ledger_queries = [s for s in statements_of(integrated, "privacy") if s["Action"] == "dynamodb:Query"]
    text = json.dumps(ledger_queries)
    assert "/index/customer" in text and "/index/canonical" in text
    assert "LEDGER_TABLE" in functions(integrated)["cdp-privacy"]["Environment"]["Variables"]
    assert "LEDGER_TABLE" not in functions(template)["cdp-privacy"]["Environment"]["Variables"]
