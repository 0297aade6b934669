"""Population statistics: the thresholds percentile conditions compare a customer against."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PopulationStats:
    """Per metric, the value at each whole percentile 1..99 of the population (nearest rank).

    ``top 20% by revenue`` means revenue above the 80th percentile value (and above zero).
    Customers tied at the threshold are all left out, so a segment never holds more than its share.
    """

    percentiles: Mapping[str, tuple[float, ...]]
    computed_at: int = 0
    population: int = 0
    _empty: tuple[float, ...] = field(default=(), repr=False)
    # The stored models of the computed traits (model name -> its document, see cdp.core.traits), which travel
    # with the statistics so every function's live catalogue holds them (the ingest assigns clusters with them).
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)

    def threshold(self, metric: str, top_percent: float) -> float | None:
        values = self.percentiles.get(metric)
        if not values:
            return None
        rank = min(99, max(1, math.ceil(100 - top_percent)))
        return values[rank - 1]

    @classmethod
    def from_values(cls, values: Mapping[str, Iterable[float]], computed_at: int = 0) -> PopulationStats:
        table: dict[str, tuple[float, ...]] = {}
        population = 0
        for metric, raw in values.items():
            ordered = sorted(raw)
            population = max(population, len(ordered))
            if ordered:
                table[metric] = tuple(
                    ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] for p in range(1, 100)
                )
        return cls(table, computed_at, population)
