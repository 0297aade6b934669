"""Jobs: backfills, population statistics and computed traits, as a Step Functions state machine over one function.

Why Step Functions with a Distributed Map: a job reads every profile, and a table of tens of millions takes hours,
far past one Lambda's 15 minutes. The state machine splits a phase into ``job_scan_segments`` DynamoDB parallel-scan
segments and runs them as a Distributed Map (up to ``job_concurrency`` at once, each its own child execution, so the
parent's 25,000-event history is never the limit); each segment is a loop of Work invocations that hand a cursor on
(each stops with a minute of its 15 left), so no invocation is ever cut off and a segment can run for days. The
phases (Advance -> Map -> Finish -> Advance) are generic, so a new kind of job is a new phase, not a new machine.

The population statistics run on an EventBridge Scheduler schedule (``population_schedule``, hourly by default),
which invokes the jobs function to record a percentiles job and start its execution. A missed run needs no
redrive: the next one computes the same statistics, so the schedule has retries and no dead-letter queue. The
computed traits job runs on its own schedule (``traits_schedule``, daily by default, with the ``cluster_count``
setting in its options); only the jobs function gets the models layer (numpy, scikit-learn).

Partial results (the percentile histograms, one small object per Work invocation) go to an encrypted bucket that
refuses plain HTTP and expires them after a week. The jobs table (one item per job, TTL ``expires_at``) holds the
progress and counts that ``GET /jobs/{id}`` shows.
"""

from __future__ import annotations

import json

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk.functions import CdpFunction, Layers
from cdk.nag import acknowledge, acknowledge_function
from cdk.settings import Settings
from cdk.storage import Storage, encrypted_table, grant_items
from cdp.aws.definitions import HEAD_ID, MODELS_ID, POPULATION_ID

JOB_TIMEOUT = Duration.minutes(15)  # a Work step stops taking pages with JOB_RESERVE_MS (a minute) left
# One full vCPU (Lambda gives CPU in proportion to memory, one vCPU at 1,769 MB): the traits job's finish trains
# k-means and a classifier on up to 200,000 sampled rows in one invocation, and its scoring runs the model per page.
JOBS_MEMORY_MB = 1769
RESULT_DAYS = 7


