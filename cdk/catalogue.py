"""The catalogue: the definitions table (every version of every segment, the catalogue head, the population
statistics; see cdp.aws.definitions) and its seeding from the segments folder on the first deploy.

Every function that evaluates or names segments reads the table (``DEFINITIONS_TABLE``): the head once per
``CATALOGUE_CHECK_SECONDS``, the definitions when it moved. Only the api function (and the jobs that store
statistics) write it. The seeding custom resource stores the folder the catalogue layer ships only while the
table holds no catalogue, so a redeploy never overwrites what was changed at runtime.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aws_cdk import CustomResource, Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from constructs import Construct

from cdk.functions import CdpFunction, Layers
from cdk.nag import acknowledge_function
from cdk.settings import Settings
from cdk.storage import encrypted_table, grant_items

ROOT = Path(__file__).resolve().parent.parent
SEED_TIMEOUT = Duration.minutes(2)
READ_ACTIONS = ("dynamodb:GetItem", "dynamodb:BatchGetItem")
# A commit is TransactWriteItems, which IAM authorises as the puts and updates it holds; history is a Query.
WRITE_ACTIONS = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query")


def folder_digest(folder: Path) -> str:
    """Changes with any definition file, so a deploy with new definitions runs the seeding's Update."""
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class Catalogue(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, layers: Layers, key: kms.IKey,
                 removal_policy: RemovalPolicy = RemovalPolicy.RETAIN) -> None:
        super().__init__(scope, construct_id)
        self.key = key
        self.table = encrypted_table(
            self, "Definitions", key, removal_policy,
            partition_key=dynamodb.Attribute(name="segment_id", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="version", type=dynamodb.AttributeType.NUMBER))
        self.seeder = CdpFunction(
            self, "Seeder", folder="catalogue", layers=layers, key=key, architecture=settings.architecture,
            memory_mb=settings.memory_mb, timeout=SEED_TIMEOUT,
            environment={"DEFINITIONS_TABLE": self.table.table_name})
        grant_items(self.seeder.role, self.table, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")
        key.grant_encrypt_decrypt(self.seeder.role)
        acknowledge_function(self.seeder)
        # The function is the custom resource's service token itself and answers CloudFormation on its own (see
        # functions/catalogue): the Provider framework would add a Node.js function of CDK's (its own runtime,
        # managed policy, no tracing or key) for a resource that runs once per deploy.
        self.seed = CustomResource(self, "Seed", service_token=self.seeder.function.function_arn,
                                   resource_type="Custom::CdpCatalogueSeed",
                                   properties={"Catalogue": folder_digest(ROOT / "segments")})

    def allow_reads(self, function: CdpFunction) -> None:
        """The function reads the catalogue (DEFINITIONS_TABLE): the head and the current definitions."""
        function.function.add_environment("DEFINITIONS_TABLE", self.table.table_name)
        grant_items(function.role, self.table, *READ_ACTIONS)

    def allow_writes(self, function: CdpFunction) -> None:
        """The function also commits changes and stores statistics, and reads segments' histories."""
        self.allow_reads(function)
        grant_items(function.role, self.table, *WRITE_ACTIONS)
        self.key.grant_encrypt_decrypt(function.role)
