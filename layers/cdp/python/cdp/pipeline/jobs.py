"""The job engine: work over every profile, split into parallel scan segments, in phases.

A job is an ordered list of phases. Each phase is a parallel scan of the profiles table over ``segments_total``
scan segments (DynamoDB's ``Segment``/``TotalSegments``), each segment worked through by invocations of
:meth:`JobEngine.work` that take pages until their time budget runs out and hand a cursor to the next one; then
:meth:`JobEngine.finish` closes the phase and :meth:`JobEngine.advance` starts the next. The same three steps run on
Step Functions in AWS (a Distributed Map over the segments, :mod:`cdk.jobs`) and on threads in the local stack, so
one job's size is bounded by neither a Lambda's 15 minutes nor one machine.

Kinds:

``backfill``
    phase ``evaluate``: every profile (not merged ones) is evaluated in full with a catalogue of at least the job's
    ``catalogue_version``, and written, through :func:`cdp.pipeline.write.write_profile`, only when its memberships
    or deadlines changed (a profile whose only change would be its catalogue fingerprint is left as it is: its next
    event evaluates it in full again, which costs CPU, not a write). So a rerun writes nothing. Each transition
    written carries the delivery mode as a sixth element unless it is ``all`` (see :data:`DELIVER_MODES`); the
    default is ``audiences``: a new segment's existing qualifiers join ad audiences and lists but get no email,
    since nobody should get 100,000 emails because an operator saved a segment. When an enabled segment reads
    population statistics, the backfill goes on with the two phases of a percentiles job.
``percentiles``
    phase ``collect``: each scan segment writes, per metric (``orders``, ``revenue``, ``average_order_value``, as
    :meth:`cdp.core.profile.ProfileView.rfm` gives them), a histogram of the values it read to the job results (one
    object per invocation, so a retried invocation replaces its own part); the finish merges them exactly, computes
    :class:`~cdp.core.population.PopulationStats` and stores them where every function's live catalogue reads them.
    Phase ``reevaluate``: only the units that read ``stats`` are evaluated, and only profiles whose membership
    changed (the customers whose side of a threshold moved) are written. The old and new thresholds go in the job's
    result. It runs hourly by default, and after a backfill.
``traits``
    computed traits (:mod:`cdp.core.traits`, :mod:`cdp.pipeline.traits`): phase ``features`` collects the buyers'
    RFM histograms and a bounded training sample (option ``sample``, 20,000 by default); its finish trains the
    job's ``models`` (``rfm``, ``clusters``, ``predictions``: all by default; ``clusters`` the number of clusters,
    2..12, or null for the best silhouette), stores their documents in the definitions store and puts their
    versions, metrics and cluster descriptions in the job's result. Phase ``score`` writes each profile whose trait
    values changed (only those), and evaluates the segments that read the changed traits. It runs daily by default.

Counts (added atomically, so concurrent segments never lose one): ``scanned``, ``evaluated``, ``written``,
``entered`` and ``exited`` (of the job's segment, every segment without one), ``conflicts``, ``failed``, and
``unreadable`` (items of the table that are not profiles: skipped). A profile whose write failed is still evaluated
in full at its next event (its fingerprint is stale), so a job goes on.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from cdp.core.catalogue import Catalogue
from cdp.core.consent import ConsentPolicy
from cdp.core.engine import ENTERED, EXITED, Engine
from cdp.core.language import PercentileCondition
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile, ProfileView
from cdp.core.traits import MODELS
from cdp.pipeline.parallel import each
from cdp.pipeline.write import WriteOutcome, write_profile
from cdp.ports import DefinitionStore, ProfileStore, TransientError

if TYPE_CHECKING:
    from cdp.pipeline.traits import Trainer

BACKFILL, PERCENTILES, TRAITS = "backfill", "percentiles", "traits"
KINDS = (BACKFILL, PERCENTILES, TRAITS)
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
EVALUATE, COLLECT, REEVALUATE = "evaluate", "collect", "reevaluate"
FEATURES, SCORE = "features", "score"
PHASES = {BACKFILL: [EVALUATE], PERCENTILES: [COLLECT, REEVALUATE], TRAITS: [FEATURES, SCORE]}
DELIVER_MODES = ("none", "audiences", "all")  # none: nobody; audiences: lists and ad audiences, no email; all
DEFAULT_DELIVER = "audiences"
BECAUSE = ("saved", "deleted", "disabled")
COUNTS = ("scanned", "evaluated", "written", "entered", "exited", "conflicts", "failed", "unreadable")
METRICS = ("orders", "revenue", "average_order_value")
JOB_DAYS = 30  # a job's record expires this long after it was created
DEFAULT_SCAN_SEGMENTS = 16
DEFAULT_PAGE_SIZE = 100
START = ""  # the cursor of a scan segment's first invocation
DEFAULT_SAMPLE = 20_000  # a traits job's training sample
MAX_SAMPLE = 50_000  # the finish holds the sample and one part: about 150 MB at 50,000 rows


class InvalidJob(ValueError):
    """A job request or step that cannot be run; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class StaleCatalogue(RuntimeError):
    """The function does not yet hold the catalogue version the job needs: retried, it soon will."""


