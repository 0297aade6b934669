"""The whole product as one stack, composed of one construct per capability."""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_kms as kms
from constructs import Construct

from cdk.storage import Storage


class CdpStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.key = kms.Key(self, "DataKey", enable_key_rotation=True,
                           description="Encrypts profiles, streams and queues at rest")
        self.storage = Storage(self, "Storage", key=self.key)
        CfnOutput(self, "ProfilesTableName", value=self.storage.profiles.table_name)
