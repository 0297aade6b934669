"""Properties of the HTTP API in the synthesised template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def methods(template: Any) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in template.find_resources("AWS::ApiGateway::Method").items()}


def test_no_method_is_without_authorization(template: Any) -> None:
    found = methods(template)
    assert len(found) >= 8
    for name, method in found.items():
        if method["HttpMethod"] == "OPTIONS":
            continue  # CORS preflight carries no credentials by design
        assert method["AuthorizationType"] in ("AWS_IAM", "COGNITO_USER_POOLS"), name


def test_only_me_takes_end_user_tokens_and_it_uses_the_user_pool(template: Any) -> None:
    cognito = [m for m in methods(template).values() if m["AuthorizationType"] == "COGNITO_USER_POOLS"]
    assert len(cognito) == 1
    authorizers = template.find_resources("AWS::ApiGateway::Authorizer")
    (authorizer,) = authorizers.values()
    assert authorizer["Properties"]["Type"] == "COGNITO_USER_POOLS"
    assert cognito[0]["AuthorizerId"] == {"Ref": next(iter(authorizers))}


def test_operator_methods_validate_requests(template: Any) -> None:
    for name, method in methods(template).items():
        if method["AuthorizationType"] == "AWS_IAM":
            assert "RequestValidatorId" in method, name
    template.has_resource_properties("AWS::ApiGateway::RequestValidator", {
        "ValidateRequestBody": True, "ValidateRequestParameters": True})


def test_stage_is_throttled_logged_and_traced_without_bodies(template: Any) -> None:
    (stage,) = template.find_resources("AWS::ApiGateway::Stage").values()
    properties = stage["Properties"]
    settings = properties["MethodSettings"][0]
    assert settings["ThrottlingRateLimit"] == 100 and settings["ThrottlingBurstLimit"] == 200
    assert settings["DataTraceEnabled"] is False
    assert "DestinationArn" in properties["AccessLogSetting"]
    assert properties["TracingEnabled"] is True


def test_cors_comes_from_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from app import build_app

    monkeypatch.setenv("CDK_OUTDIR", str(tmp_path))
    app = build_app({"cors_origins": "https://shop.example.com"})
    stack = next(child for child in app.node.children if isinstance(child, cdk.Stack))
    template = Template.from_stack(stack)
    options = [m for m in methods(template).values() if m["HttpMethod"] == "OPTIONS"]
    assert options
    headers = options[0]["Integration"]["IntegrationResponses"][0]["ResponseParameters"]
    assert headers["method.response.header.Access-Control-Allow-Origin"] == "'https://shop.example.com'"
    function = next(f for f in template.find_resources("AWS::Lambda::Function").values()
                    if "ME_CLAIM" in f["Properties"]["Environment"]["Variables"])
    assert function["Properties"]["Environment"]["Variables"]["CORS_ORIGINS"] == "https://shop.example.com"


def test_bad_context_is_refused_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app import build_app

    monkeypatch.setenv("CDK_OUTDIR", str(tmp_path))
    with pytest.raises(Exception, match="context cors_origins"):
        build_app({"cors_origins": "ftp://nope"})
    with pytest.raises(Exception, match="context batch_size must be between 1 and 100"):
        build_app({"batch_size": "500"})


def test_dashboard_shows_the_pipeline_and_alarms_notify_a_topic(template: Any) -> None:
    (dashboard,) = template.find_resources("AWS::CloudWatch::Dashboard").values()
    body = "".join(str(part) for part in dashboard["Properties"]["DashboardBody"]["Fn::Join"][1])
    for title in ("Ingest rate", "Iterator age", "Rejected and quarantined", "Transitions per segment",
                  "table throttles", "EventBridge failed invocations and DLQ depth", "API latency"):
        assert title in body, title
    assert "SegmentEntered" in body and "cart-abandoners" in body
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    described = " ".join(a["Properties"]["AlarmDescription"] for a in alarms.values())
    for what in ("behind the stream", "redrive", "function is failing", "throttling", "5xx"):
        assert what in described, what
    (topic,) = template.find_resources("AWS::SNS::Topic")
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic}]