@dataclass
class Job:
    job_id: str
    kind: str
    status: str
    created_at: float
    updated_at: float
    options: dict[str, Any] = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)
    phase: str = ""
    segments_total: int = 0
    segments_done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def progress(self) -> float:
        """0..1: finished phases, plus the share of the current phase's segments done."""
        if self.status == DONE:
            return 1.0
        if not self.phases or self.phase not in self.phases:
            return 0.0
        share = self.segments_done / self.segments_total if self.segments_total else 0.0
        return round(min(1.0, (self.phases.index(self.phase) + share) / len(self.phases)), 4)


class JobStore(Protocol):
    def create(self, job: Job) -> None:
        """Store a new job (its id not taken)."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def add_counts(self, job_id: str, counts: Mapping[str, int], segments_done: int, at: float) -> None:
        """Add to the counts and to ``segments_done`` atomically (concurrent segments add at once)."""
        ...

    def update(self, job_id: str, at: float, **changes: Any) -> None:
        """Set ``status``, ``phase``, ``phases``, ``segments_total``, ``segments_done``, ``result``, ``reason``."""
        ...


class JobRunner(Protocol):
    def start(self, job_id: str) -> None:
        """Run the stored job to its end, asynchronously (raises :class:`~cdp.ports.TransientError`)."""
        ...


@dataclass(frozen=True)
class ScanPage:
    profiles: list[Profile]
    cursor: object | None  # where the segment's next page starts; None: the segment is done
    unreadable: int = 0  # items that are not profiles (a foreign or hand-edited item): skipped and counted


class ProfileScan(Protocol):
    """The profiles table read by a parallel scan."""

    def page(self, segment: int, total: int, cursor: object | None, limit: int) -> ScanPage:
        """Up to ``limit`` decoded profiles of scan segment ``segment`` of ``total``, from ``cursor``."""
        ...

    def approximate_count(self) -> int:
        """The table's item count as DynamoDB last published it (about every six hours)."""
        ...


class JobResults(Protocol):
    """The partial results of a phase's segments (S3 in AWS)."""

    def put(self, job_id: str, phase: str, part: str, document: dict[str, Any]) -> None: ...

    def parts(self, job_id: str, phase: str) -> Iterable[dict[str, Any]]: ...


# ---- starting and showing jobs ----------------------------------------------------------------------------


