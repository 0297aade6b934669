"""Properties of the ingest and changes pipeline in the synthesised template."""

from __future__ import annotations

from typing import Any

from tests.infra.conftest import EVENTS_STREAM, MEMBERS_TABLE, QUARANTINE_BUCKET, resource


def mappings(template: Any) -> dict[str, dict[str, Any]]:
    return {name: mapping["Properties"]
            for name, mapping in template.find_resources("AWS::Lambda::EventSourceMapping").items()}


def function_folders(template: Any) -> dict[str, str]:
    """Logical id -> the function folder it runs (from its Powertools service name)."""
    return {name: f["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"].removeprefix("cdp-")
            for name, f in template.find_resources("AWS::Lambda::Function").items()}


def test_both_stream_consumers_are_safe_event_source_mappings(template: Any) -> None:
    found = {name: m for name, m in mappings(template).items() if "StartingPosition" in m}  # not the queues'
    assert len(found) == 2
    for name, properties in found.items():
        assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
        assert properties["BisectBatchOnFunctionError"] is True, name
        assert properties["MaximumRetryAttempts"] == 5, name
        assert properties["MaximumRecordAgeInSeconds"] == 24 * 3600, name
        assert properties["StartingPosition"] == "TRIM_HORIZON", name
        assert properties["BatchSize"] == 100, name
        assert "Destination" in properties["DestinationConfig"]["OnFailure"], name


def test_the_events_stream_is_on_demand_and_encrypted(template: Any) -> None:
    properties = resource(template, "AWS::Kinesis::Stream", EVENTS_STREAM)["Properties"]
    assert properties["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
    assert properties["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}


def test_functions_run_newest_python_on_arm_with_all_layers_and_tracing(template: Any) -> None:
    functions = template.find_resources("AWS::Lambda::Function")
    folders = function_folders(template)
    assert {"ingest", "changes", "api", "timers"} <= set(folders.values())
    for name, function in functions.items():
        properties = function["Properties"]
        assert properties["Runtime"] == "python3.14", name
        assert properties["Architectures"] == ["arm64"], name
        assert properties["Handler"] == "handler.handler", name
        # jobs: + models; api: + placements
        assert len(properties["Layers"]) == {"jobs": 4, "api": 4}.get(folders.get(name, ""), 3), name
        assert properties["TracingConfig"] == {"Mode": "Active"}, name
        assert properties["Environment"]["Variables"]["CATALOGUE_PATH"] == "/opt", name
        assert "KmsKeyArn" in properties, name


def test_five_layers_core_deps_catalogue_the_jobs_models_and_the_apis_placements(template: Any) -> None:
    layers = template.find_resources("AWS::Lambda::LayerVersion")
    descriptions = sorted(layer["Properties"]["Description"] for layer in layers.values())
    assert descriptions == ["Powertools and PyYAML (make layers)", "cdp core package",
                            "numpy and scikit-learn: the computed traits' training (make layers)",
                            "placement definitions, unpacked at /opt/placements (the api function's)",
                            "segment definitions, unpacked at /opt"]


def test_no_iam_statement_grants_a_whole_service_or_everything(template: Any) -> None:
    for name, policy in template.find_resources("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                assert action != "*" and not action.endswith(":*"), (name, action)


def test_each_function_has_its_own_role(template: Any) -> None:
    functions = template.find_resources("AWS::Lambda::Function")
    roles = [f["Properties"]["Role"]["Fn::GetAtt"][0] for f in functions.values()]
    assert len(roles) == len(set(roles)) == len(function_folders(template))


def test_ingest_may_only_read_and_conditionally_write_profiles(template: Any) -> None:
    policies = template.find_resources("AWS::IAM::Policy")
    ingest = next(p for name, p in policies.items() if name.startswith("IngestRole"))
    dynamo = {action for statement in ingest["Properties"]["PolicyDocument"]["Statement"]
              for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
              if action.startswith("dynamodb:")}
    assert dynamo == {"dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:PutItem"}


def test_the_bus_keeps_an_archive_for_replay(template: Any) -> None:
    template.resource_count_is("AWS::Events::EventBus", 1)
    template.has_resource_properties("AWS::Events::Archive", {
        "EventPattern": {"source": ["cdp.segments"]}, "RetentionDays": 30})


def test_members_index_is_sharded_by_segment_and_expires_tombstones(template: Any) -> None:
    properties = resource(template, "AWS::DynamoDB::Table", MEMBERS_TABLE)["Properties"]
    assert properties["KeySchema"] == [{"AttributeName": "segment_shard", "KeyType": "HASH"},
                                       {"AttributeName": "customer_id", "KeyType": "RANGE"}]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_queues_and_the_quarantine_are_encrypted_and_refuse_plain_http(template: Any) -> None:
    for name, queue in template.find_resources("AWS::SQS::Queue").items():
        assert "KmsMasterKeyId" in queue["Properties"], name
    quarantine = resource(template, "AWS::S3::Bucket", QUARANTINE_BUCKET)["Properties"]
    (rule,) = quarantine["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert quarantine["VersioningConfiguration"] == {"Status": "Enabled"}
    policies = template.find_resources("AWS::S3::BucketPolicy")
    assert policies and all(
        any(s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in p["Properties"]["PolicyDocument"]["Statement"]) for p in policies.values())


def test_ingest_and_jobs_get_a_full_vcpu_and_the_others_the_common_memory(template: Any) -> None:
    functions = template.find_resources("AWS::Lambda::Function")
    sizes = {name: f["Properties"].get("MemorySize") for name, f in functions.items()}
    folders = function_folders(template)
    ingest = [name for name in sizes if name.startswith("Ingest") or folders.get(name) == "jobs"]
    assert ingest and all(sizes[name] == 1769 for name in ingest)
    assert {size for name, size in sizes.items() if name not in ingest and size is not None} == {512}
