"""One synthesised stack per test session: the first synth in a process takes seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from cdk.synth import Synthesis

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


ROOT = Path(__file__).resolve().parents[2]

# Logical ids of the resources tests mean one of (a property match would accept any resource of the type). They
# are also the resources' identity in CloudFormation: a changed id replaces the resource, and a retained table
# or bucket is then orphaned with the data while an empty one takes its place.
PROFILES_TABLE = "StorageProfiles2809A5F6"
MEMBERS_TABLE = "StorageMembersC303E722"
DEFINITIONS_TABLE = "CatalogueDefinitionsEBCB6998"
HISTORY_TABLE = "HistoryTable4479EEA3"
JOBS_TABLE = "JobsTable10C8EDF6"
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


def every_integration_enabled() -> dict[str, object]:
    """cdk.json's context, with each documented integration switched on."""
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    for settings in context["integrations"].values():
        settings["enabled"] = True
    return dict(context)


@pytest.fixture(scope="session")
def synthesised(tmp_path_factory: pytest.TempPathFactory) -> Synthesis:
    from cdk.synth import synthesise

    return synthesise(outdir=tmp_path_factory.mktemp("cdk.out"))


@pytest.fixture(scope="session")
def integrated_synthesised(tmp_path_factory: pytest.TempPathFactory) -> Synthesis:
    """The stack with every integration enabled, as cdk.json documents them."""
    from cdk.synth import synthesise

    return synthesise(every_integration_enabled(), tmp_path_factory.mktemp("cdk.out"))


@pytest.fixture(scope="session")
def integrated(integrated_synthesised: Synthesis) -> Any:
    from aws_cdk.assertions import Template

    return Template.from_stack(integrated_synthesised.stack)


@pytest.fixture(scope="session")
def template(synthesised: Synthesis) -> Any:
    from aws_cdk.assertions import Template

    return Template.from_stack(synthesised.stack)
