"""Pseudonyms of customer ids (cdp.core.pseudonyms): plain by default, else a keyed HMAC that hides the id."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from cdp.core.pseudonyms import PREFIX, HmacIds, PlainIds

KEY = bytes(range(32))


def test_plain_ids_are_the_customer_ids_themselves() -> None:
    assert PlainIds().pseudonym("alice") == "alice"
    assert PlainIds().pseudonymous is False


def test_an_hmac_pseudonym_is_stable_and_is_the_keyed_sha256_of_the_id() -> None:
    ids = HmacIds(KEY)
    assert ids.pseudonymous is True
    assert ids.pseudonym("alice") == ids.pseudonym("alice") == HmacIds(KEY).pseudonym("alice")
    assert ids.pseudonym("alice") == PREFIX + hmac.new(KEY, b"alice", hashlib.sha256).hexdigest()
    assert ids.pseudonym("alice") != ids.pseudonym("alice ") != ids.pseudonym("bob")


def test_a_pseudonym_hides_the_id_and_depends_on_the_key() -> None:
    alice = HmacIds(KEY).pseudonym("alice")
    assert "alice" not in alice
    assert alice != PREFIX + hashlib.sha256(b"alice").hexdigest()  # not recomputable from a guessed id alone
    assert alice != HmacIds(bytes(reversed(KEY))).pseudonym("alice")
    assert len(alice) == len(PREFIX) + 64 and alice.startswith(PREFIX)


def test_a_pseudonym_is_marked_so_rows_written_before_the_switch_are_told_apart() -> None:
    ids = HmacIds(KEY)
    assert all(ids.pseudonym(c).startswith("h:") for c in ("alice", "h:alice", ""))
    assert ids.pseudonym("h:alice") != "h:alice"


def test_a_short_key_is_refused_and_the_key_is_never_shown() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        HmacIds(b"short")
    assert KEY.hex() not in repr(HmacIds(KEY)) and str(KEY) not in repr(HmacIds(KEY))
