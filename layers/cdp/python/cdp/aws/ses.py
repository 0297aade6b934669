"""The email integration on AWS: SES v1 templated sends, the frequency cap and claim release on the ledger table.

Errors carry SES's error code, never its message: a rejection's message can name the address.
The SES client should be built without botocore's own retries (``total_max_attempts=1``), so a
request whose answer was lost is never resent behind the caller's back; :class:`SesEmailSender`
resends only what SES answered with throttling or a fault, when nothing was sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as NoConnection

from cdp.aws.errors import domain_error
from cdp.aws.ledger import DynamoDeliveryLedger, conditional_put, entry_item
from cdp.core.pseudonyms import PlainIds, Pseudonyms
from cdp.integrations.email import CapRecord, EmailRefused, Send, SendOutcomeUnknown
from cdp.pipeline.fanout import EXITED, LedgerEntry
from cdp.ports import TransientError

THROTTLED = frozenset({"Throttling", "ThrottlingException", "MaxSendingRateExceeded", "TooManyRequestsException"})
FAULTS = frozenset({"InternalFailure", "ServiceUnavailable", "InternalServerError"})
# This message can never be sent: rejected (e.g. on the account's suppression list) or an address SES won't take.
REFUSED = frozenset({"MessageRejected", "InvalidParameterValue"})
# Nothing was sent, and nothing will be until an operator acts (account or configuration); retried meanwhile,
# and the queue's redrive moves the message to the dead-letter queue after its receives.
UNAVAILABLE = frozenset({"AccountSendingPausedException", "ConfigurationSetSendingPausedException",
                         "MailFromDomainNotVerifiedException", "TemplateDoesNotExistException",
                         "TemplateDoesNotExist", "ConfigurationSetDoesNotExistException", "AccessDenied",
                         "AccessDeniedException"})
CAP_PREFIX = "email-cap"


class SesEmailSender:
    """EmailSender over the SES v1 client's ``send_templated_email``, one recipient per message."""

    def __init__(self, client: Any, source: str, configuration_set: str | None = None, attempts: int = 3,
                 backoff_seconds: float = 0.2, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.source = source
        self.configuration_set = configuration_set
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep

    def send(self, template: str, to_address: str, template_data: Mapping[str, str]) -> str:
        request: dict[str, Any] = {
            "Source": self.source, "Destination": {"ToAddresses": [to_address]}, "Template": template,
            "TemplateData": json.dumps(dict(template_data), separators=(",", ":"), sort_keys=True)}
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        code = ""
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(self.backoff_seconds * 2 ** (attempt - 1))
            try:
                response = self.client.send_templated_email(**request)
            except ClientError as error:
                code, problem = answered(error)
                if problem is None:
                    continue  # SES answered with throttling or a fault: nothing was sent, so send again
                raise problem from None
            except BotoCoreError as error:
                raise unanswered(error) from None
            return str(response["MessageId"])
        raise TransientError(f"SES throttled or failed the send: {code}")


def answered(error: ClientError) -> tuple[str, Exception | None]:
    """SES's error code, and what its answer means for the send: None when it may be sent again (throttled,
    a fault), else the error to raise: refused for good, or not possible now. Never SES's message."""
    code = str(error.response.get("Error", {}).get("Code", "")) or "unknown"
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in THROTTLED or code in FAULTS or status >= 500:
        return code, None
    if code in REFUSED:
        return code, EmailRefused(f"SES {code}")
    if code in UNAVAILABLE:
        return code, TransientError(f"SES cannot send now: {code}")
    return code, TransientError(f"SES error {code}")


def unanswered(error: BotoCoreError) -> Exception:
    """A send that got no answer from SES: whether the request went out decides between retry and unknown."""
    if isinstance(error, NoConnection):  # no connection was made: the request never went out
        return TransientError(f"SES unreachable: {type(error).__name__}")
    if isinstance(error, HTTPClientError):  # read timeout, connection closed: the request may have gone out
        return SendOutcomeUnknown(f"SES's answer was lost: {type(error).__name__}")
    return TransientError(f"SES not called: {type(error).__name__}")  # no credentials, invalid parameters


def cap_key(customer_id: str) -> str:
    return f"{CAP_PREFIX}\x1f{customer_id}"


class DynamoFrequencyCap:
    """FrequencyCapStore on the ledger table: item ``email-cap\\x1f<customer>`` with the recent sends
    (``sends``: a list of [time, event id]) and a version ``v``, written with PutItem conditional on it. The
    customer is stored as its pseudonym (see :class:`~cdp.aws.ledger.DynamoDeliveryLedger`)."""

    def __init__(self, client: Any, table_name: str, pseudonyms: Pseudonyms | None = None) -> None:
        self.client = client
        self.table_name = table_name
        self.pseudonyms = pseudonyms or PlainIds()

    def read(self, customer_id: str) -> CapRecord:
        key = {"delivery": {"S": cap_key(self.pseudonyms.pseudonym(customer_id))}}
        try:
            response = self.client.get_item(TableName=self.table_name, Key=key, ConsistentRead=True)
        except Exception as error:
            raise domain_error(error) from error
        item = response.get("Item")
        if not item:
            return CapRecord((), 0)
        sends = tuple(Send(int(pair["L"][0]["N"]), pair["L"][1]["S"]) for pair in item.get("sends", {}).get("L", []))
        return CapRecord(tuple(sorted(sends, key=lambda s: s.at)), int(item["v"]["N"]))

    def write(self, customer_id: str, sends: Sequence[Send], expected_version: int, expires_at: int) -> bool:
        # ``customer``: the key of the ledger's customer index, through which a deletion finds this item too
        stored = self.pseudonyms.pseudonym(customer_id)
        item = {"delivery": {"S": cap_key(stored)}, "customer": {"S": stored},
                "v": {"N": str(expected_version + 1)},
                "sends": {"L": [{"L": [{"N": str(s.at)}, {"S": s.event_id}]} for s in sends]},
                "expires_at": {"N": str(expires_at)}}
        if expected_version == 0:
            return conditional_put(self.client, self.table_name, item, "attribute_not_exists(delivery)")
        return conditional_put(self.client, self.table_name, item, "v = :expected",
                               {":expected": {"N": str(expected_version)}})


class DynamoEmailLedger(DynamoDeliveryLedger):
    """The delivery ledger, plus releasing a claim whose email was not sent.

    With no previous entry the claim is replaced by a version-0 placeholder that expires (the function
    may put and get items but not delete them); any event's version is newer than it.
    """

    def release(self, destination: str, key: tuple[str, str], claim: LedgerEntry,
                previous: LedgerEntry | None) -> bool:
        entry = previous or LedgerEntry(0, EXITED, "released", {})
        # False: something newer replaced the claim, so leave it.
        item = entry_item(destination, self.stored(key), entry, self.exit_days)
        return self._put(item, "v = :claimed AND event_id = :event",
                         {":claimed": {"N": str(claim.version)}, ":event": {"S": claim.event_id}})
