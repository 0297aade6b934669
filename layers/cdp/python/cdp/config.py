"""Function configuration from environment variables, validated once at cold start.

One class per function, read by its handler's ``build`` and nowhere else: :class:`IngestConfig`,
:class:`ChangesConfig`, :class:`ApiConfig`, :class:`TimersConfig`, :class:`JobsConfig`, :class:`HistoryConfig`,
:class:`EmailConfig`, :class:`WebhookConfig`, :class:`CollectorConfig`, and :class:`DestinationConfig` for the Meta and
Google functions (and inside the email and webhook ones). A missing or invalid variable is a
:class:`ConfigError` that names it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdp.core.clock import DEFAULT_MAX_FUTURE_SKEW

if TYPE_CHECKING:
    from cdp.core.consent import ConsentPolicy
    from cdp.integrations.email import EmailOptions
    from cdp.integrations.webhook import WebhookOptions

CLOCKS = ("wall", "event")
DEFAULT_WRITE_CONCURRENCY = 16  # profile writes in flight per batch: see cdp.pipeline.parallel
_ORIGIN = re.compile(r"https://[^/\s]+|http://(localhost|127\.0\.0\.1)(:[0-9]+)?")


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


def flag(env: Mapping[str, str], name: str) -> bool:
    """A true/false variable (false when unset)."""
    raw = env.get(name, "").strip().lower()
    if raw not in ("", "true", "false"):
        raise ConfigError(f"environment variable {name} must be true or false, not {raw!r}")
    return raw == "true"


def pseudonym_secret(env: Mapping[str, str]) -> str | None:
    """PSEUDONYM_SECRET_ARN: the secret whose key pseudonymises the members index and the ledger (None: plain
    ids). Read by every function that writes or reads those tables, so they all agree."""
    raw = env.get("PSEUDONYM_SECRET_ARN", "").strip()
    if raw and not raw.startswith("arn:"):
        raise ConfigError("environment variable PSEUDONYM_SECRET_ARN must be a Secrets Manager secret ARN")
    return raw or None


def clock_mode(env: Mapping[str, str]) -> str:
    """CDP_CLOCK: ``wall`` (the default) or ``event`` (replays evaluate in event time)."""
    value = env.get("CDP_CLOCK", "").strip() or "wall"
    if value not in CLOCKS:
        raise ConfigError(f"environment variable CDP_CLOCK must be wall or event, not {value!r}")
    return value


def cors_origins(env: Mapping[str, str], name: str = "CORS_ORIGINS") -> tuple[str, ...]:
    """CORS_ORIGINS: comma-separated origins allowed to call the API from a browser (none by default), each
    ``https://`` (or ``http://localhost`` and ``http://127.0.0.1`` for local use) with no path."""
    origins = tuple(origin.strip() for origin in env.get(name, "").split(",") if origin.strip())
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(f"environment variable {name}: {origin!r} must be an https:// origin "
                              "(or http://localhost), without a path")
    return origins


def retention_days(env: Mapping[str, str]) -> int:
    """PROFILE_RETENTION_DAYS: days after its last event a profile expires (its exits first); 0: never."""
    return _whole(env, "PROFILE_RETENTION_DAYS", 0, 0, 3650)


