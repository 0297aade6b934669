"""One synthesised stack per test session: the first synth in a process takes seconds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@pytest.fixture(scope="session")
def synthesised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import aws_cdk as cdk

    from app import build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    previous = os.environ.get("CDK_OUTDIR")
    os.environ["CDK_OUTDIR"] = str(outdir)
    try:
        app = build_app()
        assembly = app.synth()  # raises ValidationFailed on any unacknowledged cdk-nag finding
    finally:
        if previous is None:
            os.environ.pop("CDK_OUTDIR", None)
        else:
            os.environ["CDK_OUTDIR"] = previous
    stack = next(child for child in app.node.children if isinstance(child, cdk.Stack))
    yield stack, assembly


@pytest.fixture(scope="session")
def template(synthesised: Any) -> Any:
    from aws_cdk.assertions import Template

    stack, _ = synthesised
    return Template.from_stack(stack)
