"""Placements: the slots of a frontend (a home-page hero, a cart banner) and the content each customer gets there.

A placement is an ordered list of rules, each a segment-language condition on the profile (``when``) and
conditions on the request (``context``: page, device, UTM), mapped to content, plus a default. Definitions
are YAML files in ``placements/`` (see ``placements/README.md``), validated against the segment catalogue:
a rule may only read what the profiles keep. :func:`decide` is pure and reads one profile, in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdp.core.catalogue import Catalogue, CatalogueError, Segment, definition_labels, known_fields
from cdp.core.language import (
    SLUG,
    AbsenceCondition,
    Condition,
    DefinitionError,
    MetricSpec,
    Parser,
    PercentileCondition,
    SegmentCondition,
)
from cdp.core.profile import ProfileView

PLACEMENT_FIELDS = {"id", "name", "description", "rules", "default"}
RULE_FIELDS = {"id", "when", "context", "content"}
CONTENT_FIELDS = {"id", "payload"}
CONTEXT_KEYS = ("page", "device", "utm_campaign", "utm_source", "utm_medium")
MAX_PAYLOAD_BYTES = 16 * 1024  # content is served on every page load: keep it a pointer plus a few fields


@dataclass(frozen=True, slots=True)
class Content:
    id: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    when: Condition | None
    context: Mapping[str, tuple[str, ...]]  # key -> accepted values; a value ending in ``*`` is a prefix
    content: Content
    segments: tuple[str, ...]  # the segments ``when`` names, for the primary-segment tie-break

    def context_matches(self, context: Mapping[str, str]) -> bool:
        for key, accepted in self.context.items():
            given = context.get(key)
            if given is None or not any(_accepts(value, given) for value in accepted):
                return False
        return True


def _accepts(value: str, given: str) -> bool:
    return given.startswith(value[:-1]) if value.endswith("*") else given == value


@dataclass(frozen=True, slots=True)
class Placement:
    id: str
    name: str
    description: str
    rules: tuple[Rule, ...]
    default: Content
    source: str
    ranks: Mapping[str, int]  # the catalogue's enabled segments in overlap order (0: ranks first)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a placement serves one customer: the content, the rule that won (None: the default) and why."""

    placement: str
    content: Content
    rule: str | None
    reason: str
    matched: tuple[str, ...]  # every rule that matched, in order (the winner included)


class PlacementsError(ValueError):
    """One or more placements are invalid; ``errors`` lists each with its file, placement id and path."""

    def __init__(self, errors: list[DefinitionError]) -> None:
        self.errors = errors
        super().__init__("\n".join(error.render() for error in errors))


# ---- deciding ---------------------------------------------------------------------------------


def decide(placement: Placement, view: ProfileView, context: Mapping[str, str]) -> Decision:
    """The content ``placement`` serves the profile ``view`` reads, on a request with ``context``.

    Candidates are the rules whose context matches and whose ``when`` holds. Several: the one naming the
    customer's highest-ranked segment wins (the primary segment, then the catalogue's overlap order: priority,
    weight, id); a tie, or none naming a segment the customer is in, goes to the first in order."""
    matched = [rule for rule in placement.rules
               if rule.context_matches(context) and (rule.when is None or rule.when.evaluate(view)[0])]
    if not matched:
        return Decision(placement.id, placement.default, None, "no rule matched", ())
    ids = tuple(rule.id for rule in matched)
    winner, segment = matched[0], None
    if len(matched) > 1:
        ranks, member = placement.ranks, view.profile.memberships
        unranked = len(ranks)
        best = min((min((ranks[s] for s in rule.segments if s in member and s in ranks), default=unranked), index)
                   for index, rule in enumerate(matched))
        if best[0] < unranked:
            winner = matched[best[1]]
            segment = min((s for s in winner.segments if s in member and s in ranks), key=ranks.__getitem__)
    primary = min((s for s in view.profile.memberships if s in placement.ranks), key=placement.ranks.__getitem__,
                  default=None)
    return Decision(placement.id, winner.content, winner.id, _reason(winner, segment, primary, ids), ids)


def _reason(winner: Rule, segment: str | None, primary: str | None, matched: tuple[str, ...]) -> str:
    others = [rule for rule in matched if rule != winner.id]
    if not others:
        return f"rule {winner.id} is the only rule that matched"
    also = f"; also matched: {', '.join(others)}"
    if segment is None:
        return f"rule {winner.id} is the first matching rule in order (none names a segment the customer is in)" \
               + also
    if segment == primary:
        return f"rule {winner.id} names {segment}, the customer's primary segment" + also
    return f"rule {winner.id} names {segment}, the customer's highest-ranked segment any matching rule names" + also


