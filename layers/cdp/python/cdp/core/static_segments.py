"""Static segments: lists whose members are added and removed by hand, never by a condition.

The rules an edit of a static segment's members must keep, checked before anything is read or
written: the segment is an enabled static one, the edit names at most
:data:`MAX_CUSTOMERS_PER_EDIT` customers, added and removed together, no customer is both added and
removed, and every customer id is 1 to :data:`MAX_CUSTOMER_ID_LENGTH` characters. A checked edit is a
:class:`StaticEdit`; :func:`set_membership` is the change it makes to one profile. Pure: the write
itself is :func:`cdp.pipeline.write.edit_static_segment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdp.core.catalogue import Catalogue
from cdp.core.engine import Engine
from cdp.core.profile import Profile

MAX_CUSTOMERS_PER_EDIT = 100
MAX_CUSTOMER_ID_LENGTH = 256


class UnknownSegment(LookupError):
    """No enabled segment has this id (the id is not repeated back)."""


class InvalidEdit(ValueError):
    """An edit that breaks a rule; ``field`` names the part of the request that is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class StaticEdit:
    """A checked edit: each customer with whether they are a member after it, adds first, then removes."""

    segment_id: str
    members: dict[str, bool]


def static_edit(catalogue: Catalogue, segment_id: str, add: Sequence[str], remove: Sequence[str]) -> StaticEdit:
    """The edit of ``segment_id`` that adds ``add`` and removes ``remove``, once it keeps every rule.

    Raises :class:`UnknownSegment` when no enabled segment has this id, and :class:`InvalidEdit` naming
    the field otherwise.
    """
    segment = catalogue.segments.get(segment_id)
    if segment is None:
        raise UnknownSegment("segmentId: no enabled segment has this id")
    if not segment.manual:
        raise InvalidEdit("segmentId", f"{segment.id!r} is not a static segment; its members follow its condition")
    _check_size(add, remove)
    _check_disjoint(add, remove)
    _check_ids("add", add)
    _check_ids("remove", remove)
    return StaticEdit(segment.id, {**dict.fromkeys(add, True), **dict.fromkeys(remove, False)})


def _check_size(add: Sequence[str], remove: Sequence[str]) -> None:
    if len(add) + len(remove) > MAX_CUSTOMERS_PER_EDIT:
        raise InvalidEdit("add", f"at most {MAX_CUSTOMERS_PER_EDIT} customers per call, added and removed together")


def _check_disjoint(add: Sequence[str], remove: Sequence[str]) -> None:
    both = set(add) & set(remove)
    if both:
        raise InvalidEdit("remove", f"{len(both)} customer id(s) are both added and removed")


def _check_ids(field: str, customer_ids: Sequence[str]) -> None:
    if any(not customer_id or len(customer_id) > MAX_CUSTOMER_ID_LENGTH for customer_id in customer_ids):
        raise InvalidEdit(field, f"customer ids are 1 to {MAX_CUSTOMER_ID_LENGTH} characters")


def set_membership(engine: Engine, profile: Profile, segment_id: str, member: bool, now: float) -> bool:
    """Make the customer a member of the static segment, or not; False when they already were (or were not).

    The profile carries the transition, so the table stream publishes it with the write.
    """
    return engine.set_manual(profile, segment_id, member, now) is not None
