"""A Kinesis stand-in at the HTTP layer, for measuring what the collector costs on its side of the wire.

    python -m bench.kinesis_stub [--latency '{"PutRecords": 0.010}']

It speaks Kinesis' JSON 1.1 protocol (``X-Amz-Target: Kinesis_20131202.PutRecords``, the records' data
base64 in the body) over HTTP/1.1 keep-alive and accepts every record of a PutRecords call, answering
with a sequence number and shard for each, so the client does all the work it does against Kinesis:
encoding, signing, sending, parsing. It keeps no record, only counts (records and data bytes, by
operation), which its own operation ``Requests`` answers. The botocore in use sends JSON for Kinesis
(the service model's only protocol is ``json``); a CBOR body (``application/x-amz-cbor-1.1``, which
other SDKs send) is refused with a 400 so a change of protocol cannot go unnoticed. Each operation can
wait a set time before answering, like a round trip in a region. It runs in its own process so that
none of its work counts as the collector's. It prints its port.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SHARD = "shardId-000000000000"
JSON_1_1 = "application/x-amz-json-1.1"


class Stream:
    """Counts what it was sent and numbers the records it accepts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sequence = 0
        self.requests: dict[str, int] = {}
        self.records = 0
        self.data_bytes = 0

    def answer(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.requests[operation] = self.requests.get(operation, 0) + 1
        if operation == "PutRecords":
            records = request["Records"]
            size = sum(len(base64.b64decode(r["Data"])) for r in records)
            with self.lock:
                first = self.sequence
                self.sequence += len(records)
                self.records += len(records)
                self.data_bytes += size
            return {"FailedRecordCount": 0, "EncryptionType": "KMS",
                    "Records": [{"SequenceNumber": f"{first + n:056d}", "ShardId": SHARD}
                                for n in range(len(records))]}
        if operation == "PutRecord":
            with self.lock:
                self.sequence += 1
                self.records += 1
                self.data_bytes += len(base64.b64decode(request["Data"]))
                return {"SequenceNumber": f"{self.sequence:056d}", "ShardId": SHARD, "EncryptionType": "KMS"}
        if operation == "Requests":  # the stub's own: how many of each it answered, records and bytes
            with self.lock:
                return {**self.requests, "records": self.records, "data_bytes": self.data_bytes}
        return {}


def serve(latency: dict[str, float], port: int = 0) -> ThreadingHTTPServer:
    stream = Stream()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects
        disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            operation = self.headers.get("X-Amz-Target", ".").rsplit(".", 1)[-1]
            if "cbor" in self.headers.get("Content-Type", ""):
                self._send(400, {"__type": "SerializationException",
                                 "message": "the Kinesis stand-in answers JSON 1.1 only, not CBOR"})
                return
            wait = latency.get(operation, 0.0)
            if wait:
                time.sleep(wait)
            self._send(200, stream.answer(operation, json.loads(body or b"{}")))

        def _send(self, status: int, answer: dict[str, Any]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", JSON_1_1)
            self.send_header("x-amzn-RequestId", "stub")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", default="{}", help="seconds each operation waits, as JSON")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = serve({str(k): float(v) for k, v in json.loads(args.latency).items()}, args.port)
    print(server.server_address[1], flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
