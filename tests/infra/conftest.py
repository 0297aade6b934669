"""One synthesised stack per test session: the first synth in a process takes seconds."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


ROOT = Path(__file__).resolve().parents[2]

# Logical ids of the resources tests mean one of (a property match would accept any resource of the type). They
# are also the resources' identity in CloudFormation: a changed id replaces the resource, and a retained table
# or bucket is then orphaned with the data while an empty one takes its place.
PROFILES_TABLE = "StorageProfiles2809A5F6"
MEMBERS_TABLE = "StorageMembersC303E722"
LEDGER_TABLE = "FanoutLedgerCDFC6BEA"
QUARANTINE_BUCKET = "StorageQuarantine381A7D7C"
USER_POOL = "ApiUsers862F2BE7"
DATA_KEY = "DataKey17AFBB84"
EVENTS_STREAM = "IngestEventsEF99370A"


def resource(template: Any, kind: str, logical_id: str) -> dict[str, Any]:
    """The one resource of ``kind`` with this logical id."""
    found: dict[str, dict[str, Any]] = template.find_resources(kind)
    assert logical_id in found, (f"no {kind} {logical_id} (a changed logical id replaces the resource); "
                                 f"the template has {sorted(found)}")
    return found[logical_id]


def synthesise(outdir: Path, context: dict[str, object] | None = None) -> Any:
    import aws_cdk as cdk

    from app import build_app

    previous = os.environ.get("CDK_OUTDIR")
    os.environ["CDK_OUTDIR"] = str(outdir)
    try:
        app = build_app(context)
        assembly = app.synth()  # raises ValidationFailed on any unacknowledged cdk-nag finding
    finally:
        if previous is None:
            os.environ.pop("CDK_OUTDIR", None)
        else:
            os.environ["CDK_OUTDIR"] = previous
    stack = next(child for child in app.node.children if isinstance(child, cdk.Stack))
    return stack, assembly


def every_integration_enabled() -> dict[str, object]:
    """cdk.json's context, with each documented integration switched on."""
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    for settings in context["integrations"].values():
        settings["enabled"] = True
    return dict(context)


@pytest.fixture(scope="session")
def synthesised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield synthesise(tmp_path_factory.mktemp("cdk.out"))


@pytest.fixture(scope="session")
def integrated_synthesised(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The stack with every integration enabled, as cdk.json documents them: (stack, assembly)."""
    return synthesise(tmp_path_factory.mktemp("cdk.out"), every_integration_enabled())


@pytest.fixture(scope="session")
def integrated(integrated_synthesised: Any) -> Any:
    from aws_cdk.assertions import Template

    stack, _ = integrated_synthesised
    return Template.from_stack(stack)


@pytest.fixture(scope="session")
def template(synthesised: Any) -> Any:
    from aws_cdk.assertions import Template

    stack, _ = synthesised
    return Template.from_stack(stack)
