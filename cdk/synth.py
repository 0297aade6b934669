"""Building and synthesising the CDK app: the one way to do it, for app.py, the infra tests and the local stack.

cdk-nag's AwsSolutions checks run on every synth: a finding that is not acknowledged fails it.

    python -m cdk.synth TEMPLATE.json < CONTEXT.json

synthesises in a process of its own and writes the stack's CloudFormation template (the context, JSON on
stdin, may be ``null``). The local stack runs it so, so that the CDK's Node.js runtime (jsii) ends with it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import cx_api
from cdk_nag import AwsSolutionsChecks

from cdk.stack import CdpStack


def build_app(context: dict[str, object] | None = None, outdir: Path | None = None) -> cdk.App:
    """The app with its one stack, Cdp-<stage>; it synthesises into ``outdir`` (default: where the CDK CLI
    says, in ``CDK_OUTDIR``)."""
    app = cdk.App(context=context, outdir=str(outdir) if outdir is not None else None)
    stage = app.node.try_get_context("stage") or "dev"
    CdpStack(app, f"Cdp-{stage}", description="Real-time behavioural segmentation (cdp)")
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(verbose=True))
    return app


def stack_of(app: cdk.App) -> cdk.Stack:
    """The app's one stack."""
    return next(child for child in app.node.children if isinstance(child, cdk.Stack))


@dataclass(frozen=True)
class Synthesis:
    stack: cdk.Stack
    assembly: cx_api.CloudAssembly  # in the folder synthesised into: the template file, cdk-nag's report
    template: dict[str, Any]  # the stack's CloudFormation template

    @property
    def template_file(self) -> Path:
        return Path(self.assembly.directory) / self.assembly.get_stack_artifact(self.stack.artifact_id).template_file


def synthesise(context: dict[str, object] | None = None, outdir: Path | None = None) -> Synthesis:
    """Build the app and synthesise it into ``outdir``; in a temporary folder, removed on return, if none is
    given (the template is kept, the assembly's files are not). Raises on any unacknowledged cdk-nag finding."""
    if outdir is None:
        with tempfile.TemporaryDirectory(prefix="cdk.out-") as folder:
            return synthesise(context, Path(folder))
    app = build_app(context, outdir)
    stack = stack_of(app)
    assembly = app.synth()
    template: dict[str, Any] = assembly.get_stack_artifact(stack.artifact_id).template
    return Synthesis(stack, assembly, template)


def main(argv: list[str]) -> None:
    (output,) = argv
    context = json.loads(sys.stdin.read() or "null")
    Path(output).write_text(json.dumps(synthesise(context).template))


if __name__ == "__main__":
    main(sys.argv[1:])
