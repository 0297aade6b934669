"""The changes function's configuration: how many requests it sends at once, and which segments it publishes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cdp.config import ChangesConfig, ConfigError

CATALOGUE = str(Path(__file__).resolve().parents[2] / "segments")
BASE = {"MEMBERS_TABLE": "m", "EVENT_BUS_NAME": "bus", "CATALOGUE_PATH": CATALOGUE}


def test_by_default_sixteen_requests_at_once_and_every_segment_published() -> None:
    config = ChangesConfig.from_env(BASE)
    assert (config.concurrency, config.published_segments) == (16, None)
    assert ChangesConfig.from_env({**BASE, "CDP_PUBLISHED_SEGMENTS": " * "}).published_segments is None


def test_a_comma_list_names_the_published_segments() -> None:
    config = ChangesConfig.from_env({**BASE, "CDP_PUBLISHED_SEGMENTS": "cart-abandoners, vip,vip",
                                     "CDP_CHANGES_CONCURRENCY": "64"})
    assert config.published_segments == frozenset({"cart-abandoners", "vip"})
    assert config.concurrency == 64


@pytest.mark.parametrize(("env", "message"), [
    ({"CDP_CHANGES_CONCURRENCY": "0"}, "CDP_CHANGES_CONCURRENCY must be between 1 and 64, not 0"),
    ({"CDP_CHANGES_CONCURRENCY": "65"}, "CDP_CHANGES_CONCURRENCY must be between 1 and 64, not 65"),
    ({"CDP_CHANGES_CONCURRENCY": "many"}, "CDP_CHANGES_CONCURRENCY must be a whole number"),
    ({"CDP_PUBLISHED_SEGMENTS": "vip,,browsers"}, "CDP_PUBLISHED_SEGMENTS must be * or a comma list of segment ids"),
    ({"CDP_PUBLISHED_SEGMENTS": "vip,*"}, "CDP_PUBLISHED_SEGMENTS must be * or a comma list"),
    ({"CDP_PUBLISHED_SEGMENTS": "Cart Abandoners"}, "not 'Cart Abandoners'"),
])
def test_a_bad_setting_stops_the_cold_start_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        ChangesConfig.from_env({**BASE, **env})