@dataclass(frozen=True)
class IngestConfig:
    profiles_table: str
    quarantine_bucket: str
    catalogue_path: Path
    # CDP_MAX_FUTURE_SKEW_SECONDS: an event stamped further than this ahead of the wall clock is quarantined
    max_future_skew: int = DEFAULT_MAX_FUTURE_SKEW
    clock: str = "wall"  # CDP_CLOCK
    # CDP_WRITE_CONCURRENCY: profile writes of one batch in flight at once (1: one after another)
    write_concurrency: int = DEFAULT_WRITE_CONCURRENCY
    identity_table: str = ""  # IDENTITY_TABLE: the id map (merged ids and hashed email addresses)
    merge_known: bool = False  # CDP_MERGE_KNOWN: merge a customer known by user id into another
    consent_policy: ConsentPolicy | None = None  # CONSENT_POLICY: which consent each use needs; None: none
    after_deletion: str = "block"  # CDP_AFTER_DELETION: block | fresh (see cdp.pipeline.identity.Identity)
    retention_days: int = 0  # PROFILE_RETENTION_DAYS: a profile no event touched this long expires; 0: never

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IngestConfig:
        return cls(_required(env, "PROFILES_TABLE"), _required(env, "QUARANTINE_BUCKET"), _catalogue(env),
                   _whole(env, "CDP_MAX_FUTURE_SKEW_SECONDS", DEFAULT_MAX_FUTURE_SKEW, 0, 86_400), clock_mode(env),
                   _whole(env, "CDP_WRITE_CONCURRENCY", DEFAULT_WRITE_CONCURRENCY, 1, 64),
                   _required(env, "IDENTITY_TABLE"), flag(env, "CDP_MERGE_KNOWN"), cls.consent(env),
                   cls.deletion(env), retention_days(env))

    @staticmethod
    def deletion(env: Mapping[str, str]) -> str:
        """CDP_AFTER_DELETION: ``block`` (the default: a deleted customer's events are dropped) or ``fresh`` (an
        event after the deletion starts a fresh profile)."""
        value = env.get("CDP_AFTER_DELETION", "").strip() or "block"
        if value not in ("block", "fresh"):
            raise ConfigError(f"environment variable CDP_AFTER_DELETION must be block or fresh, not {value!r}")
        return value

    @staticmethod
    def consent(env: Mapping[str, str]) -> ConsentPolicy | None:
        """CONSENT_POLICY: the JSON of :class:`~cdp.core.consent.ConsentPolicy` (``{"default": ..., "uses":
        {...}}``); None when unset, which permits every use (as the empty policy does)."""
        from cdp.core.consent import ConsentPolicy, ConsentPolicyError

        raw = env.get("CONSENT_POLICY", "").strip()
        if not raw:
            return None
        try:
            return ConsentPolicy.parse(json_object(raw, "environment variable CONSENT_POLICY"))
        except ConsentPolicyError as error:
            raise ConfigError(f"environment variable CONSENT_POLICY: {error}") from None


@dataclass(frozen=True)
class ChangesConfig:
    members_table: str
    event_bus: str
    catalogue_path: Path
    member_shards: int
    concurrency: int = 16  # CDP_CHANGES_CONCURRENCY: requests in flight at once (index writes, PutEvents)
    published_segments: frozenset[str] | None = None  # CDP_PUBLISHED_SEGMENTS: the segments put on the bus; None: all

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ChangesConfig:
        return cls(_required(env, "MEMBERS_TABLE"), _required(env, "EVENT_BUS_NAME"), _catalogue(env),
                   _whole(env, "MEMBER_SHARDS", 16, 1, 1000), _whole(env, "CDP_CHANGES_CONCURRENCY", 16, 1, 64),
                   cls.published(env))

    @staticmethod
    def published(env: Mapping[str, str]) -> frozenset[str] | None:
        """CDP_PUBLISHED_SEGMENTS: ``*`` (the default: every segment's transitions go on the bus) or a comma
        list of segment ids; the members index and the profile get every transition either way."""
        from cdp.core.language import SLUG

        raw = env.get("CDP_PUBLISHED_SEGMENTS", "").strip()
        if raw in ("", "*"):
            return None
        ids = [part.strip() for part in raw.split(",")]
        for segment_id in ids:
            if not SLUG.match(segment_id):
                raise ConfigError(f"environment variable CDP_PUBLISHED_SEGMENTS must be * or a comma list of "
                                  f"segment ids, not {segment_id!r}")
        return frozenset(ids)


@dataclass(frozen=True)
class ApiConfig:
    """The API function. Its routes are registered at import, with their CORS settings, so the handler reads
    CORS_ORIGINS then, with :func:`cors_origins`; the rest is read at the first request."""

    profiles_table: str
    members_table: str
    catalogue_path: Path
    member_shards: int
    me_claim: str
    clock: str = "wall"  # CDP_CLOCK
    cors_origins: tuple[str, ...] = ()
    identity_table: str = ""  # IDENTITY_TABLE: the id map, through which merged ids and email addresses resolve
    # Data subject requests (empty: the routes answer 503): REQUESTS_TABLE, PRIVACY_QUEUE_URL, LEDGER_TABLE
    # (empty without integrations), REQUEST_RETENTION_DAYS
    requests_table: str = ""
    privacy_queue_url: str = ""
    ledger_table: str = ""
    request_days: int = 365
    consent_policy: ConsentPolicy | None = None  # CONSENT_POLICY: static edits add no one without profiling consent
    retention_days: int = 0  # PROFILE_RETENTION_DAYS: a profile a static edit creates expires too

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiConfig:
        return cls(_required(env, "PROFILES_TABLE"), _required(env, "MEMBERS_TABLE"), _catalogue(env),
                   _whole(env, "MEMBER_SHARDS", 16, 1, 1000), env.get("ME_CLAIM", "").strip() or "sub",
                   clock_mode(env), cors_origins(env), _required(env, "IDENTITY_TABLE"),
                   env.get("REQUESTS_TABLE", "").strip(), env.get("PRIVACY_QUEUE_URL", "").strip(),
                   env.get("LEDGER_TABLE", "").strip(), _whole(env, "REQUEST_RETENTION_DAYS", 365, 1, 3650),
                   IngestConfig.consent(env), retention_days(env))


