"""The pseudonyms a function stores customer ids under, read once at cold start (see cdp.core.pseudonyms)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cdp.aws.secrets import read_secret
from cdp.config import ConfigError, pseudonym_secret
from cdp.core.pseudonyms import MIN_KEY_BYTES, HmacIds, PlainIds, Pseudonyms


def _secrets_client() -> Any:
    import boto3

    return boto3.client("secretsmanager")


def pseudonyms_from_env(env: Mapping[str, str], client: Callable[[], Any] = _secrets_client) -> Pseudonyms:
    """HMAC pseudonyms under the secret's ``key`` when PSEUDONYM_SECRET_ARN is set (one GetSecretValue), else
    the plain ids."""
    arn = pseudonym_secret(env)
    if arn is None:
        return PlainIds()
    key = read_secret(client(), arn).get("key")
    if not isinstance(key, str) or len(key.encode()) < MIN_KEY_BYTES:
        raise ConfigError(f"the secret of PSEUDONYM_SECRET_ARN must hold {{\"key\": \"...\"}} of at least "
                          f"{MIN_KEY_BYTES} characters")
    return HmacIds(key.encode())
