"""Credentials for the integrations, from Secrets Manager (a JSON object per integration)."""

from __future__ import annotations

from typing import Any

from cdp.aws.errors import domain_error
from cdp.config import json_object


def read_secret(client: Any, secret_id: str) -> dict[str, Any]:
    try:
        raw = client.get_secret_value(SecretId=secret_id)["SecretString"]
    except Exception as error:
        raise domain_error(error) from error
    return json_object(raw, f"secret {secret_id}")