def job_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options checked and completed with their defaults (raises :class:`InvalidJob`)."""
    if kind not in KINDS:
        raise InvalidJob("kind", f"must be one of {', '.join(KINDS)}, not {kind!r}")
    deliver = options.get("deliver") or (DEFAULT_DELIVER if kind == BACKFILL else "all")
    if deliver not in DELIVER_MODES:
        raise InvalidJob("deliver", f"must be one of {', '.join(DELIVER_MODES)}, not {deliver!r}")
    checked: dict[str, Any] = {"deliver": deliver}
    version = options.get("catalogue_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidJob("catalogue_version", f"must be a whole number >= 0, not {version!r}")
    checked["catalogue_version"] = version
    segment_id = options.get("segment_id")
    if segment_id is not None and not isinstance(segment_id, str):
        raise InvalidJob("segment_id", "must be a segment id or null")
    checked["segment_id"] = segment_id
    because = options.get("because")
    if because is not None and because not in BECAUSE:
        raise InvalidJob("because", f"must be one of {', '.join(BECAUSE)}, not {because!r}")
    if because is not None:
        checked["because"] = because
    if kind == TRAITS:
        checked.update(traits_options(options))
    return checked


def _whole(options: Mapping[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = options.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJob(name, f"must be a whole number from {low} to {high}, not {value!r}")
    return value


def traits_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A traits job's ``models`` (a non-empty subset of the models, default all), ``clusters`` (2..12, or null:
    chosen by silhouette) and ``sample`` (the training sample's size)."""
    models = options.get("models")
    if models is None:
        models = list(MODELS)
    if not isinstance(models, list) or not models or any(m not in MODELS for m in models):
        raise InvalidJob("models", f"must be a non-empty list of {', '.join(MODELS)}, not {models!r}")
    return {"models": [m for m in MODELS if m in models], "clusters": _whole(options, "clusters", None, 2, 12),
            "sample": _whole(options, "sample", DEFAULT_SAMPLE, 100, MAX_SAMPLE)}


def start_job(jobs: JobStore, runner: JobRunner, kind: str, options: dict[str, Any], now: float) -> Job:
    """Record a queued job and start it. Raises :class:`InvalidJob`. A runner that cannot start it (Step Functions
    throttling, say) leaves the job failed with the reason, never queued for ever: the caller sees ``status``."""
    job = Job(uuid.uuid4().hex, kind, QUEUED, now, now, job_options(kind, options), list(PHASES[kind]))
    jobs.create(job)
    try:
        runner.start(job.job_id)
    except TransientError as error:
        job.status, job.reason = FAILED, f"the job could not be started: {error}"[:500]
        jobs.update(job.job_id, now, status=FAILED, reason=job.reason)
    return job


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def job_document(job: Job) -> dict[str, Any]:
    """The JSON of ``GET /jobs/{id}``."""
    return {"id": job.job_id, "kind": job.kind, "status": job.status, "progress": job.progress,
            "phase": job.phase, "phases": list(job.phases),
            "segments": {"total": job.segments_total, "done": job.segments_done},
            "counts": {name: int(job.counts.get(name, 0)) for name in COUNTS}, "result": job.result,
            "options": job.options, "created_at": _iso(job.created_at), "updated_at": _iso(job.updated_at),
            "reason": job.reason}


# ---- the engine's steps -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Advanced:
    """What :meth:`JobEngine.advance` leaves: the phase to run over ``segments``, or ``done``."""

    job_id: str
    done: bool
    phase: str
    total: int
    segments: list[int]

    def as_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "done": self.done, "phase": self.phase, "total": self.total,
                "segments": self.segments}


@dataclass(frozen=True)
class Worked:
    done: bool
    cursor: Any


def reads_stats(catalogue: Catalogue) -> bool:
    return bool(catalogue.readers.get("stats"))


def percentile_conditions(catalogue: Catalogue) -> list[tuple[str, PercentileCondition]]:
    return [(segment.id, node) for segment in catalogue.segments.values() for node in segment.condition.walk()
            if isinstance(node, PercentileCondition)]


