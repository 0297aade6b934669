"""The README's commands, run as written: `make run` (the main job) and `make run CLOCK=wall`.

Each line is taken from README.md itself, so the two cannot drift apart, and run in a shell from the repo
root with only the ports changed, through the environment variables the CLI documents. The stack must
answer /health, send the sample through its collector, print the sample's transitions, print the README's
curl line with its write key (which then works), and be gone, all its processes, within 10 s of SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cdp_dev.targets import state_dir
from tests.e2e.conftest import (
    ROOT,
    STOP_SECONDS,
    free_port,
    group_alive,
    launched,
    stop_group,
    wait_for,
    wait_for_health,
)

README = (ROOT / "README.md").read_text()
OUTER_MAKE = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "CLOCK", "RUN_ARGS"}
TRANSITION = re.compile(r"^\S+Z\s+(\S+)\s+[+-] (entered|exited)\s+(\S+)", re.MULTILINE)  # cli.format_event's


def code_blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def command(line: str) -> str:
    return line.split("#", 1)[0].strip()


MISSING = "missing from README.md: "


def main_job_line() -> str:
    return next((command(line) for line in code_blocks(README)[0] if command(line).startswith("make run")),
                MISSING + "make run")


def documented_line(wanted: str) -> str:
    """A command the README documents, found in its code blocks, exactly as written there."""
    return next((command(line) for block in code_blocks(README) for line in block if command(line) == wanted),
                MISSING + wanted)


def test_the_readme_opens_with_make_run_and_make_test_and_the_makefile_has_both() -> None:
    first = [command(line) for line in code_blocks(README)[0] if command(line)]
    assert len(first) == 2 and first[0].split()[:2] == ["make", "run"] and first[1].split()[:2] == ["make", "test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"the Makefile has no {target} target"
        assert re.search(rf"^\.PHONY:.*\b{target}\b", makefile, re.MULTILINE)


def readme_curl() -> str:
    """The quick start's first event: a curl to the local collector with the write key `make run` prints."""
    return next((command(line) for block in code_blocks(README) for line in block
                 if command(line).startswith("curl -u <write key>: http://127.0.0.1:3000/v1/")), MISSING + "curl -u")


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:  # another stack's, removed as it stopped
        return ""


def nothing_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize(("line", "clock"), [(main_job_line(), "event"), (documented_line("make run CLOCK=wall"),
                                                                          "wall")], ids=["main-job", "clock-wall"])
def test_a_readme_make_run_line_serves_the_api_prints_transitions_and_stops_on_sigterm(
        line: str, clock: str, tmp_path: Path) -> None:
    assert not line.startswith(MISSING), line
    aws_port, api_port = free_port(), free_port()
    # The user's environment as in a fresh shell, but for the ports: none of the test run's own CDP_ settings,
    # nor an outer make's (`make test` passes its flags and command-line variables such as CLOCK down).
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CDP_") and k not in OUTER_MAKE}
    environment.update(CDP_AWS_PORT=str(aws_port), CDP_API_PORT=str(api_port))
    log = tmp_path / "make-run.log"
    began = time.monotonic()
    with launched(line, log, environment, shell=True) as process:
        health = wait_for_health(f"http://127.0.0.1:{api_port}", process, log)
        answered = time.monotonic() - began
        print(f"\n`{line}`: /health answered {answered:.1f} s after the command started")
        assert health["status"] == "ok" and health["clock"] == clock
        assert health["aws_endpoint"] == f"http://127.0.0.1:{aws_port}"

        key = health["collector"]["write_key"]
        sent = len((ROOT / "events" / "sample.jsonl").read_text().splitlines())
        through = f"sent {sent} sample events through the collector ({sent} accepted, 0 rejected)"
        wait_for(lambda: through in log.read_text(errors="replace"), timeout=60)
        curl = readme_curl()
        assert not curl.startswith(MISSING), curl
        curl = curl.replace("<write key>", key).replace(":3000/", f":{api_port}/")
        assert f"try           {curl}" in log.read_text(errors="replace").splitlines()
        answered_curl = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30, check=False)
        assert json.loads(answered_curl.stdout) == {"success": True, "accepted": 1, "rejected": 0}, answered_curl

        def alices_views() -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/customers/alice", timeout=5) as response:
                    profile = json.loads(response.read())
            except OSError:
                return None
            return next((c for c in profile["counters"] if c["key"] == "Product Viewed"), None)

        views = wait_for(alices_views, timeout=30)
        assert views["first_at"] == "2026-10-01T09:01:00Z"  # the sample's own time: no skew correction moved it

        sample = set(re.findall(r'"userId":"([^"]+)"', (ROOT / "events" / "sample.jsonl").read_text()))
        printed = wait_for(lambda: [m for m in TRANSITION.finditer(log.read_text(errors="replace"))
                                    if m.group(1) in sample], timeout=60)
        print(f"`{line}`: {len(printed)} sample transitions printed, e.g. {printed[0].group(0)!r}")

        pgid = process.pid  # a session of its own: make, cdp run, the emulator
        assert group_alive(pgid)
        stopping = time.monotonic()
        assert stop_group(process, STOP_SECONDS), f"processes of `{line}` outlived SIGTERM by {STOP_SECONDS} s"
        print(f"`{line}`: the whole process group was gone {time.monotonic() - stopping:.1f} s after SIGTERM")
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    assert nothing_listens(aws_port) and nothing_listens(api_port)
    assert "stopping ..." in log.read_text(errors="replace")
    registered = [path for path in state_dir(environment).glob("local-stack-*.json")
                  if health["aws_endpoint"] in read(path)]
    assert registered == [], "the stopped stack left its state file behind for `cdp send` to find"
