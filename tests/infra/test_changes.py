"""The changes function's grants in the synthesised template: it writes the members index item by item (no
transactions, no reads), reads the profiles table's stream, and puts events on its own bus."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.conftest import DEFINITIONS_TABLE, HISTORY_TABLE, MEMBERS_TABLE, PROFILES_TABLE


def changes_statements(template: Any) -> list[dict[str, Any]]:
    policies = template.find_resources("AWS::IAM::Policy")
    policy = next(p for name, p in policies.items() if name.startswith("ChangesRole"))
    return list(policy["Properties"]["PolicyDocument"]["Statement"])


def actions_of(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


def test_the_changes_function_writes_only_members_items_and_reads_only_the_profiles_stream(template: Any) -> None:
    dynamo = [s for s in changes_statements(template) if any(a.startswith("dynamodb:") for a in actions_of(s))]
    writes = [s for s in dynamo if "dynamodb:PutItem" in actions_of(s)]
    assert len(writes) == 1
    assert sorted(actions_of(writes[0])) == ["dynamodb:PutItem", "dynamodb:UpdateItem"]
    assert writes[0]["Resource"] == [{"Fn::GetAtt": [MEMBERS_TABLE, "Arn"]}]  # the table only, no index
    # Besides: the catalogue's head and definitions (read), and the segment history's day rows (counted up).
    catalogue = [s for s in dynamo if s["Resource"] == {"Fn::GetAtt": [DEFINITIONS_TABLE, "Arn"]}]
    assert [sorted(actions_of(s)) for s in catalogue] == [["dynamodb:BatchGetItem", "dynamodb:GetItem"]]
    history = [s for s in dynamo if s["Resource"] == {"Fn::GetAtt": [HISTORY_TABLE, "Arn"]}]
    assert [actions_of(s) for s in history] == [["dynamodb:UpdateItem"]]
    others = {a for s in dynamo if s is not writes[0] and s not in catalogue + history for a in actions_of(s)}
    assert others == {"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator",
                      "dynamodb:ListStreams"}
    stream = next(s for s in dynamo if "dynamodb:GetRecords" in actions_of(s))
    assert stream["Resource"] == {"Fn::GetAtt": [PROFILES_TABLE, "StreamArn"]}


def test_the_changes_function_puts_events_on_its_bus_only(template: Any) -> None:
    puts = [s for s in changes_statements(template) if "events:PutEvents" in actions_of(s)]
    assert len(puts) == 1 and actions_of(puts[0]) == ["events:PutEvents"]
    bus = next(name for name in template.find_resources("AWS::Events::EventBus"))
    assert puts[0]["Resource"] == {"Fn::GetAtt": [bus, "Arn"]}


def changes_environment(template: Any) -> dict[str, Any]:
    functions = template.find_resources("AWS::Lambda::Function")
    return next(f["Properties"]["Environment"]["Variables"] for f in functions.values()
                if "MEMBERS_TABLE" in f["Properties"].get("Environment", {}).get("Variables", {})
                and "EVENT_BUS_NAME" in f["Properties"]["Environment"]["Variables"])


def test_by_default_every_segments_transitions_go_on_the_bus(template: Any) -> None:
    assert changes_environment(template)["CDP_PUBLISHED_SEGMENTS"] == "*"


def published(context: dict[str, Any]) -> str:
    from aws_cdk import App

    from cdk.settings import Settings

    return Settings.from_context(App(context=context)).published_segments


def test_routed_publishes_the_segments_of_the_enabled_integrations_and_a_list_adds_to_them() -> None:
    from tests.infra.conftest import every_integration_enabled

    context = every_integration_enabled()
    routed = sorted({segment for given in context["integrations"].values()  # type: ignore[attr-defined]
                     for segment in given["segments"]})
    assert published({**context, "published_segments": "routed"}) == ",".join(routed)
    both = published({**context, "published_segments": ["vip", "browsers"]}).split(",")
    assert sorted(both) == sorted({*routed, "vip", "browsers"})
    assert published({**context, "published_segments": "all"}) == "*"


@pytest.mark.parametrize("value", ["some", ["Not A Slug"], 3])
def test_a_published_segments_value_that_is_not_all_routed_or_ids_is_refused(value: object) -> None:
    from cdk.settings import SettingsError

    with pytest.raises(SettingsError, match="published_segments"):
        published({"published_segments": value})


def test_routed_with_no_integration_enabled_would_publish_nothing_and_is_refused() -> None:
    from cdk.settings import SettingsError

    with pytest.raises(SettingsError, match="nothing would be published"):
        published({"published_segments": "routed"})
