"""Write keys: named sources, keys stored only as digests, rotation with an overlap, revocation.

A write key is 192 random bits. It is stored as its SHA-256 digest and shown once, when made. A slow
password hash would add nothing: the key is random, not chosen by a person, so no dictionary can guess
it, and the collector checks one on every request. Browser sources embed their key in the page, as
Segment's do, so a key says which source sent a message; it is not a credential to anything else.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from dataclasses import dataclass, replace
from typing import Protocol

KEY_PREFIX = "wk_"
KEY_ID_LENGTH = 10  # "wk_" and 7 characters: enough to tell a source's keys apart in a listing
SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEFAULT_OVERLAP_SECONDS = 24 * 3600.0


class SourceError(ValueError):
    """A source operation that cannot be done (unknown source, bad name, nothing to rotate)."""


def new_write_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class WriteKey:
    """One key of a source, as stored: never the key itself."""

    digest: str
    source: str
    key_id: str  # the key's first characters, to name it in listings and `cdp sources revoke --key`
    created_at: float
    expires_at: float | None = None  # set when a rotation retires it: valid until then
    revoked_at: float | None = None

    def valid_at(self, now: float) -> bool:
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or now < self.expires_at

    def state(self, now: float) -> str:
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None:
            return "expiring" if now < self.expires_at else "expired"
        return "active"


class KeyStore(Protocol):
    """Where write keys are kept (a DynamoDB table in AWS, a dict in tests)."""

    def find(self, digest: str) -> WriteKey | None: ...

    def keys_of(self, source: str) -> list[WriteKey]: ...

    def all_keys(self) -> list[WriteKey]: ...

    def put(self, key: WriteKey) -> None: ...


def check_name(name: str) -> str:
    if not SOURCE_NAME.fullmatch(name):
        raise SourceError(f"source name {name!r} must be lower-case letters, digits and hyphens (1-63), "
                          "starting with a letter or digit")
    return name


def issue(source: str, now: float) -> tuple[str, WriteKey]:
    """A new key for ``source``: the key (shown once) and what is stored of it."""
    key = new_write_key()
    return key, WriteKey(key_digest(key), check_name(source), key[:KEY_ID_LENGTH], now)


def create_source(store: KeyStore, source: str, now: float) -> str:
    """A new source with its first key; refuses a name already in use."""
    if store.keys_of(check_name(source)):
        raise SourceError(f"source {source!r} exists; rotate its key with `cdp sources rotate {source}`")
    key, record = issue(source, now)
    store.put(record)
    return key


def rotate_source(store: KeyStore, source: str, now: float, overlap: float = DEFAULT_OVERLAP_SECONDS) -> str:
    """A new key for the source; its keys still valid stay valid for ``overlap`` seconds more (never longer
    than they already would), so senders can move to the new key without losing a message."""
    if overlap < 0:
        raise SourceError("the overlap must not be negative")
    keys = store.keys_of(check_name(source))
    if not keys:
        raise SourceError(f"no source named {source!r}; create it with `cdp sources create {source}`")
    for old in (k for k in keys if k.valid_at(now)):
        ends = now + overlap if old.expires_at is None else min(old.expires_at, now + overlap)
        store.put(replace(old, expires_at=ends))
    key, record = issue(source, now)
    store.put(record)
    return key


def revoke_source(store: KeyStore, source: str, now: float, key_id: str | None = None) -> int:
    """Revoke every key of the source still valid (or only the key ``key_id``) at once; returns how many."""
    keys = store.keys_of(check_name(source))
    if not keys:
        raise SourceError(f"no source named {source!r}")
    chosen = [k for k in keys if k.valid_at(now) and (key_id is None or k.key_id == key_id)]
    if key_id is not None and not any(k.key_id == key_id for k in keys):
        raise SourceError(f"source {source!r} has no key {key_id!r} (see `cdp sources list`)")
    for key in chosen:
        store.put(replace(key, revoked_at=now))
    return len(chosen)


@dataclass(frozen=True)
class SourceSummary:
    name: str
    keys: tuple[WriteKey, ...]  # newest first

    def valid_keys(self, now: float) -> int:
        return sum(k.valid_at(now) for k in self.keys)


def list_sources(store: KeyStore) -> list[SourceSummary]:
    by_source: dict[str, list[WriteKey]] = {}
    for key in store.all_keys():
        by_source.setdefault(key.source, []).append(key)
    return [SourceSummary(name, tuple(sorted(keys, key=lambda k: -k.created_at)))
            for name, keys in sorted(by_source.items())]


class KeyCache:
    """The collector's view of the key store: each digest looked up at most once per ``ttl`` seconds, an
    unknown one included (so a flood of bad keys costs one read per key per ``ttl``), at most ``size``
    digests kept. A rotation or revocation therefore takes effect within ``ttl`` seconds. Safe to share between
    threads (the local stack serves requests on several)."""

    def __init__(self, store: KeyStore, ttl: float = 30.0, size: int = 1024) -> None:
        self.store, self.ttl, self.size = store, ttl, size
        self._seen: dict[str, tuple[float, WriteKey | None]] = {}
        self._lock = threading.Lock()

    def find(self, digest: str, now: float) -> WriteKey | None:
        seen = self._seen.get(digest)
        if seen is not None and now - seen[0] < self.ttl:
            return seen[1]
        found = self.store.find(digest)  # outside the lock: a slow read never holds up the other threads
        with self._lock:
            if len(self._seen) >= self.size:
                self._seen.pop(next(iter(self._seen)))  # the oldest entry: insertion order
            self._seen.pop(digest, None)
            self._seen[digest] = (now, found)
        return found
