"""A local stand-in for the ad and list platforms, for the local stack: it accepts what the
integrations send, answers as the platforms document, and reports each delivery to the feed.

It checks nothing beyond the shape it needs to count rows; the tests' fake servers check formats. It keeps
what each audience and list holds now (adds less removes), as the platform would, and answers it at
``GET /audiences``: what a deletion must leave without the customer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


class Sandbox:
    def __init__(self, port: int, report: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.port = port
        self.report = report
        self.deliveries: list[dict[str, Any]] = []
        self._jobs: dict[str, str] = {}  # Google offline user data job -> user list id
        self.audiences: dict[str, set[str]] = {}  # "integration:target" -> the identifiers it holds now
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> threading.Thread:
        sandbox = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body = sandbox.answer(self.command, self.path, raw)
                encoded = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)

            do_GET = do_POST = do_DELETE = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        thread = threading.Thread(target=self._server.serve_forever, name="sandbox", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def answer(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path.rstrip("/").endswith("/audiences"):
            with self._lock:
                return 200, {name: sorted(held) for name, held in sorted(self.audiences.items())}
        if path.endswith("/token"):
            return 200, {"access_token": "local-access-token", "expires_in": 3600, "token_type": "Bearer"}
        if path.endswith("/users"):  # Meta Custom Audiences
            form = parse_qs(raw.decode())
            rows = json.loads(form.get("payload", ["{}"])[0]).get("data", [])
            audience = path.rstrip("/").split("/")[-2]
            self._record("meta", "add" if method == "POST" else "remove", audience, len(rows),
                         [value for row in rows for value in row if value])
            return 200, {"audience_id": audience, "num_received": len(rows), "num_invalid_entries": 0,
                         "invalid_entry_samples": {}}
        body = json.loads(raw or b"{}")
        if path.endswith(":create"):
            user_list = str(body.get("job", {}).get("customerMatchUserListMetadata", {}).get("userList", ""))
            job = len(self._jobs) + 1
            self._jobs[str(job)] = user_list.rsplit("/", 1)[-1]
            return 200, {"resourceName": f"{path.split('/offlineUserDataJobs')[0].lstrip('/').split('/', 1)[-1]}"
                                         f"/offlineUserDataJobs/{job}"}
        if path.endswith(":addOperations"):
            operations = body.get("operations", [])
            adds = [o["create"] for o in operations if "create" in o]
            removes = [o["remove"] for o in operations if "remove" in o]
            user_list = self._jobs.get(path.split("/")[-1].split(":")[0], "")
            for action, rows in (("add", adds), ("remove", removes)):
                if rows:
                    self._record("google", action, user_list, len(rows), [
                        value for row in rows for identifier in row.get("userIdentifiers", [])
                        for value in identifier.values()])
            return 200, {}
        if path.endswith(":run"):
            return 200, {"name": "operations/local"}
        operations = body.get("operations", []) if isinstance(body, dict) else []
        self._record("webhook", str(body.get("action", "")), str(body.get("list_id", "")), len(operations),
                     [str(o.get("customer_id", "")) for o in operations if isinstance(o, dict)])
        return 200, {}

    def _record(self, integration: str, action: str, target: str, rows: int, identifiers: list[str]) -> None:
        """``identifiers``: what the rows name, as sent (hashes for the ad platforms, customer ids for lists)."""
        delivery = {"integration": integration, "action": action, "target": target, "rows": rows,
                    "identifiers": identifiers}
        with self._lock:
            held = self.audiences.setdefault(f"{integration}:{target}", set())
            if action == "add":
                held.update(identifiers)
            elif action == "remove":
                held.difference_update(identifiers)
        self.deliveries.append(delivery)
        if self.report is not None:
            self.report(delivery)
