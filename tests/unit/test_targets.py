"""Which stack `cdp send` and `cdp tail` talk to: the local stack, or AWS only when named (no sockets here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdp_dev import cli
from cdp_dev.targets import (
    LocalStackInfo,
    NoTarget,
    Target,
    describe,
    register,
    running_stacks,
    send_target,
    state_dir,
    tail_target,
    unregister,
)

LOCAL = LocalStackInfo("http://127.0.0.1:4566", "http://127.0.0.1:3000", "EventsStream", "http://q/feed",
                       "us-east-1", 4242)
OTHER = LocalStackInfo("http://127.0.0.1:5566", "http://127.0.0.1:3001", "EventsStream", "http://q/feed2",
                       "us-east-1", 4343)


def never() -> list[LocalStackInfo]:
    raise AssertionError("a named target needs no look for local stacks")


def test_no_flags_and_one_local_stack_running_sends_there_with_its_stream() -> None:
    target = send_target(None, None, None, lambda: [LOCAL])
    assert target == Target(LOCAL.endpoint, "us-east-1", LOCAL)
    assert describe(target, "stream EventsStream") == (
        "the local stack at http://127.0.0.1:4566, stream EventsStream")


def test_no_flags_and_no_local_stack_is_an_error_that_says_how_to_reach_aws() -> None:
    with pytest.raises(NoTarget, match=r"no local stack is running .*make run.*--stream NAME.*--endpoint-url"):
        send_target(None, None, None, list)
    with pytest.raises(NoTarget, match=r"no local stack is running .*--queue-url"):
        tail_target(None, None, None, list)


def test_no_flags_and_two_local_stacks_is_an_error_naming_both() -> None:
    with pytest.raises(NoTarget, match=r"2 local stacks are running \(http://127.0.0.1:4566, "
                                       r"http://127.0.0.1:5566\); pass --endpoint-url"):
        send_target(None, None, None, lambda: [LOCAL, OTHER])


def test_an_explicit_stream_goes_to_aws_and_says_the_account_and_region() -> None:
    target = send_target(None, "cdp-dev-events", "eu-west-1", never)
    assert target == Target(None, "eu-west-1", None)
    assert describe(target, "stream cdp-dev-events", lambda: "123456789012") == (
        "stream cdp-dev-events in AWS account 123456789012, region eu-west-1")


def test_an_explicit_endpoint_wins_over_everything() -> None:
    assert send_target("http://localhost:9999", "s", None, never) == Target("http://localhost:9999", None, None)
    assert tail_target("http://localhost:9999", None, "us-east-1", never) == Target(
        "http://localhost:9999", "us-east-1", None)
    assert describe(Target("http://localhost:9999", None, None), "stream s") == "http://localhost:9999, stream s"


def test_tail_with_a_queue_url_goes_to_aws_and_without_one_follows_the_local_feed() -> None:
    assert tail_target(None, "https://sqs.eu-west-1.amazonaws.com/1/q", None, never) == Target(None, None, None)
    assert tail_target(None, None, None, lambda: [LOCAL]).local == LOCAL


def test_state_files_are_found_when_their_stack_answers_and_ignored_otherwise(tmp_path: Path) -> None:
    first, second = register(LOCAL, tmp_path), register(OTHER, tmp_path)
    (tmp_path / "local-stack-1.json").write_text("{not json")  # a torn or foreign file is skipped
    assert json.loads(first.read_text())["stream"] == "EventsStream"
    assert running_stacks(tmp_path, lambda info: True) == [LOCAL, OTHER]
    assert running_stacks(tmp_path, lambda info: info.endpoint == OTHER.endpoint) == [OTHER]  # the other is gone
    unregister(second)
    unregister(second)  # twice is fine
    assert running_stacks(tmp_path, lambda info: True) == [LOCAL]
    assert running_stacks(tmp_path / "missing", lambda info: True) == []


def test_two_state_files_of_one_emulator_count_once(tmp_path: Path) -> None:
    register(LOCAL, tmp_path)
    register(LocalStackInfo(**{**LOCAL.__dict__, "pid": 1}), tmp_path)  # a stale file whose port was reused
    assert len(running_stacks(tmp_path, lambda info: True)) == 1


def test_the_state_folder_is_per_user_and_can_be_set() -> None:
    assert state_dir({"CDP_STATE_DIR": "/x/state", "XDG_RUNTIME_DIR": "/run/user/1"}) == Path("/x/state")
    assert state_dir({"XDG_RUNTIME_DIR": "/run/user/1"}) == Path("/run/user/1/cdp")
    assert state_dir({}).name.startswith("cdp-")


def test_cdp_send_with_no_flags_and_no_local_stack_exits_with_one_clear_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CDP_STATE_DIR", str(tmp_path))  # empty: nothing is running
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    events = tmp_path / "events.jsonl"
    events.write_text('{"type":"track","event":"Product Viewed","userId":"u1","messageId":"m1"}\n')
    assert cli.main(["send", str(events)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cdp: error: no local stack is running") and "\n" not in error
    assert cli.main(["tail", "--once"]) == 2
    assert "--queue-url" in capsys.readouterr().err
