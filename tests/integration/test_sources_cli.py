"""`cdp sources create | list | rotate | revoke` against a write keys table in moto, as a deployed stack's
(``--table NAME``): the key is printed once and stored only as its digest, the listing shows each key's state,
a rotation keeps the old key valid for the overlap, a revocation ends it, and errors are one line."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp.aws.write_keys import bind_write_keys
from cdp.collector.keys import key_digest
from cdp_dev.cli import main
from cdp_dev.sources import key_store, parse_duration, show_duration

TABLE = "cdp-dev-WriteKeys"
REGION = "us-east-1"


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("CDP_STATE_DIR", str(tmp_path / "no-local-stack"))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        dynamodb.create_table(TableName=TABLE, KeySchema=[{"AttributeName": "digest", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "digest", "AttributeType": "S"}],
                              BillingMode="PAY_PER_REQUEST")
        yield dynamodb


def cdp(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    code = main(["--region", REGION, "sources", *arguments])
    out, err = capsys.readouterr()
    return code, out, err


def rows(listing: str) -> list[list[str]]:
    """The listing's rows after its header, split on runs of two or more spaces."""
    import re

    lines = listing.strip().splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["SOURCE", "KEY ID", "STATE", "CREATED", "EXPIRES"]
    return [re.split(r"\s{2,}", line) for line in lines[1:]]