@dataclass
class JobEngine:
    """Everything a job's steps read and write. ``engine_for(version)`` is an engine (new per call) whose catalogue
    is at least that version; it raises :class:`StaleCatalogue` while the function does not hold it yet."""

    jobs: JobStore
    scan: ProfileScan
    profiles: ProfileStore
    results: JobResults
    definitions: DefinitionStore | None
    engine_for: Callable[[int], Engine]
    now: Callable[[], float] = time.time
    scan_segments: int = DEFAULT_SCAN_SEGMENTS
    page_size: int = DEFAULT_PAGE_SIZE
    pool: Executor | None = None
    trainer: Trainer | None = None  # None: cdp.models (scikit-learn), imported when a traits job trains

    def training(self) -> Trainer:
        if self.trainer is None:
            from cdp.pipeline.traits import ScikitTrainer

            self.trainer = ScikitTrainer()
        return self.trainer

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise InvalidJob("job_id", "no such job (expired, or never started)")
        return job

    def advance(self, job_id: str, finished: str | None = None) -> Advanced:
        """Start the job's first phase, or (``finished`` naming the current one) its next; ``done`` after the
        last. Asked again for a phase it has already moved past (a retried step), it answers the current one."""
        job = self._job(job_id)
        at = self.now()
        if job.status in (DONE, FAILED):
            return Advanced(job_id, True, job.phase, 0, [])
        if job.status == QUEUED:
            return self._begin(job, 0, at)
        if not finished or finished != job.phase:
            return self._current(job)
        phases = self._phases_after(job)
        following = phases.index(job.phase) + 1
        if following < len(phases) and phases[following] == REEVALUATE \
                and not reads_stats(self.engine_for(0).catalogue):
            following += 1  # nothing reads the statistics: nobody's membership can move with them
        if following >= len(phases):
            self.jobs.update(job_id, at, status=DONE, segments_done=job.segments_total)
            return Advanced(job_id, True, job.phase, 0, [])
        if phases != job.phases:
            self.jobs.update(job_id, at, phases=phases)
            job.phases = phases
        return self._begin(job, following, at)

    def _phases_after(self, job: Job) -> list[str]:
        """A backfill goes on with the percentiles phases when an enabled segment reads population statistics."""
        if job.kind == BACKFILL and job.phases == [EVALUATE] and job.phase == EVALUATE \
                and reads_stats(self.engine_for(int(job.options.get("catalogue_version", 0))).catalogue):
            return [EVALUATE, COLLECT, REEVALUATE]
        return list(job.phases)

    def _begin(self, job: Job, index: int, at: float) -> Advanced:
        phase, total = job.phases[index], self.scan_segments
        self.jobs.update(job.job_id, at, status=RUNNING, phase=phase, segments_total=total, segments_done=0)
        return Advanced(job.job_id, False, phase, total, list(range(total)))

    def _current(self, job: Job) -> Advanced:
        return Advanced(job.job_id, False, job.phase, job.segments_total, list(range(job.segments_total)))

    def fail(self, job_id: str, reason: str) -> None:
        """Mark the job failed with the reason (no identifiers: a step's error type and message)."""
        self.jobs.update(job_id, self.now(), status=FAILED, reason=reason[:500])

    def work(self, job_id: str, phase: str, segment: int, total: int, cursor: Any,
             has_time: Callable[[], bool] = lambda: True) -> Worked:
        """Take pages of one scan segment while ``has_time()``; the segment's cursor for the next invocation."""
        job = self._job(job_id)
        if job.status != RUNNING or job.phase != phase:
            return Worked(True, None)  # a step of a phase already closed (a retried invocation): nothing to do
        if not 0 <= segment < total:
            raise InvalidJob("segment", f"must be between 0 and {total - 1}")
        worker = self._worker(job, phase, segment, cursor)
        position = cursor.get("scan") if isinstance(cursor, dict) else None
        counts: dict[str, int] = dict.fromkeys(COUNTS, 0)
        done = False
        while True:
            page = self.scan.page(segment, total, position, self.page_size)
            worker.take(page.profiles, counts)
            counts["unreadable"] += page.unreadable
            position = page.cursor
            if position is None:
                done = True
                break
            if not has_time():
                break
        worker.close()
        self.jobs.add_counts(job_id, {k: v for k, v in counts.items() if v}, 1 if done else 0, self.now())
        return Worked(done, None if done else {"scan": position, "part": worker.part + 1})

    def _worker(self, job: Job, phase: str, segment: int, cursor: Any) -> _Worker:
        part = int(cursor.get("part", 0)) if isinstance(cursor, dict) else 0
        if phase == EVALUATE:
            engine = self.engine_for(int(job.options.get("catalogue_version", 0)))
            return _Evaluating(self, job, engine, None, segment, part)
        if phase == COLLECT:
            return _Collecting(self, job, segment, part)
        if phase in (FEATURES, SCORE):
            return self._traits_worker(job, phase, segment, part)
        if phase == REEVALUATE:
            engine = self.engine_for(int(job.options.get("catalogue_version", 0)))
            percentiles = job.result.get("percentiles") or {}
            engine.stats = PopulationStats({m: tuple(v) for m, v in percentiles.items()},
                                           int(job.result.get("computed_at", 0)), int(job.result.get("population", 0)))
            return _Evaluating(self, job, engine, {"stats"}, segment, part)
        raise InvalidJob("phase", f"{phase!r} is not a phase of this job")

    def _traits_worker(self, job: Job, phase: str, segment: int, part: int) -> _Worker:
        from cdp.pipeline.traits import Featuring, Scoring, load_prediction_model

        if phase == FEATURES:
            return Featuring(self, job, segment, part)
        predictions = load_prediction_model(self, job, self.training())
        return Scoring(self, job, self.engine_for(0), segment, part, predictions)

    def finish(self, job_id: str, phase: str) -> dict[str, Any]:
        """Close a phase once every segment is done: the collect phase's merge and the statistics' store."""
        job = self._job(job_id)
        if job.status == RUNNING and job.phase == phase == COLLECT and "percentiles" not in job.result:
            self._store_population(job)
        if job.status == RUNNING and job.phase == phase == FEATURES and "documents" not in job.result:
            from cdp.pipeline.traits import train_and_store

            result = {**job.result, **train_and_store(self, job, self.training())}
            self.jobs.update(job.job_id, self.now(), result=result)
        return {"job_id": job_id, "finished": phase}

    def _store_population(self, job: Job) -> None:
        at = self.now()
        # As of the job's start: of two overlapping jobs, the one that started later is the newer.
        stats = stats_from_histograms(merge_histograms(self.results.parts(job.job_id, COLLECT)), int(job.created_at))
        old = self.definitions.population() if self.definitions is not None else None
        stats_version = self.definitions.put_population(stats).stats_version if self.definitions is not None else 0
        catalogue = self.engine_for(0).catalogue
        thresholds = [{"segment_id": segment_id, "metric": node.metric, "top": node.top,
                       "old": old.threshold(node.metric, node.top) if old else None,
                       "new": stats.threshold(node.metric, node.top)}
                      for segment_id, node in percentile_conditions(catalogue)]
        result = {**job.result, "population": stats.population, "computed_at": stats.computed_at,
                  "stats_version": stats_version, "stored": self.definitions is not None,
                  "thresholds": thresholds, "percentiles": {m: list(v) for m, v in stats.percentiles.items()}}
        self.jobs.update(job.job_id, at, result=result)
        job.result = result


