"""Integration tests: the Lambda handlers against moto.

A package, so that module names (test_pipeline, conftest) stay unique across the suite. Its import, which
comes before conftest and every test module, sets the environment before boto3 or Powertools is used:
fake credentials, the region, and the Powertools settings the handlers read at import.
"""

import os

# Before anything imports boto3 or Powertools.
os.environ.update({
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    "POWERTOOLS_METRICS_NAMESPACE": "cdp",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_SERVICE_NAME": "cdp",
    "POWERTOOLS_DEV": "false",
})
