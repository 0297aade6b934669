"""The ``cdp`` command line: works against the local stack or a deployed stack (boto3's usual credentials).

    cdp redrive failures --queue-url URL --stream NAME
    cdp redrive quarantine --bucket NAME [--prefix quarantine/2026/10/] --stream NAME

Errors are one clear line on standard error and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _client(service: str, args: argparse.Namespace) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=args.endpoint_url, region_name=args.region)


def _redrive(args: argparse.Namespace) -> int:
    from cdp.redrive import redrive_failures, redrive_quarantine

    kinesis = _client("kinesis", args)
    if args.source == "failures":
        report = redrive_failures(_client("sqs", args), kinesis, args.queue_url, args.stream)
        print(f"redrove {report.records} records from {report.batches} failed batches"
              + (f"; {report.expired} batches were no longer retained by the stream" if report.expired else ""))
        return 1 if report.expired else 0
    report = redrive_quarantine(_client("s3", args), kinesis, args.bucket, args.prefix, args.stream)
    print(f"redrove {report.records} quarantined records from {report.batches} objects")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdp", description="Operate a cdp stack.")
    parser.add_argument("--endpoint-url", default=None, help="AWS endpoint (e.g. http://127.0.0.1:4566 locally)")
    parser.add_argument("--region", default=None)
    commands = parser.add_subparsers(dest="command", required=True)
    redrive = commands.add_parser("redrive", help="put failed or quarantined records back on the stream")
    sources = redrive.add_subparsers(dest="source", required=True)
    failures = sources.add_parser("failures", help="from the ingest on-failure queue")
    failures.add_argument("--queue-url", required=True)
    failures.add_argument("--stream", required=True, help="the events stream name")
    quarantine = sources.add_parser("quarantine", help="from the quarantine bucket")
    quarantine.add_argument("--bucket", required=True)
    quarantine.add_argument("--prefix", default="quarantine/")
    quarantine.add_argument("--stream", required=True, help="the events stream name")
    redrive.set_defaults(run=_redrive)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except Exception as error:  # one clear line, never a traceback
        message = str(error) or type(error).__name__
        print(f"cdp: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
