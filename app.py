"""CDK app entry (cdk.json runs it): builds the stack, as cdk/synth.py does for every synth, and synthesises it."""

from __future__ import annotations

from cdk.synth import build_app

if __name__ == "__main__":
    build_app().synth()
