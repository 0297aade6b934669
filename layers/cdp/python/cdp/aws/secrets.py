"""Credentials for the integrations, from Secrets Manager (a JSON object per integration)."""

from __future__ import annotations

import json
from typing import Any

from cdp.aws.errors import domain_error
from cdp.config import ConfigError


def read_secret(client: Any, secret_id: str) -> dict[str, Any]:
    try:
        raw = client.get_secret_value(SecretId=secret_id)["SecretString"]
    except Exception as error:
        raise domain_error(error) from error
    try:
        value = json.loads(raw)
    except ValueError:
        raise ConfigError(f"secret {secret_id}: must hold a JSON object") from None
    if not isinstance(value, dict):
        raise ConfigError(f"secret {secret_id}: must hold a JSON object")
    return value
