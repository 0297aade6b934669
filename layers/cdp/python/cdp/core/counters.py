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

Sums are kept in hundredths, as integers. Each tier's buckets are kept in time order, so a
window or the retention horizon is found from one end without looking at the other buckets.
A decoded counter keeps the bytes it came from and writes them back unless it changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

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

    __slots__ = ("_packed", "_packed_parts", "buckets", "count", "first", "has_sum", "last", "total")

    def __init__(self, tiers: tuple[str, ...] = (), has_sum: bool = False) -> None:
        self.count = 0
        self.total = 0
        self.first = 0
        self.last = 0
        self.has_sum = has_sum
        self.buckets: dict[str, dict[int, list[int]]] = {code: {} for code in tiers}
        self._packed: bytes | None = None  # the encoding it was decoded from, while unchanged
        self._packed_parts = 0  # how many tiers and buckets that encoding holds

    @property
    def changed(self) -> bool:
        """Whether it differs from the encoding it was decoded from (always, for a new counter)."""
        # Every change through these methods forgets the encoding; one made to ``buckets`` directly
        # (clearing them) shows in the number of tiers and buckets.
        return self._packed is None or self._packed_parts != len(self.buckets) + sum(map(len, self.buckets.values()))

    def ensure(self, tiers: tuple[str, ...], has_sum: bool) -> None:
        """Start any tier a new segment needs; it fills from now on (there is no backfill)."""
        for code in tiers:
            if code not in self.buckets:
                self.buckets[code] = {}
                self._packed = None
        if has_sum and not self.has_sum:
            self.has_sum = True
            self._packed = None

    def add(self, timestamp: int, value: int, now: float) -> bool:
        """Count one event. Returns False when it is older than every bucket kept (lifetime only)."""
        self._packed = None
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
            if bucket is not None:
                bucket[0] += 1
                bucket[1] += value
            elif buckets and index < next(reversed(buckets)):  # a late event: keep the buckets in time order
                buckets[index] = [1, value]
                self.buckets[code] = dict(sorted(buckets.items()))
            else:
                buckets[index] = [1, value]
        return landed

    def absorb(self, other: Counter) -> None:
        """Count ``other``'s events here too, as if each had been added to this counter.

        The lifetime figures add up (first and last: the earliest and the latest), and so do the buckets, tier by
        tier and index by index, kept in time order. A tier only ``other`` keeps is taken as it is, and one only this
        counter keeps stays as it is: each holds the events of the counter that kept it (there is no backfill, as
        for a tier :meth:`ensure` starts). ``other`` is left as it was.
        """
        self._packed = None
        if other.count:
            self.first = min(self.first, other.first) if self.count else other.first
            self.last = max(self.last, other.last)
        self.count += other.count
        self.total += other.total
        self.has_sum = self.has_sum or other.has_sum
        for code, theirs in other.buckets.items():
            mine = self.buckets.setdefault(code, {})
            for index, (count, total) in theirs.items():
                bucket = mine.get(index)
                if bucket is None:
                    mine[index] = [count, total]
                else:
                    bucket[0] += count
                    bucket[1] += total
            self.buckets[code] = dict(sorted(mine.items()))

    def prune(self, now: float) -> bool:
        """Drop the buckets past each tier's retention (the oldest, at the front); True when any went."""
        pruned = False
        for code, buckets in self.buckets.items():
            tier = TIER_BY_CODE[code]
            oldest = int(now // tier.size) - tier.keep
            stale = []
            for index in buckets:
                if index > oldest:
                    break
                stale.append(index)
            for index in stale:
                del buckets[index]
            pruned = pruned or bool(stale)
        if pruned:
            self._packed = None
        return pruned

    def window(self, tier: Tier, seconds: int, now: float) -> tuple[int, int]:
        """Count and sum (hundredths) of the events in the window ending now."""
        buckets = self.buckets.get(tier.code)
        if not buckets:
            return 0, 0
        current = int(now // tier.size)
        start = current - seconds // tier.size + 1
        count = total = 0
        for index, (bucket_count, bucket_sum) in reversed(buckets.items()):  # newest first
            if index > current:
                continue  # stamped ahead of the clock: not in the window yet
            if index < start:
                break
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
        found = []
        for index, (bucket_count, bucket_sum) in reversed(buckets.items()):
            if index > current:
                continue
            if index < start:
                break
            found.append(((index + width) * tier.size, bucket_count, bucket_sum))
        found.reverse()
        return found

    # Serialised form: a few varints, about 2-4 bytes per non-empty bucket. Every part is a varint (the
    # flags and the tier codes are below 0x80, so one byte each), so the whole is packed and read in one pass.

    def encode(self) -> bytes:
        if not self.changed:
            assert self._packed is not None
            return self._packed
        has_sum = self.has_sum
        parts = [1 | (2 if has_sum else 0), self.count, _zigzag(self.total), self.first, self.last - self.first,
                 len(self.buckets)]
        for code, buckets in self.buckets.items():
            parts += (ord(code), len(buckets))
            previous = 0
            for index in sorted(buckets):
                count, total = buckets[index]
                if has_sum:
                    parts += (index - previous, count, _zigzag(total))
                else:
                    parts += (index - previous, count)
                previous = index
        return _pack(parts)

    @classmethod
    def decode(cls, data: bytes) -> Counter:
        parts = _unpack(data)
        counter = cls()
        has_sum = counter.has_sum = bool(parts[0] & 2)
        counter.count = parts[1]
        counter.total = _unzigzag(parts[2])
        counter.first = parts[3]
        counter.last = counter.first + parts[4]
        at = 6
        step = 3 if has_sum else 2
        for _ in range(parts[5]):
            code, size = chr(parts[at]), parts[at + 1]
            chunk = parts[at + 2:at + 2 + size * step]
            at += 2 + size * step
            indexes = accumulate(chunk[::step])
            if has_sum:
                counter.buckets[code] = {index: [count, (total >> 1) ^ -(total & 1)]
                                         for index, count, total in zip(indexes, chunk[1::3], chunk[2::3], strict=True)}
            else:
                counter.buckets[code] = {index: [count, 0] for index, count in zip(indexes, chunk[1::2], strict=True)}
            counter._packed_parts += 1 + size
        counter._packed = bytes(data)
        return counter


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value >> 1 if not value & 1 else -((value + 1) >> 1)


def _pack(values: list[int]) -> bytes:
    """Unsigned varints: 7 bits a byte, least significant first, the high bit set on all but the last."""
    out = bytearray()
    append = out.append
    for value in values:
        while value > 0x7F:
            append((value & 0x7F) | 0x80)
            value >>= 7
        append(value)
    return bytes(out)


def _unpack(data: bytes) -> list[int]:
    values: list[int] = []
    append = values.append
    result = shift = 0
    for byte in data:
        if byte & 0x80:
            result |= (byte & 0x7F) << shift
            shift += 7
        elif shift:
            append(result | byte << shift)
            result = shift = 0
        else:
            append(byte)
    return values
