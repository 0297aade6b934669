"""The definitions table, who may read and write it, and the seeding custom resource, in the template."""

from __future__ import annotations

from typing import Any

from cdk.catalogue import folder_digest
from tests.infra.conftest import DATA_KEY, ROOT, resource
from tests.infra.test_pipeline import function_folders

DEFINITIONS_TABLE = "CatalogueDefinitionsEBCB6998"
SEEDER = "CatalogueSeederFunction10DE2F6C"
READERS = ("ingest", "changes", "timers", "privacy", "api", "jobs")


def statements_of(template: Any, function: str) -> list[dict[str, Any]]:
    """Every policy statement of the function's role."""
    role = template.find_resources("AWS::Lambda::Function")[function]["Properties"]["Role"]["Fn::GetAtt"][0]
    return [s for p in template.find_resources("AWS::IAM::Policy").values() if {"Ref": role} in p["Properties"]["Roles"]
            for s in p["Properties"]["PolicyDocument"]["Statement"]]


def definitions_actions(template: Any, function: str) -> set[str]:
    """The actions the function's role has on the definitions table (and checks they name the table alone)."""
    found: set[str] = set()
    for statement in statements_of(template, function):
        if DEFINITIONS_TABLE not in str(statement["Resource"]):
            continue
        assert statement["Resource"] in ({"Fn::GetAtt": [DEFINITIONS_TABLE, "Arn"]},
                                         [{"Fn::GetAtt": [DEFINITIONS_TABLE, "Arn"]}]), statement  # no index, no *
        action = statement["Action"]
        found |= set(action if isinstance(action, list) else [action])
    return found


def by_folder(template: Any) -> dict[str, str]:
    return {folder: name for name, folder in function_folders(template).items()}


def test_the_definitions_table_is_keyed_by_segment_and_version_encrypted_and_recoverable(template: Any) -> None:
    table = resource(template, "AWS::DynamoDB::Table", DEFINITIONS_TABLE)
    properties = table["Properties"]
    assert properties["KeySchema"] == [{"AttributeName": "segment_id", "KeyType": "HASH"},
                                       {"AttributeName": "version", "KeyType": "RANGE"}]
    assert {"AttributeName": "version", "AttributeType": "N"} in properties["AttributeDefinitions"]
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["SSESpecification"]["SSEEnabled"] is True
    assert properties["SSESpecification"]["KMSMasterKeyId"] == {"Fn::GetAtt": [DATA_KEY, "Arn"]}
    assert table["DeletionPolicy"] == "Retain"  # every version of every definition outlives the stack


def test_every_function_that_evaluates_or_names_segments_is_told_the_table(template: Any) -> None:
    functions = template.find_resources("AWS::Lambda::Function")
    folders = by_folder(template)
    for folder in (*READERS, "catalogue"):
        variables = functions[folders[folder]]["Properties"]["Environment"]["Variables"]
        assert variables["DEFINITIONS_TABLE"] == {"Ref": DEFINITIONS_TABLE}, folder
    assert "DEFINITIONS_TABLE" not in functions[folders["collector"]]["Properties"]["Environment"]["Variables"]


def test_the_pipeline_functions_only_read_the_catalogue(template: Any) -> None:
    folders = by_folder(template)
    for folder in ("ingest", "changes", "timers", "privacy"):
        assert definitions_actions(template, folders[folder]) == {"dynamodb:GetItem", "dynamodb:BatchGetItem"}, folder
    assert definitions_actions(template, folders["collector"]) == set()


def test_the_api_commits_changes_and_reads_histories(template: Any) -> None:
    assert definitions_actions(template, by_folder(template)["api"]) == {
        "dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"}


def test_the_seeding_runs_the_catalogue_function_with_the_folders_digest(template: Any) -> None:
    seeds = template.find_resources("Custom::CdpCatalogueSeed")
    assert len(seeds) == 1
    (seed,) = seeds.values()
    assert seed["Properties"]["ServiceToken"] == {"Fn::GetAtt": [SEEDER, "Arn"]}
    assert seed["Properties"]["Catalogue"] == folder_digest(ROOT / "segments")  # new definitions: an Update
    assert by_folder(template)["catalogue"] == SEEDER
    assert definitions_actions(template, SEEDER) == {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"}
    # nothing but the deploy runs it: no event source, no schedule
    assert SEEDER not in str(template.find_resources("AWS::Lambda::EventSourceMapping"))
    assert SEEDER not in str(template.find_resources("AWS::Events::Rule"))


def test_the_folder_digest_changes_with_any_definition(tmp_path: Any) -> None:
    (tmp_path / "a.yaml").write_text("id: a\n")
    before = folder_digest(tmp_path)
    assert folder_digest(tmp_path) == before
    (tmp_path / "a.yaml").write_text("id: b\n")
    assert folder_digest(tmp_path) != before


def test_the_local_stack_runs_the_seeding_once_and_never_as_a_component(synthesised: Any) -> None:
    from cdp_dev.local_stack import DEPLOY_TIME, SHARED_CLOCK, resources_from_template

    resources = resources_from_template(synthesised.template, ROOT)
    assert "catalogue" in DEPLOY_TIME and "catalogue" not in SHARED_CLOCK
    assert resources.functions["catalogue"]["DEFINITIONS_TABLE"] == DEFINITIONS_TABLE
    assert resources.functions["catalogue"]["CATALOGUE_PATH"] == str(ROOT / "segments")
    assert all(m.function != "catalogue" for m in resources.mappings)
    assert all(s.function != "catalogue" for s in resources.schedules)