class _Worker(Protocol):
    part: int

    def take(self, profiles: Sequence[Profile], counts: dict[str, int]) -> None: ...

    def close(self) -> None: ...


def _segmentation(profile: Profile) -> tuple[dict[str, int], dict[str, int]]:
    """What a job's evaluation is written for: memberships and deadlines (not the fingerprint alone)."""
    return dict(profile.memberships), dict(profile.deadlines)


class _Evaluating:
    """Evaluate each profile (in full, or only the units reading ``touched``) and write what changed."""

    def __init__(self, jobs: JobEngine, job: Job, engine: Engine, touched: set[str] | None, segment: int,
                 part: int) -> None:
        self.jobs, self.engine, self.touched, self.part = jobs, engine, touched, part
        self.segment_id: str | None = job.options.get("segment_id")
        deliver = job.options.get("deliver", "all")
        self.mark = None if deliver == "all" else str(deliver)
        self.now = jobs.now()

    def change(self, profile: Profile) -> bool:
        if profile.version == 0:
            return False  # deleted (or expired) since the scan read it: a job never makes a profile
        before = _segmentation(profile)
        self.engine.evaluate(profile, self.now, None if self.touched is None else set(self.touched))
        if _segmentation(profile) == before:
            return False
        if self.mark is not None:
            profile.transitions = [[*entry[:5], self.mark] for entry in profile.transitions]
        return True

    def take(self, profiles: Sequence[Profile], counts: dict[str, int]) -> None:
        counts["scanned"] += len(profiles)
        live = [p for p in profiles if p.merged_into is None]
        counts["evaluated"] += len(live)
        outcomes = each(lambda p: write_profile(self.jobs.profiles, p.customer_id, p, self.change), live,
                        self.jobs.pool)
        for outcome in outcomes:
            self._account(outcome, counts)

    def _account(self, outcome: WriteOutcome, counts: dict[str, int]) -> None:
        counts["conflicts"] += outcome.conflicts
        if outcome.failed:
            counts["failed"] += 1
            return
        if not outcome.written:
            return
        counts["written"] += 1
        for entry in outcome.profile.transitions:
            if self.segment_id is None or entry[0] == self.segment_id:
                if entry[1] == ENTERED:
                    counts["entered"] += 1
                elif entry[1] == EXITED:
                    counts["exited"] += 1

    def close(self) -> None:
        pass


