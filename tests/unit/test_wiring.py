"""Building a function's dependencies with parts given: a given part is never built."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cdp.wiring import assemble
from cdp_dev.local_stack import response_headers


@dataclass(frozen=True)
class Parts:
    clock: str
    store: str


def test_a_given_part_is_used_and_never_built() -> None:
    def refuse() -> str:
        raise AssertionError("built although given")

    assert assemble(Parts, {"clock": "shared"}, clock=refuse, store=lambda: "built") == Parts("shared", "built")
    assert assemble(Parts, {}, clock=lambda: "own", store=lambda: "built") == Parts("own", "built")


def test_an_unknown_part_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="no dependency named clok"):
        assemble(Parts, {"clok": "x"}, clock=lambda: "own", store=lambda: "built")


def test_the_local_api_merges_headers_and_multi_value_headers_as_api_gateway_does() -> None:
    """Powertools' REST resolver answers with multiValueHeaders only: Content-Type must not be lost."""
    assert response_headers({"multiValueHeaders": {"Content-Type": ["application/json"]}}) == {
        "Content-Type": ["application/json"]}
    assert response_headers({"headers": {"Retry-After": "1", "Vary": "Origin", "Content-Length": "3"},
                             "multiValueHeaders": {"Vary": ["Origin", "Accept"], "Set-Cookie": ["a=1", "b=2"]}}) == {
        "Retry-After": ["1"], "Vary": ["Origin", "Accept"], "Set-Cookie": ["a=1", "b=2"]}
    assert response_headers({"statusCode": 204}) == {}
