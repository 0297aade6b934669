"""In-memory adapters of the job engine's ports (:mod:`cdp.pipeline.jobs`), for unit tests and simulations."""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from cdp.core.profile import Profile
from cdp.pipeline.jobs import COUNTS, Job, ScanPage
from cdp_dev.memory import MemoryProfileStore


class MemoryJobStore:
    """Jobs kept as copies (a read never hands out the stored object), with atomic count additions."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def create(self, job: Job) -> None:
        with self._lock:
            if job.job_id in self.jobs:
                raise ValueError(f"job {job.job_id} exists")
            stored = copy.deepcopy(job)
            stored.counts = {name: int(job.counts.get(name, 0)) for name in COUNTS}
            self.jobs[job.job_id] = stored

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self.jobs.get(job_id)
            return copy.deepcopy(job) if job is not None else None

    def add_counts(self, job_id: str, counts: Mapping[str, int], segments_done: int, at: float) -> None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return
            for name, value in counts.items():
                job.counts[name] = job.counts.get(name, 0) + int(value)
            job.segments_done += segments_done
            job.updated_at = at

    def update(self, job_id: str, at: float, **changes: Any) -> None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return
            for name, value in changes.items():
                if not hasattr(job, name) or name in ("job_id", "kind", "created_at", "counts"):
                    raise TypeError(f"a job has no field {name!r} to set")
                setattr(job, name, copy.deepcopy(value))
            job.updated_at = at


def scan_segment(customer_id: str, total: int) -> int:
    """The scan segment an item falls in: by a hash of its key, as DynamoDB splits a table."""
    return int.from_bytes(hashlib.blake2b(customer_id.encode(), digest_size=8).digest(), "big") % total


class MemoryProfileScan:
    """A parallel scan over a :class:`~cdp_dev.memory.MemoryProfileStore`; ``count`` stands for DescribeTable's
    ItemCount (None: the store's exact size). ``pages`` counts the Scan requests."""

    def __init__(self, store: MemoryProfileStore, count: int | None = None) -> None:
        self.store = store
        self.count = count
        self.pages = 0

    def page(self, segment: int, total: int, cursor: object | None, limit: int) -> ScanPage:
        self.pages += 1
        ids = sorted(cid for cid in list(self.store.items) if scan_segment(cid, total) == segment)
        start = int(cursor) if isinstance(cursor, (int, str)) and str(cursor).isdigit() else 0
        chosen = ids[start:start + limit]
        profiles = [Profile.from_item(item) for item in (self.store.item(cid) for cid in chosen) if item]
        following = start + limit
        return ScanPage(profiles, str(following) if following < len(ids) else None)

    def approximate_count(self) -> int:
        return len(self.store.items) if self.count is None else self.count


class MemoryJobResults:
    """Partial results by job, phase and part."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def put(self, job_id: str, phase: str, part: str, document: dict[str, Any]) -> None:
        with self._lock:
            self.objects[(job_id, phase, part)] = copy.deepcopy(document)

    def parts(self, job_id: str, phase: str) -> Iterator[dict[str, Any]]:
        with self._lock:
            found = [copy.deepcopy(doc) for (job, ph, _), doc in sorted(self.objects.items()) if (job, ph) == (job_id,
                                                                                                          phase)]
        return iter(found)