@dataclass(frozen=True)
class PrivacyConfig:
    """The privacy function: the deletion jobs' stores, and how long tombstones and requests are kept."""

    profiles_table: str
    members_table: str
    identity_table: str
    requests_table: str
    quarantine_bucket: str
    queue_url: str  # PRIVACY_QUEUE_URL: where the verify pass is queued
    catalogue_path: Path
    member_shards: int
    ledger_table: str = ""  # LEDGER_TABLE: empty without integrations
    verify_delay_seconds: int = 60  # VERIFY_DELAY_SECONDS: the wait before a verify pass
    tombstone_days: int = 400  # TOMBSTONE_RETENTION_DAYS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PrivacyConfig:
        return cls(_required(env, "PROFILES_TABLE"), _required(env, "MEMBERS_TABLE"), _required(env, "IDENTITY_TABLE"),
                   _required(env, "REQUESTS_TABLE"), _required(env, "QUARANTINE_BUCKET"),
                   _required(env, "PRIVACY_QUEUE_URL"), _catalogue(env), _whole(env, "MEMBER_SHARDS", 16, 1, 1000),
                   env.get("LEDGER_TABLE", "").strip(), _whole(env, "VERIFY_DELAY_SECONDS", 60, 0, 900),
                   _whole(env, "TOMBSTONE_RETENTION_DAYS", 400, 1, 3650))


@dataclass(frozen=True)
class TimersConfig:
    profiles_table: str
    due_index: str
    catalogue_path: Path
    page_size: int
    reserve_ms: int  # stop taking pages when less than this is left of the invocation
    # CDP_CLOCK: the sweep runs on wall time; "event" is valid here, and refused when the clock is built
    # (an event clock of the sweep's own would never move), so a clock given to build() still works
    clock: str = "wall"
    write_concurrency: int = DEFAULT_WRITE_CONCURRENCY  # CDP_WRITE_CONCURRENCY: a page's writes in flight at once
    consent_policy: ConsentPolicy | None = None  # CONSENT_POLICY, as the ingest reads it (IngestConfig.consent)
    retention_days: int = 0  # PROFILE_RETENTION_DAYS, as the ingest reads it

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TimersConfig:
        return cls(_required(env, "PROFILES_TABLE"), _required(env, "DUE_INDEX_NAME"), _catalogue(env),
                   _whole(env, "SWEEP_PAGE_SIZE", 100, 1, 100), _whole(env, "SWEEP_RESERVE_MS", 10_000, 0, 600_000),
                   clock_mode(env), _whole(env, "CDP_WRITE_CONCURRENCY", DEFAULT_WRITE_CONCURRENCY, 1, 64),
                   IngestConfig.consent(env), retention_days(env))


@dataclass(frozen=True)
class HistoryConfig:
    """The daily segment size snapshot: HISTORY_TABLE, the members index it counts from (MEMBERS_TABLE,
    MEMBER_SHARDS), the catalogue, and SEGMENT_SWING_PERCENT (empty or 0: no swing count; else 1..1000, a day's
    size change in percent beyond which a segment counts in ``SegmentsSwinging``)."""

    history_table: str
    members_table: str
    catalogue_path: Path
    member_shards: int
    swing_percent: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HistoryConfig:
        swing = _whole(env, "SEGMENT_SWING_PERCENT", 0, 0, 1000)
        return cls(_required(env, "HISTORY_TABLE"), _required(env, "MEMBERS_TABLE"), _catalogue(env),
                   _whole(env, "MEMBER_SHARDS", 16, 1, 1000), swing or None)


