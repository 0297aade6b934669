"""`cdp segments test`: stories as files, run under a simulated clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdp.core.catalogue import load_catalogue
from cdp_dev.cli import main
from cdp_dev.stories import run_story

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"


def test_the_shipped_stories_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segments", "test", str(SEGMENTS)]) == 0
    out = capsys.readouterr().out
    assert "6 passed, 0 failed" in out


def test_a_wrong_expectation_is_reported_with_what_happened() -> None:
    story = {"name": "wrong", "start": "2026-10-01T09:00:00Z", "until": "3d",
             "events": [{"at": "0m", "customer": "x", "event": "Product Added", "properties": {"product_id": "p"}}],
             "expect": [{"at": "1d", "customer": "x", "segment": "cart-abandoners", "change": "entered"}]}
    result = run_story(story, load_catalogue(SEGMENTS))
    assert result.problems == ["x / cart-abandoners: expected entered at +1d; got entered at +2d"]


def test_an_invalid_event_in_a_story_is_named() -> None:
    story = {"name": "bad", "start": "2026-10-01T09:00:00Z",
             "events": [{"customer": "x", "event": "Order Completed", "properties": {"revenue": -1}}]}
    result = run_story(story, load_catalogue(SEGMENTS))
    assert result.problems == ["invalid story: events[0]: properties.revenue: must not be negative"]


def test_a_failing_folder_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in SEGMENTS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "stories").mkdir()
    (tmp_path / "stories" / "s.yaml").write_text(
        "name: never\nstart: 2026-10-01T09:00:00Z\nevents: []\n"
        "expect: [{at: 0m, customer: y, segment: vip, change: entered}]\n")
    assert main(["segments", "test", str(tmp_path)]) == 1
    assert "FAIL  never" in capsys.readouterr().out
