"""Properties of the job engine in the synthesised template: the state machine, the schedule, the stores, grants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import PROFILES_TABLE
from tests.infra.test_timers import actions_of, statements_of


def function_folders(template: Any) -> dict[str, str]:
    """Logical id -> the function folder it runs (functions CDK adds itself have no Powertools service name)."""
    return {name: f["Properties"].get("Environment", {}).get("Variables", {}).get("POWERTOOLS_SERVICE_NAME", "")
            .removeprefix("cdp-") for name, f in template.find_resources("AWS::Lambda::Function").items()}


def machine(template: Any) -> tuple[str, dict[str, Any]]:
    ((name, found),) = template.find_resources("AWS::StepFunctions::StateMachine").items()
    return str(name), dict(found)


def definition(template: Any) -> dict[str, Any]:
    """The state machine's definition, with the function ARNs left as placeholders."""
    parts = machine(template)[1]["Properties"]["DefinitionString"]["Fn::Join"][1]
    return dict(json.loads("".join(p if isinstance(p, str) else '"ARN"' for p in parts).replace('""ARN""', '"ARN"')))


def environment(template: Any, folder: str) -> dict[str, Any]:
    functions = template.find_resources("AWS::Lambda::Function")
    name = next(n for n, f in function_folders(template).items() if f == folder)
    return dict(functions[name]["Properties"]["Environment"]["Variables"])


