"""The decisions routes in the synthesised template: where the function expects them, authorised as documented,
throttled like /me for end users, and the placements shipped to the api function alone."""

from __future__ import annotations

from typing import Any

from .test_api import api_function, method_settings
from .test_api_segments import gateway_methods


def test_the_operator_route_is_iam_authorised_and_requires_a_placement(template: Any) -> None:
    method = gateway_methods(template)[("/customers/{customerId}/decisions", "GET")]
    assert method["AuthorizationType"] == "AWS_IAM" and "RequestValidatorId" in method
    assert method["RequestParameters"] == {"method.request.path.customerId": True,
                                           "method.request.querystring.placement": True}


def test_the_end_user_route_takes_the_user_pool_token_and_its_own_small_bucket(template: Any) -> None:
    methods = gateway_methods(template)
    mine, me = methods[("/me/decisions", "GET")], methods[("/me", "GET")]
    assert mine["AuthorizationType"] == "COGNITO_USER_POOLS" and mine["AuthorizerId"] == me["AuthorizerId"]
    assert mine["RequestParameters"] == {"method.request.querystring.placement": True}
    found = method_settings(template)
    bucket = found[("/~1me~1decisions", "GET")]
    assert (bucket["ThrottlingRateLimit"], bucket["ThrottlingBurstLimit"]) == (
        found[("/~1me", "GET")]["ThrottlingRateLimit"], found[("/~1me", "GET")]["ThrottlingBurstLimit"])
    assert bucket["ThrottlingBurstLimit"] < api_function(template)["ReservedConcurrentExecutions"]


def test_the_placements_layer_reaches_the_api_function_only(template: Any) -> None:
    layers = {name: r["Properties"] for name, r in template.find_resources("AWS::Lambda::LayerVersion").items()}
    (placements,) = [name for name, layer in layers.items() if "placement" in layer.get("Description", "")]
    api = api_function(template)
    assert {"Ref": placements} in api["Layers"] and api["Environment"]["Variables"]["PLACEMENTS_PATH"] == \
        "/opt/placements"
    others = [f["Properties"] for f in template.find_resources("AWS::Lambda::Function").values()
              if f["Properties"]["Environment"]["Variables"].get("POWERTOOLS_SERVICE_NAME") != "cdp-api"
              and {"Ref": placements} in f["Properties"].get("Layers", [])]
    assert others == []
