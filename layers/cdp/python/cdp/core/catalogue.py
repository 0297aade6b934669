"""A catalogue of segment definitions: loaded from YAML, validated, and ordered for evaluation."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdp.core.language import (
    SLUG,
    AbsenceCondition,
    Condition,
    DefinitionError,
    ManualCondition,
    MetricSpec,
    Parser,
    SegmentCondition,
)

DEFINITION_FIELDS = {"id", "name", "description", "enabled", "priority", "group", "weight", "condition"}


@dataclass(frozen=True)
class Segment:
    id: str
    name: str
    description: str
    enabled: bool
    priority: int
    group: str | None
    weight: float
    condition: Condition
    source: str
    definition: dict[str, Any]

    @property
    def inputs(self) -> frozenset[str]:
        keys: set[str] = set()
        for node in self.condition.walk():
            keys |= node.inputs
        return frozenset(keys)

    @property
    def references(self) -> set[str]:
        return {node.segment_id for node in self.condition.walk() if isinstance(node, SegmentCondition)}

    @property
    def manual(self) -> bool:
        return isinstance(self.condition, ManualCondition)

    def rank(self) -> tuple[int, float, str]:
        """Sort key for overlap: higher priority, then higher weight, then id, come first."""
        return (-self.priority, -self.weight, self.id)


class CatalogueError(ValueError):
    """One or more definitions are invalid; ``errors`` lists each with its file, id and path."""

    def __init__(self, errors: list[DefinitionError]) -> None:
        self.errors = errors
        super().__init__("\n".join(error.render() for error in errors))


@dataclass(frozen=True)
class Unit:
    """Segments evaluated together: an exclusive group, or one ungrouped segment."""

    name: str
    segments: tuple[Segment, ...]
    inputs: frozenset[str]
    time_driven: bool
    grouped: bool = False  # an exclusive group: only its first eligible segment is a member


@dataclass(frozen=True, slots=True)
class CounterShape:
    """A counter an event name feeds: the metric, and the tiers and sum the profile keeps for it."""

    metric: MetricSpec
    tiers: tuple[str, ...]
    has_sum: bool


@dataclass(frozen=True, slots=True)
class Counted:
    """What folding one event name updates: its counters, and whether one of them is its plain per-name one."""

    counters: tuple[CounterShape, ...]
    plain_tracked: bool


NOTHING_COUNTED = Counted((), False)


class Catalogue:
    """The enabled segments, their metrics, and the order to evaluate them in.

    ``readers`` indexes the units by the inputs they read (``e:<event>``, ``c:<channel>``,
    ``t:<trait>``, ``rfm``, ``stats``, ``s:<segment>``, ``p:purchased``, ``p:viewed``): each key maps to the
    positions in ``units`` of the units whose conditions read it, so an event evaluates only those.
    """

    def __init__(self, segments: list[Segment], metrics: dict[str, MetricSpec], version: int = 0) -> None:
        self.version = version  # the definitions store's catalogue version (0: the YAML folder, or none stored)
        self.all_segments = {segment.id: segment for segment in segments}
        self.segments = {segment.id: segment for segment in segments if segment.enabled}
        self.metrics = metrics
        self.metrics_by_event: dict[str, list[MetricSpec]] = {}
        for metric in metrics.values():
            self.metrics_by_event.setdefault(metric.source.event, []).append(metric)
        self.counted = {event: Counted(tuple(CounterShape(m, tuple(sorted(m.tiers)), m.sum_property is not None)
                                             for m in specs), any(m.key == event for m in specs))
                        for event, specs in self.metrics_by_event.items()}
        self.latches: dict[str, list[AbsenceCondition]] = {}
        for segment in self.segments.values():
            for node in segment.condition.walk():
                if isinstance(node, AbsenceCondition) and node.when is not None:
                    node.latch_key = f"{segment.id}:{node.path}"
                    self.latches.setdefault(node.trigger.source.event, []).append(node)
        self.latch_keys = frozenset(node.latch_key for nodes in self.latches.values() for node in nodes)
        self.units = self._order_units()
        self.fingerprint = _fingerprint(self.segments.values(), version)
        self.unit_of = {segment.id: unit for unit in self.units for segment in unit.segments}
        self.position = {segment.id: index for index, unit in enumerate(self.units) for segment in unit.segments}
        readers: dict[str, list[int]] = {}
        for index, unit in enumerate(self.units):
            for key in unit.inputs:
                readers.setdefault(key, []).append(index)
        self.readers = {key: tuple(indexes) for key, indexes in readers.items()}
        # Per segment, the positions of the units that refer to it: they follow it when it flips.
        self.dependants = {segment_id: self.readers.get(f"s:{segment_id}", ()) for segment_id in self.segments}

    def units_reading(self, inputs: Iterable[str]) -> set[int]:
        """The positions in ``units`` of the units that read any of ``inputs``."""
        readers = self.readers
        found: set[int] = set()
        for key in inputs:
            indexes = readers.get(key)
            if indexes:
                found.update(indexes)
        return found

    def _order_units(self) -> list[Unit]:
        # Keyed apart so that a group and an ungrouped segment may share a name.
        grouped: dict[str, list[Segment]] = {}
        for segment in self.segments.values():
            grouped.setdefault(f"group:{segment.group}" if segment.group else segment.id, []).append(segment)
        units: dict[str, Unit] = {}
        for name, members in grouped.items():
            members.sort(key=Segment.rank)
            inputs = frozenset().union(*(m.inputs for m in members))
            time_driven = any(node.time_driven for m in members for node in m.condition.walk())
            units[name] = Unit(name.removeprefix("group:"), tuple(members), inputs, time_driven,
                               members[0].group is not None)
        unit_name = {s.id: f"group:{s.group}" if s.group else s.id for s in self.segments.values()}
        ordered: list[Unit] = []
        state: dict[str, str] = {}

        def visit(name: str, trail: list[Segment]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                referrer = trail[-1]
                cycle = " -> ".join(segment.id for segment in trail)
                raise DefinitionError("condition",
                                      f"segment references form a cycle: {cycle} -> {units[name].name}",
                                      source=referrer.source, segment_id=referrer.id)
            state[name] = "visiting"
            for member in units[name].segments:
                for reference in sorted(member.references):
                    visit(unit_name[reference], [*trail, member])
            state[name] = "done"
            ordered.append(units[name])

        for name in sorted(units):
            visit(name, [])
        return ordered

    @property
    def referenced_events(self) -> set[str]:
        return set(self.metrics_by_event)


# ---- overlap: which of a customer's segments comes first, and their combined weight ---------------

def ranked_members(catalogue: Catalogue, memberships: Iterable[str]) -> list[Segment]:
    """The enabled segments among ``memberships`` (segment ids), first the one :func:`primary_segment` names."""
    segments = catalogue.segments
    return sorted((segments[s] for s in memberships if s in segments), key=Segment.rank)


def primary_segment(catalogue: Catalogue, memberships: Iterable[str]) -> Segment | None:
    """The member segment with the highest priority (ties: higher weight, then id), or None."""
    segments = catalogue.segments
    members = [segments[s] for s in memberships if s in segments]
    return min(members, key=Segment.rank) if members else None


def membership_score(catalogue: Catalogue, memberships: Iterable[str]) -> float:
    """The sum of the weights of the enabled segments among ``memberships``, added in rank order."""
    return sum(segment.weight for segment in ranked_members(catalogue, memberships))


def _fingerprint(segments: Iterable[Segment], version: int) -> str:
    """Changes whenever an enabled definition does, so profiles know to be evaluated in full.

    A stored catalogue's fingerprint starts with its version (``"7.1a2b3c4d"``): a function that has not yet
    picked up a newer version can tell that a profile was evaluated by a newer catalogue than its own.
    """
    import hashlib
    import json

    text = json.dumps(sorted((s.id, s.definition) for s in segments), sort_keys=True, default=str)
    digest = hashlib.blake2b(text.encode(), digest_size=4).hexdigest()
    return f"{version}.{digest}" if version else digest


def fingerprint_version(fingerprint: str) -> int:
    """The catalogue version a profile's fingerprint names (0: the YAML folder's, or none)."""
    head, dot, _ = fingerprint.partition(".")
    return int(head) if dot and head.isdigit() else 0


def parse_definition(raw: object, source: str = "") -> tuple[Segment, Parser]:
    """Validate one definition; raises DefinitionError naming the file, segment id and path."""
    if not isinstance(raw, dict):
        raise DefinitionError("", f"a definition must be a mapping, not {type(raw).__name__}", source=source)
    segment_id = raw.get("id")
    try:
        known_fields(raw, DEFINITION_FIELDS, "")
        segment_id, name, description, enabled = _labels(raw)
        priority, group, weight = _overlap(raw)
        condition, parser = _condition(raw, segment_id, group)
    except DefinitionError as error:
        raise error.located(source, segment_id if isinstance(segment_id, str) else "") from None
    segment = Segment(segment_id, name, description, enabled, priority, group, weight, condition, source, raw)
    return segment, parser


def known_fields(raw: dict[Any, Any], allowed: Collection[str], path: str) -> None:
    """Refuse a field of a definition (a segment's, or a placement's at ``path``) that is not in ``allowed``."""
    for key in raw:
        if key not in allowed:
            at = f"{path}.{key}" if path else str(key)
            raise DefinitionError(at, f"is not a known field (allowed: {', '.join(sorted(allowed))})")


def definition_labels(raw: dict[Any, Any], example_id: str) -> tuple[str, str, str]:
    """The id (a slug), name and description every definition as code has (segments and placements)."""
    definition_id = raw.get("id")
    if not isinstance(definition_id, str) or not SLUG.match(definition_id):
        raise DefinitionError("id", f"must be a lowercase slug like '{example_id}', not {definition_id!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DefinitionError("name", "is required (a non-empty string)")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise DefinitionError("description", "must be a string")
    return definition_id, name, description


def _labels(raw: dict[Any, Any]) -> tuple[str, str, str, bool]:
    """The id, name, description and enabled flag."""
    segment_id, name, description = definition_labels(raw, "cart-abandoners")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise DefinitionError("enabled", f"must be true or false, not {enabled!r}")
    return segment_id, name, description, enabled


def _overlap(raw: dict[Any, Any]) -> tuple[int, str | None, float]:
    """What decides between overlapping segments: the priority, the exclusive group and the weight."""
    priority = raw.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise DefinitionError("priority", f"must be a whole number, not {priority!r}")
    group = raw.get("group")
    if group is not None and (not isinstance(group, str) or not SLUG.match(group)):
        raise DefinitionError("group", f"must be a lowercase slug, not {group!r}")
    weight = raw.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise DefinitionError("weight", f"must be a number >= 0, not {weight!r}")
    return priority, group, float(weight)


def _condition(raw: dict[Any, Any], segment_id: str, group: str | None) -> tuple[Condition, Parser]:
    """The parsed condition, and the parser that holds the metrics it reads."""
    if "condition" not in raw:
        raise DefinitionError("condition", "is required")
    parser = Parser()
    condition = parser.parse(raw["condition"])
    if isinstance(condition, ManualCondition):
        if group is not None:
            raise DefinitionError("group", "a static (manual) segment cannot be in an exclusive group")
        condition.segment_id = segment_id
    return condition, parser


def build_catalogue(definitions: Iterable[tuple[str, object]], version: int = 0) -> Catalogue:
    """Validate (source, raw definition) pairs together; raises CatalogueError listing every problem.

    ``version`` is the definitions store's catalogue version they are (0: not from the store)."""
    errors: list[DefinitionError] = []
    parsed = _parse_all(definitions, errors)
    segments = [segment for segment, _ in parsed]
    _check_references(segments, errors)
    metrics = _merge_metrics(parsed, errors)
    if errors:
        raise CatalogueError(errors)
    # Conditions must read the merged metric (the one the profile fills), so re-point them.
    for segment in segments:
        for node in segment.condition.walk():
            _repoint(node, metrics)
            if isinstance(node, AbsenceCondition) and node.when is not None:
                for inner in node.when.walk():
                    _repoint(inner, metrics)
    try:
        return Catalogue(segments, metrics, version)
    except DefinitionError as error:
        raise CatalogueError([error]) from None