def test_phases_run_as_a_distributed_map_of_scan_segments_with_a_work_loop(template: Any) -> None:
    states = definition(template)["States"]
    assert definition(template)["StartAt"] == "Advance"
    segments = states["Segments"]
    assert segments["Type"] == "Map" and segments["ItemsPath"] == "$.segments"
    assert segments["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert segments["MaxConcurrency"] == 16
    inner = segments["ItemProcessor"]["States"]
    assert inner["Work"]["Next"] == "SegmentDone"
    assert {c["Next"] for c in inner["SegmentDone"]["Choices"]} == {"SegmentFinished"}
    assert inner["SegmentDone"]["Default"] == "Work"  # not done: Work again with the cursor
    assert segments["Next"] == "Finish" and states["Finish"]["Next"] == "Advance"
    for step in ("Advance", "Segments", "Finish"):
        assert states[step]["Catch"][0]["Next"] == "MarkFailed", step


def test_the_state_machine_is_traced_and_logs_every_state_without_its_data(template: Any) -> None:
    properties = machine(template)[1]["Properties"]
    assert properties["TracingConfiguration"] == {"Enabled": True}
    assert properties["LoggingConfiguration"]["Level"] == "ALL"
    assert properties["LoggingConfiguration"]["IncludeExecutionData"] is False
    assert properties["StateMachineName"] == "cdp-dev-jobs"


def schedule_of(template: Any, kind: str) -> dict[str, Any]:
    (properties,) = [s["Properties"] for s in template.find_resources("AWS::Scheduler::Schedule").values()
                     if json.loads(s["Properties"]["Target"]["Input"])["kind"] == kind]
    return dict(properties)


def test_a_schedule_starts_the_population_job_hourly(template: Any) -> None:
    properties = schedule_of(template, "percentiles")
    assert properties["ScheduleExpression"] == "rate(1 hour)"
    assert json.loads(properties["Target"]["Input"]) == {"step": "schedule", "kind": "percentiles"}
    jobs = next(n for n, f in function_folders(template).items() if f == "jobs")
    assert properties["Target"]["Arn"] == {"Fn::GetAtt": [jobs, "Arn"]}
    assert properties["Target"]["RetryPolicy"]["MaximumRetryAttempts"] == 2


def test_a_schedule_starts_the_traits_job_daily_with_the_cluster_setting(template: Any) -> None:
    properties = schedule_of(template, "traits")
    assert properties["ScheduleExpression"] == "cron(30 2 * * ? *)"
    assert json.loads(properties["Target"]["Input"]) == {"step": "schedule", "kind": "traits",
                                                         "options": {"clusters": None}}
    jobs = next(n for n, f in function_folders(template).items() if f == "jobs")
    assert properties["Target"]["Arn"] == {"Fn::GetAtt": [jobs, "Arn"]}


def test_the_models_layer_is_on_the_jobs_function_only_with_a_vcpu_of_memory(template: Any) -> None:
    layers = template.find_resources("AWS::Lambda::LayerVersion")
    (models,) = [n for n, layer in layers.items() if "scikit-learn" in layer["Properties"].get("Description", "")]
    functions = template.find_resources("AWS::Lambda::Function")
    holding = {function_folders(template)[n] for n, f in functions.items()
               if {"Ref": models} in f["Properties"].get("Layers", [])}
    assert holding == {"jobs"}
    jobs = next(n for n, f in function_folders(template).items() if f == "jobs")
    assert functions[jobs]["Properties"]["MemorySize"] == 1769


def test_a_cluster_count_of_one_is_refused(tmp_path: Path) -> None:
    from cdk.settings import SettingsError
    from cdk.synth import synthesise

    with pytest.raises(SettingsError, match="cluster_count"):
        synthesise({"cluster_count": 1}, tmp_path)


def test_the_jobs_function_has_its_stores_and_fifteen_minutes(template: Any) -> None:
    variables = environment(template, "jobs")
    assert {"PROFILES_TABLE", "JOBS_TABLE", "JOB_RESULTS_BUCKET", "JOBS_STATE_MACHINE_ARN"} <= set(variables)
    assert variables["JOB_SCAN_SEGMENTS"] == "16"
    functions = template.find_resources("AWS::Lambda::Function")
    name = next(n for n, f in function_folders(template).items() if f == "jobs")
    assert functions[name]["Properties"]["Timeout"] == 900


def test_the_jobs_function_scans_and_writes_profiles_and_starts_only_its_state_machine(template: Any) -> None:
    statements = statements_of(template, "JobsRoleDefault")
    dynamo = {action for s in statements for action in actions_of(s) if action.startswith("dynamodb:")}
    assert dynamo == {"dynamodb:Scan", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:GetItem",
                      "dynamodb:UpdateItem"}
    scan = next(s for s in statements if "dynamodb:Scan" in actions_of(s))
    assert scan["Resource"] == {"Fn::GetAtt": [PROFILES_TABLE, "Arn"]}
    start = next(s for s in statements if "states:StartExecution" in actions_of(s))
    assert "cdp-dev-jobs" in json.dumps(start["Resource"])


def test_the_api_may_start_and_read_jobs(template: Any) -> None:
    variables = environment(template, "api")
    assert "JOBS_TABLE" in variables and "JOBS_STATE_MACHINE_ARN" in variables
    statements = statements_of(template, "ApiRoleDefault")
    assert any("states:StartExecution" in actions_of(s) for s in statements)
    assert any("dynamodb:Scan" in actions_of(s) for s in statements)


def test_results_are_encrypted_refuse_plain_http_and_expire_in_a_week(template: Any) -> None:
    buckets = {n: b for n, b in template.find_resources("AWS::S3::Bucket").items() if n.startswith("JobsResults")}
    ((name, bucket),) = buckets.items()
    properties = bucket["Properties"]
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert properties["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == 7
    policies = [p for p in template.find_resources("AWS::S3::BucketPolicy").values()
                if p["Properties"]["Bucket"] == {"Ref": name}]
    assert any(s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
               for s in policies[0]["Properties"]["PolicyDocument"]["Statement"])


def test_the_jobs_table_expires_its_records(template: Any) -> None:
    tables = {n: t for n, t in template.find_resources("AWS::DynamoDB::Table").items() if n.startswith("JobsTable")}
    ((_, table),) = tables.items()
    assert table["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["Properties"]["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]


@pytest.mark.parametrize("value", ["hourly", "rate(0 hours)", "rate(5 weeks)"])
def test_a_population_schedule_that_is_not_an_expression_is_refused(value: str, tmp_path: Path) -> None:
    from cdk.settings import SettingsError
    from cdk.synth import synthesise

    with pytest.raises(SettingsError, match="population_schedule"):
        synthesise({"population_schedule": value}, tmp_path)


def test_a_failed_job_execution_raises_an_alarm_to_the_alarms_topic(template: Any) -> None:
    alarms = [a["Properties"] for a in template.find_resources("AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("MetricName") == "ExecutionsFailed"]
    (alarm,) = alarms
    assert alarm["Namespace"] == "AWS/States" and alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    (dimension,) = alarm["Dimensions"]
    assert dimension["Name"] == "StateMachineArn" and "Jobs" in json.dumps(dimension["Value"])
    assert len(alarm["AlarmActions"]) == 1


def test_the_jobs_function_writes_only_the_population_models_and_head_of_the_definitions_table(template: Any) -> None:
    from tests.infra.conftest import DEFINITIONS_TABLE

    statements = [s for s in statements_of(template, "JobsRoleDefault")
                  if s["Resource"] == {"Fn::GetAtt": [DEFINITIONS_TABLE, "Arn"]}]
    reads = [s for s in statements if "Condition" not in s]
    writes = [s for s in statements if "Condition" in s]
    assert [sorted(actions_of(s)) for s in reads] == [["dynamodb:BatchGetItem", "dynamodb:GetItem"]]
    (write,) = writes
    assert sorted(actions_of(write)) == ["dynamodb:PutItem", "dynamodb:UpdateItem"]
    assert write["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [
        "~population", "~models", "~catalogue"]}}
