"""Properties of the synthesised stack's storage: on-demand, PITR, KMS and the outbox stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.infra.conftest import (
    DATA_KEY,
    MEMBERS_TABLE,
    PROFILES_TABLE,
    QUARANTINE_BUCKET,
    USER_POOL,
    resource,
)

if TYPE_CHECKING:
    from cdk.synth import Synthesis


def test_profiles_table_is_on_demand_keyed_by_customer(template: Any) -> None:
    properties = resource(template, "AWS::DynamoDB::Table", PROFILES_TABLE)["Properties"]
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["KeySchema"] == [{"AttributeName": "customer_id", "KeyType": "HASH"}]


def test_every_table_has_pitr_and_customer_managed_encryption(template: Any) -> None:
    tables = template.find_resources("AWS::DynamoDB::Table")
    assert tables
    for name, table in tables.items():
        properties = table["Properties"]
        assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, name
        assert properties["SSESpecification"]["SSEEnabled"] is True, name
        assert properties["SSESpecification"]["SSEType"] == "KMS", name
        assert "KMSMasterKeyId" in properties["SSESpecification"], name


def test_profiles_stream_carries_old_and_new_images(template: Any) -> None:
    properties = resource(template, "AWS::DynamoDB::Table", PROFILES_TABLE)["Properties"]
    assert properties["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}


def test_profiles_are_retained_when_the_stack_is_deleted(template: Any) -> None:
    profiles = resource(template, "AWS::DynamoDB::Table", PROFILES_TABLE)
    assert profiles["DeletionPolicy"] == "Retain"
    assert profiles["UpdateReplacePolicy"] == "Retain"


@pytest.mark.parametrize(("kind", "logical_id"), [("AWS::DynamoDB::Table", MEMBERS_TABLE),
                                                  ("AWS::S3::Bucket", QUARANTINE_BUCKET),
                                                  ("AWS::Cognito::UserPool", USER_POOL)])
def test_the_other_customer_data_is_retained_too(template: Any, kind: str, logical_id: str) -> None:
    """What the README's teardown note promises besides the profiles: the members index, the quarantine and the
    end users' pool."""
    found = resource(template, kind, logical_id)
    assert (found["DeletionPolicy"], found["UpdateReplacePolicy"]) == ("Retain", "Retain")


def test_data_key_rotates(template: Any) -> None:
    template.resource_count_is("AWS::KMS::Key", 1)
    assert resource(template, "AWS::KMS::Key", DATA_KEY)["Properties"]["EnableKeyRotation"] is True


def test_synth_passes_cdk_nag_with_no_unacknowledged_findings(synthesised: Synthesis) -> None:
    # synth raises ValidationFailed on any finding
    report = json.loads((Path(synthesised.assembly.directory) / "validation-report.json").read_text())
    assert all(plugin.get("conclusion") == "success" for plugin in report["pluginReports"])


def test_every_synth_runs_cdk_nag(tmp_path: Path) -> None:
    from aws_cdk import aws_sqs as sqs

    from cdk.synth import build_app, stack_of

    app = build_app(outdir=tmp_path)
    sqs.Queue(stack_of(app), "QueueWithoutDeadLetters")  # AwsSolutions-SQS3 / SQS4
    with pytest.raises(Exception, match="AwsSolutions-SQS3"):
        app.synth()


@pytest.mark.parametrize("variant", ["synthesised", "integrated_synthesised"])
def test_cfn_lint_reports_no_errors(variant: str, request: pytest.FixtureRequest) -> None:
    import subprocess
    import sys

    template_path = request.getfixturevalue(variant).template_file
    run = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), "--format", "json", str(template_path)],
                         capture_output=True, text=True, timeout=300, check=False)
    findings = json.loads(run.stdout or "[]")
    errors = [f for f in findings if f["Level"] == "Error"]
    assert errors == [], errors
    assert run.returncode in (0, 4, 8, 12)  # warnings and informational findings only


def test_profiles_expire_by_ttl_on_the_attribute_the_engine_sets(template: Any) -> None:
    properties = resource(template, "AWS::DynamoDB::Table", PROFILES_TABLE)["Properties"]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "xp", "Enabled": True}


def test_quarantine_objects_expire_after_the_retention(template: Any) -> None:
    rules = resource(template, "AWS::S3::Bucket", QUARANTINE_BUCKET)["Properties"]["LifecycleConfiguration"]["Rules"]
    context = json.loads((Path(__file__).resolve().parents[2] / "cdk.json").read_text())["context"]
    assert [rule["ExpirationInDays"] for rule in rules] == [context["retention"]["quarantine_days"]]


def _environment(template: Any, service: str) -> dict[str, str]:
    functions = [f["Properties"] for f in template.find_resources("AWS::Lambda::Function").values()
                 if f["Properties"].get("Environment", {}).get("Variables", {}).get("POWERTOOLS_SERVICE_NAME")
                 == service]
    assert len(functions) == 1, service
    return dict(functions[0]["Environment"]["Variables"])


@pytest.mark.parametrize("service", ["cdp-ingest", "cdp-timers"])
def test_the_functions_that_evaluate_segments_get_the_consent_policy_and_the_retention(integrated: Any,
                                                                                       service: str) -> None:
    from cdp.core.consent import ConsentPolicy

    variables = _environment(integrated, service)  # synthesised with cdk.json's context
    context = json.loads((Path(__file__).resolve().parents[2] / "cdk.json").read_text())["context"]
    assert ConsentPolicy.parse(json.loads(variables["CONSENT_POLICY"])) == ConsentPolicy.parse(context["consent"])
    assert variables["PROFILE_RETENTION_DAYS"] == str(context["retention"]["profile_days"])


def test_the_ingest_is_told_what_an_event_of_a_deleted_customer_does(template: Any) -> None:
    assert _environment(template, "cdp-ingest")["CDP_AFTER_DELETION"] == "block"
