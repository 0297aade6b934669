"""Resource policies that let AWS services act for the stack: each only for this account's own resources
(confused deputy), on the data key, the alarms topic and the queues EventBridge delivers to."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.conftest import DATA_KEY, resource

ACCOUNT = {"Ref": "AWS::AccountId"}


def render(value: Any) -> str:
    """An ARN the template builds with Fn::Join, as text: ``arn:${AWS::Partition}:events:...``."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return "${" + str(value["Ref"]) + "}"
    separator, parts = value["Fn::Join"]
    return str(separator).join(render(part) for part in parts)


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def key_statements(template: Any) -> list[dict[str, Any]]:
    return list(resource(template, "AWS::KMS::Key", DATA_KEY)["Properties"]["KeyPolicy"]["Statement"])


def service_statements(template: Any, service: str) -> list[dict[str, Any]]:
    return [s for s in key_statements(template) if service in listed(s["Principal"].get("Service", []))]


def rule_arns(template: Any) -> set[str]:
    """The ARN of every rule in the template, from its name and bus (``rule/<bus>/<name>`` off the default bus)."""
    buses = template.find_resources("AWS::Events::EventBus")
    found = set()
    for rule in template.find_resources("AWS::Events::Rule").values():
        properties = rule["Properties"]
        bus = properties.get("EventBusName")
        path = f"{buses[bus['Ref']]['Properties']['Name']}/{properties['Name']}" if bus else properties["Name"]
        found.add(f"arn:${{AWS::Partition}}:events:${{AWS::Region}}:${{AWS::AccountId}}:rule/{path}")
    return found


@pytest.mark.parametrize("variant", ["template", "integrated"])
def test_every_service_the_key_trusts_is_held_to_this_accounts_resources(variant: str,
                                                                         request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue(variant)
    services = [s for s in key_statements(template) if "Service" in s["Principal"]]
    assert {p for s in services for p in listed(s["Principal"]["Service"])} == {
        "events.amazonaws.com", "cloudwatch.amazonaws.com"}
    for statement in services:
        assert "Condition" in statement, f"an unconditioned grant to a service on the key: {statement}"
        condition = statement["Condition"]
        assert condition["StringEquals"]["aws:SourceAccount"] == ACCOUNT, statement
        source_arns = next(v["aws:SourceArn"] for k, v in condition.items() if k in ("ArnEquals", "ArnLike"))
        for arn in listed(source_arns):
            assert render(arn).startswith("arn:${AWS::Partition}:"), statement["Sid"]
            assert ":${AWS::Region}:${AWS::AccountId}:" in render(arn), statement["Sid"]
        assert not {"kms:*", "kms:Encrypt", "kms:ReEncrypt*"} & set(listed(statement["Action"])), statement["Sid"]


@pytest.mark.parametrize("variant", ["template", "integrated"])
def test_eventbridge_may_use_the_key_only_for_this_stacks_rules(variant: str, request: pytest.FixtureRequest) -> None:
    """One statement (no unconditioned grant beside it), the two actions an SQS producer needs, and exactly the
    ARNs of the stack's rules: the timers' and the history's schedules (their dead-letter queues) and each
    integration (queue, dead letters)."""
    template = request.getfixturevalue(variant)
    statements = service_statements(template, "events.amazonaws.com")
    assert len(statements) == 1, statements
    (statement,) = statements
    assert sorted(listed(statement["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    allowed = {render(arn) for arn in listed(statement["Condition"]["ArnEquals"]["aws:SourceArn"])}
    assert allowed == rule_arns(template)
    assert len(allowed) == (6 if variant == "integrated" else 2)


def test_cloudwatch_alarms_may_publish_to_the_encrypted_alarms_topic(template: Any) -> None:
    (statement,) = service_statements(template, "cloudwatch.amazonaws.com")
    assert sorted(listed(statement["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    alarms = "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:*"
    assert render(statement["Condition"]["ArnLike"]["aws:SourceArn"]) == alarms
    (topic_policy,) = template.find_resources("AWS::SNS::TopicPolicy").values()
    (publish,) = [s for s in topic_policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    assert publish["Principal"] == {"Service": "cloudwatch.amazonaws.com"} and publish["Action"] == "sns:Publish"
    assert publish["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    assert render(publish["Condition"]["ArnLike"]["aws:SourceArn"]) == alarms


@pytest.mark.parametrize("variant", ["template", "integrated"])
def test_queues_take_eventbridge_messages_only_from_the_rule_that_targets_them(
        variant: str, request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue(variant)
    rules = template.find_resources("AWS::Events::Rule")
    delivered_to = {rule: {t["Arn"]["Fn::GetAtt"][0] for t in r["Properties"]["Targets"] if "Fn::GetAtt" in t["Arn"]}
                    | {t["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0] for t in r["Properties"]["Targets"]}
                    for rule, r in rules.items()}
    checked = 0
    for policy in template.find_resources("AWS::SQS::QueuePolicy").values():
        (queue,) = [q["Ref"] for q in policy["Properties"]["Queues"]]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] != "Allow" or statement["Principal"] != {"Service": "events.amazonaws.com"}:
                continue
            assert listed(statement["Action"]) == ["sqs:SendMessage"]
            (rule,) = [statement["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::GetAtt"][0]]
            assert queue in delivered_to[rule], (queue, rule)
            checked += 1
    # the two schedules' DLQs (timers, history); per integration its queue and DLQ
    assert checked == (2 + 2 * 4 if variant == "integrated" else 2)
