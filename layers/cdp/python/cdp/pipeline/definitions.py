"""Segment definitions at runtime: validating a change against the stored catalogue, committing it, seeding the
store from the YAML folder, and planning a folder's changes against the store (``cdp segments apply``).

A change is validated as the whole catalogue it would make, with :func:`cdp.core.catalogue.build_catalogue`, so
the errors are those ``cdp segments validate`` gives for the same definitions: a reference cycle, a reference to an
unknown or disabled segment, an invalid condition. Deleting a segment another one refers to is refused, naming
both. Every commit moves the catalogue version by one (see :class:`cdp.ports.DefinitionStore`).
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdp.core.catalogue import Catalogue, CatalogueError, build_catalogue, read_definitions
from cdp.core.language import DefinitionError
from cdp.ports import CatalogueHead, ConflictError, DefinitionStore, SegmentChange, SegmentVersion

COMMIT_ATTEMPTS = 5  # a writer that keeps losing the race to others gives up (the API answers 409)
MAX_CHANGES = 99  # per commit (TransactWriteItems: 100 items, one of them the head)


class DefinitionRejected(ValueError):
    """The change would make an invalid catalogue; ``errors`` says where and why, each naming its segment."""

    def __init__(self, errors: list[DefinitionError]) -> None:
        self.errors = errors
        super().__init__("\n".join(error.render() for error in errors))


@dataclass(frozen=True)
class Saved:
    """A committed change: the new head, the catalogue it makes, and each changed segment's new version
    (``unchanged``: segments whose definition was already the stored one, so they got no new version)."""

    head: CatalogueHead
    catalogue: Catalogue
    versions: dict[str, int]
    unchanged: list[str] = field(default_factory=list)


def _normal(definition: object) -> Any:
    """The definition as the store keeps it (JSON), so a YAML date and its stored text compare equal."""
    return json.loads(json.dumps(definition, default=str))


def candidate_catalogue(current: Mapping[str, dict[str, Any]], changes: Sequence[SegmentChange],
                        version: int) -> Catalogue:
    """The catalogue the current definitions make with ``changes`` applied; raises :class:`DefinitionRejected`."""
    errors: list[DefinitionError] = []
    merged = {segment_id: _normal(definition) for segment_id, definition in current.items()}
    seen: set[str] = set()
    for change in changes:
        if change.segment_id in seen:
            errors.append(DefinitionError("", "is changed twice in one request", segment_id=change.segment_id))
        seen.add(change.segment_id)
        if change.definition is None:
            if change.segment_id not in merged:
                errors.append(DefinitionError("", "is not a segment", segment_id=change.segment_id))
            merged.pop(change.segment_id, None)
            continue
        given = change.definition.get("id") if isinstance(change.definition, dict) else None
        if isinstance(change.definition, dict) and given != change.segment_id:
            errors.append(DefinitionError("id", f"must be the segment's id {change.segment_id!r}, not {given!r}",
                                          segment_id=change.segment_id))
        merged[change.segment_id] = _normal(change.definition)
    errors += _deleted_references(merged, [c.segment_id for c in changes if c.definition is None])
    if errors:
        raise DefinitionRejected(errors)
    try:
        # No source: a definition here is a request's or the store's, named by its segment id alone.
        return build_catalogue([("", merged[s]) for s in sorted(merged)], version=version)
    except CatalogueError as error:
        raise DefinitionRejected(error.errors) from None


def _deleted_references(merged: Mapping[str, Any], deleted: Sequence[str]) -> list[DefinitionError]:
    """A deleted segment that a remaining enabled one refers to: refused, naming both."""
    from cdp.core.catalogue import parse_definition

    errors = []
    for segment_id, raw in sorted(merged.items()):
        try:
            segment, _ = parse_definition(raw)
        except DefinitionError:
            continue  # reported by build_catalogue
        for reference in sorted(segment.references & set(deleted)) if segment.enabled else []:
            errors.append(DefinitionError("", f"cannot be deleted: segment {segment_id!r} refers to it",
                                          segment_id=reference))
    return errors


def current_definitions(store: DefinitionStore) -> tuple[CatalogueHead, dict[str, SegmentVersion]]:
    """The head and the current version of every segment it names."""
    head = store.head()
    return head, {version.segment_id: version for version in store.current(head)}


def save_segments(store: DefinitionStore, changes: Sequence[SegmentChange], author: str, at: float,
                  sleep: Callable[[float], None] = time.sleep) -> Saved:
    """Validate ``changes`` against the current catalogue and commit them as its next version.

    A definition equal to the stored one gets no new version; when nothing changes, nothing is written. Another
    writer committing first (:class:`ConflictError`) means validating again against its catalogue; after
    :data:`COMMIT_ATTEMPTS` lost races the ConflictError is raised."""
    for attempt in range(COMMIT_ATTEMPTS):
        head, current = current_definitions(store)
        stored = {segment_id: v.definition for segment_id, v in current.items() if v.definition is not None}
        catalogue = candidate_catalogue(stored, changes, head.version + 1)
        moving = [c for c in changes if c.definition is None or stored.get(c.segment_id) != _normal(c.definition)]
        unchanged = [c.segment_id for c in changes if c not in moving]
        if not moving:
            kept = candidate_catalogue(stored, [], head.version)
            return Saved(head, kept, {s: head.segments[s] for s in unchanged}, unchanged)
        try:
            new_head = store.commit(moving, author, at, expected=head.version)
        except ConflictError:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            sleep(0.05 * 2 ** attempt)
            continue
        versions = {c.segment_id: new_head.segments[c.segment_id] if c.definition is not None
                    else head.segments[c.segment_id] + 1 for c in moving}
        versions.update({s: head.segments[s] for s in unchanged})
        return Saved(new_head, catalogue, versions, unchanged)
    raise AssertionError("unreachable")  # pragma: no cover  # the loop returns or raises


def seed(store: DefinitionStore, definitions: Sequence[tuple[str, object]], author: str, at: float) -> bool:
    """Store ``(source, definition)`` pairs as the first catalogue, only while the store holds none (head version
    0), so a redeploy never overwrites what was changed at runtime; whether it wrote. Invalid definitions are
    :class:`DefinitionRejected`. More than :data:`MAX_CHANGES` go in several commits, referenced segments first,
    so every intermediate catalogue is valid."""
    if store.head().version != 0:
        return False
    try:
        catalogue = build_catalogue(definitions)
    except CatalogueError as error:
        raise DefinitionRejected(error.errors) from None
    # Units come after every segment they refer to; disabled segments (referred to by nothing) last.
    ordered = [s.id for unit in catalogue.units for s in unit.segments]
    ordered += sorted(set(catalogue.all_segments) - set(ordered))
    changes = [SegmentChange(s, _normal(catalogue.all_segments[s].definition)) for s in ordered]
    expected = 0
    for start in range(0, len(changes), MAX_CHANGES):
        try:
            expected = store.commit(changes[start:start + MAX_CHANGES], author, at, expected=expected).version
        except ConflictError:
            if start == 0:
                return False  # seeded by someone else meanwhile
            raise
    return bool(changes)


def folder_definitions(directory: str | Path) -> list[tuple[str, object]]:
    """The ``(file, definition)`` pairs of a folder of ``*.yaml`` / ``*.yml`` files (one definition or a list
    each), as :func:`cdp.core.catalogue.load_catalogue` reads them; raises :class:`DefinitionRejected`."""
    try:
        return read_definitions(directory)
    except CatalogueError as error:
        raise DefinitionRejected(error.errors) from None


# ---- plans: a folder of definitions against the store ------------------------------------------------------

@dataclass
class Plan:
    """What applying a folder would do, by segment id; ``diffs`` holds the unified diff (of the YAML) of each
    added, changed or removed segment. Without pruning, segments only in the store stay, listed as unchanged."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: list[str]
    diffs: dict[str, list[str]]

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def _yaml_lines(definition: object | None) -> list[str]:
    import yaml

    if definition is None:
        return []
    return yaml.safe_dump(_normal(definition), sort_keys=False, allow_unicode=True).splitlines(keepends=True)


