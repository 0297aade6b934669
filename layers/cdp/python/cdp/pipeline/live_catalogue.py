"""The catalogue a function evaluates with, kept current from the definitions store without a read per event.

Every function that evaluates or names segments holds one :class:`LiveCatalogue`. At the start of each
invocation it calls :meth:`LiveCatalogue.refresh`: at most once per ``check_seconds`` (30 by default) that
reads the store's head, one small GetItem, and only when the head's version has moved does it read the
current definitions (one batched read) and build the new catalogue. Population statistics are picked up the
same way, by the head's ``stats_version``. So a change is in every function within ``check_seconds`` plus
one invocation, without a redeploy, and an idle catalogue costs one read per function instance per check.

Until the store holds anything (head version 0) the YAML folder the layer ships is the catalogue. A store that
cannot be read keeps the catalogue in hand and is asked again at the next check; so does a stored catalogue
that does not build (it was validated when it was written, so that means a newer product wrote it). A cold start
that cannot read the store raises :class:`TransientError` (the invocation is retried): the folder may differ
from the stored catalogue, so it is never evaluated with in its place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cdp.core.catalogue import Catalogue, CatalogueError, build_catalogue
from cdp.core.engine import Engine
from cdp.core.population import PopulationStats
from cdp.ports import CatalogueHead, DefinitionStore, TransientError

DEFAULT_CHECK_SECONDS = 30.0
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogueState:
    catalogue: Catalogue
    stats: PopulationStats | None
    head: CatalogueHead | None  # None: the YAML folder (nothing stored yet, or no store)


def stored_catalogue(store: DefinitionStore, head: CatalogueHead) -> Catalogue:
    """The catalogue the head names, built from its current versions (raises CatalogueError, TransientError)."""
    versions = store.current(head)
    return build_catalogue([(f"store:{v.segment_id}@{v.version}", v.definition) for v in versions
                            if v.definition is not None], version=head.version)


class LiveCatalogue:
    """The current catalogue and population statistics of one function instance."""

    def __init__(self, store: DefinitionStore | None, fallback: Callable[[], Catalogue], *,
                 check_seconds: float = DEFAULT_CHECK_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._fallback = fallback
        self.check_seconds = check_seconds
        self._monotonic = monotonic
        self._checked_at: float | None = None
        self._state: CatalogueState | None = None
        self.reads = 0  # head reads, for tests and the bench

    @property
    def state(self) -> CatalogueState:
        if self._state is None:
            self.refresh(force=True)
        assert self._state is not None
        return self._state

    @property
    def catalogue(self) -> Catalogue:
        return self.state.catalogue

    @property
    def stats(self) -> PopulationStats | None:
        return self.state.stats

    def refresh(self, *, force: bool = False) -> bool:
        """Check the store's head if ``check_seconds`` have passed (or ``force``); True when anything changed."""
        now = self._monotonic()
        if not force and self._state is not None and self._checked_at is not None \
                and now - self._checked_at < self.check_seconds:
            return False
        self._checked_at = now
        if self.store is None:
            if self._state is None:
                self._state = CatalogueState(self._fallback(), None, None)
                return True
            return False
        try:
            self.reads += 1
            head = self.store.head()
            return self._follow(head)
        except (TransientError, CatalogueError) as error:
            if self._state is None:
                # A cold start that cannot read the store has no catalogue: the folder may be far from the stored
                # one, so the invocation fails and is retried rather than evaluate with it.
                raise TransientError(f"the catalogue could not be read at cold start: {error}") from error
            logger.warning("the catalogue was not refreshed; the one in hand stays", extra={"reason": str(error)})
            return False

    def _follow(self, head: CatalogueHead) -> bool:
        state = self._state
        if head.version == 0:
            if state is not None and state.head is None:
                return False
            self._state = CatalogueState(self._fallback(), self._stats(head, None), None)
            return True
        if state is not None and state.head is not None and state.head.version == head.version:
            if state.head.stats_version == head.stats_version:
                return False
            self._state = CatalogueState(state.catalogue, self._stats(head, state), head)
            return True
        catalogue = stored_catalogue(self.store, head)  # type: ignore[arg-type]
        self._state = CatalogueState(catalogue, self._stats(head, state), head)
        return True

    def _stats(self, head: CatalogueHead, state: CatalogueState | None) -> PopulationStats | None:
        if state is not None and state.head is not None and state.head.stats_version == head.stats_version:
            return state.stats
        if head.stats_version == 0:
            return None
        return self.store.population() if self.store is not None else None

    def newer_than_held(self, fingerprint_version: int) -> bool:
        """Whether a profile's fingerprint names a newer catalogue version than the one in hand."""
        return fingerprint_version > self.catalogue.version

    def update(self, engine: Engine, *, force: bool = False) -> bool:
        """Refresh, then give the engine the catalogue and statistics in hand; True when they changed."""
        changed = self.refresh(force=force)
        state = self.state
        engine.catalogue, engine.stats = state.catalogue, state.stats
        return changed
