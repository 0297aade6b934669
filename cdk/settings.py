"""Deployment settings from cdk.json context (or `cdk deploy -c key=value`), validated at synth."""

from __future__ import annotations

import re
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


def _flag(scope: Construct, key: str, default: bool = False) -> bool:
    """A true/false setting: a JSON boolean in cdk.json, or the text true/false from ``cdk deploy -c``."""
    raw = scope.node.try_get_context(key)
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in ("true", "false"):
        raise SettingsError(f"context {key} must be true or false, not {raw!r}")
    return text == "true"


def _collector_origins(scope: Construct) -> list[str]:
    """Where browsers may send from: ``*`` (the default, as Segment's own API: a browser's write key is in the
    page anyway, and the answer carries no data) or origins, a list or comma-separated (``cdk deploy -c``)."""
    raw = scope.node.try_get_context("collector_origins")
    origins = raw.split(",") if isinstance(raw, str) else ["*"] if raw is None else raw
    if not isinstance(origins, list):
        raise SettingsError('context collector_origins must be origins (a list or comma-separated), or "*"')
    if [str(origin).strip() for origin in origins] == ["*"]:
        return ["*"]
    return _checked_origins([str(origin) for origin in origins], "collector_origins")


def _checked_origins(origins: list[str], key: str) -> list[str]:
    """The origins as the functions will check them at cold start (cdp.config.cors_origins): a deployment
    cannot synthesise a setting its functions would refuse."""
    from cdp.config import ConfigError, cors_origins

    kept = [origin.strip() for origin in origins if origin.strip()]
    try:
        cors_origins({"ORIGINS": ",".join(kept)}, "ORIGINS")
    except ConfigError as error:
        raise SettingsError(f"context {key}: {str(error).split(': ', 1)[1]}") from None
    return kept


def _origins(scope: Construct) -> list[str]:
    raw = scope.node.try_get_context("cors_origins") or []
    origins = raw.split(",") if isinstance(raw, str) else list(raw)
    return _checked_origins([str(origin) for origin in origins], "cors_origins")


INTEGRATIONS = ("email", "webhook", "meta", "google")


@dataclass(frozen=True)
class Integration:
    """One fan-out integration from context ``integrations.<name>``."""

    name: str
    segments: dict[str, str]  # segment id -> template, list or audience
    secret_name: str
    options: dict[str, object]
    base_url: str
    api_version: str
    batch_size: int
    batching_window_seconds: int


def _integrations(scope: Construct) -> list[Integration]:
    raw = scope.node.try_get_context("integrations") or {}
    if not isinstance(raw, dict):
        raise SettingsError("context integrations must be an object of integration name -> settings")
    found = []
    for name, given in raw.items():
        if name not in INTEGRATIONS:
            raise SettingsError(f"context integrations.{name}: unknown; known: {', '.join(INTEGRATIONS)}")
        if not isinstance(given, dict):
            raise SettingsError(f"context integrations.{name} must be an object")
        if given.get("enabled", False):
            found.append(_integration(name, given))
    return found


def _integration(name: str, given: dict[str, object]) -> Integration:
    """An enabled integration's settings, checked."""
    segments = given.get("segments") or {}
    if not isinstance(segments, dict) or not segments or not all(isinstance(v, str) and v for v in segments.values()):
        raise SettingsError(f"context integrations.{name}.segments must map segment ids to non-empty strings")
    secret_name = str(given.get("secret_name") or "")
    if name != "email" and not secret_name:
        raise SettingsError(f"context integrations.{name}.secret_name is required (a Secrets Manager secret)")
    options = given.get("options") or {}
    if not isinstance(options, dict):
        raise SettingsError(f"context integrations.{name}.options must be an object")
    _check_options(name, options)
    batch, window = _batching(name, given)
    return Integration(name, {str(k): str(v) for k, v in segments.items()}, secret_name, options,
                       str(given.get("base_url") or ""), str(given.get("api_version") or ""), batch, window)


