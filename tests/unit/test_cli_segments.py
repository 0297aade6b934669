"""`cdp segments diff|apply|history`, `cdp jobs show` and `cdp explain`, with the API answered in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cdp_dev import cli

BIG = {"id": "big-spenders", "name": "Big spenders", "condition": {"rfm": {"metric": "revenue", "gt": 200}}}
OLD = {"id": "old-segment", "name": "Old", "condition": {"manual": True}}


class FakeApi:
    """The API's answers by (method, path); every call recorded."""

    def __init__(self, stored: list[dict[str, Any]]) -> None:
        self.stored = {d["id"]: d for d in stored}
        self.calls: list[tuple[str, str, Any, dict[str, str] | None]] = []

    def __call__(self, args: Any, method: str, path: str, body: Any = None,
                 query: dict[str, str] | None = None) -> tuple[int, Any]:
        self.calls.append((method, path, body, query))
        if (method, path) == ("GET", "/segments"):
            return 200, {"segments": [{"id": i, "version": 1, "definition": d} for i, d in self.stored.items()]}
        segment_id = path.rsplit("/", 1)[-1]
        job = {"id": f"job-{segment_id}"}
        if method == "PUT":
            if body["condition"] == "bad":
                return 422, {"code": "invalid_definition", "message": "condition: bad", "errors": [
                    {"path": "condition", "message": "must be a mapping", "segment_id": segment_id}]}
            return 201, {"version": 1, "job": job}
        if method == "DELETE":
            return 202, {"version": 2, "job": job}
        raise AssertionError(f"unexpected {method} {path}")


def folder(tmp_path: Path, *definitions: dict[str, Any]) -> str:
    for definition in definitions:
        (tmp_path / f"{definition['id']}.yaml").write_text(yaml.safe_dump(definition))
    return str(tmp_path)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi([OLD])
    monkeypatch.setattr(cli, "_api_call", fake)
    return fake


