"""Deployment settings from cdk.json context (or `cdk deploy -c key=value`), validated at synth."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import aws_lambda as lambda_
from constructs import Construct


class SettingsError(ValueError):
    pass


def _int(scope: Construct, key: str, default: int, low: int, high: int) -> int:
    raw = scope.node.try_get_context(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"context {key} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"context {key} must be between {low} and {high}, not {value}")
    return value


def _origins(scope: Construct) -> list[str]:
    raw = scope.node.try_get_context("cors_origins") or []
    origins = raw.split(",") if isinstance(raw, str) else list(raw)
    for origin in origins:
        if not str(origin).startswith(("https://", "http://localhost")):
            raise SettingsError(f"context cors_origins: {origin!r} must be an https:// origin (or http://localhost)")
    return [str(origin).strip() for origin in origins if str(origin).strip()]


@dataclass(frozen=True)
class Settings:
    stage: str
    stream_shards: int  # 0: on-demand
    architecture: lambda_.Architecture
    memory_mb: int
    batch_size: int
    batching_window_seconds: int
    parallelization_factor: int
    retry_attempts: int
    max_record_age_hours: int
    member_shards: int
    cors_origins: list[str]
    api_rate_limit: int
    api_burst_limit: int
    alarm_email: str | None
    sweep_workers: int  # concurrent timers sweeps per minute, each over its share of the due shards

    @classmethod
    def from_context(cls, scope: Construct) -> Settings:
        architecture = str(scope.node.try_get_context("architecture") or "arm64")
        if architecture not in ("arm64", "x86_64"):
            raise SettingsError(f"context architecture must be arm64 or x86_64, not {architecture!r}")
        return cls(
            stage=str(scope.node.try_get_context("stage") or "dev"),
            stream_shards=_int(scope, "stream_shards", 0, 0, 500),
            architecture=lambda_.Architecture.ARM_64 if architecture == "arm64" else lambda_.Architecture.X86_64,
            memory_mb=_int(scope, "memory_mb", 512, 128, 10240),
            batch_size=_int(scope, "batch_size", 100, 1, 100),  # dedupe remembers 100 ids per customer
            batching_window_seconds=_int(scope, "batching_window_seconds", 0, 0, 300),
            parallelization_factor=_int(scope, "parallelization_factor", 1, 1, 10),
            retry_attempts=_int(scope, "retry_attempts", 5, 0, 10000),
            max_record_age_hours=_int(scope, "max_record_age_hours", 24, 1, 168),
            member_shards=_int(scope, "member_shards", 16, 1, 1000),
            cors_origins=_origins(scope),
            api_rate_limit=_int(scope, "api_rate_limit", 100, 1, 10000),
            api_burst_limit=_int(scope, "api_burst_limit", 200, 1, 5000),
            alarm_email=str(scope.node.try_get_context("alarm_email") or "") or None,
            sweep_workers=_int(scope, "sweep_workers", 4, 1, 5),  # EventBridge allows 5 targets per rule
        )
