"""Every operation of the API's OpenAPI document has its method in the REST API, IAM-authorised.

Segment lifecycle added routes with ':' (``POST /segments:validate``, ``POST /segments/{segmentId}:preview``): a
path part may hold ':' on its own (``segments:validate``) but not beside a parameter, so ``{segmentId}`` takes
``id:preview`` and the function tells the routes apart.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cdp_dev.handlers import load_handler

from .conftest import ROOT


def resource_paths(template: Any) -> dict[str, str]:
    """Each API Gateway resource's logical id -> its full path (the root is ``/``)."""
    resources = {name: r["Properties"] for name, r in template.find_resources("AWS::ApiGateway::Resource").items()}
    paths: dict[str, str] = {}

    def path_of(name: str) -> str:
        if name not in paths:
            parent = resources[name]["ParentId"]
            prefix = path_of(parent["Ref"]) if "Ref" in parent else ""
            paths[name] = f"{prefix}/{resources[name]['PathPart']}"
        return paths[name]

    for name in resources:
        path_of(name)
    return paths


def gateway_methods(template: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(resource path, HTTP method) -> the method's properties."""
    paths = resource_paths(template)
    found = {}
    for method in template.find_resources("AWS::ApiGateway::Method").values():
        properties = method["Properties"]
        resource = properties["ResourceId"]
        path = paths[resource["Ref"]] if "Ref" in resource else "/"
        found[(path, properties["HttpMethod"])] = properties
    return found


def gateway_path(openapi_path: str) -> str:
    """The resource that receives a documented path: a literal after a parameter stays in that part."""
    return re.sub(r"(\{[^}]+\}):[a-z]+", r"\1", openapi_path)


def test_every_documented_operation_has_an_iam_authorised_method(template: Any) -> None:
    document = json.loads(load_handler(ROOT, "api").openapi_document())
    methods = gateway_methods(template)
    missing, unauthorised = [], []
    for path, operations in document["paths"].items():
        for verb in operations:
            method = methods.get((gateway_path(path), verb.upper()))
            if method is None:
                missing.append(f"{verb.upper()} {path}")
            elif path not in ("/me", "/me/decisions") and method["AuthorizationType"] != "AWS_IAM":
                unauthorised.append(f"{verb.upper()} {path}")
    assert not missing, missing
    assert not unauthorised, unauthorised


def test_the_lifecycle_routes_are_where_the_function_expects_them(template: Any) -> None:
    methods = gateway_methods(template)
    for key in [("/segments/{segmentId}", "PUT"), ("/segments/{segmentId}", "DELETE"),
                ("/segments/{segmentId}", "POST"), ("/segments:validate", "POST"),
                ("/segments/{segmentId}/versions", "GET"), ("/segments/{segmentId}/history", "GET"),
                ("/jobs/{jobId}", "GET"), ("/customers/{customerId}/explain", "GET")]:
        assert key in methods, key
        assert methods[key]["AuthorizationType"] == "AWS_IAM" and "RequestValidatorId" in methods[key], key
    assert methods[("/jobs/{jobId}", "GET")]["RequestParameters"] == {"method.request.path.jobId": True}


def test_gateway_paths_map_literal_suffixes_to_their_parameter() -> None:
    assert gateway_path("/segments/{segmentId}:preview") == "/segments/{segmentId}"
    assert gateway_path("/segments:validate") == "/segments:validate"
    assert gateway_path("/customers/{customerId}/explain") == "/customers/{customerId}/explain"
