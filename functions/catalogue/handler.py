"""Catalogue seeding: the deployment's custom resource that stores the layer's segment folder as the first
catalogue version, and only while the definitions store holds none.

So the YAML folder is the default catalogue of a new deployment, and a redeploy never overwrites what was
changed at runtime through the API (``cdp segments apply`` is how a folder changes a running catalogue).
Create and Update seed (Update too, so a store emptied by a restore is seeded again); Delete does nothing (the
retained table keeps every version). The function is the custom resource's service token and answers
CloudFormation at the event's ResponseURL itself. Configuration: :class:`cdp.config.SeedConfig`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.ports import DefinitionStore
from cdp.wiring import assemble

PHYSICAL_ID = "cdp-catalogue-seed"  # one per stack, never replaced (a new id would make CloudFormation delete)
AUTHOR = "deploy"
logger = Logger(service="cdp-catalogue")


@dataclass(frozen=True)
class Dependencies:
    store: DefinitionStore
    folder: str  # the folder of segment definitions


@cache
def dependencies() -> Dependencies:
    """Built on the first invocation (cold start), not at import."""
    return build()


def build(**overrides: Any) -> Dependencies:
    """The dependencies from the environment; a part given by name is used instead and never built."""
    from cdp.aws.definitions import DynamoDefinitionStore, Models
    from cdp.config import SeedConfig

    config = SeedConfig.from_env(os.environ)
    return assemble(
        Dependencies, overrides,
        store=lambda: DynamoDefinitionStore(Models(config.definitions_table, os.environ.get("AWS_REGION")),
                                            consistent_head=True),
        folder=lambda: str(config.catalogue_path))


def handle(event: dict[str, Any], context: LambdaContext | None, deps: Dependencies) -> dict[str, Any]:
    """The Provider framework's on-event answer: the physical id, and whether this event seeded the store."""
    from cdp.pipeline.definitions import folder_definitions, seed

    kind = str(event.get("RequestType", ""))
    if kind not in ("Create", "Update", "Delete"):
        raise ValueError(f"RequestType: must be Create, Update or Delete, not {kind!r}")
    seeded = False
    if kind != "Delete":
        seeded = seed(deps.store, folder_definitions(deps.folder), AUTHOR, time.time())
        logger.info("catalogue seeding", extra={"request": kind, "seeded": seeded})
    return {"PhysicalResourceId": PHYSICAL_ID, "Data": {"Seeded": "true" if seeded else "false"}}


def cloudformation_response(event: dict[str, Any], outcome: dict[str, Any] | None, reason: str = "") -> bytes:
    """The answer CloudFormation waits for at the event's ResponseURL: SUCCESS with ``outcome``, else FAILED."""
    return json.dumps({
        "Status": "SUCCESS" if outcome is not None else "FAILED",
        "Reason": reason or "see the catalogue function's log",
        "PhysicalResourceId": (outcome or {}).get("PhysicalResourceId") or event.get("PhysicalResourceId")
        or PHYSICAL_ID,
        "StackId": event.get("StackId", ""), "RequestId": event.get("RequestId", ""),
        "LogicalResourceId": event.get("LogicalResourceId", ""), "Data": (outcome or {}).get("Data", {}),
    }).encode()


def send_response(url: str, body: bytes) -> None:
    """PUT to the pre-signed S3 URL CloudFormation gave (no content type: the URL is signed without one)."""
    import urllib.request

    if not url.startswith("https://"):
        raise ValueError("ResponseURL: must be an https:// URL")
    request = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": ""})
    with urllib.request.urlopen(request, timeout=30) as answer:  # https only, checked above
        answer.read()


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Lambda-backed custom resource: whatever happens, CloudFormation gets an answer (a missing one would hold
    the deploy for an hour)."""
    try:
        outcome: dict[str, Any] | None = handle(event, context, dependencies())
        reason = ""
    except Exception as error:  # reported to CloudFormation, which fails the deploy
        logger.exception("catalogue seeding failed")
        outcome, reason = None, f"{type(error).__name__}: {error}"[:500]
    send_response(str(event.get("ResponseURL", "")), cloudformation_response(event, outcome, reason))
    return outcome or {"PhysicalResourceId": event.get("PhysicalResourceId") or PHYSICAL_ID, "Data": {}}
