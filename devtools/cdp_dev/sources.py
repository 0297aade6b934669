"""`cdp sources`: the collector's sources and their write keys, in a stack's write keys table.

Keys are made, rotated and revoked by :mod:`cdp.collector.keys` over :class:`cdp.aws.write_keys.DynamoKeyStore`,
the same store the collector reads. A new key is printed once, on standard output and alone (so a script can
take it), and never stored: the table keeps its SHA-256 digest. What the command did goes to standard error.
A rotation or revocation reaches a running collector within its key cache's 30 s.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from cdp.aws.write_keys import DynamoKeyStore, bind_write_keys
from cdp.collector.keys import (
    DEFAULT_OVERLAP_SECONDS,
    SourceError,
    create_source,
    list_sources,
    revoke_source,
    rotate_source,
)

KEY_CACHE_SECONDS = 30  # the collector's default CDP_KEY_CACHE_SECONDS
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
NOT_STORED = "shown once: only its SHA-256 digest is stored, so keep it now"


def key_store(table: str, region: str | None, endpoint: str | None,
              credentials: tuple[str, str] | None = None) -> DynamoKeyStore:
    """The write keys table ``table`` as a key store: at ``endpoint`` (an emulator) with ``credentials``, or
    in AWS with boto3's usual credentials when both are None."""
    model = bind_write_keys(table, region, endpoint)
    if credentials is not None:
        setattr(model.Meta, "aws_access_key_id", credentials[0])  # noqa: B010 - pynamodb reads them off Meta
        setattr(model.Meta, "aws_secret_access_key", credentials[1])  # noqa: B010
    return DynamoKeyStore(model)


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` (or plain seconds) as seconds."""
    found = DURATION.fullmatch(text.strip().lower())
    if not found:
        raise SourceError(f"the overlap {text!r} must be a number with s, m, h or d (90s, 30m, 24h, 7d)")
    return float(found.group(1)) * UNITS[found.group(2) or "s"]


def show_duration(seconds: float) -> str:
    """Seconds as the overlap was likely written: 90s, 30m, 24h, 7d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= (2 * size if unit == "d" else size) and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def moment(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _failing(action: str, where: str, error: Exception) -> Exception:
    """A table error (missing table, no access) as one line naming the table."""
    cause = str(getattr(error, "cause", None) or error).strip().splitlines()
    return RuntimeError(f"{action} in {where} failed: {cause[0] if cause else type(error).__name__}")


class SourcesCommand:
    """The four commands over one key store; ``where`` names the table and stack in messages."""

    def __init__(self, store: DynamoKeyStore, where: str, out: IO[str], err: IO[str],
                 now: Callable[[], float] = time.time) -> None:
        self.store, self.where, self.out, self.err, self.now = store, where, out, err, now

    def _run(self, action: str, work: Callable[[], Any]) -> Any:
        from pynamodb.exceptions import PynamoDBException

        from cdp.ports import TransientError

        try:
            return work()
        except (PynamoDBException, TransientError) as error:
            raise _failing(action, self.where, error) from None

    def create(self, name: str) -> int:
        key = self._run("creating the source", lambda: create_source(self.store, name, self.now()))
        self.err.write(f"created source {name} in {self.where}; its write key ({NOT_STORED}):\n")
        self.out.write(key + "\n")
        return 0

    def rotate(self, name: str, overlap: str | None) -> int:
        seconds = DEFAULT_OVERLAP_SECONDS if overlap is None else parse_duration(overlap)
        at = self.now()
        key = self._run("rotating the key", lambda: rotate_source(self.store, name, at, seconds))
        self.err.write(f"rotated source {name} in {self.where}: its previous keys stay valid for "
                       f"{show_duration(seconds)} more (until {moment(at + seconds)}); the new write key "
                       f"({NOT_STORED}):\n")
        self.out.write(key + "\n")
        return 0

    def revoke(self, name: str, key_id: str | None) -> int:
        count = self._run("revoking", lambda: revoke_source(self.store, name, self.now(), key_id))
        which = f"key {key_id}" if key_id else f"{count} valid key{'s' if count != 1 else ''}"
        if key_id and not count:
            self.out.write(f"key {key_id} of source {name} was already revoked or expired: nothing to do\n")
            return 0
        self.out.write(f"revoked {which} of source {name}; the collector refuses "
                       f"{'it' if key_id or count == 1 else 'them'} within {KEY_CACHE_SECONDS} s (its key cache)\n")
        return 0

    def list(self) -> int:
        sources = self._run("listing the sources", lambda: list_sources(self.store))
        self.err.write(f"sources in {self.where}\n")
        if not sources:
            self.out.write("no sources yet: `cdp sources create NAME` makes one\n")
            return 0
        now = self.now()
        rows = [("SOURCE", "KEY ID", "STATE", "CREATED", "EXPIRES")]
        for source in sources:
            for key in source.keys:
                # A key stops at its revocation, else at its expiry (set by a rotation); an active one never.
                ends = key.revoked_at if key.revoked_at is not None else key.expires_at
                rows.append((source.name, key.key_id, key.state(now), moment(key.created_at),
                             "never" if ends is None else moment(ends)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                           + "\n")
        return 0
