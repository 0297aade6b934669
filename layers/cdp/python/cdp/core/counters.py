"""Time-bucketed counters: the compact aggregates a profile keeps instead of raw events.

Each counter keeps lifetime figures (count, sum, first and last time) and, for the
resolutions its segments need, fixed-size time buckets:

======  ===========  ========  =========================
tier    bucket size  kept      serves windows
======  ===========  ========  =========================
``m``   1 minute     60        1 minute to 60 minutes
``h``   1 hour       48        1 hour to 48 hours
``d``   1 day        35        1 day to 35 days
``w``   7 days       53        1 week to 53 weeks (371 d)
======  ===========  ========  =========================

Buckets are aligned to the Unix epoch (so days are UTC days and weeks start on
Thursday 00:00 UTC). A window of W seconds in a tier of bucket size s counts the
current bucket and the W/s - 1 before it. It therefore never counts an event
older than W, and always counts every event younger than W - s.

Sums are kept in hundredths, as integers.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdp.core.durations import DAY, HOUR, MINUTE, WEEK, format_duration


@dataclass(frozen=True, slots=True)
class Tier:
    code: str
    size: int
    keep: int

    @property
    def span(self) -> int:
        return self.size * self.keep


TIERS = (Tier("m", MINUTE, 60), Tier("h", HOUR, 48), Tier("d", DAY, 35), Tier("w", WEEK, 53))
TIER_BY_CODE = {tier.code: tier for tier in TIERS}
LONGEST_WINDOW = TIERS[-1].span


def tier_for_window(seconds: int) -> Tier:
    """The finest tier that can count a window of this length, or ValueError explaining why none can."""
    for tier in TIERS:
        if seconds <= tier.span:
            if seconds % tier.size:
                raise ValueError(
                    f"{format_duration(seconds)} is not a whole number of "
                    f"{format_duration(tier.size)} buckets, which windows up to "
                    f"{format_duration(tier.span)} are counted in"
                )
            return tier
    raise ValueError(
        f"{format_duration(seconds)} is longer than the longest window, {format_duration(LONGEST_WINDOW)};"
        " use lifetime figures instead"
    )


def to_hundredths(value: float) -> int:
    return round(value * 100)


class Counter:
    """Lifetime figures plus time buckets for one event name (and optional property filter)."""

    __slots__ = ("buckets", "count", "first", "has_sum", "last", "total")

    def __init__(self, tiers: tuple[str, ...] = (), has_sum: bool = False) -> None:
        self.count = 0
        self.total = 0
        self.first = 0
        self.last = 0
        self.has_sum = has_sum
        self.buckets: dict[str, dict[int, list[int]]] = {code: {} for code in tiers}

    def ensure(self, tiers: tuple[str, ...], has_sum: bool) -> None:
        """Start any tier a new segment needs; it fills from now on (there is no backfill)."""
        for code in tiers:
            if code not in self.buckets:
                self.buckets[code] = {}
        if has_sum and not self.has_sum:
            self.has_sum = True

    def add(self, timestamp: int, value: int, now: float) -> bool:
        """Count one event. Returns False when it is older than every bucket kept (lifetime only)."""
        if self.count == 0 or timestamp < self.first:
            self.first = timestamp
        if timestamp > self.last:
            self.last = timestamp
        self.count += 1
        self.total += value
        landed = not self.buckets
        for code, buckets in self.buckets.items():
            tier = TIER_BY_CODE[code]
            index = timestamp // tier.size
            if index <= now // tier.size - tier.keep:
                continue
            landed = True
            bucket = buckets.get(index)
            if bucket is None:
                buckets[index] = [1, value]
            else:
                bucket[0] += 1
                bucket[1] += value
        return landed

    def prune(self, now: float) -> None:
        for code, buckets in self.buckets.items():
            tier = TIER_BY_CODE[code]
            oldest = int(now // tier.size) - tier.keep
            stale = [index for index in buckets if index <= oldest]
            for index in stale:
                del buckets[index]

    def window(self, tier: Tier, seconds: int, now: float) -> tuple[int, int]:
        """Count and sum (hundredths) of the events in the window ending now."""
        buckets = self.buckets.get(tier.code)
        if not buckets:
            return 0, 0
        current = int(now // tier.size)
        start = current - seconds // tier.size + 1
        count = total = 0
        for index, (bucket_count, bucket_sum) in buckets.items():
            if start <= index <= current:
                count += bucket_count
                total += bucket_sum
        return count, total

    def expiries(self, tier: Tier, seconds: int, now: float) -> list[tuple[int, int, int]]:
        """(time it leaves the window, count, sum) for each bucket now in the window, soonest first."""
        buckets = self.buckets.get(tier.code)
        if not buckets:
            return []
        width = seconds // tier.size
        current = int(now // tier.size)
        start = current - width + 1
        return sorted(
            ((index + width) * tier.size, bucket[0], bucket[1])
            for index, bucket in buckets.items()
            if start <= index <= current
        )

    # Serialised form: a few varints, about 2-4 bytes per non-empty bucket.

    def encode(self) -> bytes:
        out = bytearray((1 | (2 if self.has_sum else 0),))
        _put(out, self.count)
        _put(out, _zigzag(self.total))
        _put(out, self.first)
        _put(out, self.last - self.first)
        _put(out, len(self.buckets))
        for code, buckets in self.buckets.items():
            out.append(ord(code))
            _put(out, len(buckets))
            previous = 0
            for index in sorted(buckets):
                count, total = buckets[index]
                _put(out, index - previous)
                previous = index
                _put(out, count)
                if self.has_sum:
                    _put(out, _zigzag(total))
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Counter:
        counter = cls()
        flags = data[0]
        counter.has_sum = bool(flags & 2)
        position = 1
        counter.count, position = _get(data, position)
        total, position = _get(data, position)
        counter.total = _unzigzag(total)
        counter.first, position = _get(data, position)
        span, position = _get(data, position)
        counter.last = counter.first + span
        tiers, position = _get(data, position)
        for _ in range(tiers):
            code = chr(data[position])
            position += 1
            size, position = _get(data, position)
            buckets: dict[int, list[int]] = {}
            index = 0
            for _ in range(size):
                delta, position = _get(data, position)
                index += delta
                count, position = _get(data, position)
                value = 0
                if counter.has_sum:
                    value, position = _get(data, position)
                    value = _unzigzag(value)
                buckets[index] = [count, value]
            counter.buckets[code] = buckets
        return counter


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value >> 1 if not value & 1 else -((value + 1) >> 1)


def _put(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _get(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