def _check_options(name: str, options: dict[str, object]) -> None:
    """The option each integration cannot work without."""
    if name == "email" and "@" not in str(options.get("source", "")):
        raise SettingsError("context integrations.email.options.source must be the verified sender address")
    if name == "webhook" and not str(options.get("url", "")).startswith(("https://", "http://127.0.0.1:")):
        raise SettingsError("context integrations.webhook.options.url must be an https:// URL")
    if name == "google" and not str(options.get("customer_id", "")).replace("-", "").isdigit():
        raise SettingsError("context integrations.google.options.customer_id must be the Ads customer id")


def _batching(name: str, given: dict[str, object]) -> tuple[int, int]:
    """The queue's batch size and batching window in seconds."""
    batch = given.get("batch_size", 10 if name in ("email", "webhook") else 100)
    window = given.get("batching_window_seconds", 0 if name == "email" else 20)
    if not isinstance(batch, int) or not 1 <= batch <= 10_000:
        raise SettingsError(f"context integrations.{name}.batch_size must be between 1 and 10000")
    if not isinstance(window, int) or not 0 <= window <= 300:
        raise SettingsError(f"context integrations.{name}.batching_window_seconds must be between 0 and 300")
    if batch > 10 and window == 0:
        raise SettingsError(f"context integrations.{name}: a batch_size above 10 needs a batching window")
    return batch, window


def _published(scope: Construct, integrations: list[Integration]) -> str:
    """Context ``published_segments``: ``all`` (the default), ``routed`` (only the segments an enabled
    integration routes), or a list of segment ids published beside the routed ones. Transitions go on
    the bus one event each, so publishing only what something consumes is what saves bus events."""
    raw = scope.node.try_get_context("published_segments")
    if raw is None or raw == "all":
        return "*"
    routed = {segment for integration in integrations for segment in integration.segments}
    if raw == "routed":
        chosen = routed
    elif isinstance(raw, list) and all(isinstance(s, str) and _SEGMENT_ID.fullmatch(s) for s in raw):
        chosen = routed | set(raw)
    else:
        raise SettingsError("context published_segments must be all, routed, or a list of segment ids")
    if not chosen:
        raise SettingsError("context published_segments: nothing would be published (no enabled integration "
                            "routes a segment); use all, or list the segments")
    return ",".join(sorted(chosen))


def _consent(scope: Construct) -> str:
    """Context ``consent``: which consent categories each use needs (see cdp.core.consent), as the functions
    read it from CONSENT_POLICY; checked here with the functions' own parser."""
    import json

    from cdp.core.consent import ConsentPolicy, ConsentPolicyError

    raw = scope.node.try_get_context("consent")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise SettingsError("context consent must be an object (JSON with -c)") from None
    try:
        return json.dumps(ConsentPolicy.parse(raw).as_json(), sort_keys=True)
    except ConsentPolicyError as error:
        raise SettingsError(f"context {error}") from None


def _after_deletion(scope: Construct) -> str:
    """Context ``after_deletion``: what a new event for a deleted customer does. ``block`` (the default):
    nothing, while the tombstone lasts; ``fresh``: an event newer than the deletion starts a new profile."""
    raw = str(scope.node.try_get_context("after_deletion") or "block")
    if raw not in ("block", "fresh"):
        raise SettingsError(f"context after_deletion must be block or fresh, not {raw!r}")
    return raw


@dataclass(frozen=True)
class Retention:
    """How long each place that holds personal data keeps it, in days (context ``retention.<name>``)."""

    profile_days: int = 730  # a profile untouched this long expires (its exits sent first); 0: never
    tombstone_days: int = 400  # a deleted customer's tombstone blocks re-creation this long
    quarantine_days: int = 30  # quarantined records (raw messages) are deleted after this
    archive_days: int = 30  # the bus archive's retention (EventBridge cannot delete from an archive)
    ledger_exit_days: int = 30  # a delivery ledger entry of an exit expires after this
    ledger_email_days: int = 0  # a plain address sent to a list is kept this long in the ledger; 0: until the exit
    request_days: int = 1095  # data-subject request records (the audit) are kept this long


