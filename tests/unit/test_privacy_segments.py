"""The privacy function erases members rows of every segment that can have them: the deployed folder's, the live
catalogue's, and every segment the store ever held (a deleted segment's exited rows outlive it until their TTL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdp.core.catalogue import build_catalogue
from cdp.pipeline.definitions import save_segments
from cdp.pipeline.live_catalogue import LiveCatalogue
from cdp.pipeline.privacy import Erasure
from cdp.ports import SegmentChange
from cdp_dev.handlers import load_handler
from cdp_dev.memory_definitions import InMemoryDefinitionStore

ROOT = Path(__file__).resolve().parents[2]
privacy_handler = load_handler(ROOT, "privacy")


def definition(segment_id: str) -> dict[str, Any]:
    return {"id": segment_id, "name": segment_id, "condition": {"rfm": {"metric": "orders", "gt": 0}}}


def test_the_erasure_covers_the_folder_the_live_catalogue_and_every_segment_ever_stored() -> None:
    folder = build_catalogue([("folder", definition("from-the-folder"))])
    store = InMemoryDefinitionStore()
    save_segments(store, [SegmentChange("made-at-runtime", definition("made-at-runtime")),
                          SegmentChange("deleted-later", definition("deleted-later"))], "ana", 1.0)
    save_segments(store, [SegmentChange("deleted-later", None)], "ana", 2.0)
    erasure = Erasure(None, None, None, None, ["from-the-folder"], 16, 400)  # type: ignore[arg-type]
    deps = privacy_handler.Dependencies(erasure=erasure, clock=None, live=LiveCatalogue(store, lambda: folder))

    used = privacy_handler.current_erasure(deps)

    assert used.segment_ids == ["deleted-later", "from-the-folder", "made-at-runtime"]