def _parse_all(definitions: Iterable[tuple[str, object]],
               errors: list[DefinitionError]) -> list[tuple[Segment, Parser]]:
    """Each valid definition whose id is not taken by an earlier one; the others' problems go to ``errors``."""
    parsed: list[tuple[Segment, Parser]] = []
    ids: set[str] = set()
    for source, raw in definitions:
        try:
            segment, parser = parse_definition(raw, source)
        except DefinitionError as error:
            errors.append(error)
            continue
        if segment.id in ids:
            errors.append(DefinitionError("id", "is defined twice", source=source, segment_id=segment.id))
            continue
        ids.add(segment.id)
        parsed.append((segment, parser))
    return parsed


def _check_references(segments: list[Segment], errors: list[DefinitionError]) -> None:
    """An enabled segment may refer only to enabled segments outside its own exclusive group."""
    known = {s.id: s for s in segments}
    for segment in segments:
        if not segment.enabled:
            continue
        for reference in sorted(segment.references):
            problem = _reference_problem(segment, reference, known.get(reference))
            if problem:
                errors.append(DefinitionError("condition", problem, source=segment.source, segment_id=segment.id))


def _reference_problem(segment: Segment, reference: str, target: Segment | None) -> str | None:
    if target is None:
        return f"refers to unknown segment {reference!r}"
    if not target.enabled:
        return f"refers to disabled segment {reference!r}"
    if target.group is not None and target.group == segment.group:
        return f"refers to {reference!r} in its own exclusive group {segment.group!r}"
    return None