# ---- definitions ------------------------------------------------------------------------------


def build_placements(definitions: Iterable[tuple[str, object]], catalogue: Catalogue) -> dict[str, Placement]:
    """Validate (source, raw definition) pairs against ``catalogue``; raises PlacementsError listing every problem."""
    errors: list[DefinitionError] = []
    placements: dict[str, Placement] = {}
    for source, raw in definitions:
        try:
            placement = parse_placement(raw, catalogue, source)
        except DefinitionError as error:
            errors.append(error)
            continue
        if placement.id in placements:
            errors.append(DefinitionError("id", "is defined twice", source=source, segment_id=placement.id))
            continue
        placements[placement.id] = placement
    if errors:
        raise PlacementsError(errors)
    return placements


def load_placements(directory: str | Path, catalogue: Catalogue) -> dict[str, Placement]:
    """Every placement in a folder's ``*.yaml`` / ``*.yml`` files (one definition or a list per file)."""
    from cdp.core.catalogue import read_definitions

    try:
        definitions = read_definitions(directory)
    except CatalogueError as error:
        raise PlacementsError([DefinitionError(e.path, e.message.replace("segment", "placement"), source=e.source)
                               for e in error.errors]) from None
    return build_placements(definitions, catalogue)


def parse_placement(raw: object, catalogue: Catalogue, source: str = "") -> Placement:
    """One placement; raises DefinitionError naming the file, the placement id and the path inside it."""
    if not isinstance(raw, dict):
        raise DefinitionError("", f"a placement must be a mapping, not {type(raw).__name__}", source=source)
    placement_id = raw.get("id")
    try:
        placement = _placement(raw, catalogue, source)
    except DefinitionError as error:
        raise error.located(source, placement_id if isinstance(placement_id, str) else "") from None
    return placement


def _placement(raw: dict[Any, Any], catalogue: Catalogue, source: str) -> Placement:
    known_fields(raw, PLACEMENT_FIELDS, "")
    placement_id, name, description = definition_labels(raw, "home-hero")
    rules = raw.get("rules", [])
    if not isinstance(rules, list):
        raise DefinitionError("rules", "must be a list of rules")
    parsed = tuple(_rule(rule, f"rules[{index}]", catalogue) for index, rule in enumerate(rules))
    seen: set[str] = set()
    for index, rule in enumerate(parsed):
        if rule.id in seen:
            raise DefinitionError(f"rules[{index}].id", f"{rule.id!r} is used by an earlier rule")
        seen.add(rule.id)
    if "default" not in raw:
        raise DefinitionError("default", "is required (the content served when no rule matches)")
    default = _content(raw["default"], "default")
    ranks = {segment.id: index for index, segment in enumerate(sorted(catalogue.segments.values(),
                                                                       key=Segment.rank))}
    return Placement(placement_id, name, description, parsed, default, source, ranks)


def _rule(raw: object, path: str, catalogue: Catalogue) -> Rule:
    if not isinstance(raw, dict):
        raise DefinitionError(path, f"must be a mapping, not {type(raw).__name__}")
    known_fields(raw, RULE_FIELDS, path)
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not SLUG.match(rule_id):
        raise DefinitionError(f"{path}.id", f"must be a lowercase slug like 'vip-bought-b', not {rule_id!r}")
    if "content" not in raw:
        raise DefinitionError(f"{path}.content", "is required")
    when = _when(raw["when"], f"{path}.when", catalogue) if "when" in raw else None
    segments = tuple(dict.fromkeys(node.segment_id for node in when.walk() if isinstance(node, SegmentCondition))) \
        if when else ()
    return Rule(rule_id, when, _context(raw.get("context", {}), f"{path}.context"),
                _content(raw["content"], f"{path}.content"), segments)


def _when(raw: object, path: str, catalogue: Catalogue) -> Condition:
    """A segment-language condition, re-pointed at the counters the catalogue keeps (the profile has no others)."""
    parser = Parser()
    condition = parser.parse(raw, path)
    for node in condition.walk():
        where = node.path
        if isinstance(node, SegmentCondition) and node.segment_id not in catalogue.segments:
            raise DefinitionError(where, f"refers to unknown or disabled segment {node.segment_id!r}")
        if isinstance(node, AbsenceCondition) and node.when is not None:
            raise DefinitionError(f"{where}.when", "is not available in a placement (it needs a segment's latch); "
                                                   "define a segment and refer to it with `segment`")
        if isinstance(node, PercentileCondition):
            continue  # reads the population statistics, not a counter
        for attribute in ("metric", "numerator", "denominator", "trigger", "missing"):
            spec = getattr(node, attribute, None)
            if isinstance(spec, MetricSpec):
                setattr(node, attribute, _kept(spec, parser.metrics[spec.key], catalogue, where))
    return condition


