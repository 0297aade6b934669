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
    assert len(cognito) == 2  # GET /me and GET /me/decisions
    authorizers = template.find_resources("AWS::ApiGateway::Authorizer")
    (authorizer,) = authorizers.values()
    assert authorizer["Properties"]["Type"] == "COGNITO_USER_POOLS"
    assert all(m["AuthorizerId"] == {"Ref": next(iter(authorizers))} for m in cognito)


def test_operator_methods_validate_requests(template: Any) -> None:
    for name, method in methods(template).items():
        if method["AuthorizationType"] == "AWS_IAM":
            assert "RequestValidatorId" in method, name
    template.has_resource_properties("AWS::ApiGateway::RequestValidator", {
        "ValidateRequestBody": True, "ValidateRequestParameters": True})


def method_settings(template: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The stage's method settings by (resource path, HTTP method); ``("/*", "*")`` is every method's default."""
    (stage,) = template.find_resources("AWS::ApiGateway::Stage").values()
    return {(s["ResourcePath"], s["HttpMethod"]): s for s in stage["Properties"]["MethodSettings"]}


def api_function(template: Any) -> dict[str, Any]:
    (function,) = [f["Properties"] for f in template.find_resources("AWS::Lambda::Function").values()
                   if f["Properties"]["Environment"]["Variables"].get("POWERTOOLS_SERVICE_NAME") == "cdp-api"]
    return dict(function)


def test_stage_is_throttled_logged_and_traced_without_bodies(template: Any) -> None:
    (stage,) = template.find_resources("AWS::ApiGateway::Stage").values()
    properties = stage["Properties"]
    found = method_settings(template)
    default = found[("/*", "*")]
    assert default["ThrottlingRateLimit"] == 100 and default["ThrottlingBurstLimit"] == 200
    for key, settings in found.items():
        assert settings["DataTraceEnabled"] is False, key  # request bodies may hold personal data
        assert settings["LoggingLevel"] == "ERROR" and settings["MetricsEnabled"] is True, key
    assert "DestinationArn" in properties["AccessLogSetting"]
    assert properties["TracingEnabled"] is True


def test_end_users_on_me_have_their_own_smaller_throttle(template: Any) -> None:
    """API Gateway applies the stage's limits to each method on its own; GET /me, the one route every shopper
    calls, gets a bucket well below the operators' and below the function's reserved concurrency."""
    found = method_settings(template)
    # the operator routes all take the default
    assert set(found) == {("/*", "*"), ("/~1me", "GET"), ("/~1me~1decisions", "GET")}
    me, operators = found[("/~1me", "GET")], found[("/*", "*")]
    assert (me["ThrottlingRateLimit"], me["ThrottlingBurstLimit"]) == (20, 40)
    assert me["ThrottlingRateLimit"] < operators["ThrottlingRateLimit"]
    assert me["ThrottlingBurstLimit"] < operators["ThrottlingBurstLimit"]
    assert me["ThrottlingBurstLimit"] < api_function(template)["ReservedConcurrentExecutions"]
    end_user = [m for m in methods(template).values() if m["AuthorizationType"] == "COGNITO_USER_POOLS"]
    resources = template.find_resources("AWS::ApiGateway::Resource")
    assert {resources[m["ResourceId"]["Ref"]]["Properties"]["PathPart"] for m in end_user} == {"me", "decisions"}


def test_the_api_function_has_reserved_concurrency(template: Any) -> None:
    assert api_function(template)["ReservedConcurrentExecutions"] == 50
    others = [f["Properties"] for f in template.find_resources("AWS::Lambda::Function").values()]
    assert sum("ReservedConcurrentExecutions" in f for f in others) == 1  # the pipeline keeps the account's pool


def test_api_throttling_and_concurrency_come_from_context(tmp_path: Path) -> None:
    from aws_cdk.assertions import Template

    from cdk.synth import build_app, stack_of

    app = build_app({"api_reserved_concurrency": "200", "api_me_rate_limit": "5", "api_me_burst_limit": "10",
                     "api_rate_limit": "300", "api_burst_limit": "600"}, tmp_path / "limits")
    template = Template.from_stack(stack_of(app))
    found = method_settings(template)
    assert (found[("/~1me", "GET")]["ThrottlingRateLimit"], found[("/~1me", "GET")]["ThrottlingBurstLimit"]) == (5, 10)
    assert (found[("/*", "*")]["ThrottlingRateLimit"], found[("/*", "*")]["ThrottlingBurstLimit"]) == (300, 600)
    assert api_function(template)["ReservedConcurrentExecutions"] == 200
    # 0: no reservation, for accounts whose concurrency quota cannot spare one.
    app = build_app({"api_reserved_concurrency": "0"}, tmp_path / "no-reservation")
    template = Template.from_stack(stack_of(app))
    assert "ReservedConcurrentExecutions" not in api_function(template)


def test_cors_comes_from_context(tmp_path: Path) -> None:
    from aws_cdk.assertions import Template

    from cdk.synth import build_app, stack_of

    app = build_app({"cors_origins": "https://shop.example.com"}, tmp_path)
    template = Template.from_stack(stack_of(app))
    options = [m for m in methods(template).values() if m["HttpMethod"] == "OPTIONS"]
    assert options
    headers = options[0]["Integration"]["IntegrationResponses"][0]["ResponseParameters"]
    assert headers["method.response.header.Access-Control-Allow-Origin"] == "'https://shop.example.com'"
    function = next(f for f in template.find_resources("AWS::Lambda::Function").values()
                    if "ME_CLAIM" in f["Properties"]["Environment"]["Variables"])
    assert function["Properties"]["Environment"]["Variables"]["CORS_ORIGINS"] == "https://shop.example.com"


def test_bad_context_is_refused_with_its_name(tmp_path: Path) -> None:
    from cdk.synth import build_app

    with pytest.raises(Exception, match="context cors_origins"):
        build_app({"cors_origins": "ftp://nope"}, tmp_path)
    with pytest.raises(Exception, match="context batch_size must be between 1 and 100"):
        build_app({"batch_size": "500"}, tmp_path)
    with pytest.raises(Exception, match=r"api_me_burst_limit \(30\) must be below api_reserved_concurrency \(30\)"):
        build_app({"api_reserved_concurrency": "30", "api_me_burst_limit": "30"}, tmp_path)


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
