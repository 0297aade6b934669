"""The collector: Segment's HTTP Tracking API on an API Gateway HTTP API, in front of the collector function.

An HTTP API rather than a REST API: SDKs send a request per event from browsers (analytics.js without
batching) and per 100 events from servers, so the request price is most of the collector's cost, and an
HTTP API costs $1.00 per million requests against $3.50. What a REST API adds is not needed here: the write
key is checked by the function (it may be in the body, which no authorizer sees), bodies are validated per
message, and the stage's throttling and CORS are both available on an HTTP API.
"""

from __future__ import annotations

import json

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.functions import CdpFunction, Layers
from cdk.nag import acknowledge, acknowledge_function
from cdk.settings import Settings
from cdk.storage import Storage, grant_items

ROUTES = ("batch", "track", "identify", "page", "screen", "group", "alias", "b", "t", "i", "p", "s", "g", "a")


class Collector(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: Storage,
                 stream: kinesis.IStream, layers: Layers, key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.function = CdpFunction(
            self, "Collector", folder="collector", layers=layers, key=key, architecture=settings.architecture,
            memory_mb=settings.collector_memory_mb, timeout=Duration.seconds(10),
            environment={"STREAM_NAME": stream.stream_name,
                         "SOURCES_TABLE": storage.write_keys.table_name,
                         "QUARANTINE_BUCKET": storage.quarantine.bucket_name,
                         "COLLECTOR_ORIGINS": ",".join(settings.collector_origins)})
        role = self.function.role
        stream.grant_write(role)  # PutRecords (and PutRecord), DescribeStream; the stream's key is AWS-managed
        grant_items(role, storage.write_keys, "dynamodb:GetItem")
        role.add_to_policy(iam.PolicyStatement(actions=["s3:PutObject"],
                                               resources=[storage.quarantine.arn_for_objects("quarantine/*")]))
        key.grant_encrypt_decrypt(role)
        acknowledge_function(self.function)
        acknowledge(role, "IAM5[Resource::<StorageQuarantine381A7D7C.Arn>/quarantine/*]",
                    "Writes new quarantine objects only, under the quarantine/ prefix; keys are made per request.")

        access_logs = logs.LogGroup(self, "AccessLogs", retention=logs.RetentionDays.ONE_MONTH,
                                    removal_policy=RemovalPolicy.DESTROY)
        origins = settings.collector_origins
        self.http_api = apigw.HttpApi(
            self, "Http", api_name=f"cdp-collector-{settings.stage}",
            description="Segment's HTTP Tracking API: /v1/batch, /v1/track, /v1/identify ...",
            create_default_stage=False,
            cors_preflight=apigw.CorsPreflightOptions(
                allow_origins=origins, allow_methods=[apigw.CorsHttpMethod.POST],
                allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
                max_age=Duration.days(1)) if origins else None)
        self.stage = apigw.HttpStage(
            self, "Default", http_api=self.http_api, stage_name="$default", auto_deploy=True,
            throttle=apigw.ThrottleSettings(rate_limit=settings.collector_rate_limit,
                                            burst_limit=settings.collector_burst_limit),        )
        # The access log: request id, status, route, latency and sizes; no source IP or user agent (personal data).
        stage = self.stage.node.default_child
        assert isinstance(stage, apigw.CfnStage)
        stage.access_log_settings = apigw.CfnStage.AccessLogSettingsProperty(
            destination_arn=access_logs.log_group_arn,
            format=json.dumps({"requestId": "$context.requestId", "time": "$context.requestTime",
                               "route": "$context.routeKey", "status": "$context.status",
                               "latencyMs": "$context.responseLatency", "requestBytes": "$context.requestLength",
                               "responseBytes": "$context.responseLength",
                               "error": "$context.integrationErrorMessage"}))
        integration = integrations.HttpLambdaIntegration(
            "Function", self.function.function, payload_format_version=apigw.PayloadFormatVersion.VERSION_2_0)
        for route in ROUTES:
            self.http_api.add_routes(path=f"/v1/{route}", methods=[apigw.HttpMethod.POST], integration=integration)
        self.url = self.stage.url
        acknowledge(self.http_api, "APIG4", "The Tracking API authenticates every request by its write key, in the "
                                            "function: Segment's SDKs send it as Basic username or in the body, "
                                            "which no API Gateway authorizer can read.")
