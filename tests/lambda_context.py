"""The context Lambda passes a handler, as far as Powertools (``inject_lambda_context``) and the handlers read it."""

from __future__ import annotations

from dataclasses import dataclass

ACCOUNT = "123456789012"


@dataclass
class LambdaContext:
    function_name: str = "cdp-test"
    remaining_ms: int = 55_000  # what get_remaining_time_in_millis() answers, every time
    memory_limit_in_mb: int = 256
    function_version: str = "$LATEST"
    aws_request_id: str = "6f1b0a52-9c1e-4a8e-9d63-3f1c8e2f7a10"
    region: str = "eu-west-1"
    log_stream_name: str = "2026/10/03/[$LATEST]0123456789abcdef"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
