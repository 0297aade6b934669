"""Segment stories: scripted customers and the transitions they must make, under a simulated clock.

A story file (``segments/stories/*.yaml``)::

    name: Frank leaves his cart
    start: 2026-10-01T09:00:00Z
    until: 3d                      # how long to let time run after the start
    events:
      - {at: 0m, customer: frank, event: Product Added, properties: {product_id: p1}}
    expect:                        # for each (customer, segment) named here: exactly these, in order
      - {at: 0m, customer: frank, segment: potential-abandoners, change: entered}
      - {at: 2d, customer: frank, segment: cart-abandoners, change: entered}
      - {customer: frank, segment: recent-buyers, change: none}   # no transition at all

A story may give the population statistics that ``percentile`` conditions compare with, per metric
(``orders``, ``revenue``, ``average_order_value``) either the other customers' values or the value at
whole percentiles (a percentile not given takes the value of the next one given above it, and above
the highest given, its value)::

    population:
      revenue: [0, 0, 20, 35, 50, 80, 120, 150, 200, 400]   # top 20%: above 150
      orders: {percentiles: {50: 1, 80: 3}}                 # top 20%: above 3

They hold for the whole story, as the statistics computed before it started.

A step may set computed traits instead of sending an event, as the traits job writes them: the model's traits
are replaced (``profile.computed.put``), then only the segments reading a trait that changed are evaluated::

    events:
      - {at: 1d, customer: carla, computed: {model: rfm, version: 1, traits: {rfm_segment: Champions}}}

``trained_at`` (an offset like ``at``) defaults to the step's own time. A story may also give stored model
documents (``models``, by model name, as ``GET /models/{name}`` stores them), which the ingest uses as the
deployed one does: a customer the stored cluster model has not assigned yet gets its cluster at their next
event::

    models:
      clusters: {version: 1, mean: [30, 1, 4, 1], scale: [20, 1, 1, 1], centroids: [[-1, 1, 1, 0], [1, -1, -1, 0]]}
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from cdp.core.catalogue import Catalogue
from cdp.core.durations import parse_duration
from cdp.core.engine import Engine, Transition
from cdp.core.events import Event, InvalidEvent, normalise
from cdp.core.language import RFM_METRICS
from cdp.core.population import PopulationStats
from cdp.core.traits import CLUSTERS, MODELS, TRAIT_MODELS, ClusterModel
from cdp_dev.replay import Replay

NO_CHANGE = "none"  # an expectation that the customer makes no transition at all in the segment


@dataclass
class StoryResult:
    source: str
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def _offset(value: Any, where: str) -> int:
    try:
        return parse_duration(str(value), allow_zero=True)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


@dataclass(frozen=True)
class ComputedStep:
    """Computed traits written to one customer at a moment, as the traits job writes them."""

    timestamp: float
    customer_id: str
    model: str
    version: int
    trained_at: int
    traits: dict[str, Any]


def _event(raw: dict[str, Any], number: int, moment: float) -> Event:
    where = f"events[{number}]"
    message = {"type": raw.get("type", "track"), "messageId": raw.get("message_id", f"story-{number}"),
               "userId": raw["customer"], "timestamp": datetime.fromtimestamp(moment, UTC).isoformat(),
               "properties": raw.get("properties") or {}, "traits": raw.get("traits") or {},
               "context": raw.get("context") or {}}
    if message["type"] == "track":
        message["event"] = raw["event"]
    try:
        return normalise(message)
    except InvalidEvent as error:
        raise ValueError(f"{where}: {error}") from None


def _computed_step(raw: dict[str, Any], number: int, moment: float, start: float) -> ComputedStep:
    where = f"events[{number}].computed"
    given = raw["computed"]
    if not isinstance(given, dict) or not isinstance(given.get("traits"), dict):
        raise ValueError(f"{where}: must be {{model: M, version: N, traits: {{name: value}}}}")
    model = given.get("model")
    if model not in MODELS:
        raise ValueError(f"{where}.model: not one of {', '.join(MODELS)}")
    foreign = sorted(name for name in given["traits"] if TRAIT_MODELS.get(name) != model)
    if foreign:
        raise ValueError(f"{where}.traits: {', '.join(foreign)} not computed by the {model} model")
    version = given.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{where}.version: must be a whole number >= 1")
    trained = moment if "trained_at" not in given else start + _offset(given["trained_at"], f"{where}.trained_at")
    return ComputedStep(moment, str(raw["customer"]), model, version, int(trained), dict(given["traits"]))


def _steps(story: dict[str, Any], start: float) -> list[Event | ComputedStep]:
    steps: list[Event | ComputedStep] = []
    for number, raw in enumerate(story.get("events") or []):
        moment = start + _offset(raw.get("at", "0s"), f"events[{number}].at")
        steps.append(_computed_step(raw, number, moment, start) if "computed" in raw else _event(raw, number, moment))
    return sorted(steps, key=lambda step: step.timestamp)  # stable: steps at one moment keep their order


def _run(replay: Replay, steps: list[Event | ComputedStep]) -> list[Transition]:
    log: list[Transition] = []
    for step in steps:
        if isinstance(step, ComputedStep):
            log += replay.advance_to(step.timestamp)
            profile = replay.profile(step.customer_id)
            changed = profile.computed.put(step.model, step.version, step.trained_at, step.traits)
            log += replay.engine.evaluate(profile, replay.now, touched={f"t:{name}" for name in changed})
            replay._schedule(profile)  # its next deadline, as after an event
        else:
            log += replay.apply([step])[0]
    return log


def story_stats(story: dict[str, Any], start: int) -> PopulationStats | None:
    """The statistics of the story's ``population``, carrying its stored ``models`` (None with neither)."""
    stats = population_stats(story.get("population"), start)
    raw = story.get("models")
    if raw is None:
        return stats
    if not isinstance(raw, dict) or not raw:
        raise ValueError("models: must map model names to their documents")
    models: dict[str, dict[str, Any]] = {}
    for name, given in raw.items():
        if name != CLUSTERS:
            raise ValueError(f"models.{name}: only a clusters model is used at ingest")
        document = {"model": name, "trained_at": start, **(given or {})}
        try:
            ClusterModel.from_document(document)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"models.{name}: not a cluster model document ({error})") from None
        models[name] = document
    base = stats or PopulationStats({}, start)
    return replace(base, models=models)


