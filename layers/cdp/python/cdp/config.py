"""Function configuration from environment variables, validated once at cold start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A missing or invalid environment variable, named."""


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is required")
    return value


def _whole(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"environment variable {name} must be between {low} and {high}, not {value}")
    return value


def _catalogue(env: Mapping[str, str]) -> Path:
    path = Path(env.get("CATALOGUE_PATH", "").strip() or "/opt/segments")
    if not path.is_dir():
        raise ConfigError(f"CATALOGUE_PATH {str(path)!r} is not a folder of segment definitions")
    return path


@dataclass(frozen=True)
class IngestConfig:
    profiles_table: str
    quarantine_bucket: str
    catalogue_path: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IngestConfig:
        return cls(_required(env, "PROFILES_TABLE"), _required(env, "QUARANTINE_BUCKET"), _catalogue(env))


@dataclass(frozen=True)
class ChangesConfig:
    members_table: str
    event_bus: str
    catalogue_path: Path
    member_shards: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ChangesConfig:
        return cls(_required(env, "MEMBERS_TABLE"), _required(env, "EVENT_BUS_NAME"), _catalogue(env),
                   _whole(env, "MEMBER_SHARDS", 16, 1, 1000))


@dataclass(frozen=True)
class ApiConfig:
    profiles_table: str
    members_table: str
    catalogue_path: Path
    member_shards: int
    me_claim: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiConfig:
        return cls(_required(env, "PROFILES_TABLE"), _required(env, "MEMBERS_TABLE"), _catalogue(env),
                   _whole(env, "MEMBER_SHARDS", 16, 1, 1000), env.get("ME_CLAIM", "").strip() or "sub")


def cors_origins(env: Mapping[str, str]) -> list[str]:
    """CORS_ORIGINS: comma-separated origins allowed to call the API from a browser (none by default)."""
    return [origin.strip() for origin in env.get("CORS_ORIGINS", "").split(",") if origin.strip()]


@dataclass(frozen=True)
class TimersConfig:
    profiles_table: str
    due_index: str
    catalogue_path: Path
    page_size: int
    reserve_ms: int  # stop taking pages when less than this is left of the invocation

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TimersConfig:
        return cls(_required(env, "PROFILES_TABLE"), _required(env, "DUE_INDEX_NAME"), _catalogue(env),
                   _whole(env, "SWEEP_PAGE_SIZE", 100, 1, 100), _whole(env, "SWEEP_RESERVE_MS", 10_000, 0, 600_000))