class _Collecting:
    """Histograms of each metric's values over the profiles read; one result object per invocation."""

    def __init__(self, jobs: JobEngine, job: Job, segment: int, part: int) -> None:
        self.jobs, self.job, self.segment, self.part = jobs, job, segment, part
        self.histograms: dict[str, dict[float, int]] = {metric: {} for metric in METRICS}

    def take(self, profiles: Sequence[Profile], counts: dict[str, int]) -> None:
        counts["scanned"] += len(profiles)
        for profile in profiles:
            if profile.merged_into is not None:
                continue  # its figures went to the customer it was merged into
            counts["evaluated"] += 1
            view = ProfileView(profile, 0, None)
            for metric, histogram in self.histograms.items():
                value = view.rfm(metric)
                histogram[value] = histogram.get(value, 0) + 1

    def close(self) -> None:
        document = {"segment": self.segment, "part": self.part,
                    "values": {m: sorted([v, n] for v, n in h.items()) for m, h in self.histograms.items()}}
        self.jobs.results.put(self.job.job_id, COLLECT, f"{self.segment:05d}-{self.part:06d}", document)


# ---- population statistics from the partial results ------------------------------------------------------


def merge_histograms(parts: Iterable[Mapping[str, Any]]) -> dict[str, dict[float, int]]:
    """Every part's histogram added up per metric: exact, whatever the order or split of the parts."""
    merged: dict[str, dict[float, int]] = {metric: {} for metric in METRICS}
    for part in parts:
        for metric, pairs in (part.get("values") or {}).items():
            histogram = merged.setdefault(metric, {})
            for value, count in pairs:
                histogram[value] = histogram.get(value, 0) + int(count)
    return merged


def stats_from_histograms(histograms: Mapping[str, Mapping[float, int]], computed_at: int) -> PopulationStats:
    """What :meth:`PopulationStats.from_values` gives for the values the histograms count (nearest rank)."""
    table: dict[str, tuple[float, ...]] = {}
    population = 0
    for metric, histogram in histograms.items():
        ordered = sorted(histogram.items())
        size = sum(count for _, count in ordered)
        population = max(population, size)
        if not size:
            continue
        values: list[float] = []
        index, seen = 0, ordered[0][1]
        for percent in range(1, 100):
            rank = max(0, math.ceil(percent / 100 * size) - 1)  # 0-based, as from_values takes it
            while rank >= seen:
                index += 1
                seen += ordered[index][1]
            values.append(ordered[index][0])
        table[metric] = tuple(values)
    return PopulationStats(table, computed_at, population)


# ---- preview -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    size: int
    scanned: int
    exact: bool
    error_bound: int  # the 95% interval's half-width (0 when exact)
    members: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"size": self.size, "scanned": self.scanned, "exact": self.exact, "error_bound": self.error_bound,
                "members": list(self.members)}