def run_story(story: dict[str, Any], catalogue: Catalogue, source: str = "") -> StoryResult:
    result = StoryResult(source, str(story.get("name", source)))
    try:
        start = datetime.fromisoformat(str(story["start"]).replace("Z", "+00:00")).timestamp()
        replay = Replay(Engine(catalogue, story_stats(story, int(start))))
        log = _run(replay, _steps(story, start))
        log += replay.advance_to(start + _offset(story.get("until", "0s"), "until"))
        expected = [(e["customer"], e["segment"], e["change"], int(start + _offset(e.get("at", "0s"), "expect.at")))
                    for e in story.get("expect") or []]
    except (KeyError, ValueError, TypeError) as error:
        result.problems.append(f"invalid story: {error}")
        return result
    pairs = {(customer, segment) for customer, segment, _, _ in expected}
    expected = [entry for entry in expected if entry[2] != NO_CHANGE]
    actual = [(t.customer_id, t.segment_id, t.kind, t.at) for t in log if (t.customer_id, t.segment_id) in pairs]
    for customer, segment in sorted(pairs):
        want = [(c, k, at) for c, s, k, at in expected if (c, s) == (customer, segment)]
        got = [(c, k, at) for c, s, k, at in actual if (c, s) == (customer, segment)]
        if want != got:
            def show(items: list[tuple[str, str, int]]) -> str:
                return ", ".join(f"{k} at +{format_offset(at - start)}" for _, k, at in items) or "nothing"
            result.problems.append(f"{customer} / {segment}: expected {show(want)}; got {show(got)}")
    return result


def population_stats(raw: Any, at: int) -> PopulationStats | None:
    """The statistics a story's ``population`` gives (None without one); ValueError names what is wrong."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise ValueError("population: must map metrics to values or percentiles")
    values: dict[str, list[float]] = {}
    tables: dict[str, tuple[float, ...]] = {}
    for metric, given in raw.items():
        where = f"population.{metric}"
        if metric not in RFM_METRICS:
            raise ValueError(f"{where}: not one of {', '.join(RFM_METRICS)}")
        if isinstance(given, list) and given:
            values[metric] = [_figure(value, f"{where}[{index}]") for index, value in enumerate(given)]
        elif isinstance(given, dict) and list(given) == ["percentiles"]:
            tables[metric] = _percentile_table(given["percentiles"], f"{where}.percentiles")
        else:
            raise ValueError(f"{where}: must be a non-empty list of values, or {{percentiles: {{80: 150}}}}")
    stats = PopulationStats.from_values(values, computed_at=at)
    return PopulationStats({**stats.percentiles, **tables}, at, stats.population)


def _figure(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: must be a number, not {value!r}")
    return float(value)


def _percentile_table(raw: Any, where: str) -> tuple[float, ...]:
    """The value at each whole percentile 1..99 from some of them: each takes the next one given at or above."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where}: must map whole percentiles 1..99 to values")
    given: dict[int, float] = {}
    for key, value in raw.items():
        rank = int(key) if isinstance(key, int) or (isinstance(key, str) and key.isdigit()) else 0
        if isinstance(key, bool) or not 1 <= rank <= 99:
            raise ValueError(f"{where}.{key}: must be a whole percentile from 1 to 99")
        given[rank] = _figure(value, f"{where}.{key}")
    ranks = sorted(given)
    if any(given[low] > given[high] for low, high in pairwise(ranks)):
        raise ValueError(f"{where}: values must not fall as the percentile rises")
    return tuple(given[next((r for r in ranks if r >= rank), ranks[-1])] for rank in range(1, 100))


def format_offset(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if v) or "0s"


def run_stories(folder: Path, catalogue: Catalogue) -> list[StoryResult]:
    import yaml

    results = []
    for path in sorted(folder.glob("*.yaml")):
        story = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(story, dict):
            results.append(StoryResult(str(path), path.stem, ["invalid story: not a mapping"]))
            continue
        results.append(run_story(story, catalogue, str(path)))
    return results
