"""CDK app entry: builds the stack and runs the cdk-nag AwsSolutions checks on every synth."""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from cdk.stack import CdpStack


def build_app(context: dict[str, object] | None = None) -> cdk.App:
    app = cdk.App(context=context)
    stage = app.node.try_get_context("stage") or "dev"
    CdpStack(app, f"Cdp-{stage}", description="Real-time behavioural segmentation (cdp)")
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(verbose=True))
    return app


if __name__ == "__main__":
    build_app().synth()
