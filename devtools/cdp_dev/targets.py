"""Which stack a ``cdp`` command talks to: the running local stack, or AWS only when told so.

``cdp run`` registers itself with a small state file (its emulator endpoint, API, stream, feed queue and
write keys table) in the user's runtime directory and removes it on stop. ``cdp send``, ``cdp tail`` and
``cdp sources`` with no target flags use the one local stack whose state file is there and whose ``/health``
answers; they go to AWS only with an explicit ``--stream`` / ``--queue-url`` / ``--table`` (or to
``--endpoint-url``), so writing to a real account never happens by accident. With no local stack and no
such flag they stop with an error.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_DIR_VARIABLE = "CDP_STATE_DIR"


class NoTarget(Exception):
    """No stack was named and none (or more than one) is running locally."""


@dataclass(frozen=True)
class LocalStackInfo:
    """What a running ``cdp run`` writes about itself."""

    endpoint: str  # the AWS emulator
    api: str
    stream: str
    feed_queue_url: str
    region: str
    pid: int
    write_keys_table: str = ""  # the collector's; absent from the files of stacks started before it had one


@dataclass(frozen=True)
class Target:
    """Where a command goes. ``endpoint`` None: AWS, by boto3's usual configuration and credentials."""

    endpoint: str | None
    region: str | None
    local: LocalStackInfo | None  # a local stack found running (then its dummy credentials are used)


def state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``CDP_STATE_DIR``, else ``$XDG_RUNTIME_DIR/cdp``, else a per-user folder in the temporary directory."""
    if env.get(STATE_DIR_VARIABLE):
        return Path(env[STATE_DIR_VARIABLE])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "cdp"
    user = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"cdp-{user}"


def register(info: LocalStackInfo, directory: Path) -> Path:
    """Write the state file of a started local stack; returns it, for :func:`unregister`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"local-stack-{info.pid}.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(info)))
    partial.replace(path)  # readers never see half a file
    return path


def unregister(path: Path) -> None:
    path.unlink(missing_ok=True)


def probe_health(info: LocalStackInfo) -> bool:
    """The stack answers ``/health`` at its API and names the same emulator (not another process on a reused port)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{info.api}/health", timeout=2) as response:
            return bool(json.loads(response.read()).get("aws_endpoint") == info.endpoint)
    except (OSError, ValueError):
        return False


def running_stacks(directory: Path, probe: Callable[[LocalStackInfo], bool] = probe_health) -> list[LocalStackInfo]:
    """The local stacks registered in ``directory`` that answer ``probe``, one per emulator endpoint."""
    found: dict[str, LocalStackInfo] = {}
    for path in sorted(directory.glob("local-stack-*.json")) if directory.is_dir() else []:
        try:
            info = LocalStackInfo(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # being written, or not ours
        if info.endpoint not in found and probe(info):
            found[info.endpoint] = info
    return list(found.values())


def _only(stacks: list[LocalStackInfo], to_aws: str) -> LocalStackInfo:
    if not stacks:
        raise NoTarget(f"no local stack is running (start one with `make run`); {to_aws}")
    if len(stacks) > 1:
        raise NoTarget(f"{len(stacks)} local stacks are running ({', '.join(s.endpoint for s in stacks)}); "
                       f"pass --endpoint-url to choose one")
    return stacks[0]


def send_target(endpoint_url: str | None, stream: str | None, region: str | None,
                local_stacks: Callable[[], list[LocalStackInfo]]) -> Target:
    """``cdp send``: ``--endpoint-url`` if given; else AWS if ``--stream`` is given; else the local stack."""
    if endpoint_url:
        return Target(endpoint_url, region, None)
    if stream:
        return Target(None, region, None)
    found = _only(local_stacks(), "to send to AWS, pass --stream NAME (the stack's EventsStreamName output) "
                                  "or --endpoint-url URL")
    return Target(found.endpoint, found.region, found)


def tail_target(endpoint_url: str | None, queue_url: str | None, region: str | None,
                local_stacks: Callable[[], list[LocalStackInfo]]) -> Target:
    """``cdp tail``: ``--endpoint-url`` if given; else AWS if ``--queue-url`` is given; else the local stack."""
    if endpoint_url:
        return Target(endpoint_url, region, None)
    if queue_url:
        return Target(None, region, None)
    found = _only(local_stacks(), "to follow a deployed stack, pass --queue-url URL (a queue behind a bus rule)")
    return Target(found.endpoint, found.region, found)


def sources_target(endpoint_url: str | None, table: str | None, region: str | None,
                   local_stacks: Callable[[], list[LocalStackInfo]]) -> Target:
    """``cdp sources``: ``--endpoint-url`` if given; else AWS if ``--table`` is given; else the local stack."""
    if endpoint_url:
        return Target(endpoint_url, region, None)
    if table:
        return Target(None, region, None)
    found = _only(local_stacks(), "to manage a deployed stack's sources, pass --table NAME (its "
                                  "WriteKeysTableName output) or --endpoint-url URL")
    return Target(found.endpoint, found.region, found)


def describe(target: Target, what: str, account: Callable[[], str | None] = lambda: None) -> str:
    """One line saying where: the local stack, an endpoint, or the AWS account and region."""
    if target.local is not None:
        return f"the local stack at {target.endpoint}, {what}"
    if target.endpoint:
        return f"{target.endpoint}, {what}"
    return f"{what} in AWS account {account() or '(unknown)'}, region {target.region or '(unset)'}"
