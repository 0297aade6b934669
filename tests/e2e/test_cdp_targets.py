"""`cdp send` and `cdp tail` with no flags talk to the running local stack, and say so; with none running
they stop with an error instead of looking for an AWS account."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import ROOT, Running, customer, environment, track, wait_for


def test_cdp_send_and_tail_with_no_flags_use_the_running_local_stack(stack: Running, tmp_path: Path) -> None:
    who = customer()
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(track(who, "Product Added", product_id="p1", price=20)) + "\n")
    stream = stack.health["resources"]["streams"][0]
    sent = stack.cdp("send", str(path))
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.splitlines()[0] == f"sending to the local stack at {stack.endpoint}, stream {stream}"
    assert sent.stdout.strip() == f"sent 1 messages to {stream}"
    wait_for(lambda: stack.get(f"/customers/{who}")[0] == 200)

    def tailed() -> str | None:  # each `cdp tail --once` prints (and takes) up to 10 waiting transitions
        run = stack.cdp("tail", "--once")
        assert run.returncode == 0, run.stderr
        assert run.stderr.startswith(f"following the local stack at {stack.endpoint}, queue "), run.stderr
        return next((line for line in run.stdout.splitlines() if who in line), None)

    line = wait_for(tailed, timeout=60)
    assert "+ entered potential-abandoners" in line


def test_cdp_send_with_no_flags_and_no_local_stack_refuses_to_guess(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(track(customer(), "Page Viewed")) + "\n")
    # Credentials that would work on AWS are in the environment: still nothing is sent without --stream.
    run = subprocess.run([sys.executable, "-m", "cdp_dev.cli", "send", str(path)], capture_output=True, text=True,
                         timeout=60, check=False, cwd=ROOT,
                         env=environment(CDP_STATE_DIR=str(tmp_path / "empty"), AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
                                         AWS_SECRET_ACCESS_KEY="example", AWS_DEFAULT_REGION="eu-west-1"))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("cdp: error: no local stack is running (start one with `make run`); "
                                 "to send to AWS, pass --stream NAME"), run.stderr
