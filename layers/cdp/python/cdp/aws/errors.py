"""AWS error codes turned into the core's domain errors."""

from __future__ import annotations

from typing import cast

from botocore.exceptions import BotoCoreError, ClientError

from cdp.ports import ConflictError, TransientError

RETRYABLE_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException",
    "SlowDown", "RequestTimeout", "TransactionConflictException", "LimitExceededException",
})


def domain_error(error: Exception) -> Exception:
    """ConditionalCheckFailed -> ConflictError; throttling and faults -> TransientError; else unchanged."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code == "ConditionalCheckFailedException":
            return ConflictError(code)
        if code in RETRYABLE_CODES or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
            return TransientError(code or "service error")
        return cast(Exception, error)
    if isinstance(error, BotoCoreError):  # connection errors, timeouts
        return TransientError(type(error).__name__)
    return error