@dataclass(frozen=True)
class CatalogueConfig:
    """The definitions store, as every function that evaluates or names segments reads it (see
    :mod:`cdp.pipeline.live_catalogue`): ``DEFINITIONS_TABLE`` (empty: the YAML folder is the catalogue) and
    ``CATALOGUE_CHECK_SECONDS`` (1..300, default 30: how often the store's head is read)."""

    definitions_table: str
    check_seconds: int = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CatalogueConfig:
        return cls(env.get("DEFINITIONS_TABLE", "").strip(), _whole(env, "CATALOGUE_CHECK_SECONDS", 30, 1, 300))


@dataclass(frozen=True)
class JobsConfig:
    """The jobs function (backfills and population statistics, :mod:`cdp.pipeline.jobs`): ``PROFILES_TABLE``,
    ``JOBS_TABLE``, ``JOB_RESULTS_BUCKET``, ``JOBS_STATE_MACHINE_ARN`` (empty: jobs are run by a runner given to
    ``build``, as the local stack does), ``JOB_SCAN_SEGMENTS`` (1..1000, default 16), ``JOB_PAGE_SIZE`` (1..1000,
    default 100), ``JOB_RESERVE_MS`` (default 60000: an invocation stops taking pages with less than this left),
    ``CDP_WRITE_CONCURRENCY``, and the consent policy, retention and clock as the ingest reads them."""

    profiles_table: str
    jobs_table: str
    results_bucket: str
    catalogue_path: Path
    state_machine_arn: str = ""
    scan_segments: int = 16
    page_size: int = 100
    reserve_ms: int = 60_000
    write_concurrency: int = DEFAULT_WRITE_CONCURRENCY
    consent_policy: ConsentPolicy | None = None
    retention_days: int = 0
    clock: str = "wall"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> JobsConfig:
        arn = env.get("JOBS_STATE_MACHINE_ARN", "").strip()
        if arn and not arn.startswith("arn:"):
            raise ConfigError("environment variable JOBS_STATE_MACHINE_ARN must be a state machine ARN")
        return cls(_required(env, "PROFILES_TABLE"), _required(env, "JOBS_TABLE"),
                   _required(env, "JOB_RESULTS_BUCKET"), _catalogue(env), arn,
                   _whole(env, "JOB_SCAN_SEGMENTS", 16, 1, 1000), _whole(env, "JOB_PAGE_SIZE", 100, 1, 1000),
                   _whole(env, "JOB_RESERVE_MS", 60_000, 0, 600_000),
                   _whole(env, "CDP_WRITE_CONCURRENCY", DEFAULT_WRITE_CONCURRENCY, 1, 64),
                   IngestConfig.consent(env), retention_days(env), clock_mode(env))


@dataclass(frozen=True)
class SeedConfig:
    """The catalogue function (the deployment's seeding custom resource): ``DEFINITIONS_TABLE`` to seed and
    ``CATALOGUE_PATH``, the folder of segment definitions the layer ships."""

    definitions_table: str
    catalogue_path: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SeedConfig:
        return cls(_required(env, "DEFINITIONS_TABLE"), _catalogue(env))