def test_create_prints_the_key_once_and_stores_only_its_digest(table: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cdp(capsys, "create", "web", "--table", TABLE)
    assert code == 0, err
    key = out.strip()
    assert out == key + "\n" and key.startswith("wk_") and len(key) == 35  # alone on stdout, for a script
    assert "shown once" in err and "only its SHA-256 digest is stored" in err and TABLE in err
    items = table.scan(TableName=TABLE)["Items"]
    assert [item["digest"]["S"] for item in items] == [hashlib.sha256(key.encode()).hexdigest()]
    assert key not in repr(items)
    found = key_store(TABLE, REGION, None).find(key_digest(key))
    assert found is not None and found.source == "web" and found.key_id == key[:10]

    code, out, err = cdp(capsys, "create", "web", "--table", TABLE)
    assert code == 2 and out == ""
    assert err == "cdp: error: source 'web' exists; rotate its key with `cdp sources rotate web`\n"


def test_list_shows_every_key_with_its_state(table: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cdp(capsys, "list", "--table", TABLE)
    assert code == 0 and "no sources yet" in out
    first = cdp(capsys, "create", "web", "--table", TABLE)[1].strip()
    second = cdp(capsys, "create", "ios-app", "--table", TABLE)[1].strip()
    code, out, err = cdp(capsys, "list", "--table", TABLE)
    assert code == 0 and err.startswith(f"sources in table {TABLE} in AWS account")
    listed = rows(out)
    assert [(r[0], r[1], r[2], r[4]) for r in listed] == [("ios-app", second[:10], "active", "never"),
                                                          ("web", first[:10], "active", "never")]
    assert all(r[3].endswith("Z") for r in listed)


def test_rotate_keeps_the_old_key_valid_for_the_overlap_and_revoke_ends_it(
        table: Any, capsys: pytest.CaptureFixture[str]) -> None:
    old = cdp(capsys, "create", "web", "--table", TABLE)[1].strip()
    code, out, err = cdp(capsys, "rotate", "web", "--overlap", "90s", "--table", TABLE)
    assert code == 0, err
    new = out.strip()
    assert new.startswith("wk_") and new != old and "valid for 90s more" in err and "shown once" in err
    store = key_store(TABLE, REGION, None)
    retiring, current = store.find(key_digest(old)), store.find(key_digest(new))
    assert retiring is not None and current is not None
    assert retiring.expires_at is not None and retiring.expires_at - current.created_at == pytest.approx(90, abs=1)
    assert current.expires_at is None and current.valid_at(current.created_at + 1e6)
    states = {r[1]: r[2] for r in rows(cdp(capsys, "list", "--table", TABLE)[1])}
    assert states == {old[:10]: "expiring", new[:10]: "active"}

    code, out, err = cdp(capsys, "revoke", "web", "--key", old[:10], "--table", TABLE)
    assert code == 0 and out == (f"revoked key {old[:10]} of source web; the collector refuses it within 30 s "
                                 "(its key cache)\n"), err
    ended = {r[1]: (r[2], r[4]) for r in rows(cdp(capsys, "list", "--table", TABLE)[1])}
    assert ended[old[:10]][0] == "revoked" and ended[new[:10]] == ("active", "never")
    revoked = store.find(key_digest(old))
    assert revoked is not None and not revoked.valid_at(revoked.created_at + 1e6)

    code, out, _ = cdp(capsys, "revoke", "web", "--table", TABLE)
    assert code == 0 and out.startswith("revoked 1 valid key of source web")
    assert {r[2] for r in rows(cdp(capsys, "list", "--table", TABLE)[1])} == {"revoked"}


def test_rotate_takes_the_default_overlap_of_24_hours(table: Any, capsys: pytest.CaptureFixture[str]) -> None:
    old = cdp(capsys, "create", "web", "--table", TABLE)[1].strip()
    code, _, err = cdp(capsys, "rotate", "web", "--table", TABLE)
    assert code == 0 and "valid for 24h more" in err
    retiring = key_store(TABLE, REGION, None).find(key_digest(old))
    assert retiring is not None and retiring.expires_at is not None
    assert retiring.expires_at - retiring.created_at == pytest.approx(86400, abs=5)


@pytest.mark.parametrize(("arguments", "message"), [
    (("rotate", "nope"), "cdp: error: no source named 'nope'; create it with `cdp sources create nope`"),
    (("revoke", "nope"), "cdp: error: no source named 'nope'"),
    (("create", "Not_A_Name"), "cdp: error: source name 'Not_A_Name' must be lower-case letters, digits and "
                               "hyphens (1-63), starting with a letter or digit"),
    (("rotate", "web", "--overlap", "soon"), "cdp: error: the overlap 'soon' must be a number with s, m, h or d "
                                             "(90s, 30m, 24h, 7d)"),
    (("revoke", "web", "--key", "wk_missing"), "cdp: error: source 'web' has no key 'wk_missing' "
                                               "(see `cdp sources list`)"),
])
def test_errors_are_one_line(table: Any, capsys: pytest.CaptureFixture[str], arguments: tuple[str, ...],
                             message: str) -> None:
    assert cdp(capsys, "create", "web", "--table", TABLE)[0] == 0
    code, out, err = cdp(capsys, *arguments, "--table", TABLE)
    assert code == 2 and out == "" and err == message + "\n"


def test_a_missing_table_is_one_line_naming_it(table: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cdp(capsys, "list", "--table", "no-such-table")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("cdp: error: listing the sources in table no-such-table in AWS account")
    assert "ResourceNotFoundException" in err or "not found" in err.lower()


def test_with_no_table_and_no_local_stack_nothing_is_guessed(table: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cdp(capsys, "list")
    assert code == 2 and out == ""
    assert err.startswith("cdp: error: no local stack is running (start one with `make run`); to manage a "
                          "deployed stack's sources, pass --table NAME (its WriteKeysTableName output)")


def test_an_endpoint_with_one_write_keys_table_needs_no_table_name(monkeypatch: pytest.MonkeyPatch,
                                                                   table: Any) -> None:
    """``--endpoint-url`` (an emulator's) finds its one write keys table by name."""
    from cdp_dev import cli

    monkeypatch.setattr(cli, "_local_stacks", lambda: [])
    args = cli.build_parser().parse_args(["--endpoint-url", "http://127.0.0.1:1", "sources", "list"])
    from cdp_dev.targets import sources_target

    target = sources_target(args.endpoint_url, args.table, args.region, cli._local_stacks)
    assert cli._write_keys_table(args, target, table) == TABLE
    table.create_table(TableName="other-WriteKeys", KeySchema=[{"AttributeName": "digest", "KeyType": "HASH"}],
                       AttributeDefinitions=[{"AttributeName": "digest", "AttributeType": "S"}],
                       BillingMode="PAY_PER_REQUEST")
    with pytest.raises(ValueError, match="--table is needed: found 2 write keys tables"):
        cli._write_keys_table(args, target, table)


def test_durations() -> None:
    assert [parse_duration(text) for text in ("90s", "30m", "24h", "7d", "45", "0")] == [
        90, 1800, 86400, 604800, 45, 0]
    assert [show_duration(seconds) for seconds in (90, 1800, 86400, 604800, 45.5)] == [
        "90s", "30m", "24h", "7d", "45.5s"]


def test_the_model_binds_the_named_table() -> None:
    assert bind_write_keys(TABLE, REGION).Meta.table_name == TABLE
