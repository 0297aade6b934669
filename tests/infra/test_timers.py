"""Properties of the timers sweep in the synthesised template: the due index, the schedule, least privilege."""

from __future__ import annotations

import json
from typing import Any

from tests.infra.conftest import DEFINITIONS_TABLE, PROFILES_TABLE, resource
from tests.infra.test_pipeline import function_folders


def statements_of(template: Any, role_prefix: str) -> list[dict[str, Any]]:
    policies = template.find_resources("AWS::IAM::Policy")
    policy = next(p for name, p in policies.items() if name.startswith(role_prefix))
    return list(policy["Properties"]["PolicyDocument"]["Statement"])


def actions_of(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


def test_profiles_have_a_sparse_due_index_keyed_by_shard_and_deadline(template: Any) -> None:
    properties = resource(template, "AWS::DynamoDB::Table", PROFILES_TABLE)["Properties"]
    assert {"AttributeName": "ds", "AttributeType": "S"} in properties["AttributeDefinitions"]
    assert {"AttributeName": "nd", "AttributeType": "N"} in properties["AttributeDefinitions"]
    assert properties["GlobalSecondaryIndexes"] == [{
        "IndexName": "due",
        "KeySchema": [{"AttributeName": "ds", "KeyType": "HASH"}, {"AttributeName": "nd", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "KEYS_ONLY"},
    }]


def test_the_timers_function_runs_every_minute_with_retries_and_a_dead_letter_queue(template: Any) -> None:
    timers = next(name for name, folder in function_folders(template).items() if folder == "timers")
    rules = [r["Properties"] for r in template.find_resources("AWS::Events::Rule").values()
             if "ScheduleExpression" in r["Properties"] and r["Properties"]["ScheduleExpression"].startswith("rate(")]
    assert [r["ScheduleExpression"] for r in rules] == ["rate(1 minute)"]  # (the history's snapshot is a daily cron)
    swept: list[int] = []
    for target in rules[0]["Targets"]:
        assert target["Arn"] == {"Fn::GetAtt": [timers, "Arn"]}
        assert target["RetryPolicy"]["MaximumRetryAttempts"] == 2
        assert "Arn" in target["DeadLetterConfig"]
        swept += json.loads(target["Input"])["shards"]
    assert len(rules[0]["Targets"]) == 4  # the default sweep_workers
    assert sorted(swept) == list(range(32))  # every due shard, each by exactly one target


def test_the_timers_function_reads_the_due_index_and_writes_profiles_only(template: Any) -> None:
    statements = statements_of(template, "TimersRole")
    dynamo = {(action, str(statement["Resource"])) for statement in statements for action in actions_of(statement)
              if action.startswith("dynamodb:")}
    catalogue = {action for action, resource in dynamo if DEFINITIONS_TABLE in resource}
    assert catalogue == {"dynamodb:GetItem", "dynamodb:BatchGetItem"}  # the live catalogue's reads, on its table
    profiles = {action for action, resource in dynamo if DEFINITIONS_TABLE not in resource}
    assert profiles == {"dynamodb:Query", "dynamodb:BatchGetItem", "dynamodb:PutItem"}
    query = next(s for s in statements if "dynamodb:Query" in actions_of(s))
    assert "/index/due" in str(query["Resource"]) and "*" not in str(query["Resource"])
    writes = next(s for s in statements if "dynamodb:PutItem" in actions_of(s))
    assert "index" not in str(writes["Resource"])


def test_no_function_may_touch_table_indexes_it_does_not_query(template: Any) -> None:
    for name, policy in template.find_resources("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            assert "/index/*" not in str(statement.get("Resource")), name


def test_the_timers_environment_names_the_table_and_the_index(template: Any) -> None:
    functions = template.find_resources("AWS::Lambda::Function")
    timers = next(f for name, f in functions.items() if function_folders(template)[name] == "timers")
    variables = timers["Properties"]["Environment"]["Variables"]
    assert variables["DUE_INDEX_NAME"] == "due"
    assert "Ref" in variables["PROFILES_TABLE"]
    assert timers["Properties"]["Timeout"] == 60


def test_deadline_delay_is_alarmed_and_on_the_dashboard(template: Any) -> None:
    template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "DeadlineDelayMax", "Namespace": "cdp", "Threshold": 300})
    body = str(next(iter(template.find_resources("AWS::CloudWatch::Dashboard").values()))["Properties"])
    assert "DeadlineDelayP50" in body and "CustomersDue" in body