def _kept(spec: MetricSpec, wanted: MetricSpec, catalogue: Catalogue, path: str) -> MetricSpec:
    kept = catalogue.metrics.get(spec.key)
    if kept is None:
        raise DefinitionError(path, f"reads {spec.key!r}, which no segment counts (profiles keep only the "
                                    "counters segments read); refer to a segment with `segment` instead")
    missing = wanted.tiers - kept.tiers
    if missing:
        raise DefinitionError(path, f"reads {spec.key!r} at a resolution no segment keeps (tiers {sorted(kept.tiers)}"
                                    f" are kept, {sorted(missing)} are not); use a window a segment uses")
    if wanted.sum_property is not None and wanted.sum_property != kept.sum_property:
        raise DefinitionError(path, f"sums {spec.key!r} over {wanted.sum_property!r}, which no segment sums")
    return kept


def _context(raw: object, path: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise DefinitionError(path, f"must be a mapping of {', '.join(CONTEXT_KEYS)}")
    context: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        if key not in CONTEXT_KEYS:
            raise DefinitionError(f"{path}.{key}", f"is not a context key (one of {', '.join(CONTEXT_KEYS)})")
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            raise DefinitionError(f"{path}.{key}", f"must be a non-empty string or list of strings, not {value!r}")
        context[key] = tuple(values)
    return context


def _content(raw: object, path: str) -> Content:
    if not isinstance(raw, dict):
        raise DefinitionError(path, "must be a mapping with `id` and `payload`")
    known_fields(raw, CONTENT_FIELDS, path)
    content_id = raw.get("id")
    if not isinstance(content_id, str) or not content_id:
        raise DefinitionError(f"{path}.id", f"must be a non-empty string, not {content_id!r}")
    payload = raw.get("payload", {})
    if not isinstance(payload, dict):
        raise DefinitionError(f"{path}.payload", "must be a mapping (a JSON object)")
    try:
        size = len(json.dumps(payload, allow_nan=False).encode())
    except (TypeError, ValueError):
        raise DefinitionError(f"{path}.payload", "must be JSON (strings, finite numbers, lists, mappings)") from None
    if size > MAX_PAYLOAD_BYTES:
        raise DefinitionError(f"{path}.payload", f"must be at most {MAX_PAYLOAD_BYTES // 1024} KB as JSON")
    return Content(content_id, payload)


class PlacementBook:
    """The placement definitions a function serves, each validated against the catalogue in use.

    The catalogue can change at runtime (segments saved through the API): the placements are rebuilt once per
    catalogue. A placement that no longer validates (it names a deleted segment, say) stays known, with its
    problem, so that it serves its default and says why rather than failing the page."""

    def __init__(self, definitions: Iterable[tuple[str, object]]) -> None:
        self.definitions = list(definitions)
        self._built: tuple[Catalogue, dict[str, Placement | DefinitionError]] | None = None

    def ids(self) -> list[str]:
        return sorted({str(raw.get("id")) for _, raw in self.definitions if isinstance(raw, dict)})

    def get(self, placement_id: str, catalogue: Catalogue) -> Placement | DefinitionError | None:
        """The placement, its problem under ``catalogue``, or None when no definition has this id."""
        if self._built is None or self._built[0] is not catalogue:
            built: dict[str, Placement | DefinitionError] = {}
            for source, raw in self.definitions:
                found = raw.get("id") if isinstance(raw, dict) else None
                if isinstance(found, str) and found not in built:
                    try:
                        built[found] = parse_placement(raw, catalogue, source)
                    except DefinitionError as error:
                        built[found] = error
            self._built = (catalogue, built)
        return self._built[1].get(placement_id)


def fallback(placement_id: str, definitions: PlacementBook, problem: DefinitionError) -> Decision:
    """The decision of a placement that does not validate against the catalogue in use: its default, if it has one."""
    raw = next((r for _, r in definitions.definitions if isinstance(r, dict) and r.get("id") == placement_id), {})
    try:
        default = _content(raw.get("default"), "default")
    except DefinitionError:
        default = Content("", {})
    return Decision(placement_id, default, None, f"the placement is invalid, so its default is served ({problem})",
                    ())