def test_diff_shows_added_and_kept_segments_and_with_prune_the_removed(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = folder(tmp_path, BIG)

    assert cli.main(["segments", "diff", directory]) == 0
    kept = capsys.readouterr().out
    assert cli.main(["segments", "diff", directory, "--prune"]) == 0
    pruned = capsys.readouterr().out

    assert kept.splitlines()[0] == "+ big-spenders" and "- old-segment" not in kept
    assert "+++ folder/big-spenders" in kept and "+    metric: revenue" in kept
    assert kept.rstrip().endswith("1 to add, 0 to change, 0 to remove, 1 unchanged")
    assert "- old-segment" in pruned and "--- store/old-segment" in pruned
    assert [c[0] for c in api.calls] == ["GET", "GET"]  # a diff changes nothing


def test_apply_puts_and_deletes_each_change_and_prints_the_job_ids(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["segments", "apply", folder(tmp_path, BIG), "--prune", "--yes", "--deliver", "none"])

    out = capsys.readouterr().out
    assert code == 0
    assert "saved big-spenders version 1; backfill job job-big-spenders" in out
    assert "deleted old-segment (version 2); backfill job job-old-segment" in out
    writes = [(m, p, q) for m, p, _, q in api.calls if m != "GET"]
    assert writes == [("PUT", "/segments/big-spenders", {"deliver": "none", "backfill": "true"}),
                      ("DELETE", "/segments/old-segment", {"deliver": "none", "backfill": "true"})]


def test_apply_asks_first_and_a_no_applies_nothing(api: FakeApi, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("builtins.input", lambda _: "n")

    assert cli.main(["segments", "apply", folder(tmp_path, BIG)]) == 1
    assert [c[0] for c in api.calls] == ["GET"]


def test_an_invalid_folder_is_refused_with_validates_errors_before_any_call(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = folder(tmp_path, {**BIG, "priority": "high"})

    assert cli.main(["segments", "apply", directory, "--yes"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cdp: error: ") and "big-spenders: priority: must be a whole number" in error
    assert api.calls == []


def test_the_apis_definition_problems_are_printed_one_a_line() -> None:
    answer = {"code": "invalid_definition", "message": "2 problems", "errors": [
        {"path": "condition", "message": "must be a mapping", "segment_id": "a"},
        {"path": "", "message": "cannot be deleted: segment 'b' refers to it", "segment_id": "a"}]}

    assert cli.api_problem(422, answer) == ("a: condition: must be a mapping\n"
                                            "a: cannot be deleted: segment 'b' refers to it")
    assert cli.api_problem(404, {"code": "not_found", "message": "jobId: no job has this id"}) == \
        "jobId: no job has this id"


JOB = {"id": "j1", "kind": "backfill", "status": "running", "progress": 0.5, "phase": "evaluate",
       "counts": {"profiles": 10, "entered": 3, "exited": 0}, "reason": ""}


def test_jobs_show_waits_until_the_job_ends(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter([JOB, {**JOB, "progress": 0.9}, {**JOB, "status": "done", "progress": 1.0}])
    monkeypatch.setattr(cli, "_api_call", lambda *a, **k: (200, next(answers)))

    assert cli.main(["jobs", "show", "j1", "--wait", "--interval", "0"]) == 0
    assert capsys.readouterr().out.strip() == "j1  backfill  done  100%  phase evaluate  (profiles 10, entered 3)"


def test_a_failed_job_says_why_and_exits_1(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_api_call", lambda *a, **k: (200, {**JOB, "status": "failed", "reason": "throttled"}))

    assert cli.main(["jobs", "show", "j1"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "failed: throttled"


EXPLANATION = {
    "customer_id": "alice", "segment": "big-spenders", "name": "Big spenders", "at": "2026-10-20T12:00:00Z",
    "holds": False, "member": False, "since": None, "entered_by": None, "changes_at": None,
    "condition": {"operator": "all", "description": "all of", "value": None, "threshold": None, "result": False,
                  "changes_at": None, "children": [
                      {"operator": "rfm", "description": "revenue > 300", "value": 244.85, "threshold": 300,
                       "comparison": ">", "result": False, "changes_at": None, "children": []},
                      {"operator": "recency", "description": "Order Completed within 7d", "value": 2.2,
                       "threshold": 7, "comparison": "<=", "result": True, "changes_at": "2026-10-25T07:00:00Z",
                       "children": []}]}}


def test_explain_prints_the_tree_with_marks_values_and_next_change(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[Any, ...]] = []

    def answer(*call: Any, **options: Any) -> tuple[int, Any]:
        calls.append((*call[1:], options))
        return 200, EXPLANATION

    monkeypatch.setattr(cli, "_api_call", answer)

    assert cli.main(["explain", "alice", "big-spenders"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("alice is not a member of big-spenders (Big spenders); the condition does not hold")
    assert out[1] == "✗ all of"
    assert out[2] == "  ✗ revenue > 300  [value 244.85 > 300]"
    assert out[3] == "  ✓ Order Completed within 7d  [value 2.2 <= 7]  (changes at 2026-10-25T07:00:00Z)"
    assert calls == [("GET", "/customers/alice/explain", None, {"segment": "big-spenders"}, {})]


def test_history_is_a_table_with_a_dash_for_a_day_without_a_snapshot(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    days = [{"day": "2026-10-19", "size": 4, "entered": 2, "exited": 1},
            {"day": "2026-10-20", "size": None, "entered": 1, "exited": 0}]
    monkeypatch.setattr(cli, "_api_call", lambda *a, **k: (200, {"segment_id": "vip", "days": days}))

    assert cli.main(["segments", "history", "vip", "--days", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "day               size   entered    exited",
        "2026-10-19           4         2         1",
        "2026-10-20           -         1         0"]


def test_apply_names_a_saved_segment_whose_backfill_could_not_start_and_fails(
        api: FakeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(args: Any, method: str, path: str, body: Any = None,
                query: dict[str, str] | None = None) -> tuple[int, Any]:
        status, answer = api(args, method, path, body, query)
        if method == "PUT":
            answer["job"] = {**answer["job"], "status": "failed", "reason": "the job could not be started: throttled"}
        return status, answer

    monkeypatch.setattr(cli, "_api_call", failing)
    code = cli.main(["segments", "apply", folder(tmp_path, BIG), "--yes"])

    captured = capsys.readouterr()
    assert code == 1 and "its backfill failed: the job could not be started: throttled" in captured.out
    assert "saved without a backfill: big-spenders" in captured.err
