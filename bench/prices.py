"""AWS on-demand prices the cost model multiplies by: us-east-1, from AWS's public pricing pages.

Taken 2025-06 (after DynamoDB's November 2024 on-demand reduction). Prices change: check the pages
below before relying on a figure, and update this file, the one place they live.

- https://aws.amazon.com/lambda/pricing/
- https://aws.amazon.com/dynamodb/pricing/on-demand/
- https://aws.amazon.com/kinesis/data-streams/pricing/
- https://aws.amazon.com/eventbridge/pricing/
- https://aws.amazon.com/sqs/pricing/
- https://aws.amazon.com/cloudwatch/pricing/
- https://aws.amazon.com/kms/pricing/
- https://aws.amazon.com/api-gateway/pricing/
- https://aws.amazon.com/secrets-manager/pricing/
"""

REGION = "us-east-1"
TAKEN = "2025-06"

LAMBDA_ARM_GB_SECOND = 0.0000133334
LAMBDA_REQUEST = 0.20 / 1e6
DYNAMODB_WRITE_REQUEST_UNIT = 0.625 / 1e6  # 1 KB per unit
DYNAMODB_READ_REQUEST_UNIT = 0.125 / 1e6  # 4 KB per unit, strongly consistent
KINESIS_ON_DEMAND_INGEST_GB = 0.08  # each record rounded up to 1 KB
KINESIS_ON_DEMAND_RETRIEVAL_GB = 0.04
KINESIS_ON_DEMAND_STREAM_HOUR = 0.04  # fixed, whatever the traffic
EVENTBRIDGE_CUSTOM_EVENT = 1.00 / 1e6  # per 64 KB chunk
EVENTBRIDGE_ARCHIVE_GB = 0.10
SQS_REQUEST = 0.40 / 1e6
API_GATEWAY_HTTP_REQUEST = 1.00 / 1e6  # HTTP API, first 300 million a month ($0.90 after)
API_GATEWAY_HTTP_METER_BYTES = 512 * 1024  # HTTP API requests are metered in 512 KB increments

DYNAMODB_STORAGE_GB_MONTH = 0.25
DYNAMODB_PITR_GB_MONTH = 0.20
EVENTBRIDGE_ARCHIVE_STORAGE_GB_MONTH = 0.023
CLOUDWATCH_LOGS_INGEST_GB = 0.50
CLOUDWATCH_METRIC_MONTH = 0.30  # per custom metric (first 10,000)
KMS_KEY_MONTH = 1.00
KMS_REQUEST = 0.03 / 10_000
SECRETS_MANAGER_SECRET_MONTH = 0.40
SECRETS_MANAGER_REQUEST = 0.05 / 10_000

# DynamoDB Streams reads made by Lambda triggers are free; stated here so the model can say so.
DYNAMODB_STREAM_READ_BY_LAMBDA = 0.0

# Round-trip times the model assumes inside a region (Lambda is billed for the time it waits).
LATENCY_SECONDS = {"BatchGetItem": 0.008, "PutItem": 0.005, "UpdateItem": 0.005, "Query": 0.005,
                   "PutEvents": 0.015, "GetItem": 0.004, "PutRecords": 0.010,
                   "Destination": 0.150}  # an integration's call to its destination (an ads or list API)

# Jobs (backfill, population statistics): Step Functions Standard workflows, Distributed Map children included,
# and S3 for the statistics' partial results.
# - https://aws.amazon.com/step-functions/pricing/
# - https://aws.amazon.com/s3/pricing/
STEP_FUNCTIONS_STANDARD_TRANSITION = 0.025 / 1000
S3_PUT_REQUEST = 0.005 / 1000
S3_GET_REQUEST = 0.0004 / 1000
