"""Properties of the fan-out integrations in the synthesised template (every integration enabled)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.infra.conftest import LEDGER_TABLE, PROFILES_TABLE, resource
from tests.infra.test_pipeline import function_folders
from tests.infra.test_timers import actions_of

INTEGRATIONS = {"email", "webhook", "meta", "google"}


def integration_functions(template: Any) -> dict[str, dict[str, Any]]:
    functions = template.find_resources("AWS::Lambda::Function")
    return {folder: functions[name] for name, folder in function_folders(template).items() if folder in INTEGRATIONS}


def policy_of(template: Any, function: dict[str, Any]) -> list[dict[str, Any]]:
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    policies = [p for p in template.find_resources("AWS::IAM::Policy").values()
                if {"Ref": role} in p["Properties"]["Roles"]]
    return [s for p in policies for s in p["Properties"]["PolicyDocument"]["Statement"]]


def test_the_default_stack_has_no_integration_until_one_is_enabled(template: Any) -> None:
    assert not INTEGRATIONS & set(function_folders(template).values())


def test_each_enabled_integration_has_its_own_function(integrated: Any) -> None:
    assert set(integration_functions(integrated)) == INTEGRATIONS


def test_every_bus_rule_target_has_a_retry_policy_and_a_dead_letter_queue(integrated: Any) -> None:
    rules = integrated.find_resources("AWS::Events::Rule")
    targets = [t for r in rules.values() for t in r["Properties"]["Targets"]]
    assert len(targets) >= len(INTEGRATIONS) + 1  # the integrations and the timers schedule
    for target in targets:
        assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 2, target["Id"]
        assert "MaximumEventAgeInSeconds" in target["RetryPolicy"], target["Id"]
        assert "Arn" in target["DeadLetterConfig"], target["Id"]


def test_rules_route_by_detail_type_and_segment(integrated: Any) -> None:
    patterns = [r["Properties"]["EventPattern"] for r in integrated.find_resources("AWS::Events::Rule").values()
                if "EventPattern" in r["Properties"]]
    assert len(patterns) == len(INTEGRATIONS)
    for pattern in patterns:
        assert pattern["source"] == ["cdp.segments"]
        assert sorted(pattern["detail-type"]) == ["Segment Consent Changed", "Segment Entered", "Segment Exited"]
        assert pattern["detail"]["segment"]["id"]  # only the integration's configured segments


def test_integration_queues_redrive_to_an_encrypted_dead_letter_queue(integrated: Any) -> None:
    queues = integrated.find_resources("AWS::SQS::Queue")
    redriven = [q["Properties"] for name, q in queues.items()
                if "RedrivePolicy" in q["Properties"] and name.startswith("Fanout")]  # other constructs have queues
    assert len(redriven) == len(INTEGRATIONS)
    for properties in redriven:
        assert properties["RedrivePolicy"]["maxReceiveCount"] == 5
        assert "KmsMasterKeyId" in properties
    for queue in queues.values():
        assert "KmsMasterKeyId" in queue["Properties"]


def test_each_integration_reads_its_queue_with_partial_batch_responses(integrated: Any) -> None:
    mappings = [m["Properties"] for m in integrated.find_resources("AWS::Lambda::EventSourceMapping").values()
                if "FunctionResponseTypes" in m["Properties"] and "StartingPosition" not in m["Properties"]
                and json.dumps(m["Properties"]["FunctionName"]).startswith('{"Ref": "Fanout')]
    assert len(mappings) == len(INTEGRATIONS)
    assert all(m["FunctionResponseTypes"] == ["ReportBatchItemFailures"] for m in mappings)


@pytest.mark.parametrize("folder", sorted(INTEGRATIONS))
def test_integration_environment_is_complete(integrated: Any, folder: str) -> None:
    variables = integration_functions(integrated)[folder]["Properties"]["Environment"]["Variables"]
    assert json.loads(variables["TARGETS"])
    assert {"LEDGER_TABLE", "DEAD_LETTER_QUEUE_URL", "OPTIONS"} <= set(variables)
    assert ("SECRET_ARN" in variables) == (folder != "email")
    # Every integration checks consent per customer at delivery, from the profiles table.
    assert {"PROFILES_TABLE", "CONSENT_POLICY", "LEDGER_EXIT_DAYS", "LEDGER_EMAIL_DAYS"} <= set(variables)
    assert json.loads(variables["CONSENT_POLICY"])["uses"]["meta"] == ["advertising"]  # cdk.json's policy
    assert variables["LEDGER_EXIT_DAYS"] == "30" and variables["LEDGER_EMAIL_DAYS"] == "0"


@pytest.mark.parametrize("folder", sorted(INTEGRATIONS))
def test_integrations_read_consent_and_forget_ledger_rows(integrated: Any, folder: str) -> None:
    statements = policy_of(integrated, integration_functions(integrated)[folder])

    def actions_on(table: str) -> set[str]:
        return {a for s in statements if table in json.dumps(s["Resource"]) for a in actions_of(s)}

    assert "dynamodb:BatchGetItem" in actions_on(PROFILES_TABLE)  # consent, per customer
    assert not actions_on(PROFILES_TABLE) - {"dynamodb:BatchGetItem"}  # and nothing else of the profiles
    assert "dynamodb:DeleteItem" in actions_on(LEDGER_TABLE)  # a deleted customer's exit forgets its row


@pytest.mark.parametrize("folder", sorted(INTEGRATIONS))
def test_integration_roles_are_least_privilege(integrated: Any, folder: str) -> None:
    statements = policy_of(integrated, integration_functions(integrated)[folder])
    actions = {a for s in statements for a in actions_of(s)}
    assert all(not a.endswith("*") or a.startswith("kms:") for a in actions), actions
    assert "sqs:SendMessage" in actions  # its own dead-letter queue
    assert ("secretsmanager:GetSecretValue" in actions) == (folder != "email")
    assert ("ses:SendTemplatedEmail" in actions) == (folder == "email")
    ses = [s for s in statements if "ses:SendTemplatedEmail" in actions_of(s)]
    for statement in ses:
        assert "*" not in json.dumps(statement["Resource"])


def test_the_delivery_ledger_is_encrypted_with_recovery(integrated: Any) -> None:
    ledger = resource(integrated, "AWS::DynamoDB::Table", LEDGER_TABLE)
    properties = ledger["Properties"]
    assert properties["KeySchema"] == [{"AttributeName": "delivery", "KeyType": "HASH"}]
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["SSESpecification"]["SSEEnabled"] is True and properties["SSESpecification"]["SSEType"] == "KMS"
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert ledger["DeletionPolicy"] == "Retain"  # what makes each delivery happen once
    # a deletion finds every row of a customer through the keys-only index "customer"
    assert properties["GlobalSecondaryIndexes"] == [{
        "IndexName": "customer", "KeySchema": [{"AttributeName": "customer", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "KEYS_ONLY"}}]


def test_dead_letter_depth_of_each_integration_is_alarmed(integrated: Any) -> None:
    alarms = [a["Properties"] for a in integrated.find_resources("AWS::CloudWatch::Alarm").values()]
    waiting = [a for a in alarms if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"]
    assert len(waiting) >= 3 + len(INTEGRATIONS)