def preview(scan: ProfileScan, catalogue: Catalogue, stats: PopulationStats | None, segment_id: str, now: float, *,
            sample: int = 20, max_profiles: int = 20_000, consent_policy: ConsentPolicy | None = None,
            page_size: int = 500, rng: random.Random | None = None) -> Preview:
    """The size ``segment_id`` would have now under ``catalogue`` (which holds the candidate definition), and a
    sample of its members, evaluated on profiles read fresh and never written.

    Exact when the whole table is read within ``max_profiles``. Otherwise a sample: the table is split into
    scan segments of about a quarter of ``max_profiles`` each and segments are read in random order until
    ``max_profiles`` are read (DynamoDB spreads items over segments by the hash of the key, so a segment is a
    random sample). The size is the share of members times the table's size, with the 95% half-width
    ``1.96 * sqrt(p(1-p)/n) * N`` (by the rule of three, ``3/n * N``, when no or every profile read matches).
    """
    if segment_id not in catalogue.segments:
        raise InvalidJob("segment_id", "is not an enabled segment of the catalogue")
    tally = _Tally(Engine(catalogue, stats, consent_policy=consent_policy), segment_id, now, sample)
    estimate = max(0, scan.approximate_count())
    total = 1 if estimate <= max_profiles else min(1_000_000, math.ceil(estimate / max(1, max_profiles // 4)))
    order = list(range(total))
    (rng or random.Random()).shuffle(order)
    complete = True
    for segment in order:
        cursor: object | None = None
        while tally.scanned < max_profiles:
            page = scan.page(segment, total, cursor, min(page_size, max_profiles))
            tally.take(page.profiles)
            cursor = page.cursor
            if cursor is None:
                break
        if cursor is not None or (tally.scanned >= max_profiles and segment != order[-1]):
            complete = False
            break
    if complete:
        return Preview(tally.matches, tally.scanned, True, 0, tally.members)
    return _estimate(tally.matches, tally.scanned, max(estimate, tally.scanned), tally.members)


class _Tally:
    """A preview's count: each profile evaluated in full on a copy that is never written."""

    def __init__(self, engine: Engine, segment_id: str, now: float, sample: int) -> None:
        self.engine, self.segment_id, self.now, self.sample = engine, segment_id, now, sample
        self.scanned = self.matches = 0
        self.members: list[str] = []

    def take(self, profiles: Sequence[Profile]) -> None:
        for profile in profiles:
            if profile.merged_into is not None:
                continue
            self.scanned += 1
            profile.catalogue = ""  # a full evaluation, whatever catalogue evaluated it last
            self.engine.evaluate(profile, self.now, None)
            if self.segment_id in profile.memberships:
                self.matches += 1
                if len(self.members) < self.sample:
                    self.members.append(profile.customer_id)


def _estimate(matches: int, scanned: int, population: int, members: list[str]) -> Preview:
    share = matches / scanned if scanned else 0.0
    if matches in (0, scanned):
        bound = math.ceil(3 / max(1, scanned) * population)
    else:
        bound = math.ceil(1.96 * math.sqrt(share * (1 - share) / scanned) * population)
    return Preview(round(share * population), scanned, False, bound, members)


# ---- one step, as the state machine (or the local runner) invokes it ---------------------------------------


def run_step(engine: JobEngine, event: Mapping[str, Any],
             has_time: Callable[[], bool] = lambda: True) -> dict[str, Any]:
    """``{"step": "advance" | "work" | "finish" | "fail", ...}`` run on the engine; the step's JSON answer."""
    step = event.get("step")
    job_id = str(event.get("job_id") or "")
    if not job_id:
        raise InvalidJob("job_id", "is required")
    if step == "advance":
        return engine.advance(job_id, event.get("finished") or None).as_json()
    if step == "work":
        segment, total = event.get("segment"), event.get("total")
        if not isinstance(segment, int) or not isinstance(total, int) or total < 1:
            raise InvalidJob("segment", "segment and total must be whole numbers")
        phase = str(event.get("phase") or "")
        worked = engine.work(job_id, phase, segment, total, event.get("cursor") or None, has_time)
        return {"job_id": job_id, "phase": phase, "segment": segment, "total": total, "done": worked.done,
                "cursor": worked.cursor if worked.cursor is not None else START}
    if step == "finish":
        return engine.finish(job_id, str(event.get("phase") or ""))
    if step == "fail":
        engine.fail(job_id, _failure_reason(event.get("error")))
        return {"job_id": job_id, "failed": True}
    raise InvalidJob("step", f"must be advance, work, finish or fail, not {step!r}")


def _failure_reason(error: Any) -> str:
    """The Error and Cause Step Functions catches, as a sentence (a worker's errors name no customer)."""
    if isinstance(error, Mapping):
        return f"{error.get('Error', 'error')}: {str(error.get('Cause', ''))[:400]}"
    return str(error or "the job failed")
