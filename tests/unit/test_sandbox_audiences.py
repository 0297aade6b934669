"""The local sandbox keeps what each audience and list holds now, as the platforms would: adds less removes."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from cdp_dev.sandbox import Sandbox


def meta(sandbox: Sandbox, method: str, audience: str, rows: list[list[str]]) -> None:
    body = urlencode({"payload": json.dumps({"schema": ["EMAIL_SHA256"], "data": rows})}).encode()
    assert sandbox.answer(method, f"/v21.0/{audience}/users", body)[0] == 200


def test_an_audience_holds_what_was_added_and_not_removed_since() -> None:
    sandbox = Sandbox(0)
    meta(sandbox, "POST", "a1", [["h1"], ["h2"]])
    meta(sandbox, "DELETE", "a1", [["h1"]])
    sandbox.answer("POST", "/webhook", json.dumps({"list_id": "l1", "action": "add",
                                                   "operations": [{"customer_id": "c1"}]}).encode())
    status, held = sandbox.answer("GET", "/audiences", b"")
    assert status == 200 and held == {"meta:a1": ["h2"], "webhook:l1": ["c1"]}
    sandbox.answer("POST", "/webhook", json.dumps({"list_id": "l1", "action": "remove",
                                                   "operations": [{"customer_id": "c1"}]}).encode())
    assert sandbox.answer("GET", "/audiences", b"")[1]["webhook:l1"] == []


def test_google_rows_land_in_the_user_list_of_their_job() -> None:
    sandbox = Sandbox(0)
    created = sandbox.answer("POST", "/v18/customers/1/offlineUserDataJobs:create", json.dumps(
        {"job": {"customerMatchUserListMetadata": {"userList": "customers/1/userLists/7"}}}).encode())[1]
    job = created["resourceName"].rsplit("/", 1)[-1]
    sandbox.answer("POST", f"/v18/customers/1/offlineUserDataJobs/{job}:addOperations", json.dumps(
        {"operations": [{"create": {"userIdentifiers": [{"hashedEmail": "g1"}]}}]}).encode())
    assert sandbox.answer("GET", "/audiences", b"")[1] == {"google:7": ["g1"]}
