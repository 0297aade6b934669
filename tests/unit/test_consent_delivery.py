"""Consent checked per customer at delivery, in every integration (Meta, Google, webhook lists, email).

The batch destinations are the real ones (MetaAudiences, GoogleCustomerMatch, WebhookLists) over an in-memory
platform that speaks each one's HTTP API and keeps the audiences it would hold, so each test checks who ends up
in the audience, what the ledger holds and why. Consent comes from an in-memory CustomerPermissions: a customer
missing from it has no profile (deleted or expired).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cdp.core.consent import ConsentPolicy, ConsentState
from cdp.core.identifiers import sha256
from cdp.core.profile import Profile
from cdp.integrations.email import EmailOptions, deliver_emails, permission_refusal
from cdp.integrations.google import GoogleCustomerMatch
from cdp.integrations.http import HttpResponse
from cdp.integrations.meta import MetaAudiences
from cdp.integrations.webhook import WebhookLists, WebhookOptions, deliver_batch
from cdp.pipeline.fanout import (
    CONSENT_CHANGED,
    ENTERED,
    EXITED,
    NO_PROFILE,
    DeliveryResult,
    LedgerEntry,
    Row,
    deliver,
    parse_message,
)
from cdp_dev.memory import MemoryDeliveryLedger, MemoryProfileStore

CART = "cart-abandoners"
TARGETS = {"meta": {CART: "6000000001"}, "google": {CART: "7000000001"}, "webhook": {CART: "cart-list"}}
POLICY = ConsentPolicy.parse({"default": "denied", "uses": {"meta": ["advertising"], "google": ["advertising"],
                                                             "webhook": ["marketing"], "email": ["marketing"]}})
GRANTED = {"advertising": True, "marketing": True}
WITHDRAWN = {"advertising": False, "marketing": False}
AT = "2026-10-09T09:00:00Z"
WEBHOOK_URL = "https://hooks.example.com/lists"
GOOGLE_CUSTOMER = "1234567890"


def email_hash(customer: str) -> str:
    return sha256(f"{customer}@example.com")


def body(kind: str, customer: str, version: int = 1, *, consent_change: bool = False, at: str = AT,
         clause: str = "condition.absence", segment: str = CART) -> str:
    """A bus event as the changes function publishes it: Entered, Exited, or Segment Consent Changed."""
    change = "consent" if consent_change else kind
    detail_type = CONSENT_CHANGED if consent_change else ("Segment Entered" if kind == ENTERED else "Segment Exited")
    detail = {"schema_version": "1", "event_id": sha256(f"{customer}|{segment}|{change}|{version}|{at}"),
              "customer_id": customer, "segment": {"id": segment, "name": "Cart abandoners"}, "change": change,
              "at": at, "membership_version": version, "primary_segment": segment,
              "clause": {"path": "consent" if consent_change else clause, "reason": "test"},
              "identifiers": {"email_sha256": email_hash(customer), "google_email_sha256": email_hash(customer)}}
    return json.dumps({"version": "0", "id": detail["event_id"], "detail-type": detail_type,
                       "source": "cdp.segments", "detail": detail})


def msg(kind: str, customer: str, version: int = 1, **kwargs: Any) -> tuple[str, str]:
    return (f"m-{customer}-{kind}-{version}-{kwargs.get('at', AT)}-{kwargs.get('consent_change', False)}",
            body(kind, customer, version, **kwargs))


# ---- fakes -----------------------------------------------------------------------------------------


class Ledger(MemoryDeliveryLedger):
    def customers(self) -> set[str]:
        return {customer for _, _, customer in self.entries_by_key}


@dataclass
class Permissions:
    """Consent per customer id; a customer not here has no profile."""

    consent: dict[str, ConsentState] = field(default_factory=dict)
    reads: list[list[str]] = field(default_factory=list)

    def load(self, customer_ids: Sequence[str]) -> dict[str, ConsentState]:
        self.reads.append(list(customer_ids))
        return {cid: self.consent[cid] for cid in customer_ids if cid in self.consent}

    def give(self, customer: str, categories: Mapping[str, bool], at: float = 1.0) -> None:
        self.consent[customer] = ConsentState(dict(categories), at=at)


@dataclass
class Platform:
    """Meta's /users edge, Google's offline user data jobs and a webhook receiver, in memory: the audience each
    target holds, as email hashes."""

    audiences: dict[str, set[str]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> HttpResponse:
        self.requests.append((method, url))
        path = urlsplit(url).path
        if url.startswith(WEBHOOK_URL):
            return self._webhook(json.loads(body or b"{}"))
        if path.endswith("/users"):
            return self._meta(method, path.split("/")[-2], parse_qs((body or b"").decode()))
        return self._google(path, json.loads(body or b"{}") if not path.endswith("/token") else {})

    def members(self, target: str) -> set[str]:
        return set(self.audiences.get(target, set()))

    def _apply(self, target: str, add: bool, hashes: Sequence[str]) -> None:
        audience = self.audiences.setdefault(target, set())
        for value in hashes:
            (audience.add if add else audience.discard)(value)

    def _meta(self, method: str, audience: str, form: Mapping[str, list[str]]) -> HttpResponse:
        payload = json.loads(form["payload"][0])
        self._apply(audience, method == "POST", [row[0] for row in payload["data"] if row[0]])
        return HttpResponse(200, b'{"num_received": 1}')

    def _webhook(self, document: Mapping[str, Any]) -> HttpResponse:
        self._apply(document["list_id"], document["action"] == "add",
                    [op["identifiers"]["email_sha256"] for op in document["operations"]])
        return HttpResponse(200, b"")

    def _google(self, path: str, document: Mapping[str, Any]) -> HttpResponse:
        if path.endswith("/token"):
            return HttpResponse(200, b'{"access_token": "token", "expires_in": 3600}')
        if path.endswith("offlineUserDataJobs:create"):
            name = f"customers/{GOOGLE_CUSTOMER}/offlineUserDataJobs/{len(self.jobs) + 1}"
            metadata = document["job"]["customerMatchUserListMetadata"]
            self.jobs[name] = {"metadata": metadata, "operations": []}
            return HttpResponse(200, json.dumps({"resourceName": name}).encode())
        job = path.split("/v", 1)[1].split("/", 1)[1].rsplit(":", 1)[0]
        if path.endswith(":addOperations"):
            self.jobs[job]["operations"] += document["operations"]
        else:  # :run
            user_list = self.jobs[job]["metadata"]["userList"].rsplit("/", 1)[1]
            for operation in self.jobs[job]["operations"]:
                verb, data = next(iter(operation.items()))
                self._apply(user_list, verb == "create", [i["hashedEmail"] for i in data["userIdentifiers"]])
        return HttpResponse(200, b"{}")


def make_destination(name: str, platform: Platform, **google_options: Any) -> Any:
    if name == "meta":
        return MetaAudiences(TARGETS["meta"], "meta-token", platform)
    if name == "google":
        options = {"customer_id": GOOGLE_CUSTOMER, "token_url": "https://oauth.example.com/token", **google_options}
        secret = {"developer_token": "d", "client_id": "c", "client_secret": "s", "refresh_token": "r"}
        return GoogleCustomerMatch.from_settings(TARGETS["google"], options, secret, platform,
                                                 base_url="https://ads.example.com",
                                                 consent_default=POLICY.default)
    return WebhookLists(TARGETS["webhook"], WebhookOptions(WEBHOOK_URL), "a-signing-secret-of-length", platform)


@dataclass
class World:
    name: str
    platform: Platform = field(default_factory=Platform)
    ledger: Ledger = field(default_factory=Ledger)
    permissions: Permissions = field(default_factory=Permissions)
    destination: Any = None

    def __post_init__(self) -> None:
        self.destination = make_destination(self.name, self.platform)

    def deliver(self, messages: Sequence[tuple[str, str]]) -> DeliveryResult:
        if self.name == "webhook":
            return deliver_batch(messages, self.destination, self.ledger, None, self.permissions, POLICY)
        return deliver(messages, self.destination, self.ledger, self.permissions, POLICY)

    @property
    def target(self) -> str:
        return TARGETS[self.name][CART]

    def audience(self) -> set[str]:
        return self.platform.members(self.target)

    def entry(self, customer: str) -> LedgerEntry | None:
        return self.ledger.entries(f"{self.name}:{self.target}", [(CART, customer)]).get((CART, customer))


@pytest.fixture(params=["meta", "google", "webhook"])
def world(request: pytest.FixtureRequest) -> World:
    return World(request.param)


def reasons(result: DeliveryResult) -> list[str]:
    return [why for _, why in result.skipped]


# ---- the batch destinations: every consent path ------------------------------------------------------


def test_granted_consent_adds(world: World) -> None:
    world.permissions.give("ann", GRANTED)
    result = world.deliver([msg(ENTERED, "ann")])
    assert world.audience() == {email_hash("ann")}
    assert len(result.delivered) == 1 and result.consent_exits == 0 and not result.retry
    entry = world.entry("ann")
    assert entry is not None and entry.kind == ENTERED


def test_denied_consent_adds_nothing_and_records_a_consent_exit(world: World) -> None:
    world.permissions.give("bob", WITHDRAWN)
    world.permissions.consent["cat"] = ConsentState()  # never stated: the policy's default (denied)
    result = world.deliver([msg(ENTERED, "bob"), msg(ENTERED, "cat")])
    assert world.audience() == set() and world.platform.requests == []
    assert result.consent_exits == 2 and not result.delivered and not result.retry and not result.refused
    category = "marketing" if world.name == "webhook" else "advertising"
    assert reasons(result) == [f"consent: {world.name} needs category {category}, which is not granted"] * 2
    entry = world.entry("bob")
    assert entry is not None and (entry.kind, entry.version) == (EXITED, 1)


def test_withdrawn_consent_removes_with_a_ledger_exit_and_regranted_consent_adds_back(world: World) -> None:
    world.permissions.give("ann", GRANTED)
    world.deliver([msg(ENTERED, "ann", 3)])
    assert world.audience() == {email_hash("ann")}

    world.permissions.give("ann", WITHDRAWN, at=2.0)
    withdrawn = world.deliver([msg(ENTERED, "ann", 3, consent_change=True, at="2026-10-09T10:00:00Z")])
    assert world.audience() == set()
    assert withdrawn.consent_exits == 1 and [a.kind for a in withdrawn.delivered] == [EXITED]
    entry = world.entry("ann")
    assert entry is not None and (entry.kind, entry.version, entry.identifiers) == (EXITED, 3, {})

    world.permissions.give("ann", GRANTED, at=3.0)
    regranted = world.deliver([msg(ENTERED, "ann", 3, consent_change=True, at="2026-10-09T11:00:00Z")])
    assert world.audience() == {email_hash("ann")}
    assert [a.kind for a in regranted.delivered] == [ENTERED] and regranted.consent_exits == 0
    entry = world.entry("ann")
    assert entry is not None and entry.kind == ENTERED and entry.step == "2026-10-09T11:00:00Z"


def test_an_older_consent_change_arriving_late_changes_nothing(world: World) -> None:
    world.permissions.give("ann", GRANTED)
    world.deliver([msg(ENTERED, "ann", 2)])
    # Withdrawn at 10:00, granted again at 11:00; the 11:00 change is delivered first, then the 10:00 one.
    world.deliver([msg(ENTERED, "ann", 2, consent_change=True, at="2026-10-09T11:00:00Z")])
    world.permissions.give("ann", WITHDRAWN, at=0.5)  # what an out-of-date read would see; the order decides
    late = world.deliver([msg(ENTERED, "ann", 2, consent_change=True, at="2026-10-09T10:00:00Z")])
    assert world.audience() == {email_hash("ann")}
    assert reasons(late) == ["older than the change already applied"]


def test_a_consent_change_that_keeps_permission_sends_nothing_but_moves_the_order(world: World) -> None:
    world.permissions.give("ann", GRANTED)
    world.deliver([msg(ENTERED, "ann")])
    sent = len(world.platform.requests)
    result = world.deliver([msg(ENTERED, "ann", consent_change=True, at="2026-10-09T10:00:00Z")])
    assert world.audience() == {email_hash("ann")}
    if world.destination.consent_in_adds:  # Google: the add is sent again with the consent as it is now
        assert len(world.platform.requests) > sent and result.delivered
    else:
        assert len(world.platform.requests) == sent
        assert reasons(result) == ["already added; the consent change is recorded"]
    entry = world.entry("ann")
    assert entry is not None and entry.step == "2026-10-09T10:00:00Z"


def test_an_entry_in_the_same_batch_as_its_consent_withdrawal_is_not_added(world: World) -> None:
    world.permissions.give("ann", WITHDRAWN)
    result = world.deliver([msg(ENTERED, "ann", 4), msg(ENTERED, "ann", 4, consent_change=True)])
    assert world.audience() == set() and world.platform.requests == []
    assert "superseded by a newer change in the same batch" in reasons(result)
    assert len(world.permissions.reads) == 1  # one consent read for the batch


def test_no_profile_sends_nothing_and_leaves_no_ledger_row(world: World) -> None:
    result = world.deliver([msg(ENTERED, "gone", 2), msg(ENTERED, "gone", 2, consent_change=True)])
    assert world.platform.requests == [] and world.ledger.customers() == set()
    assert reasons(result) == [NO_PROFILE, NO_PROFILE] and result.no_profile == 2


def test_a_deleted_customers_exit_removes_and_forgets_the_ledger_row(world: World) -> None:
    world.permissions.give("ann", GRANTED)
    world.permissions.give("bob", GRANTED)
    world.deliver([msg(ENTERED, "ann"), msg(ENTERED, "bob")])
    del world.permissions.consent["ann"]  # the profile is deleted: its REMOVE record yields exits "deleted"

    result = world.deliver([msg(EXITED, "ann", 2, clause="deleted")])
    assert world.audience() == {email_hash("bob")}
    assert world.entry("ann") is None and world.ledger.customers() == {"bob"}
    assert result.forgotten == 1 and [a.kind for a in result.delivered] == [EXITED]
    # An archive replay of the old entry brings nobody back: there is no profile.
    replay = world.deliver([msg(ENTERED, "ann")])
    assert world.audience() == {email_hash("bob")} and world.entry("ann") is None
    assert reasons(replay) == [NO_PROFILE]


def test_the_profile_store_unavailable_retries_the_batch(world: World) -> None:
    def down(customer_ids: Sequence[str]) -> dict[str, ConsentState]:
        from cdp.ports import TransientError

        raise TransientError("ProvisionedThroughputExceededException")

    world.permissions.load = down  # type: ignore[method-assign]
    result = world.deliver([msg(ENTERED, "ann"), msg(EXITED, "bob", 2)])
    assert set(result.retry) == {msg(ENTERED, "ann")[0], msg(EXITED, "bob", 2)[0]}
    assert world.platform.requests == []


# ---- parsing -------------------------------------------------------------------------------------------


def test_a_consent_change_parses_as_an_add_with_its_change_and_order() -> None:
    event = parse_message(*msg(ENTERED, "ann", 5, consent_change=True, at="2026-10-09T10:00:00Z"))
    assert (event.kind, event.change, event.clause, event.consent_changed) == (ENTERED, "consent", "consent", True)
    assert event.order == (5, "2026-10-09T10:00:00Z")
    assert parse_message(*msg(ENTERED, "ann", 5)).order == (5, "")
    wrong = json.loads(body(ENTERED, "ann", consent_change=True))
    wrong["detail"]["change"] = ENTERED
    from cdp.pipeline.fanout import InvalidDelivery

    with pytest.raises(InvalidDelivery, match=r"detail\.change"):
        parse_message("m", json.dumps(wrong))


# ---- Google: consent per customer, one job per consent pair -------------------------------------------


def row(customer: str, consent: Mapping[str, bool] | None) -> Row:
    return Row(customer, {"google_email_sha256": email_hash(customer)}, customer, 1, consent)


@pytest.mark.parametrize(("default", "stated", "expected"), [
    ("granted", {"advertising": True, "personalization": False}, {"adUserData": "GRANTED",
                                                                  "adPersonalization": "DENIED"}),
    ("granted", {}, {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}),
    ("denied", {}, {"adUserData": "DENIED", "adPersonalization": "DENIED"}),
    ("denied", None, {"adUserData": "DENIED", "adPersonalization": "DENIED"}),  # consent not read
    ("denied", {"advertising": True}, {"adUserData": "GRANTED", "adPersonalization": "DENIED"}),
])
def test_google_consent_values_come_from_each_customers_categories(default: str, stated: dict[str, bool] | None,
                                                                   expected: dict[str, str]) -> None:
    google = make_destination("google", Platform(), consent={"ad_user_data": "Advertising",
                                                             "ad_personalization": "personalization"})
    google.consent_default = default
    assert dict(google.row_consent(row("ann", stated))) == expected


def test_google_sends_one_add_job_per_consent_pair() -> None:
    platform = Platform()
    google = make_destination("google", platform, consent={"ad_user_data": "advertising",
                                                           "ad_personalization": "personalization"})
    rows = [row("ann", {"advertising": True, "personalization": True}),
            row("bob", {"advertising": True, "personalization": False}),
            row("cat", {"advertising": True, "personalization": True})]
    outcome = google.send("7000000001", ENTERED, rows)
    assert not outcome.retry and not outcome.refused
    by_consent = {json.dumps(job["metadata"]["consent"], sort_keys=True): len(job["operations"])
                  for job in platform.jobs.values()}
    assert by_consent == {'{"adPersonalization": "GRANTED", "adUserData": "GRANTED"}': 2,
                          '{"adPersonalization": "DENIED", "adUserData": "GRANTED"}': 1}
    assert platform.members("7000000001") == {email_hash(c) for c in ("ann", "bob", "cat")}


def test_google_rows_carry_the_consent_read_at_delivery() -> None:
    world = World("google")
    world.destination = make_destination("google", world.platform, consent={"ad_personalization": "marketing"})
    world.permissions.give("ann", {"advertising": True, "marketing": False})
    world.deliver([msg(ENTERED, "ann")])
    (job,) = world.platform.jobs.values()
    assert job["metadata"]["consent"] == {"adPersonalization": "DENIED"}


def test_a_consent_change_that_keeps_a_customer_on_a_google_list_sends_their_new_consent() -> None:
    world = World("google")
    world.destination = make_destination("google", world.platform, consent={"ad_personalization": "marketing"})
    world.permissions.give("ann", {"advertising": True, "marketing": True})
    world.deliver([msg(ENTERED, "ann")])
    world.permissions.give("ann", {"advertising": True, "marketing": False})  # still on the list (advertising)
    world.deliver([msg(ENTERED, "ann", 2, consent_change=True, at="2026-10-02T00:00:00Z")])
    consents = [job["metadata"]["consent"] for job in world.platform.jobs.values()]
    assert consents == [{"adPersonalization": "GRANTED"}, {"adPersonalization": "DENIED"}]
    assert world.audience() == {email_hash("ann")}


def test_a_consent_change_that_keeps_a_customer_on_a_meta_audience_sends_nothing() -> None:
    world = World("meta")
    world.permissions.give("ann", {"advertising": True, "marketing": True})
    world.deliver([msg(ENTERED, "ann")])
    sent = len(world.platform.requests)
    world.permissions.give("ann", {"advertising": True, "marketing": False})
    world.deliver([msg(ENTERED, "ann", 2, consent_change=True, at="2026-10-02T00:00:00Z")])
    assert len(world.platform.requests) == sent  # Meta's adds carry no consent: nothing to tell it


class CountingProfiles(MemoryProfileStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load(self, customer_ids: Sequence[str]) -> dict[str, Profile]:
        self.loads += 1
        return super().load(customer_ids)


class NoSecondRead:
    def load(self, customer_ids: Sequence[str]) -> dict[str, ConsentState]:
        raise AssertionError("the profiles were read already for their emails")


def test_a_list_sent_emails_reads_each_profile_once_and_takes_the_consent_from_that_read() -> None:
    platform, profiles = Platform(), CountingProfiles()
    lists = WebhookLists(TARGETS["webhook"], WebhookOptions(WEBHOOK_URL, include_email=True),
                         "a-signing-secret-of-length", platform)
    for customer, marketing in (("ann", True), ("bob", False)):
        profile = Profile(customer)
        profile.traits["email"] = f"{customer}@example.com"
        profile.consent = ConsentState({"marketing": marketing, "advertising": True}, at=1.0)
        profiles.save(profile, 0)
    ledger = Ledger()
    result = deliver_batch([msg(ENTERED, "ann"), msg(ENTERED, "bob")], lists, ledger, profiles, NoSecondRead(),
                           POLICY)
    assert profiles.loads == 1
    assert platform.members(TARGETS["webhook"][CART]) == {email_hash("ann")}  # bob declined marketing
    assert result.consent_exits == 1


# ---- email ----------------------------------------------------------------------------------------------


class EmailLedger(Ledger):
    def release(self, destination: str, key: tuple[str, str], claim: LedgerEntry,
                previous: LedgerEntry | None) -> bool:
        if previous is None:
            self.entries_by_key.pop((destination, *key), None)
        else:
            self.entries_by_key[(destination, *key)] = previous
        return True


class Cap:
    def read(self, customer_id: str) -> Any:
        from cdp.integrations.email import CapRecord

        return CapRecord((), 0)

    def write(self, customer_id: str, sends: Sequence[Any], expected_version: int, expires_at: int) -> bool:
        return True


@dataclass
class Sender:
    sent: list[str] = field(default_factory=list)

    def send(self, template: str, to_address: str, template_data: Mapping[str, str]) -> str:
        self.sent.append(template_data["customer_id"])
        return "ses-id"


@dataclass
class Mail:
    profiles: MemoryProfileStore = field(default_factory=MemoryProfileStore)
    ledger: EmailLedger = field(default_factory=EmailLedger)
    sender: Sender = field(default_factory=Sender)

    def customer(self, customer: str, categories: Mapping[str, bool] | None = GRANTED,
                 unsubscribed: str = "") -> Profile:
        profile = Profile(customer)
        profile.traits = {"email": f"{customer}@example.com"}
        if categories is not None:
            profile.consent.record(categories, 1.0, "browser", "m1")
        if unsubscribed:
            profile.consent.unsubscribe(2.0, unsubscribed)
        self.profiles.save(profile, 0)
        return profile

    def deliver(self, messages: Sequence[tuple[str, str]], policy: ConsentPolicy | None = POLICY) -> DeliveryResult:
        return deliver_emails(messages, {CART: "cart-reminder"}, self.profiles, self.ledger, Cap(), self.sender,
                              1_800_000_000.0, EmailOptions(source="shop@example.com"), policy)


OPTIONS = EmailOptions(source="shop@example.com")


def test_email_granted_consent_sends() -> None:
    mail = Mail()
    mail.customer("ann")
    result = mail.deliver([msg(ENTERED, "ann")])
    assert mail.sender.sent == ["ann"] and len(result.delivered) == 1


@pytest.mark.parametrize(("categories", "unsubscribed", "reason"), [
    (WITHDRAWN, "", "consent: email needs category marketing, which is not granted"),
    (None, "", "consent: email needs category marketing, which is not granted"),  # never stated, opt-in default
    (GRANTED, "unsubscribed", "unsubscribed (Email spec event)"),
    (GRANTED, "spam", "spam (Email spec event)"),
])
def test_email_denied_unsubscribed_or_spam_sends_nothing(categories: dict[str, bool] | None, unsubscribed: str,
                                                         reason: str) -> None:
    mail = Mail()
    mail.customer("ann", categories, unsubscribed)
    result = mail.deliver([msg(ENTERED, "ann")])
    assert mail.sender.sent == [] and reasons(result) == [reason]
    assert mail.ledger.entries("email", [(CART, "ann")])  # recorded: a redelivery does not send later


def test_email_unsubscribe_wins_even_without_a_policy() -> None:
    consent = ConsentState()
    consent.unsubscribe(5.0, "unsubscribed")
    assert permission_refusal({"email_consent": True}, OPTIONS, consent, None) == "unsubscribed (Email spec event)"
    assert permission_refusal({"email_consent": True}, OPTIONS, ConsentState(), None) is None


def test_email_is_never_sent_for_a_consent_change() -> None:
    mail = Mail()
    mail.customer("ann")
    result = mail.deliver([msg(ENTERED, "ann", 2, consent_change=True)])
    assert mail.sender.sent == [] and reasons(result) == ["consent changed; no email for a continuing membership"]
    assert not mail.ledger.entries("email", [(CART, "ann")])


def test_email_an_entry_with_its_consent_change_in_one_batch_still_sends_once() -> None:
    mail = Mail()
    mail.customer("ann")
    mail.deliver([msg(ENTERED, "ann", 2), msg(ENTERED, "ann", 2, consent_change=True)])
    assert mail.sender.sent == ["ann"]


def test_email_no_profile_sends_nothing_and_leaves_no_ledger_row() -> None:
    mail = Mail()
    result = mail.deliver([msg(ENTERED, "gone")])
    assert mail.sender.sent == [] and reasons(result) == [NO_PROFILE] and result.no_profile == 1
    assert mail.ledger.customers() == set()


def test_email_a_deleted_customers_exit_forgets_the_ledger_row() -> None:
    mail = Mail()
    mail.customer("ann")
    mail.deliver([msg(ENTERED, "ann")])
    assert mail.ledger.customers() == {"ann"}
    result = mail.deliver([msg(EXITED, "ann", 2, clause="deleted")])
    assert mail.ledger.customers() == set() and result.forgotten == 1


def test_metrics_count_consent_exits_no_profiles_and_forgotten_rows() -> None:
    from cdp.pipeline.fanout import report

    @dataclass
    class Metrics:
        seen: dict[str, float] = field(default_factory=dict)

        def add_metric(self, name: str, unit: str, value: float) -> None:
            self.seen[name] = value

    class Logger:
        warning: Callable[..., None] = staticmethod(lambda *a, **k: None)

    metrics = Metrics()
    report(DeliveryResult(consent_exits=2, no_profile=3, forgotten=1), 0, metrics, Logger())
    assert (metrics.seen["ConsentExits"], metrics.seen["NoProfile"], metrics.seen["Forgotten"]) == (2, 3, 1)
