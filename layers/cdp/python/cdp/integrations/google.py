"""Google Ads Customer Match: add on enter, remove on exit, through offline user data jobs (REST).

One batch of one kind for one user list is one job, in three steps (Google's documented flow):

1. ``POST /{version}/customers/{customer_id}/offlineUserDataJobs:create`` with a job of type
   ``CUSTOMER_MATCH_USER_LIST`` whose ``customerMatchUserListMetadata.userList`` is the list's
   resource name; the answer carries the job's ``resourceName``.
2. ``POST /{version}/{job}:addOperations`` with ``enablePartialFailure: true`` and one operation
   per customer: ``create`` (add) or ``remove``, each a ``UserData`` whose ``userIdentifiers`` hold
   ``hashedEmail`` and/or ``hashedPhoneNumber`` (one ``UserData`` is one person). A request holds at
   most 100,000 identifiers (Google's documented limit), so a large batch goes in several requests
   to the same job. Operations that fail come back in ``partialFailureError``, each error locating
   its operation by index (``location.fieldPathElements[fieldName=operations].index``); only those
   rows fail: refused when the data is invalid, retried when Google's error is transient.
3. ``POST /{version}/{job}:run``: Google processes the job asynchronously (hours, at times); the
   job's later status is not followed here, a row counts as delivered once its job runs.

Add jobs carry ``consent`` (``adUserData`` / ``adPersonalization``), per customer: OPTIONS.consent maps
each of ``ad_user_data`` / ``ad_personalization`` to a consent *category* (e.g. ``{"ad_user_data":
"advertising", "ad_personalization": "personalization"}``), and a row's value is ``GRANTED`` when the
customer granted that category, ``DENIED`` when they declined it, and the consent policy's default when
they never stated it. Google takes consent per job (``customerMatchUserListMetadata.consent``), so the
adds of one batch go in one job per distinct consent pair. Removals need none (Google's guide).

Every request carries ``Authorization: Bearer`` (an access token from the OAuth refresh token,
cached until shortly before it expires), ``developer-token`` and, when calls go through a manager
account, ``login-customer-id``. Throttling (429 ``RESOURCE_EXHAUSTED``) and 5xx are resent with
back-off by :func:`cdp.integrations.http.send`, honouring ``Retry-After`` or the ``retryDelay`` Google gives in
the error's ``quotaErrorDetails``; a job that would wait more than 30 s in all gives its rows back to
the queue instead, so the function never runs into its timeout waiting.

Identifiers arrive normalised by Google's rules and hashed (``google_email_sha256``,
``google_phone_sha256``: Gmail local parts without dots, phone in E.164 with its '+'). Errors and
reasons carry statuses and Google's error codes only: never identifiers, tokens or Google's
messages (which may quote the offending value).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from cdp.config import ConfigError
from cdp.core.identifiers import is_sha256
from cdp.integrations.http import HttpResponse, Transport, send
from cdp.pipeline.fanout import ENTERED, Row, SendOutcome
from cdp.ports import TransientError

API_VERSION = "v26"
BASE_URL = "https://googleads.googleapis.com"
TOKEN_URL = "https://oauth2.googleapis.com/token"
MAX_IDENTIFIERS_PER_REQUEST = 100_000  # across all UserData of one addOperations request
MAX_IDENTIFIERS_PER_USER = 20  # in one UserData; a customer here has at most two
TOKEN_MARGIN_SECONDS = 120.0  # an access token is renewed this long before it expires
WAIT_BUDGET_SECONDS = 30.0  # throttling waits per job (one send); the function's timeout is 60 s
IDENTIFIERS = ("google_email_sha256", "google_phone_sha256")
USER_IDENTIFIER_FIELDS = {"google_email_sha256": "hashedEmail", "google_phone_sha256": "hashedPhoneNumber"}
JOB_TYPE = "CUSTOMER_MATCH_USER_LIST"
CONSENT_FIELDS = {"ad_user_data": "adUserData", "ad_personalization": "adPersonalization"}
CONSENT_CATEGORY_CHARS = 64

# Error codes (family -> codes, or None for the whole family) that say 'later', not 'never'.
TRANSIENT_CODES: Mapping[str, frozenset[str] | None] = {
    "quotaError": None,
    "internalError": None,
    "databaseError": frozenset({"CONCURRENT_MODIFICATION"}),
}

_DIGITS = re.compile(r"^\d+$")
_USER_LIST = re.compile(r"^customers/(\d+)/userLists/(\d+)$")
_JOB = re.compile(r"^customers/\d+/offlineUserDataJobs/\d+$")
_FAMILY = re.compile(r"^[A-Za-z]{1,64}$")
_CODE = re.compile(r"^[A-Z0-9_]{1,80}$")
_OAUTH_ERROR = re.compile(r"^[a-z_]{1,40}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def customer_id_digits(value: object, name: str) -> str:
    """An Ads customer id as the API wants it: digits, the dashes of '123-456-7890' removed."""
    digits = str(value if value is not None else "").strip().replace("-", "")
    if not _DIGITS.match(digits):
        raise ConfigError(f"environment variable OPTIONS: {name} must be a Google Ads customer id "
                          "(digits, dashes allowed)")
    return digits


def consent_categories(raw: object) -> dict[str, str]:
    """OPTIONS.consent: ``ad_user_data`` and/or ``ad_personalization`` -> a consent category name (lower case)."""
    consent = raw or {}
    if not isinstance(consent, dict) or not set(consent) <= set(CONSENT_FIELDS) or not all(
            isinstance(value, str) and 0 < len(value.strip()) <= CONSENT_CATEGORY_CHARS
            and value.strip().upper() not in ("GRANTED", "DENIED") for value in consent.values()):
        raise ConfigError("environment variable OPTIONS: consent must map ad_user_data and/or ad_personalization "
                          "to a consent category name (e.g. advertising); the value is then sent per customer")
    return {name: value.strip().lower() for name, value in consent.items()}


# ---- Google's errors ----------------------------------------------------------------------------


def ads_errors(status: object) -> list[dict[str, Any]]:
    """The GoogleAdsError entries of a google.rpc.Status (an error body's ``error`` or a ``partialFailureError``)."""
    if not isinstance(status, dict):
        return []
    found = []
    for detail in status.get("details") or []:
        if isinstance(detail, dict) and isinstance(detail.get("errors"), list):
            found += [error for error in detail["errors"] if isinstance(error, dict)]
    return found


def error_code(error: Mapping[str, Any]) -> tuple[str, str]:
    """(family, code) of one GoogleAdsError, e.g. ('quotaError', 'RESOURCE_EXHAUSTED'); safe to log."""
    codes = error.get("errorCode")
    if isinstance(codes, dict):
        for family, code in codes.items():
            if isinstance(family, str) and _FAMILY.match(family) and isinstance(code, str) and _CODE.match(code):
                return family, code
    return "unknownError", "UNKNOWN"


def is_transient(family: str, code: str) -> bool:
    if family not in TRANSIENT_CODES:
        return False
    codes = TRANSIENT_CODES[family]
    return codes is None or code in codes


def operation_index(error: Mapping[str, Any]) -> int | None:
    """The index of the operation an error is about, from its location; None when it names none."""
    location = error.get("location")
    elements = location.get("fieldPathElements") if isinstance(location, dict) else None
    for element in elements if isinstance(elements, list) else []:
        if isinstance(element, dict) and element.get("fieldName") == "operations":
            index = element.get("index", None)
            if isinstance(index, bool):
                return None
            if isinstance(index, int):
                return index
            if isinstance(index, str) and index.isdigit():
                return int(index)  # int64 wrappers were strings in older versions' JSON
            return None
    return None


def describe(errors: Sequence[Mapping[str, Any]]) -> str:
    """The distinct error codes of some errors, e.g. 'quotaError.RESOURCE_EXHAUSTED'."""
    codes = sorted({".".join(error_code(error)) for error in errors})
    if not codes:
        return "no code"
    more = f" and {len(codes) - 5} more" if len(codes) > 5 else ""
    return ", ".join(codes[:5]) + more


def response_error(response: HttpResponse) -> dict[str, Any]:
    body = response.json()
    found = body.get("error") if isinstance(body, dict) else None
    return found if isinstance(found, dict) else {}


def transient_answer(response: HttpResponse) -> bool:
    """An error answer that says 'later' without a retryable HTTP status (e.g. 409 ABORTED, a quota error)."""
    if 200 <= response.status < 300:
        return False
    error = response_error(response)
    if response.status == 409 or error.get("status") in ("ABORTED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"):
        return True
    return any(is_transient(*error_code(e)) for e in ads_errors(error))


def retry_delay(response: HttpResponse) -> float | None:
    """The wait Google asks for in ``quotaErrorDetails.retryDelay`` (a duration like '30s'), if any."""
    for error in ads_errors(response_error(response)):
        details = error.get("details")
        quota = details.get("quotaErrorDetails") if isinstance(details, dict) else None
        delay = quota.get("retryDelay") if isinstance(quota, dict) else None
        match = _DURATION.match(delay) if isinstance(delay, str) else None
        if match:
            return float(match.group(1))
    return None


@dataclass
class RetryDelayTransport:
    """A transport that turns Google's ``retryDelay`` into the ``Retry-After`` that the HTTP client honours."""

    inner: Transport

    def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> HttpResponse:
        response = self.inner.request(method, url, headers, body)
        if response.status == 429 and not any(k.lower() == "retry-after" for k in response.headers):
            delay = retry_delay(response)
            if delay is not None:
                return HttpResponse(response.status, response.body, {**response.headers, "Retry-After": str(delay)})
        return response


# ---- OAuth ---------------------------------------------------------------------------------------


@dataclass
class AccessTokens:
    """Access tokens from an OAuth refresh token, each kept until shortly before it expires."""

    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)
    transport: Transport
    token_url: str = TOKEN_URL
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    margin: float = TOKEN_MARGIN_SECONDS
    _token: str = field(default="", repr=False)
    _expires_at: float = 0.0

    def get(self) -> str:
        if self._token and self.clock() < self._expires_at:
            return self._token
        form = urlencode({"grant_type": "refresh_token", "client_id": self.client_id,
                          "client_secret": self.client_secret, "refresh_token": self.refresh_token}).encode()
        started = self.clock()
        response = send(self.transport, "POST", self.token_url, {"Content-Type": "application/x-www-form-urlencoded"},
                        form, service="Google OAuth", sleep=self.sleep)
        body = response.json() if isinstance(response.json(), dict) else {}
        token = body.get("access_token")
        if response.status != 200 or not isinstance(token, str) or not token:
            code = body.get("error")
            why = f" ({code})" if isinstance(code, str) and _OAUTH_ERROR.match(code) else ""
            raise TransientError(f"Google OAuth refused the refresh token: HTTP {response.status}{why}")
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool) else 0.0
        self._token, self._expires_at = token, started + seconds - self.margin
        return token

    def invalidate(self) -> None:
        self._token, self._expires_at = "", 0.0


