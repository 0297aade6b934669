"""Properties of the segment history in the synthesised template: the table, the nightly snapshot, the grants,
the metrics' alarm option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.infra.conftest import ROOT
from tests.infra.test_pipeline import function_folders
from tests.infra.test_timers import actions_of, statements_of


def history_table(template: Any) -> tuple[str, dict[str, Any]]:
    tables = template.find_resources("AWS::DynamoDB::Table")
    found = [(name, t["Properties"]) for name, t in tables.items() if name.startswith("HistoryTable")]
    assert len(found) == 1, sorted(tables)
    return found[0]


def function_of(template: Any, folder: str) -> dict[str, Any]:
    name = next(name for name, f in function_folders(template).items() if f == folder)
    return dict(template.find_resources("AWS::Lambda::Function")[name])


def dynamo_actions(template: Any, role_prefix: str, table: str) -> set[str]:
    """The DynamoDB actions the role may take on the table (its own ARN, never an index)."""
    actions: set[str] = set()
    for statement in statements_of(template, role_prefix):
        resources = json.dumps(statement["Resource"])
        if table in resources:
            assert "index" not in resources
            actions |= {a for a in actions_of(statement) if a.startswith("dynamodb:")}
    return actions


def test_the_history_table_is_keyed_by_segment_and_day_encrypted_and_expires(template: Any) -> None:
    _, properties = history_table(template)
    assert properties["KeySchema"] == [{"AttributeName": "segment_id", "KeyType": "HASH"},
                                       {"AttributeName": "day", "KeyType": "RANGE"}]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert properties["SSESpecification"]["SSEType"] == "KMS"
    assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert properties["BillingMode"] == "PAY_PER_REQUEST"


def test_the_snapshot_runs_at_five_past_midnight_utc_with_retries_and_a_dead_letter_queue(template: Any) -> None:
    snapshot = next(name for name, folder in function_folders(template).items() if folder == "history")
    rules = [r["Properties"] for r in template.find_resources("AWS::Events::Rule").values()
             if r["Properties"].get("ScheduleExpression") == "cron(5 0 * * ? *)"]
    assert len(rules) == 1
    [target] = rules[0]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [snapshot, "Arn"]}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == 2
    assert "Arn" in target["DeadLetterConfig"]


def test_changes_write_the_history_the_api_reads_it_and_the_snapshot_sets_sizes(template: Any) -> None:
    table, _ = history_table(template)
    assert dynamo_actions(template, "ChangesRole", table) == {"dynamodb:UpdateItem"}
    assert dynamo_actions(template, "ApiRole", table) == {"dynamodb:Query"}
    assert dynamo_actions(template, "HistorySnapshotRole", table) == {"dynamodb:BatchGetItem", "dynamodb:UpdateItem"}
    for folder in ("changes", "api", "history"):
        variables = function_of(template, folder)["Properties"]["Environment"]["Variables"]
        assert variables["HISTORY_TABLE"] == {"Ref": table}, folder


def test_the_snapshot_only_reads_the_members_size_counters(template: Any) -> None:
    members = "StorageMembersC303E722"
    assert dynamo_actions(template, "HistorySnapshotRole", members) == {"dynamodb:BatchGetItem"}


def test_without_a_swing_threshold_there_is_no_alarm_and_no_swing_count(template: Any) -> None:
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    assert not [name for name in alarms if "SegmentSizeSwing" in name]
    variables = function_of(template, "history")["Properties"]["Environment"]["Variables"]
    assert "SEGMENT_SWING_PERCENT" not in variables
    assert json.loads((ROOT / "cdk.json").read_text())["context"]["segment_size_alarm_percent"] == 0


def test_a_swing_threshold_alarms_on_one_swinging_segment_to_the_alarm_topic(tmp_path: Path) -> None:
    from aws_cdk.assertions import Template

    from cdk.synth import synthesise

    context = dict(json.loads((ROOT / "cdk.json").read_text())["context"], segment_size_alarm_percent=25)
    template = Template.from_stack(synthesise(context, tmp_path).stack)
    alarms = {name: a["Properties"] for name, a in template.find_resources("AWS::CloudWatch::Alarm").items()
              if "SegmentSizeSwing" in name}
    assert len(alarms) == 1
    [alarm] = alarms.values()
    assert (alarm["MetricName"], alarm["Namespace"], alarm["Statistic"]) == ("SegmentsSwinging", "cdp", "Maximum")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "history"}]
    assert alarm["Period"] == 86400
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    topics = template.find_resources("AWS::SNS::Topic")
    assert [action["Ref"] for action in alarm["AlarmActions"]] == list(topics)
    variables = function_of(template, "history")["Properties"]["Environment"]["Variables"]
    assert variables["SEGMENT_SWING_PERCENT"] == "25"


def test_the_snapshot_failing_alarms(template: Any) -> None:
    snapshot = next(name for name, folder in function_folders(template).items() if folder == "history")
    alarms = [a["Properties"] for a in template.find_resources("AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("MetricName") == "Errors"]
    assert any(a["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": snapshot}}] for a in alarms)