RETENTION_LIMITS = {"profile_days": (0, 3650), "tombstone_days": (1, 3650), "quarantine_days": (1, 365),
                    "archive_days": (1, 365), "ledger_exit_days": (8, 365), "ledger_email_days": (0, 3650),
                    "request_days": (30, 3650)}


def _retention(scope: Construct) -> Retention:
    raw = scope.node.try_get_context("retention") or {}
    if not isinstance(raw, dict):
        raise SettingsError("context retention must be an object of name -> days")
    unknown = set(raw) - set(RETENTION_LIMITS)
    if unknown:
        raise SettingsError(f"context retention.{sorted(unknown)[0]}: unknown; known: {', '.join(RETENTION_LIMITS)}")
    values = {}
    for name, (low, high) in RETENTION_LIMITS.items():
        value = raw.get(name, getattr(Retention, name))
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise SettingsError(f"context retention.{name} must be a whole number of days from {low} to {high}")
        values[name] = value
    return Retention(**values)


_SCHEDULE = re.compile(r"rate\(([1-9][0-9]*) (minute|minutes|hour|hours|day|days)\)|cron\([^()]+\)")


def _schedule(scope: Construct, key: str, default: str) -> str:
    """An EventBridge Scheduler expression: ``rate(1 hour)``, ``rate(30 minutes)`` or ``cron(...)``."""
    raw = str(scope.node.try_get_context(key) or default).strip()
    if not _SCHEDULE.fullmatch(raw):
        raise SettingsError(f"context {key} must be rate(N minutes|hours|days) or cron(...), not {raw!r}")
    return raw


def _cluster_count(scope: Construct) -> int:
    count = _int(scope, "cluster_count", 0, 0, 12)
    if count == 1:
        raise SettingsError("context cluster_count must be 0 (chosen by silhouette) or 2 to 12, not 1")
    return count


_SEGMENT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")  # as segment ids are (cdp.core.language.SLUG)