# ---- the destination ------------------------------------------------------------------------------


@dataclass
class GoogleCustomerMatch:
    """The Destination for Google Ads: segment -> Customer Match user list id."""

    user_lists: Mapping[str, str]
    customer_id: str  # digits
    developer_token: str = field(repr=False)
    tokens: AccessTokens = field(repr=False)
    transport: Transport
    login_customer_id: str = ""  # digits; the manager account the calls go through, if any
    consent: Mapping[str, str] = field(default_factory=dict)  # API field -> consent category, set on add jobs
    consent_default: str = "granted"  # a category never stated: the consent policy's default (granted/denied)
    api_version: str = API_VERSION
    base_url: str = BASE_URL
    max_identifiers: int = MAX_IDENTIFIERS_PER_REQUEST
    attempts: int = 5
    wait_budget: float = WAIT_BUDGET_SECONDS  # back-off one job may spend waiting, within the function's timeout
    sleep: Callable[[float], None] = time.sleep
    name: str = "google"
    identifier_names: tuple[str, ...] = IDENTIFIERS
    consent_in_adds: bool = True  # each add job carries ad_user_data / ad_personalization
    _waited: float = field(default=0.0, repr=False, compare=False)  # back-off so far for this job

    @classmethod
    def from_settings(cls, targets: Mapping[str, str], options: Mapping[str, Any], secret: Mapping[str, Any],
                      transport: Transport, *, api_version: str = "", base_url: str = "",
                      consent_default: str = "granted") -> GoogleCustomerMatch:
        """Built from the function's configuration, checked: a ConfigError names what is wrong (never a value)."""
        customer_id = customer_id_digits(options.get("customer_id"), "customer_id")
        login = options.get("login_customer_id")
        login_customer_id = customer_id_digits(login, "login_customer_id") if login else ""
        token_url = str(options.get("token_url") or TOKEN_URL)
        if not token_url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ConfigError("environment variable OPTIONS: token_url must be an https:// URL")
        lists: dict[str, str] = {}
        for segment_id, target in sorted(targets.items()):
            found = _USER_LIST.match(target)
            if not (_DIGITS.match(target) or (found and found.group(1) == customer_id)):
                raise ConfigError(f"environment variable TARGETS: {segment_id!r} must map to a user list id "
                                  "(digits, or customers/<customer_id>/userLists/<id>)")
            user_list = found.group(2) if found else target
            if user_list in lists:  # an exit from one segment would remove a member of the other
                raise ConfigError(f"environment variable TARGETS: {lists[user_list]!r} and {segment_id!r} map to "
                                  "the same user list; give each segment its own")
            lists[user_list] = segment_id
        consent = consent_categories(options.get("consent"))
        missing = [key for key in ("developer_token", "client_id", "client_secret", "refresh_token")
                   if not isinstance(secret.get(key), str) or not secret.get(key)]
        if missing:
            raise ConfigError("the Google secret must hold non-empty strings for: " + ", ".join(missing))
        tokens = AccessTokens(secret["client_id"], secret["client_secret"], secret["refresh_token"], transport,
                              token_url=token_url)
        return cls(dict(targets), customer_id, secret["developer_token"], tokens, transport, login_customer_id,
                   {CONSENT_FIELDS[k]: v for k, v in consent.items()}, consent_default, api_version or API_VERSION,
                   (base_url or BASE_URL).rstrip("/"))

    def target(self, segment_id: str) -> str | None:
        return self.user_lists.get(segment_id)

    def row_consent(self, row: Row) -> tuple[tuple[str, str], ...]:
        """The job consent a row's customer gives: each configured field GRANTED or DENIED from their category,
        or from the policy's default for a category they never stated."""
        stated = row.consent or {}
        pairs = []
        for api_field, category in sorted(self.consent.items()):
            granted = stated.get(category)
            if granted is None:
                granted = self.consent_default == "granted"
            pairs.append((api_field, "GRANTED" if granted else "DENIED"))
        return tuple(pairs)

    def send(self, target: str, kind: str, rows: Sequence[Row]) -> SendOutcome:
        """Removals in one job; adds in one job per consent pair (Google's consent is per job)."""
        if kind != ENTERED or not self.consent:
            return self._send_job(target, kind, rows, ())
        groups: dict[tuple[tuple[str, str], ...], list[Row]] = {}
        for row in rows:
            groups.setdefault(self.row_consent(row), []).append(row)
        if len(groups) == 1:
            consent, group = next(iter(groups.items()))
            return self._send_job(target, kind, group, consent)
        outcome = SendOutcome()
        for consent, group in sorted(groups.items()):
            try:
                done = self._send_job(target, kind, group, consent)
            except TransientError as error:  # this job's rows only: the other jobs may have run
                outcome.retry.update({row.event_id: str(error) for row in group})
                continue
            outcome.retry.update(done.retry)
            outcome.refused.update(done.refused)
        return outcome

    def _send_job(self, target: str, kind: str, rows: Sequence[Row],
                  consent: tuple[tuple[str, str], ...]) -> SendOutcome:
        outcome = SendOutcome()
        self._waited = 0.0
        operations: list[tuple[Row, dict[str, Any]]] = []
        verb = "create" if kind == ENTERED else "remove"
        for row in rows:
            identifiers = [{USER_IDENTIFIER_FIELDS[name]: row.identifiers[name]}
                           for name in IDENTIFIERS if name in row.identifiers]
            if not all(is_sha256(value) for item in identifiers for value in item.values()):
                outcome.refused[row.event_id] = "an identifier is not a SHA-256 hex digest"
            elif identifiers:  # a row with nothing Google matches on has nothing to do
                operations.append((row, {verb: {"userIdentifiers": identifiers}}))
        if not operations:
            return outcome
        job = self._create_job(target, kind, consent)  # TransientError: nothing applied, the rows are retried
        added: list[Row] = []
        for chunk in self._chunks(operations):
            added += self._add(job, chunk, outcome)
        if not added:
            return outcome
        try:
            response = self._post(f"{self.base_url}/{self.api_version}/{job}:run", {})
            reason = None if response.status == 200 else self._refusal("run the job", response)
        except TransientError as error:
            reason = str(error)
        if reason is not None:  # the job never runs: its rows are sent again, in a new job
            outcome.retry.update({row.event_id: reason for row in added})
        return outcome

    # -- the three requests --

    def _create_job(self, target: str, kind: str, consent: tuple[tuple[str, str], ...] = ()) -> str:
        user_list = target if target.startswith("customers/") else f"customers/{self.customer_id}/userLists/{target}"
        metadata: dict[str, Any] = {"userList": user_list}
        if kind == ENTERED and consent:
            metadata["consent"] = dict(consent)  # not needed for removals (Google's guide)
        response = self._post(f"{self.base_url}/{self.api_version}/customers/{self.customer_id}"
                              "/offlineUserDataJobs:create",
                              {"job": {"type": JOB_TYPE, "customerMatchUserListMetadata": metadata}})
        if response.status != 200:
            raise TransientError(self._refusal("create a job", response))
        body = response.json()
        job = body.get("resourceName") if isinstance(body, dict) else None
        if not isinstance(job, str) or not _JOB.match(job):
            raise TransientError("Google Ads created a job without a valid resource name")
        return job

    def _chunks(self, operations: Sequence[tuple[Row, dict[str, Any]]]) -> Iterator[list[tuple[Row, dict[str, Any]]]]:
        """Consecutive operations, each group within the identifiers one request may carry."""
        chunk: list[tuple[Row, dict[str, Any]]] = []
        count = 0
        for row, operation in operations:
            size = sum(len(data["userIdentifiers"]) for data in operation.values())
            if chunk and count + size > self.max_identifiers:
                yield chunk
                chunk, count = [], 0
            chunk.append((row, operation))
            count += size
        if chunk:
            yield chunk

    def _add(self, job: str, chunk: Sequence[tuple[Row, dict[str, Any]]], outcome: SendOutcome) -> list[Row]:
        """One addOperations request; the rows Google took, the others noted in the outcome."""
        body = {"operations": [operation for _, operation in chunk], "enablePartialFailure": True}
        try:
            response = self._post(f"{self.base_url}/{self.api_version}/{job}:addOperations", body)
        except TransientError as error:
            outcome.retry.update({row.event_id: str(error) for row, _ in chunk})
            return []
        if response.status == 200:
            answer = response.json()
            failure = answer.get("partialFailureError") if isinstance(answer, dict) else None
            return self._settle(chunk, ads_errors(failure), None, outcome)
        # Nothing in the request was applied: rows with an error of their own are settled by it; the rest retry.
        self._settle(chunk, ads_errors(response_error(response)), self._refusal("add the operations", response),
                     outcome)
        return []

    def _settle(self, chunk: Sequence[tuple[Row, dict[str, Any]]], errors: Sequence[Mapping[str, Any]],
                request_failed: str | None, outcome: SendOutcome) -> list[Row]:
        by_index: dict[int, list[Mapping[str, Any]]] = {}
        unplaced = []
        for error in errors:
            index = operation_index(error)
            if index is not None and 0 <= index < len(chunk):
                by_index.setdefault(index, []).append(error)
            else:
                unplaced.append(error)
        # An error Google does not tie to an operation could be about any row: resend them all (harmless).
        fallback = request_failed or (f"Google Ads reported errors for no particular row: {describe(unplaced)}"
                                      if unplaced else None)
        taken = []
        for index, (row, _) in enumerate(chunk):
            own = by_index.get(index)
            if own and all(is_transient(*error_code(e)) for e in own):
                outcome.retry[row.event_id] = f"Google Ads could not take this row yet: {describe(own)}"
            elif own:
                outcome.refused[row.event_id] = f"Google Ads refused this row: {describe(own)}"
            elif fallback is not None:
                outcome.retry[row.event_id] = fallback
            else:
                taken.append(row)
        return taken

    # -- HTTP --

    def _headers(self, token: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}", "developer-token": self.developer_token,
                   "Content-Type": "application/json"}
        if self.login_customer_id:
            headers["login-customer-id"] = self.login_customer_id
        return headers

    def _post(self, url: str, body: Mapping[str, Any]) -> HttpResponse:
        """POST JSON with back-off; one new access token and one resend if Google says the token is no longer good."""
        data = json.dumps(body, separators=(",", ":")).encode()
        transport = RetryDelayTransport(self.transport)
        response = send(transport, "POST", url, self._headers(self.tokens.get()), data, service="Google Ads",
                        attempts=self.attempts, throttled=transient_answer, sleep=self._wait)
        if response.status == 401:
            self.tokens.invalidate()
            response = send(transport, "POST", url, self._headers(self.tokens.get()), data, service="Google Ads",
                            attempts=self.attempts, throttled=transient_answer, sleep=self._wait)
        return response

    def _wait(self, seconds: float) -> None:
        """Back off as asked, unless this job has waited its budget: then give up and let the queue retry."""
        if self._waited + seconds > self.wait_budget:
            raise TransientError(f"Google Ads asked to wait more than {self.wait_budget:g} s for one job")
        self._waited += seconds
        self.sleep(seconds)

    @staticmethod
    def _refusal(step: str, response: HttpResponse) -> str:
        error = response_error(response)
        status = error.get("status")
        label = f" {status}" if isinstance(status, str) and _CODE.match(status) else ""
        errors = ads_errors(error)
        codes = f": {describe(errors)}" if errors else ""
        return f"Google Ads did not {step}: HTTP {response.status}{label}{codes}"
