"""A DynamoDB stand-in at the HTTP layer, for measuring what a handler costs on its side of the wire.

    python -m bench.dynamodb_stub [--latency '{"PutItem": 0.005}'] [--keys '{"cdp-write-keys": "digest"}']

It speaks DynamoDB's JSON protocol (``X-Amz-Target``) over HTTP/1.1 keep-alive, keeps the items it
is given (PutItem) and answers reads with them (BatchGetItem, GetItem), so the client does all the
work it does against DynamoDB: serialising, signing, sending, parsing. It checks no condition and
holds no index. A table's key is a string attribute: ``customer_id`` unless ``--keys`` names another
(``{"cdp-write-keys": "digest"}``); a read takes the key's name from the request's ``Key``. Each
operation can wait a set time before answering, like a round trip in a region. It runs in its own
process so that none of its work counts as the handler's. It prints its port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY = "customer_id"  # a table's key attribute, unless the stub is told another for it


def _key_value(key: dict[str, Any]) -> str:
    """The string value of a one-attribute key, whatever the attribute is named."""
    return str(next(iter(key.values()))["S"])


class Items:
    """Items by (table, key), as the JSON the client sent: answers are built without re-encoding them."""

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self.keys = keys or {}  # table -> its key attribute, when not KEY
        self.by_key: dict[tuple[str, str], Any] = {}
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}

    def answer(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.requests[operation] = self.requests.get(operation, 0) + 1
        if operation == "PutItem":
            item = request["Item"]
            self.by_key[request["TableName"], item[self.keys.get(request["TableName"], KEY)]["S"]] = item
            return {}
        if operation == "BatchGetItem":
            responses = {table: [self.by_key[table, _key_value(key)] for key in asked["Keys"]
                                 if (table, _key_value(key)) in self.by_key]
                         for table, asked in request["RequestItems"].items()}
            return {"Responses": responses, "UnprocessedKeys": {}}
        if operation == "GetItem":
            found = self.by_key.get((request["TableName"], _key_value(request["Key"])))
            return {"Item": found} if found is not None else {}
        if operation == "Query":
            return {"Items": [], "Count": 0, "ScannedCount": 0}
        if operation == "Requests":  # the stub's own: how many of each it answered
            return dict(self.requests)
        return {}


def serve(latency: dict[str, float], port: int = 0, keys: dict[str, str] | None = None) -> ThreadingHTTPServer:
    items = Items(keys)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects
        disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            operation = self.headers.get("X-Amz-Target", ".").rsplit(".", 1)[-1]
            wait = latency.get(operation, 0.0)
            if wait:
                time.sleep(wait)
            answer = json.dumps(items.answer(operation, json.loads(body or b"{}"))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("x-amzn-RequestId", "stub")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", default="{}", help="seconds each operation waits, as JSON")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--keys", default="{}", help=f"each table's key attribute when not {KEY}, as JSON")
    args = parser.parse_args(argv)
    server = serve({str(k): float(v) for k, v in json.loads(args.latency).items()}, args.port,
                   {str(k): str(v) for k, v in json.loads(args.keys).items()})
    print(server.server_address[1], flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