def json_object(raw: str, what: str) -> dict[str, Any]:
    """``raw`` parsed as a JSON object; otherwise a ConfigError naming ``what`` it came from."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object")
    return value


def _json_object(env: Mapping[str, str], name: str, required: bool = True) -> dict[str, Any]:
    raw = env.get(name, "").strip()
    if not raw:
        if required:
            raise ConfigError(f"environment variable {name} is required")
        return {}
    return json_object(raw, f"environment variable {name}")


@dataclass(frozen=True)
class DestinationConfig:
    """An integration function: where its segments go, its credentials, its ledger and dead-letter queue."""

    targets: dict[str, str]  # segment id -> audience, list or template
    ledger_table: str
    dead_letter_queue_url: str
    secret_arn: str  # empty when the integration needs no secret
    base_url: str  # empty: the platform's own
    api_version: str  # empty: the module's default
    options: dict[str, Any]  # integration-specific settings
    profiles_table: str = ""  # PROFILES_TABLE: where each customer's consent is read at delivery
    consent: ConsentPolicy | None = None  # CONSENT_POLICY (IngestConfig.consent); None: every use permitted
    ledger_exit_days: int = 30  # LEDGER_EXIT_DAYS: a ledger entry of an exit expires after this
    ledger_email_days: int = 0  # LEDGER_EMAIL_DAYS: a plain address sent with an add is kept this long; 0: its row's

    def secret_id(self, holds: str) -> str:
        """SECRET_ARN, which this integration cannot do without; ``holds`` says what the secret is."""
        if not self.secret_arn:
            raise ConfigError(f"environment variable SECRET_ARN is required ({holds})")
        return self.secret_arn

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DestinationConfig:
        targets = _json_object(env, "TARGETS")
        for segment_id, target in targets.items():
            if not isinstance(target, str) or not target:
                raise ConfigError(f"environment variable TARGETS: {segment_id!r} must map to a non-empty string")
        base_url = env.get("BASE_URL", "").strip()
        if base_url and not base_url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ConfigError("environment variable BASE_URL must be an https:// URL")
        return cls(targets, _required(env, "LEDGER_TABLE"), _required(env, "DEAD_LETTER_QUEUE_URL"),
                   env.get("SECRET_ARN", "").strip(), base_url.rstrip("/"), env.get("API_VERSION", "").strip(),
                   _json_object(env, "OPTIONS", required=False), env.get("PROFILES_TABLE", "").strip(),
                   IngestConfig.consent(env), _whole(env, "LEDGER_EXIT_DAYS", 30, 1, 3650),
                   _whole(env, "LEDGER_EMAIL_DAYS", 0, 0, 3650))

    def consent_table(self) -> str:
        """PROFILES_TABLE, which a batch integration cannot do without: consent is checked per customer."""
        if not self.profiles_table:
            raise ConfigError("environment variable PROFILES_TABLE is required (consent is read per customer)")
        return self.profiles_table


@dataclass(frozen=True)
class EmailConfig:
    """The email function: the destination settings (``TARGETS``: segment -> SES template, at least one),
    ``PROFILES_TABLE`` (the email address and consent traits are read from the profiles), and ``OPTIONS``
    as :class:`~cdp.integrations.email.EmailOptions`."""

    destination: DestinationConfig
    profiles_table: str
    options: EmailOptions

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EmailConfig:
        from cdp.integrations.email import EmailOptions

        destination = DestinationConfig.from_env(env)
        profiles_table = _required(env, "PROFILES_TABLE")
        if not destination.targets:
            raise ConfigError("environment variable TARGETS must map at least one segment to an SES template")
        return cls(destination, profiles_table, EmailOptions.from_options(destination.options))


@dataclass(frozen=True)
class WebhookConfig:
    """The webhook function: the destination settings, ``OPTIONS`` as
    :class:`~cdp.integrations.webhook.WebhookOptions`, and ``PROFILES_TABLE``, required only with
    ``include_email`` (the email trait is read from the profiles)."""

    destination: DestinationConfig
    options: WebhookOptions
    profiles_table: str | None  # None without include_email

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookConfig:
        from cdp.integrations.webhook import WebhookOptions

        destination = DestinationConfig.from_env(env)
        options = WebhookOptions.parse(destination.options)
        table = env.get("PROFILES_TABLE", "").strip()
        if options.include_email and not table:
            raise ConfigError("environment variable PROFILES_TABLE is required when OPTIONS.include_email is true")
        return cls(destination, options, table if options.include_email else None)


def collector_origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """COLLECTOR_ORIGINS: ``*`` (any site may send, as with Segment's own API: a browser's write key is public
    and the answer carries no data) or comma-separated origins, checked as :func:`cors_origins` checks them."""
    raw = env.get("COLLECTOR_ORIGINS", "").strip()
    if raw == "*":
        return ("*",)
    return cors_origins(env, "COLLECTOR_ORIGINS")


@dataclass(frozen=True)
class CollectorConfig:
    stream_name: str
    sources_table: str
    quarantine_bucket: str
    origins: tuple[str, ...] = ()  # COLLECTOR_ORIGINS
    # CDP_COLLECTOR_BUDGET_SECONDS: how long a request may keep resending records the stream refused
    budget_seconds: int = 6
    key_cache_seconds: int = 30  # CDP_KEY_CACHE_SECONDS: a rotation or revocation takes effect within this

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CollectorConfig:
        return cls(_required(env, "STREAM_NAME"), _required(env, "SOURCES_TABLE"),
                   _required(env, "QUARANTINE_BUCKET"), collector_origins(env),
                   _whole(env, "CDP_COLLECTOR_BUDGET_SECONDS", 6, 1, 25),
                   _whole(env, "CDP_KEY_CACHE_SECONDS", 30, 0, 300))