def _merge_metrics(parsed: list[tuple[Segment, Parser]], errors: list[DefinitionError]) -> dict[str, MetricSpec]:
    """One metric per key over the enabled segments, with the union of the tiers they read."""
    metrics: dict[str, MetricSpec] = {}
    for segment, parser in parsed:
        if not segment.enabled:
            continue
        for key, metric in parser.metrics.items():
            merged = metrics.get(key)
            if merged is None:
                metrics[key] = MetricSpec(metric.source, set(metric.tiers), metric.sum_property)
                continue
            merged.tiers |= metric.tiers
            if metric.sum_property and merged.sum_property not in (None, metric.sum_property):
                errors.append(DefinitionError(
                    "condition", f"sums {key!r} over {metric.sum_property!r} but another segment sums it over"
                    f" {merged.sum_property!r}; add a where-filter to tell them apart",
                    source=segment.source, segment_id=segment.id))
            merged.sum_property = merged.sum_property or metric.sum_property
    return metrics


def _repoint(node: Condition, metrics: dict[str, MetricSpec]) -> None:
    for attribute in ("metric", "numerator", "denominator", "trigger", "missing"):
        spec = getattr(node, attribute, None)
        if isinstance(spec, MetricSpec) and spec.key in metrics:
            setattr(node, attribute, metrics[spec.key])


def load_catalogue(directory: str | Path) -> Catalogue:
    """Load every ``*.yaml`` / ``*.yml`` file in a folder. A file holds one definition or a list."""
    return build_catalogue(read_definitions(directory))


def read_definitions(directory: str | Path) -> list[tuple[str, object]]:
    """The ``(file, definition)`` pairs of a folder's ``*.yaml`` / ``*.yml`` files, unchecked; raises
    CatalogueError for a missing folder or a file that is not YAML."""
    import yaml  # only definitions as files need YAML

    root = Path(directory)
    if not root.is_dir():
        raise CatalogueError([DefinitionError("", f"{root} is not a folder of segment definitions")])
    definitions: list[tuple[str, object]] = []
    errors: list[DefinitionError] = []
    for path in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]):
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            errors.append(DefinitionError("", f"is not valid YAML ({error})", source=str(path)))
            continue
        for raw in document if isinstance(document, list) else [document]:
            definitions.append((str(path), raw))
    if errors:
        raise CatalogueError(errors)
    return definitions
