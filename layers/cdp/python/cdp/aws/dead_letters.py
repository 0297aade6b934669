"""Dead letters on SQS: a message that can never be delivered, kept whole with the reason as an attribute."""

from __future__ import annotations

from typing import Any

from cdp.aws.errors import domain_error


class SqsDeadLetters:
    def __init__(self, client: Any, queue_url: str, source: str) -> None:
        self.client = client
        self.queue_url = queue_url
        self.source = source

    def put(self, body: str, reason: str) -> None:
        try:
            self.client.send_message(QueueUrl=self.queue_url, MessageBody=body, MessageAttributes={
                "reason": {"DataType": "String", "StringValue": reason[:1000]},
                "source": {"DataType": "String", "StringValue": self.source}})
        except Exception as error:
            raise domain_error(error) from error
