"""The HTTP API: API Gateway REST API in front of the api function.

Operator routes use IAM (SigV4); ``GET /me`` and ``GET /me/decisions`` use a Cognito user pool authorizer, so an
end user reads only their own profile and decisions. Stage throttling (each of those in its own, smaller bucket),
reserved concurrency for the function, access logs, request validation and CORS.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.functions import CdpFunction, Layers
from cdk.nag import acknowledge, acknowledge_function
from cdk.settings import Settings
from cdk.storage import Storage, grant_items


class Api(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: Storage,
                 layers: Layers, key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.function = CdpFunction(
            self, "Api", folder="api", layers=layers, key=key, architecture=settings.architecture,
            memory_mb=settings.memory_mb, timeout=Duration.seconds(10),
            # A cap as much as a guarantee: an API flood cannot take the concurrency ingest needs.
            reserved_concurrency=settings.api_reserved_concurrency or None,
            extra_layers=[layers.placements],
            environment={"PROFILES_TABLE": storage.profiles.table_name,
                         "MEMBERS_TABLE": storage.members.table_name,
                         "IDENTITY_TABLE": storage.identity_map.table_name,
                         "MEMBER_SHARDS": str(settings.member_shards),
                         "CORS_ORIGINS": ",".join(settings.cors_origins),
                         "ME_CLAIM": "sub",
                         "PLACEMENTS_PATH": "/opt/placements",
                         # static-segment edits: no one without profiling consent; created profiles expire
                         "CONSENT_POLICY": settings.consent_policy,
                         "PROFILE_RETENTION_DAYS": str(settings.retention.profile_days)})
        role = self.function.role
        grant_items(role, storage.profiles, "dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem")
        storage.members.grant(role, "dynamodb:Query", "dynamodb:BatchGetItem")
        grant_items(role, storage.identity_map, "dynamodb:BatchGetItem")  # resolves ids; merges are the ingest's
        key.grant_encrypt_decrypt(role)
        acknowledge_function(self.function)

        self.user_pool = cognito.UserPool(
            self, "Users", self_sign_up_enabled=False, sign_in_aliases=cognito.SignInAliases(email=True),
            password_policy=cognito.PasswordPolicy(min_length=12, require_digits=True, require_symbols=True,
                                                   require_lowercase=True, require_uppercase=True),
            mfa=cognito.Mfa.OPTIONAL, mfa_second_factor=cognito.MfaSecondFactor(sms=False, otp=True),
            removal_policy=RemovalPolicy.RETAIN)
        self.user_pool_client = self.user_pool.add_client("Frontend", auth_flows=cognito.AuthFlow(user_srp=True))
        for rule in ("COG3", "COG8"):
            acknowledge(self.user_pool, rule, "Threat protection needs the Plus tier, priced per active user; "
                                              "a deployment that wants it sets the pool's feature plan.")
        acknowledge(self.user_pool, "COG2", "End users only read their own profile; TOTP MFA is offered, "
                                            "not forced on shoppers.")

        access_logs = logs.LogGroup(self, "AccessLogs", retention=logs.RetentionDays.THREE_MONTHS,
                                    removal_policy=RemovalPolicy.DESTROY)
        cors = (apigateway.CorsOptions(allow_origins=settings.cors_origins,
                                       allow_methods=["GET", "POST", "PUT", "DELETE"],
                                       allow_headers=["Authorization", "Content-Type", "X-Amz-Date",
                                                      "X-Amz-Security-Token"])
                if settings.cors_origins else None)
        self.rest_api = apigateway.RestApi(
            self, "Rest", rest_api_name=f"cdp-{settings.stage}",
            description="Profiles, segment memberships and segment definitions",
            default_cors_preflight_options=cors,
            cloud_watch_role=True,
            deploy_options=apigateway.StageOptions(
                stage_name=settings.stage,
                throttling_rate_limit=settings.api_rate_limit,  # every method its own bucket of this size
                throttling_burst_limit=settings.api_burst_limit,
                # End users share one method and get a smaller bucket of their own: shoppers cannot use up the
                # api function's reserved concurrency that the operator routes need (see Settings).
                # /me/decisions (a decision on each page load) gets the same small bucket, its own.
                method_options={path: apigateway.MethodDeploymentOptions(
                    throttling_rate_limit=settings.api_me_rate_limit,
                    throttling_burst_limit=settings.api_me_burst_limit,
                    logging_level=apigateway.MethodLoggingLevel.ERROR, data_trace_enabled=False,
                    metrics_enabled=True) for path in ("/me/GET", "/me/decisions/GET")},
                access_log_destination=apigateway.LogGroupLogDestination(access_logs),
                access_log_format=apigateway.AccessLogFormat.json_with_standard_fields(
                    caller=False, http_method=True, ip=False, protocol=True, request_time=True,
                    resource_path=True, response_length=True, status=True, user=False),
                logging_level=apigateway.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # request bodies may hold personal data
                tracing_enabled=True,
                metrics_enabled=True,
            ),
        )
        validator = self.rest_api.add_request_validator("Validate", validate_request_parameters=True,
                                                        validate_request_body=True)
        integration = apigateway.LambdaIntegration(self.function.function)
        iam_auth = {"authorization_type": apigateway.AuthorizationType.IAM, "request_validator": validator}
        authorizer = apigateway.CognitoUserPoolsAuthorizer(self, "EndUsers", cognito_user_pools=[self.user_pool])

        root = self.rest_api.root
        lookup = root.add_resource("customers")  # GET /customers?email=... or ?anonymous_id=...
        lookup.add_method("GET", integration, **iam_auth,  # type: ignore[arg-type]
                          request_parameters={"method.request.querystring.email": False,
                                              "method.request.querystring.anonymous_id": False})
        customers = lookup.add_resource("{customerId}")
        customers.add_method("GET", integration, **iam_auth,  # type: ignore[arg-type]
                             request_parameters={"method.request.path.customerId": True})
        customers.add_resource("segments").add_method("GET", integration, **iam_auth,  # type: ignore[arg-type]
                                                      request_parameters={"method.request.path.customerId": True})
        # Data subject requests (operator routes): a deletion, its status, an export.
        customers.add_method("DELETE", integration, **iam_auth,  # type: ignore[arg-type]
                             request_parameters={"method.request.path.customerId": True})
        customers.add_resource("export").add_method("GET", integration, **iam_auth,  # type: ignore[arg-type]
                                                    request_parameters={"method.request.path.customerId": True})
        root.add_resource("requests").add_resource("{requestId}").add_method(
            "GET", integration, **iam_auth,  # type: ignore[arg-type]
            request_parameters={"method.request.path.requestId": True})
        me = root.add_resource("me")
        me.add_method("GET", integration, authorizer=authorizer,
                      authorization_type=apigateway.AuthorizationType.COGNITO)
        me.add_resource("decisions").add_method(
            "GET", integration, authorizer=authorizer, authorization_type=apigateway.AuthorizationType.COGNITO,
            request_validator=validator, request_parameters={"method.request.querystring.placement": True})
        segments = root.add_resource("segments")
        segments.add_method("GET", integration, **iam_auth)  # type: ignore[arg-type]
        segment = segments.add_resource("{segmentId}")
        by_segment = {"method.request.path.segmentId": True}
        # GET a definition, PUT a new version, DELETE it; POST is `/segments/{id}:preview` (a path part can hold
        # no literal beside a parameter, so {segmentId} takes "id:preview" and the function splits it).
        for method in ("GET", "PUT", "DELETE", "POST"):
            segment.add_method(method, integration, **iam_auth,  # type: ignore[arg-type]
                               request_parameters=by_segment)
        for part in ("versions", "history"):
            segment.add_resource(part).add_method("GET", integration, **iam_auth,  # type: ignore[arg-type]
                                                  request_parameters=by_segment)
        root.add_resource("segments:validate").add_method("POST", integration, **iam_auth)  # type: ignore[arg-type]
        members = segment.add_resource("members")
        for method in ("GET", "POST"):
            members.add_method(method, integration, **iam_auth,  # type: ignore[arg-type]
                               request_parameters=by_segment)
        jobs = root.add_resource("jobs")
        jobs.add_method("POST", integration, **iam_auth)  # type: ignore[arg-type]
        jobs.add_resource("{jobId}").add_method(
            "GET", integration, **iam_auth,  # type: ignore[arg-type]
            request_parameters={"method.request.path.jobId": True})
        models = root.add_resource("models")
        models.add_method("GET", integration, **iam_auth)  # type: ignore[arg-type]
        models.add_resource("{name}").add_method(
            "GET", integration, **iam_auth,  # type: ignore[arg-type]
            request_parameters={"method.request.path.name": True})
        customers.add_resource("decisions").add_method(
            "GET", integration, **iam_auth,  # type: ignore[arg-type]
            request_parameters={"method.request.path.customerId": True,
                                "method.request.querystring.placement": True})
        customers.add_resource("explain").add_method("GET", integration, **iam_auth,  # type: ignore[arg-type]
                                                     request_parameters={"method.request.path.customerId": True})
        root.add_resource("openapi.json").add_method("GET", integration, **iam_auth)  # type: ignore[arg-type]

        acknowledge(self.rest_api, "COG4", "Operator routes are authorised with IAM (SigV4), not end-user "
                                           "tokens; only /me and /me/decisions take a Cognito token.")
        acknowledge(self.rest_api, "APIG3", "Stage throttling and IAM/Cognito authorisation protect the API; "
                                            "a WAF web ACL can be attached per deployment.")
        acknowledge(self.rest_api, "IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                                   "AmazonAPIGatewayPushToCloudWatchLogs]",
                    "The account-level role API Gateway uses to write its own logs; AWS's policy is the "
                    "documented way to grant it.")
        if cors:
            acknowledge(self.rest_api, "APIG4", "CORS preflight (OPTIONS) requests carry no credentials by "
                                                "design; every other method is authorised.")
