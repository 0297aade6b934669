"""Monitoring: one dashboard for the pipeline, and alarms on what needs a person (optionally to SNS)."""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.api import Api
from cdk.changes import Changes
from cdk.collector import Collector
from cdk.fanout import Fanout
from cdk.history import History
from cdk.ingest import Ingest
from cdk.jobs import Jobs
from cdk.privacy import Privacy
from cdk.storage import Storage
from cdk.timers import Timers

NAMESPACE = "cdp"


def _metric(name: str, service: str, statistic: str = "Sum", **dimensions: str) -> cloudwatch.Metric:
    return cloudwatch.Metric(namespace=NAMESPACE, metric_name=name, statistic=statistic, period=Duration.minutes(1),
                             dimensions_map={"service": service, **dimensions})


class Monitoring(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, stage: str, ingest: Ingest, changes: Changes,
                 api: Api, timers: Timers, fanout: Fanout, collector: Collector, privacy: Privacy, storage: Storage,
                 key: kms.IKey,
                 alarm_email: str | None,
                 segment_ids: list[str], history: History | None = None,
                 segment_size_alarm_percent: int = 0, jobs: Jobs | None = None) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(self, "Alarms", master_key=key, display_name=f"cdp {stage} alarms", enforce_ssl=True)
        self._allow_alarms_to_publish(key)
        if alarm_email:
            sns.Subscription(self, "Email", topic=self.topic, protocol=sns.SubscriptionProtocol.EMAIL,
                             endpoint=alarm_email)

        ingest_fn, changes_fn, api_fn = ingest.function.function, changes.function.function, api.function.function
        timers_fn, collector_fn = timers.function.function, collector.function.function
        iterator_age = ingest_fn.metric("IteratorAge", statistic="Maximum", period=Duration.minutes(1))
        queues: list[tuple[str, sqs.IQueue]] = [("ingest failures", ingest.failures),
                                                ("changes failures", changes.failures),
                                                ("schedule failures", timers.failures),
                                                ("privacy dead letters", privacy.dead_letters)]
        if history is not None:
            queues.append(("history schedule failures", history.failures))
        queues += [(f"{d.integration.name} dead letters", d.dead_letters) for d in fanout.deliveries]
        self.alarms = [
            cloudwatch.Alarm(self, "IngestBehind", metric=iterator_age, threshold=60_000, evaluation_periods=5,
                             alarm_description="Ingest is more than a minute behind the stream for 5 minutes"),
            cloudwatch.Alarm(self, "ChangesBehind",
                             metric=changes_fn.metric("IteratorAge", statistic="Maximum", period=Duration.minutes(1)),
                             threshold=60_000, evaluation_periods=5,
                             alarm_description="Segment events lag the profile writes by over a minute"),
            *[cloudwatch.Alarm(self, f"{name.title().replace(' ', '')}Waiting",
                               metric=queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(1)),
                               threshold=0, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                               evaluation_periods=1, alarm_description=f"Batches in the {name} queue: redrive them")
              for name, queue in queues],
            *[cloudwatch.Alarm(self, f"{label}Errors", metric=fn.metric_errors(period=Duration.minutes(1)),
                               threshold=0, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                               evaluation_periods=3, alarm_description=f"The {label.lower()} function is failing")
              for label, fn in (("Ingest", ingest_fn), ("Changes", changes_fn), ("Api", api_fn),
                                ("Timers", timers_fn), ("Collector", collector_fn),
                                ("Privacy", privacy.function.function),
                                *((("History", history.function.function),) if history is not None else ()),
                                *((("Jobs", jobs.function.function),) if jobs is not None else ()),
                                *((d.integration.name.title(), d.function.function) for d in fanout.deliveries))],
            cloudwatch.Alarm(self, "DeletionsFailed", metric=_metric("DeletionsFailed", "privacy"), threshold=0,
                             comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                             evaluation_periods=1, treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                             alarm_description="A deletion request failed (GET /requests/{id} says why)"),
            cloudwatch.Alarm(self, "DeadlinesBehind", metric=_metric("DeadlineDelayMax", "timers", "Maximum"),
                             threshold=300, evaluation_periods=5,
                             alarm_description="Time-driven segments flip more than 5 minutes after their deadline"),
            cloudwatch.Alarm(self, "ProfilesThrottled",
                             metric=cloudwatch.MathExpression(
                                 expression="read + write", period=Duration.minutes(1),
                                 using_metrics={
                                     "read": storage.profiles.metric("ReadThrottleEvents", statistic="Sum"),
                                     "write": storage.profiles.metric("WriteThrottleEvents", statistic="Sum")}),
                             threshold=0, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                             evaluation_periods=3, alarm_description="The profiles table is throttling"),
            cloudwatch.Alarm(self, "CollectorUnavailable", metric=_metric("Requests503", "collector"),
                             threshold=0, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                             evaluation_periods=3, treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                             alarm_description="The collector cannot store messages on the stream (SDKs retry)"),
            cloudwatch.Alarm(self, "Api5xx", metric=api.rest_api.metric_server_error(period=Duration.minutes(1)),
                             threshold=0, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                             evaluation_periods=3, alarm_description="The API answers 5xx (a bug)"),
        ]
        if jobs is not None:
            self.alarms.append(cloudwatch.Alarm(
                self, "JobsFailed", metric=jobs.state_machine.metric_failed(period=Duration.minutes(5)),
                threshold=0, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1, treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description="A backfill or population statistics job failed (GET /jobs/{id} says why)"))
        if history is not None and segment_size_alarm_percent:
            # The snapshot publishes once a day: a day-long period holds exactly one run's count.
            self.alarms.append(cloudwatch.Alarm(
                self, "SegmentSizeSwing", threshold=1, evaluation_periods=1,
                metric=cloudwatch.Metric(namespace=NAMESPACE, metric_name="SegmentsSwinging", statistic="Maximum",
                                         period=Duration.days(1), dimensions_map={"service": "history"}),
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=f"A segment's size moved by more than {segment_size_alarm_percent}% in a day "
                                  "(the history function's log names it)"))
        rules = [timers.rule_name, *(d.rule_name for d in fanout.deliveries),
                 *([history.rule_name] if history is not None else [])]
        self.alarms.append(cloudwatch.Alarm(
            self, "RuleDeliveriesFailing", threshold=0, evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description="EventBridge cannot deliver to a rule's target (permissions, the key, the queue)",
            metric=cloudwatch.MathExpression(
                expression="SUM(METRICS())", period=Duration.minutes(1),
                using_metrics={f"r{i}": cloudwatch.Metric(namespace="AWS/Events", metric_name="FailedInvocations",
                                                          statistic="Sum", dimensions_map={"RuleName": rule})
                               for i, rule in enumerate(rules)})))
        for alarm in self.alarms:
            alarm.add_alarm_action(actions.SnsAction(self.topic))

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=f"cdp-{stage}")
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Ingest rate (events applied, duplicates)", width=12, left=[
                _metric("EventsApplied", "ingest"), _metric("EventsDuplicate", "ingest")]),
            cloudwatch.GraphWidget(title="Iterator age (ms)", width=12, left=[
                iterator_age, changes_fn.metric("IteratorAge", statistic="Maximum", period=Duration.minutes(1))]),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Rejected and quarantined events", width=12, left=[
                _metric("EventsQuarantined", "ingest"), _metric("EventsBeyondRetention", "ingest"),
                _metric("RecordsRetried", "ingest"), _metric("ProfileConflicts", "ingest")]),
            cloudwatch.GraphWidget(title="Transitions per segment", width=12, stacked=True, left=[
                _metric(f"Segment{kind}", "changes", segment=segment_id)
                for segment_id in segment_ids for kind in ("Entered", "Exited")]),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Profiles table throttles", width=8, left=[
                storage.profiles.metric("ReadThrottleEvents", statistic="Sum", period=Duration.minutes(1)),
                storage.profiles.metric("WriteThrottleEvents", statistic="Sum", period=Duration.minutes(1))]),
            cloudwatch.GraphWidget(title="EventBridge failed invocations and DLQ depth", width=8, left=[
                cloudwatch.Metric(namespace="AWS/Events", metric_name="FailedInvocations", statistic="Sum",
                                  period=Duration.minutes(1),
                                  dimensions_map={"EventBusName": changes.bus.event_bus_name})],
                right=[queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(1))
                       for _, queue in queues]),
            cloudwatch.GraphWidget(title="API latency (p50, p99) and errors", width=8, left=[
                api.rest_api.metric_latency(statistic="p50", period=Duration.minutes(1)),
                api.rest_api.metric_latency(statistic="p99", period=Duration.minutes(1))],
                right=[api.rest_api.metric_client_error(period=Duration.minutes(1)),
                       api.rest_api.metric_server_error(period=Duration.minutes(1))]),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Collector: messages accepted and rejected", width=12, left=[
                _metric("MessagesAccepted", "collector"), _metric("MessagesRejected", "collector")]),
            cloudwatch.GraphWidget(title="Collector: requests refused (401, 413, 429, 503) and records resent",
                                   width=12, left=[_metric(f"Requests{status}", "collector")
                                                   for status in (400, 401, 413, 429, 503)],
                                   right=[_metric("StreamRecordsRetried", "collector")]),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Timers: customers due, re-evaluated, transitioned", width=12, left=[
                _metric("CustomersDue", "timers"), _metric("CustomersReevaluated", "timers"),
                _metric("CustomersTransitioned", "timers"), _metric("SweepUnfinished", "timers")]),
            cloudwatch.GraphWidget(title="Timers: delay behind the deadline (s)", width=12, left=[
                _metric("DeadlineDelayP50", "timers", "Average"), _metric("DeadlineDelayMax", "timers", "Maximum")]),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Identity: merges, refused merges and redirected events", width=12, left=[
                _metric("Merges", "ingest"), _metric("MergedProfilesAbsorbed", "ingest"),
                *(_metric("MergesRefused", "ingest", reason=reason) for reason in ("known", "limit", "deleted"))],
                right=[_metric("EventsRedirected", "ingest")]),
            cloudwatch.GraphWidget(title="Id map: reads, emails indexed and table throttles", width=12, left=[
                _metric("IdentityMapReads", "ingest"), _metric("EmailsIndexed", "ingest")],
                right=[storage.identity_map.metric("ReadThrottleEvents", statistic="Sum", period=Duration.minutes(1)),
                       storage.identity_map.metric("WriteThrottleEvents", statistic="Sum",
                                                   period=Duration.minutes(1))]),
        )
        self.dashboard.add_widgets(cloudwatch.GraphWidget(
            title="Privacy: deletion passes, done and failed; events of deleted customers dropped", width=24, left=[
                _metric("DeletionPasses", "privacy"), _metric("DeletionsDone", "privacy"),
                _metric("DeletionsFailed", "privacy")], right=[_metric("EventsOfDeletedCustomers", "ingest")]))
        if fanout.deliveries:
            self.dashboard.add_widgets(cloudwatch.GraphWidget(
                title="Integrations: delivered, skipped, refused (dead letters), retried", width=24, left=[
                    _metric(name, d.integration.name) for d in fanout.deliveries
                    for name in ("Delivered", "Skipped", "Refused", "Retried")]))
        if history is not None:
            self.dashboard.add_widgets(cloudwatch.GraphWidget(
                title="Segment sizes at each day's close", width=24, left=[
                    cloudwatch.Metric(namespace=NAMESPACE, metric_name="SegmentSize", statistic="Maximum",
                                      period=Duration.days(1), dimensions_map={"service": "history", "segment": s})
                    for s in segment_ids]))

    def _allow_alarms_to_publish(self, key: kms.IKey) -> None:
        """CloudWatch publishes alarm notifications as its service principal: the topic policy (which replaces
        SNS's default one) and the topic's key must allow it, for this account's alarms only."""
        stack = Stack.of(self)
        principal = iam.ServicePrincipal("cloudwatch.amazonaws.com")
        conditions = {"StringEquals": {"aws:SourceAccount": stack.account},
                      "ArnLike": {"aws:SourceArn": stack.format_arn(
                          service="cloudwatch", resource="alarm", resource_name="*",
                          arn_format=ArnFormat.COLON_RESOURCE_NAME)}}
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarmsPublish", principals=[principal], actions=["sns:Publish"],
            resources=[self.topic.topic_arn], conditions=conditions))
        key.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarmsPublishToTheEncryptedTopic", principals=[principal],
            actions=["kms:GenerateDataKey*", "kms:Decrypt"], resources=["*"], conditions=conditions))