def _diff(segment_id: str, before: object | None, after: object | None) -> list[str]:
    return list(difflib.unified_diff(_yaml_lines(before), _yaml_lines(after),
                                     fromfile=f"store/{segment_id}" if before is not None else "/dev/null",
                                     tofile=f"folder/{segment_id}" if after is not None else "/dev/null"))


def plan(current: Mapping[str, dict[str, Any]], desired: Mapping[str, dict[str, Any]], prune: bool) -> Plan:
    """``current`` (the store's definitions by id) against ``desired`` (the folder's); with ``prune``, segments
    not in the folder are removed."""
    result = Plan([], [], [], [], {})
    for segment_id in sorted(set(current) | set(desired)):
        before, after = current.get(segment_id), desired.get(segment_id)
        if before is None:
            result.added.append(segment_id)
        elif after is None:
            (result.removed if prune else result.unchanged).append(segment_id)
            if not prune:
                continue
        elif _normal(before) == _normal(after):
            result.unchanged.append(segment_id)
            continue
        else:
            result.changed.append(segment_id)
        result.diffs[segment_id] = _diff(segment_id, before, after)
    return result


def plan_changes(planned: Plan, desired: Mapping[str, dict[str, Any]],
                 current: Mapping[str, dict[str, Any]] | None = None) -> list[SegmentChange]:
    """The changes that carry a plan out, in an order each of them is valid in when saved one by one: the added and
    changed definitions, a segment before those that refer to it; then a deletion per removed one, a segment after
    those (removed too) that refer to it."""
    saves = _referenced_first([*planned.added, *planned.changed], desired)
    deletions = list(reversed(_referenced_first(planned.removed, current or {})))
    return [SegmentChange(s, dict(desired[s])) for s in saves] + [SegmentChange(s, None) for s in deletions]


def _referenced_first(segment_ids: Sequence[str], definitions: Mapping[str, dict[str, Any]]) -> list[str]:
    """``segment_ids`` in the catalogue's evaluation order (a segment after every one it refers to); in id order
    when the definitions do not build."""
    try:
        catalogue = build_catalogue([(f"plan:{s}", d) for s, d in definitions.items()])
    except CatalogueError:
        return sorted(segment_ids)
    order = {s.id: i for i, unit in enumerate(catalogue.units) for s in unit.segments}
    return sorted(segment_ids, key=lambda s: (order.get(s, len(order)), s))
