"""The id map in the synthesised template: its table, the functions that read and write it, and the merge setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.infra.conftest import DATA_KEY, ROOT, resource

if TYPE_CHECKING:
    from cdk.synth import Synthesis

IDENTITY_TABLE = "StorageIdentityMapA948A130"  # its identity in CloudFormation: a changed id loses the merges


def function_of(template: Any, folder: str) -> dict[str, Any]:
    return next(f for f in template.find_resources("AWS::Lambda::Function").values()
                if f["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == f"cdp-{folder}")


def variables_of(template: Any, folder: str) -> dict[str, Any]:
    return dict(function_of(template, folder)["Properties"]["Environment"]["Variables"])


def actions_of(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


def on_the_id_map(template: Any) -> dict[str, list[dict[str, Any]]]:
    """Role policy logical id -> its statements that name the id map (as an ARN, or inside one)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for name, policy in template.find_resources("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if IDENTITY_TABLE in str(statement["Resource"]):
                found.setdefault(name, []).append(statement)
    return found


def test_the_id_map_is_keyed_by_digest_on_demand_encrypted_and_recoverable(template: Any) -> None:
    table = resource(template, "AWS::DynamoDB::Table", IDENTITY_TABLE)
    properties = table["Properties"]
    assert properties["KeySchema"] == [{"AttributeName": "digest", "KeyType": "HASH"}]
    assert {"AttributeName": "digest", "AttributeType": "S"} in properties["AttributeDefinitions"]
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS",
                                              "KMSMasterKeyId": {"Fn::GetAtt": [DATA_KEY, "Arn"]}}
    assert "StreamSpecification" not in properties
    # A deletion finds every id of a customer through its canonical index; tombstones expire.
    assert [index["IndexName"] for index in properties.get("GlobalSecondaryIndexes", [])] == ["canonical"]
    assert properties["TimeToLiveSpecification"]["Enabled"] is True
    # Merges cannot be rebuilt from the profiles alone: deleting the stack keeps them.
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")


def test_only_ingest_the_api_and_the_privacy_function_are_told_the_id_map(template: Any) -> None:
    assert variables_of(template, "ingest")["IDENTITY_TABLE"] == {"Ref": IDENTITY_TABLE}
    assert variables_of(template, "api")["IDENTITY_TABLE"] == {"Ref": IDENTITY_TABLE}
    told = {f["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
            for f in template.find_resources("AWS::Lambda::Function").values()
            if "IDENTITY_TABLE" in f["Properties"]["Environment"]["Variables"]}
    assert told == {"cdp-ingest", "cdp-api", "cdp-privacy"}


def test_ingest_reads_and_puts_links_and_the_api_only_reads_them(template: Any) -> None:
    found = {name: s for name, s in on_the_id_map(template).items() if not name.startswith("Privacy")}
    assert {name.split("Role")[0] for name in found} == {"Ingest", "Api"}
    for name, statements in found.items():
        # The table itself, never an index or a wildcard beside it.
        assert [s["Resource"] for s in statements] == [{"Fn::GetAtt": [IDENTITY_TABLE, "Arn"]}], name
        assert all(s["Effect"] == "Allow" for s in statements), name
    ingest = next(s for name, s in found.items() if name.startswith("IngestRole"))
    api = next(s for name, s in found.items() if name.startswith("ApiRole"))
    assert sorted(a for s in ingest for a in actions_of(s)) == ["dynamodb:BatchGetItem", "dynamodb:PutItem"]
    assert [a for s in api for a in actions_of(s)] == ["dynamodb:BatchGetItem"]


def test_the_stack_outputs_the_id_map_table_name(template: Any) -> None:
    outputs = template.find_outputs("IdentityTableName")
    assert outputs == {"IdentityTableName": {"Value": {"Ref": IDENTITY_TABLE}}}


def test_known_customers_are_not_merged_unless_the_setting_says_so(template: Any) -> None:
    assert variables_of(template, "ingest")["CDP_MERGE_KNOWN"] == "false"
    assert "CDP_MERGE_KNOWN" not in variables_of(template, "api")


@pytest.mark.parametrize(("given", "expected"), [(True, "true"), ("true", "true"), (" TRUE ", "true"),
                                                 (False, "false"), ("false", "false")])
def test_merge_known_comes_from_context(given: object, expected: str, tmp_path: Path) -> None:
    """A JSON boolean in cdk.json or the text ``cdk deploy -c merge_known=true`` gives."""
    from aws_cdk.assertions import Template

    from cdk.synth import build_app, stack_of
    from cdp.config import flag

    template = Template.from_stack(stack_of(build_app({"merge_known": given}, tmp_path)))
    variables = variables_of(template, "ingest")
    assert variables["CDP_MERGE_KNOWN"] == expected
    # What is synthesised is what the function's cold start reads back, never a value it refuses.
    assert flag(variables, "CDP_MERGE_KNOWN") is (expected == "true")


@pytest.mark.parametrize("given", ["yes", "1", "", 1])
def test_a_merge_known_that_is_not_true_or_false_is_refused_at_synth(given: object, tmp_path: Path) -> None:
    from cdk.settings import SettingsError
    from cdk.synth import build_app

    with pytest.raises(SettingsError, match="context merge_known must be true or false"):
        build_app({"merge_known": given}, tmp_path)


def dashboard_widgets(template: Any) -> dict[str, dict[str, Any]]:
    """Title -> widget properties; the body's references (the region, table names) read as ``ref``."""
    (dashboard,) = template.find_resources("AWS::CloudWatch::Dashboard").values()
    parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"][1]
    body = json.loads("".join(part if isinstance(part, str) else "ref" for part in parts))
    return {w["properties"]["title"]: w["properties"] for w in body["widgets"] if "title" in w["properties"]}


def test_the_dashboard_shows_merges_refusals_by_reason_and_the_id_map(template: Any) -> None:
    widgets = dashboard_widgets(template)
    merges = {tuple(m[:-1]) if isinstance(m[-1], dict) else tuple(m)
              for m in widgets["Identity: merges, refused merges and redirected events"]["metrics"]}
    assert merges == {("cdp", "Merges", "service", "ingest"), ("cdp", "MergedProfilesAbsorbed", "service", "ingest"),
                      ("cdp", "MergesRefused", "reason", "known", "service", "ingest"),
                      ("cdp", "MergesRefused", "reason", "limit", "service", "ingest"),
                      ("cdp", "MergesRefused", "reason", "deleted", "service", "ingest"),
                      ("cdp", "EventsRedirected", "service", "ingest")}
    id_map = [m[:2] for m in widgets["Id map: reads, emails indexed and table throttles"]["metrics"]]
    assert id_map == [["cdp", "IdentityMapReads"], ["cdp", "EmailsIndexed"],
                      ["AWS/DynamoDB", "ReadThrottleEvents"], ["AWS/DynamoDB", "WriteThrottleEvents"]]


def test_the_local_stack_creates_the_id_map_and_gives_its_name_to_ingest_and_the_api(
        synthesised: Synthesis) -> None:
    from cdp_dev.local_stack import resources_from_template

    resources = resources_from_template(synthesised.template, ROOT)
    assert resources.tables[IDENTITY_TABLE]["KeySchema"] == [{"AttributeName": "digest", "KeyType": "HASH"}]
    assert resources.functions["ingest"]["IDENTITY_TABLE"] == IDENTITY_TABLE
    assert resources.functions["api"]["IDENTITY_TABLE"] == IDENTITY_TABLE
    assert resources.functions["ingest"]["CDP_MERGE_KNOWN"] == "false"