@dataclass(frozen=True)
class Settings:
    stage: str
    stream_shards: int  # 0: on-demand
    architecture: lambda_.Architecture
    memory_mb: int
    ingest_memory_mb: int  # the ingest function's own: its CPU sets a shard's rate (1,769 MB is one vCPU)
    batch_size: int
    batching_window_seconds: int
    parallelization_factor: int
    retry_attempts: int
    max_record_age_hours: int
    member_shards: int
    cors_origins: list[str]
    api_rate_limit: int  # operator routes: each method's own bucket (API Gateway applies stage limits per method)
    api_burst_limit: int
    api_me_rate_limit: int  # GET /me (end users): its own, smaller bucket
    api_me_burst_limit: int
    api_reserved_concurrency: int  # 0: none (accounts whose concurrency quota is too small to reserve any)
    alarm_email: str | None
    sweep_workers: int  # concurrent timers sweeps per minute, each over its share of the due shards
    integrations: list[Integration]
    published_segments: str  # CDP_PUBLISHED_SEGMENTS: "*" (every segment's transitions on the bus) or segment ids
    collector_origins: list[str]  # browser origins that may send to the collector; ["*"]: any (Segment's default)
    collector_rate_limit: int  # requests per second the collector's stage accepts (then 429)
    collector_burst_limit: int
    collector_memory_mb: int
    # CDP_MERGE_KNOWN: merge a customer known by user id into another (off, as Segment: a known customer stays)
    merge_known: bool = False
    consent_policy: str = "{}"  # CONSENT_POLICY: JSON of cdp.core.consent.ConsentPolicy
    after_deletion: str = "block"  # CDP_AFTER_DELETION: block | fresh
    retention: Retention = Retention()
    # PSEUDONYM_SECRET_ARN: the members index and the ledger store HMACs of customer ids, keyed by a secret
    pseudonymous_indexes: bool = False
    # A day's size change, in percent, beyond which a segment is "swinging" and alarms; 0: no alarm
    segment_size_alarm_percent: int = 0
    population_schedule: str = "rate(1 hour)"  # when the population statistics job runs (cdk.jobs)
    job_scan_segments: int = 16  # parallel scan segments per job phase
    job_concurrency: int = 16  # scan segments worked at once (the Distributed Map's MaxConcurrency)
    traits_schedule: str = "cron(30 2 * * ? *)"  # when the computed traits job runs (cdk.jobs): daily
    cluster_count: int = 0  # the traits job's k-means clusters; 0: chosen by silhouette

    @classmethod
    def from_context(cls, scope: Construct) -> Settings:
        architecture = str(scope.node.try_get_context("architecture") or "arm64")
        if architecture not in ("arm64", "x86_64"):
            raise SettingsError(f"context architecture must be arm64 or x86_64, not {architecture!r}")
        reserved = _int(scope, "api_reserved_concurrency", 50, 0, 1000)
        me_burst = _int(scope, "api_me_burst_limit", 40, 1, 5000)
        if reserved and me_burst >= reserved:
            # A burst of /me requests runs that many api functions at once: it must leave some for the operators.
            raise SettingsError(f"context api_me_burst_limit ({me_burst}) must be below api_reserved_concurrency "
                                f"({reserved}), so end users cannot take every api function from the operators")
        return cls(
            stage=str(scope.node.try_get_context("stage") or "dev"),
            stream_shards=_int(scope, "stream_shards", 0, 0, 500),
            architecture=lambda_.Architecture.ARM_64 if architecture == "arm64" else lambda_.Architecture.X86_64,
            memory_mb=_int(scope, "memory_mb", 512, 128, 10240),
            ingest_memory_mb=_int(scope, "ingest_memory_mb", 1769, 128, 10240),
            batch_size=_int(scope, "batch_size", 100, 1, 100),
            batching_window_seconds=_int(scope, "batching_window_seconds", 0, 0, 300),
            parallelization_factor=_int(scope, "parallelization_factor", 1, 1, 10),
            retry_attempts=_int(scope, "retry_attempts", 5, 0, 10000),
            max_record_age_hours=_int(scope, "max_record_age_hours", 24, 1, 168),
            member_shards=_int(scope, "member_shards", 16, 1, 1000),
            cors_origins=_origins(scope),
            api_rate_limit=_int(scope, "api_rate_limit", 100, 1, 10000),
            api_burst_limit=_int(scope, "api_burst_limit", 200, 1, 5000),
            api_me_rate_limit=_int(scope, "api_me_rate_limit", 20, 1, 10000),
            api_me_burst_limit=me_burst,
            api_reserved_concurrency=reserved,
            alarm_email=str(scope.node.try_get_context("alarm_email") or "") or None,
            sweep_workers=_int(scope, "sweep_workers", 4, 1, 5),  # EventBridge allows 5 targets per rule
            integrations=(integrations := _integrations(scope)),
            published_segments=_published(scope, integrations),
            collector_origins=_collector_origins(scope),
            collector_rate_limit=_int(scope, "collector_rate_limit", 1000, 1, 100_000),
            collector_burst_limit=_int(scope, "collector_burst_limit", 2000, 1, 100_000),
            collector_memory_mb=_int(scope, "collector_memory_mb", 512, 128, 10240),
            merge_known=_flag(scope, "merge_known"),
            consent_policy=_consent(scope),
            after_deletion=_after_deletion(scope),
            retention=_retention(scope),
            pseudonymous_indexes=_flag(scope, "pseudonymous_indexes"),
            segment_size_alarm_percent=_int(scope, "segment_size_alarm_percent", 0, 0, 1000),
            population_schedule=_schedule(scope, "population_schedule", "rate(1 hour)"),
            job_scan_segments=_int(scope, "job_scan_segments", 16, 1, 1000),
            job_concurrency=_int(scope, "job_concurrency", 16, 1, 1000),
            traits_schedule=_schedule(scope, "traits_schedule", "cron(30 2 * * ? *)"),
            cluster_count=_cluster_count(scope),
        )
