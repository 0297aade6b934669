"""An in-memory definitions store (:class:`cdp.ports.DefinitionStore`), for unit tests and simulations.

It keeps what the DynamoDB store keeps (every version, the head, the population statistics, the computed traits'
models) with the same
commit rule (the head moves from ``expected`` only), counts the reads the DynamoDB store would make, and can be
told to fail its next calls, as a throttled table would.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from cdp.core.population import PopulationStats
from cdp.ports import CatalogueHead, ConflictError, SegmentChange, SegmentVersion, TransientError

MAX_CHANGES = 99


class InMemoryDefinitionStore:
    def __init__(self) -> None:
        self._head = CatalogueHead(0, {})
        self._versions: dict[tuple[str, int], SegmentVersion] = {}
        self._latest: dict[str, int] = {}
        self._stats: PopulationStats | None = None
        self._models: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.calls: Tally[str] = Tally()  # head, current, history, commit, population, put_population, put_models
        self.failing = 0  # the next this many calls raise TransientError

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if self.failing:
            self.failing -= 1
            raise TransientError(f"{name}: injected throttling")

    def head(self) -> CatalogueHead:
        self._call("head")
        return self._head

    def current(self, head: CatalogueHead) -> list[SegmentVersion]:
        self._call("current")
        return [copy.deepcopy(self._versions[key]) for key in sorted(head.segments.items())]

    def history(self, segment_id: str) -> list[SegmentVersion]:
        self._call("history")
        return [copy.deepcopy(self._versions[(segment_id, n)]) for n in range(1, self._latest.get(segment_id, 0) + 1)]

    def commit(self, changes: Sequence[SegmentChange], author: str, at: float, expected: int) -> CatalogueHead:
        self._call("commit")
        if not changes or len(changes) > MAX_CHANGES:
            raise ValueError(f"a commit holds 1 to {MAX_CHANGES} changes, not {len(changes)}")
        with self._lock:
            if self._head.version != expected:
                raise ConflictError(f"the catalogue is at version {self._head.version}, not {expected}")
            version = expected + 1
            segments = dict(self._head.segments)
            for change in changes:
                number = self._latest.get(change.segment_id, 0) + 1
                self._latest[change.segment_id] = number
                self._versions[(change.segment_id, number)] = SegmentVersion(
                    change.segment_id, number, copy.deepcopy(change.definition), author, at, version)
                if change.definition is None:
                    segments.pop(change.segment_id, None)
                else:
                    segments[change.segment_id] = number
            self._head = CatalogueHead(version, segments, self._head.stats_version, at, tuple(sorted(self._latest)))
            return self._head

    def population(self) -> PopulationStats | None:
        self._call("population")
        with self._lock:
            if not self._models:
                return self._stats
            models = copy.deepcopy(self._models)
            if self._stats is None:
                return PopulationStats({}, models=models)
            return replace(self._stats, models=models)

    def put_models(self, documents: Mapping[str, Mapping[str, Any]]) -> CatalogueHead:
        self._call("put_models")
        with self._lock:
            for name, document in documents.items():
                stored = self._models.get(name)
                if stored is not None and int(stored["trained_at"]) > int(document["trained_at"]):
                    return self._head  # a job that started earlier never replaces a newer model
            self._models.update({name: copy.deepcopy(dict(document)) for name, document in documents.items()})
            self._head = replace(self._head, stats_version=self._head.stats_version + 1)
            return self._head

    def put_population(self, stats: PopulationStats) -> CatalogueHead:
        self._call("put_population")
        with self._lock:
            if self._stats is not None and self._stats.computed_at >= stats.computed_at:
                return self._head  # a job that scanned earlier never replaces newer statistics
            self._stats = stats
            self._head = replace(self._head, stats_version=self._head.stats_version + 1,
                                 updated_at=float(stats.computed_at))
            return self._head
