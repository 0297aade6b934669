"""The collector in the synthesised template: an HTTP API with Segment's routes in front of its function, which
may only put records on the events stream, read write keys and add quarantine objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import EVENTS_STREAM, QUARANTINE_BUCKET, resource

WRITE_KEYS_TABLE = "StorageWriteKeys91479C4A"
ROUTES = {"batch", "track", "identify", "page", "screen", "group", "alias", "b", "t", "i", "p", "s", "g", "a"}


def collector_function(template: Any) -> dict[str, Any]:
    return next(f for f in template.find_resources("AWS::Lambda::Function").values()
                if f["Properties"]["Environment"]["Variables"].get("POWERTOOLS_SERVICE_NAME") == "cdp-collector")


def collector_statements(template: Any) -> list[dict[str, Any]]:
    policy = next(p for name, p in template.find_resources("AWS::IAM::Policy").items()
                  if name.startswith("CollectorRole"))
    return list(policy["Properties"]["PolicyDocument"]["Statement"])


def actions_of(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


def test_every_tracking_api_route_and_short_form_is_a_post_to_the_function(template: Any) -> None:
    routes = template.find_resources("AWS::ApiGatewayV2::Route")
    keys = {r["Properties"]["RouteKey"] for r in routes.values()}
    assert keys == {f"POST /v1/{route}" for route in ROUTES}
    integrations = template.find_resources("AWS::ApiGatewayV2::Integration")
    assert integrations
    for integration in integrations.values():
        properties = integration["Properties"]
        assert properties["IntegrationType"] == "AWS_PROXY"
        assert properties["PayloadFormatVersion"] == "2.0"


def test_the_stage_is_throttled_and_logged_without_personal_data(template: Any) -> None:
    stage = next(iter(template.find_resources("AWS::ApiGatewayV2::Stage").values()))["Properties"]
    assert stage["StageName"] == "$default" and stage["AutoDeploy"] is True
    assert stage["DefaultRouteSettings"]["ThrottlingRateLimit"] == 1000
    assert stage["DefaultRouteSettings"]["ThrottlingBurstLimit"] == 2000
    log_format = stage["AccessLogSettings"]["Format"]
    assert "$context.status" in log_format
    assert "sourceIp" not in log_format and "userAgent" not in log_format


def test_the_function_gets_the_stream_the_write_keys_and_the_quarantine(template: Any) -> None:
    variables = collector_function(template)["Properties"]["Environment"]["Variables"]
    assert variables["STREAM_NAME"] == {"Ref": EVENTS_STREAM}
    assert variables["SOURCES_TABLE"] == {"Ref": WRITE_KEYS_TABLE}
    assert variables["QUARANTINE_BUCKET"] == {"Ref": QUARANTINE_BUCKET}
    assert variables["COLLECTOR_ORIGINS"] == "*"


def test_the_function_only_puts_records_reads_keys_and_adds_quarantine_objects(template: Any) -> None:
    statements = collector_statements(template)
    dynamo = [s for s in statements if any(a.startswith("dynamodb:") for a in actions_of(s))]
    assert len(dynamo) == 1 and actions_of(dynamo[0]) == ["dynamodb:GetItem"]
    assert dynamo[0]["Resource"] == {"Fn::GetAtt": [WRITE_KEYS_TABLE, "Arn"]}
    kinesis = {a for s in statements for a in actions_of(s) if a.startswith("kinesis:")}
    assert "kinesis:PutRecords" in kinesis
    assert not {a for a in kinesis if a.startswith(("kinesis:Get", "kinesis:Delete", "kinesis:Update"))}
    stream_resources = [s["Resource"] for s in statements if "kinesis:PutRecords" in actions_of(s)]
    assert stream_resources == [{"Fn::GetAtt": [EVENTS_STREAM, "Arn"]}]
    s3 = [s for s in statements if any(a.startswith("s3:") for a in actions_of(s))]
    assert len(s3) == 1 and actions_of(s3[0]) == ["s3:PutObject"]
    assert "quarantine/*" in str(s3[0]["Resource"])


def test_write_keys_are_kept_encrypted_with_point_in_time_recovery(template: Any) -> None:
    table = resource(template, "AWS::DynamoDB::Table", WRITE_KEYS_TABLE)["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "digest", "KeyType": "HASH"}]
    assert table["SSESpecification"]["SSEEnabled"] is True and table["SSESpecification"]["SSEType"] == "KMS"
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_collector_origins_come_from_context(tmp_path: Path) -> None:
    from aws_cdk.assertions import Template

    from cdk.synth import build_app, stack_of

    app = build_app({"collector_origins": "https://shop.example.com,https://www.example.com"}, tmp_path)
    template = Template.from_stack(stack_of(app))
    api = next(iter(template.find_resources("AWS::ApiGatewayV2::Api").values()))["Properties"]
    assert api["CorsConfiguration"]["AllowOrigins"] == ["https://shop.example.com", "https://www.example.com"]
    assert api["CorsConfiguration"]["AllowMethods"] == ["POST"]
    variables = collector_function(template)["Properties"]["Environment"]["Variables"]
    assert variables["COLLECTOR_ORIGINS"] == "https://shop.example.com,https://www.example.com"


def test_a_collector_origin_the_function_would_refuse_is_refused_at_synth(tmp_path: Path) -> None:
    from cdk.synth import build_app

    with pytest.raises(Exception, match="context collector_origins"):
        build_app({"collector_origins": "http://shop.example.com"}, tmp_path)