class Jobs(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: Storage,
                 layers: Layers, key: kms.IKey, definitions: dynamodb.ITable | None = None) -> None:
        super().__init__(scope, construct_id)
        self.table = encrypted_table(
            self, "Table", key, RemovalPolicy.DESTROY,  # progress records only: nothing to keep past the stack
            partition_key=dynamodb.Attribute(name="job_id", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expires_at")
        self.results = s3.Bucket(
            self, "Results", encryption=s3.BucketEncryption.KMS, encryption_key=key, bucket_key_enabled=True,
            enforce_ssl=True, block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            removal_policy=RemovalPolicy.DESTROY, auto_delete_objects=False,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(RESULT_DAYS))])
        acknowledge(self.results, "S1", "Partial results of jobs (metric histograms, training rows keyed by a "
                                        "hash, never a customer id), written "
                                        "and read by the jobs function only and expired after a week: access "
                                        "logs would record nothing an operator needs.")
        stage = settings.stage
        self.state_machine_name = f"cdp-{stage}-jobs"
        self.state_machine_arn = Stack.of(self).format_arn(
            service="states", resource="stateMachine", resource_name=self.state_machine_name,
            arn_format=ArnFormat.COLON_RESOURCE_NAME)
        environment = {"PROFILES_TABLE": storage.profiles.table_name, "JOBS_TABLE": self.table.table_name,
                       "JOB_RESULTS_BUCKET": self.results.bucket_name,
                       "JOBS_STATE_MACHINE_ARN": self.state_machine_arn,
                       "JOB_SCAN_SEGMENTS": str(settings.job_scan_segments), "JOB_RESERVE_MS": "60000",
                       "CONSENT_POLICY": settings.consent_policy,
                       "PROFILE_RETENTION_DAYS": str(settings.retention.profile_days)}
        if definitions is not None:
            environment["DEFINITIONS_TABLE"] = definitions.table_name
        self.function = CdpFunction(self, "Jobs", folder="jobs", layers=layers, key=key,
                                    architecture=settings.architecture,
                                    memory_mb=max(settings.memory_mb, JOBS_MEMORY_MB), timeout=JOB_TIMEOUT,
                                    environment=environment,
                                    extra_layers=[layers.models])
        self._grant_function(storage, key, definitions)
        self.state_machine = self._state_machine(settings)
        self._schedule(settings)
        acknowledge_function(self.function)

    def _grant_function(self, storage: Storage, key: kms.IKey, definitions: dynamodb.ITable | None) -> None:
        role = self.function.role
        grant_items(role, storage.profiles, "dynamodb:Scan", "dynamodb:BatchGetItem", "dynamodb:PutItem")
        grant_items(role, self.table, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")
        if definitions is not None:
            grant_items(role, definitions, "dynamodb:GetItem", "dynamodb:BatchGetItem")
            # It writes the population statistics and the traits' models, and moves the head's stats_version: never
            # a definition.
            role.add_to_principal_policy(iam.PolicyStatement(
                actions=["dynamodb:PutItem", "dynamodb:UpdateItem"], resources=[definitions.table_arn],
                conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [POPULATION_ID, MODELS_ID,
                                                                                   HEAD_ID]}}))
        role.add_to_policy(iam.PolicyStatement(actions=["s3:PutObject", "s3:GetObject"],
                                               resources=[self.results.arn_for_objects("jobs/*")]))
        role.add_to_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[self.results.bucket_arn],
                                               conditions={"StringLike": {"s3:prefix": ["jobs/*"]}}))
        role.add_to_policy(iam.PolicyStatement(actions=["states:StartExecution"],
                                               resources=[self.state_machine_arn]))
        key.grant_encrypt_decrypt(role)
        bucket = Stack.of(self).get_logical_id(self.results.node.default_child)  # type: ignore[arg-type]
        acknowledge(role, f"IAM5[Resource::<{bucket}.Arn>/jobs/*]", "The job results' own prefix: one "
                    "object per scan segment invocation, named by the job id at run time.")

    def _invoke(self, name: str, payload: dict[str, object], result: dict[str, object] | None = None,
                ) -> tasks.LambdaInvoke:
        task = tasks.LambdaInvoke(self, name, lambda_function=self.function.function,
                                  payload=sfn.TaskInput.from_object(payload), payload_response_only=True,
                                  retry_on_service_exceptions=True,
                                  result_selector=result)
        # A step's own errors (throttling, a catalogue version not yet readable) pass when tried again.
        task.add_retry(errors=["States.TaskFailed"], interval=Duration.seconds(5), max_attempts=4,
                       backoff_rate=2.0)
        return task

    def _state_machine(self, settings: Settings) -> sfn.StateMachine:
        job = sfn.JsonPath.string_at("$.job_id")
        advance = self._invoke("Advance", {"step": "advance", "job_id": job,
                                           "finished": sfn.JsonPath.string_at("$.finished")})
        work = self._invoke("Work", {"step": "work", "job_id": job, "phase": sfn.JsonPath.string_at("$.phase"),
                                     "segment": sfn.JsonPath.number_at("$.segment"),
                                     "total": sfn.JsonPath.number_at("$.total"),
                                     "cursor": sfn.JsonPath.object_at("$.cursor")})
        segment_done = sfn.Choice(self, "SegmentDone").when(
            sfn.Condition.boolean_equals("$.done", True), sfn.Succeed(self, "SegmentFinished")).otherwise(work)
        segments = sfn.DistributedMap(
            self, "Segments", items_path="$.segments", max_concurrency=settings.job_concurrency,
            item_selector={"job_id": job, "phase": sfn.JsonPath.string_at("$.phase"),
                           "total": sfn.JsonPath.number_at("$.total"),
                           "segment": sfn.JsonPath.number_at("$$.Map.Item.Value"), "cursor": ""},
            result_path=sfn.JsonPath.DISCARD)
        segments.item_processor(work.next(segment_done))
        finish = self._invoke("Finish", {"step": "finish", "job_id": job, "phase": sfn.JsonPath.string_at("$.phase")})
        failed = self._invoke("MarkFailed", {"step": "fail", "job_id": job,
                                             "error": sfn.JsonPath.object_at("$.error")}).next(
            sfn.Fail(self, "JobFailed", error="JobFailed", cause="a step of the job failed; see the job's reason"))
        for step in (advance, segments, finish):
            step.add_catch(failed, errors=["States.ALL"], result_path="$.error")
        done = sfn.Choice(self, "JobDone").when(sfn.Condition.boolean_equals("$.done", True),
                                                sfn.Succeed(self, "JobFinished")).otherwise(segments)
        segments.next(finish)
        finish.next(advance)
        logs_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_MONTH,
                                   removal_policy=RemovalPolicy.DESTROY)
        machine = sfn.StateMachine(
            self, "StateMachine", state_machine_name=self.state_machine_name,
            definition_body=sfn.DefinitionBody.from_chainable(advance.next(done)),
            tracing_enabled=True, timeout=Duration.days(7),
            # Every state logged, without the data (a cursor holds a customer id)
            logs=sfn.LogOptions(destination=logs_group, level=sfn.LogLevel.ALL, include_execution_data=False))
        own = Stack.of(self).get_logical_id(machine.node.default_child)  # type: ignore[arg-type]
        executions = ('arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:'
                      '{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"' + own + '"}]}]}')
        for resource in (f"{executions}:*", f"{executions}/*:*"):
            acknowledge(machine, f"IAM5[Resource::{resource}]", "The Distributed Map's child executions of this "
                        "state machine's own executions (CDK's grant): their names are made at run time.")
        acknowledge(machine.role, "IAM5[Resource::*]", "CloudWatch Logs log delivery and X-Ray actions of a state "
                    "machine do not support resource-level permissions.")
        function = Stack.of(self).get_logical_id(self.function.function.node.default_child)  # type: ignore[arg-type]
        acknowledge(machine.role, f"IAM5[Resource::<{function}.Arn>:*]",
                    "Invoking the jobs function's versions and aliases (CDK's grant on its own function).")
        return machine

    def _schedule(self, settings: Settings) -> None:
        role = iam.Role(self, "ScheduleRole", assumed_by=iam.ServicePrincipal(
            "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}}),
            description="EventBridge Scheduler: starts the population statistics and computed traits jobs")
        role.add_to_policy(iam.PolicyStatement(actions=["lambda:InvokeFunction"],
                                               resources=[self.function.function.function_arn]))
        self.schedule = self._job_schedule(
            "Population", settings.population_schedule, role, {"step": "schedule", "kind": "percentiles"},
            "Compute the population statistics percentile conditions read")
        self.traits_schedule = self._job_schedule(
            "Traits", settings.traits_schedule, role,
            {"step": "schedule", "kind": "traits", "options": {"clusters": settings.cluster_count or None}},
            "Train the computed traits' models and write the traits that changed")

    def _job_schedule(self, construct_id: str, expression: str, role: iam.IRole, step: dict[str, object],
                      description: str) -> scheduler.CfnSchedule:
        """A schedule that has the jobs function start a job. A missed run needs no redrive (the next one does the
        same work), so it retries twice within the hour and has no dead-letter queue."""
        return scheduler.CfnSchedule(
            self, construct_id, schedule_expression=expression,
            flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
            description=description,
            target=scheduler.CfnSchedule.TargetProperty(
                arn=self.function.function.function_arn, role_arn=role.role_arn, input=json.dumps(step),
                retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(maximum_retry_attempts=2,
                                                                        maximum_event_age_in_seconds=3600)))

    def allow_start(self, function: lambda_.Function, role: iam.IRole, storage: Storage) -> None:
        """The api function starts jobs and shows them, and previews segments (a scan of the profiles)."""
        function.add_environment("JOBS_TABLE", self.table.table_name)
        function.add_environment("JOBS_STATE_MACHINE_ARN", self.state_machine_arn)
        grant_items(role, self.table, "dynamodb:GetItem", "dynamodb:PutItem")
        grant_items(role, storage.profiles, "dynamodb:Scan", "dynamodb:DescribeTable")
        role.add_to_principal_policy(iam.PolicyStatement(actions=["states:StartExecution"],
                                                         resources=[self.state_machine_arn]))
